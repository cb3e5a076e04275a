# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""The create-diff-object pipeline: original + patched object → livepatch object.

Passes run in a fixed order over the two ELF models, each timed:
read → bundle → correlate → compare → verify → include → special → lookup/output
→ write.  :func:`create_diff_object` returns a :class:`DiffResult` naming the
changed and new functions; a patch that cannot be live patched raises
:class:`PatchRejected`, and no output file is written then.
"""

from __future__ import annotations

import os
import time

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.record import factory, record
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import STT_FUNC, ElfObject
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine import (
    bundle as bundle_pass,
    compare as compare_pass,
    correlate as correlate_pass,
    include as include_pass,
    special as special_pass,
    verify as verify_pass,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.lookup import (
    ObjectBlocks,
    ParentSymtab,
    Wanted,
    load_parent_symtab,
    object_file_name,
    read_symvers,
    wanted_by,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.modkeys import drop_inert_module_keys
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.resolver import Resolver
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.output import build_output
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.verify import PatchRejected

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import Dict, List, Mapping, Optional, Union

__all__ = ["DiffResult", "PatchRejected", "create_diff_object"]


@record
class DiffResult:
    """What the engine found and wrote."""

    object_name: str
    module_name: str = ""
    changed_functions: List[str] = factory(list)
    new_functions: List[str] = factory(list)
    # functions that changed only through a .cold/.part child or a const object they read
    promoted: List[str] = factory(list)
    ignored: List[str] = factory(list)
    klp_relocations: int = 0
    special_kept: Dict[str, int] = factory(dict)
    # module-keyed tracepoint / dynamic-debug / tracepoint static-call sites left in their
    # default state while the patch is live (see modkeys.py)
    inert_sites: List[str] = factory(list)
    timings: Dict[str, float] = factory(dict)
    output: Optional[str] = None
    output_size: int = 0

    @property
    def has_changes(self) -> bool:
        return bool(self.changed_functions or self.new_functions)

    def as_dict(self) -> Dict[str, object]:
        return {
            "object": self.object_name, "module": self.module_name, "changed_functions": self.changed_functions,
            "new_functions": self.new_functions, "promoted": self.promoted, "ignored": self.ignored,
            "klp_relocations": self.klp_relocations, "special_sections_kept": self.special_kept,
            "inert_sites": self.inert_sites,
            "timings": self.timings, "output": self.output, "output_size": self.output_size,
        }


class _Timed:
    """``with _Timed(timings, "stage"):`` adds the block's seconds to ``timings["stage"]`` (a class,
    not ``contextlib.contextmanager``: contextlib's import is part of every start of the tool)."""

    def __init__(self, timings: Dict[str, float], name: str) -> None:
        self.timings, self.name, self.start = timings, name, 0.0

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *_exc: object) -> None:
        self.timings[self.name] = round(self.timings.get(self.name, 0.0) + time.perf_counter() - self.start, 6)


def _load(obj: Union[str, ElfObject]) -> ElfObject:
    if isinstance(obj, ElfObject):
        return obj
    from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf
    return read_elf(str(obj))


def _parent_symtab(parent_symtab: Union[str, ParentSymtab], parent_name: str, wanted: Wanted) -> ParentSymtab:
    if isinstance(parent_symtab, ParentSymtab):
        return parent_symtab
    return load_parent_symtab(str(parent_symtab), parent_name, wanted)


def create_diff_object(orig: Union[str, ElfObject], patched: Union[str, ElfObject], parent_name: str,
                       parent_symtab: Union[str, ParentSymtab], symvers: Optional[str], module_name: str,
                       out: Optional[str], struct_sizes: Optional[Mapping[str, int]] = None) -> DiffResult:
    """Diff ``orig`` against ``patched`` and write the livepatch object to ``out``.

    ``parent_name`` is "vmlinux" or the patched module's name; ``parent_symtab``
    its ELF file / readelf text (or a loaded :class:`ParentSymtab`, to share
    between objects); ``struct_sizes`` the special-section entry sizes (see
    ``special.STRUCT_KEYS``; None → environment variables).  Nothing is written
    when there are no changes (``has_changes`` False) or the patch is rejected.
    """
    timings: Dict[str, float] = {}
    sizes = dict(struct_sizes) if struct_sizes is not None else special_pass.struct_sizes_from_env()
    with _Timed(timings, "read"):
        old, new = _load(orig), _load(patched)
    result = DiffResult(object_name=str(new.path), module_name=module_name, timings=timings)
    with _Timed(timings, "bundle"):
        verify_pass.check_headers(old, new)
        bundle_pass.bundle(old)
        bundle_pass.bundle(new)
    with _Timed(timings, "correlate"):
        correlate_pass.correlate(old, new)
    with _Timed(timings, "compare"):
        promoted, ignored = compare_pass.compare(new)
        result.promoted = [s.name for s in promoted]
        result.ignored = ignored
    with _Timed(timings, "verify"):
        verify_pass.check_init_changes(new)
        verify_pass.check_groups(new)
        verify_pass.check_data_changes(new)
        verify_pass.check_uncarried_changes(new)
        verify_pass.check_static_local_references(new)
    with _Timed(timings, "include"):
        inc = include_pass.Includer()
        include_pass.include_standard_elements(new, inc)
        changed = include_pass.include_changed_functions(new, inc)
        new_globals = include_pass.include_new_globals(new, inc)
        include_pass.include_hook_sections(new, inc)
        inc.drain()
        verify_pass.check_fentry(changed)
        result.changed_functions = [s.name for s in changed]
        result.new_functions = [s.name for s in include_pass.new_functions(new)]
    if not changed and not any(s.type == STT_FUNC for s in new_globals) and not result.new_functions:
        return result
    with _Timed(timings, "special"):
        special = special_pass.regenerate_special_sections(new, sizes, inc)
        include_pass.include_groups(new)
        result.special_kept = {k: v for k, v in special.kept.items() if v}
        verify_pass.check_relocation_ranges(new.sections)
        verify_pass.check_no_existing_data_copied(new)
    with _Timed(timings, "lookup"):
        symtab = _parent_symtab(parent_symtab, parent_name, wanted_by(old, new))
        # This object's blocks travel in its resolver: the table may be shared with other objects.
        blocks = symtab.select_object_blocks(old) if object_file_name(new) is not None else ObjectBlocks()
        resolver = Resolver(symtab, read_symvers(symvers), blocks)
    with _Timed(timings, "output"):
        inert = drop_inert_module_keys(new, special, resolver)
        result.inert_sites = [site.describe() for site in inert]
        result.special_kept = {k: v for k, v in special.kept.items() if v}
        built = build_output(new, changed, resolver)
        verify_pass.check_keys(special.keys, built.klp_objects)
        result.klp_relocations = len(built.klp_relocations)
    if out is not None:
        with _Timed(timings, "write"):
            from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.writer import write_elf
            write_elf(built.obj, str(out))
            result.output = str(out)
            result.output_size = os.path.getsize(str(out))
    return result
