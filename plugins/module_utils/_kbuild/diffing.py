# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""The engine step: each changed object diffed against its parent's symbol table.

The parent is vmlinux, the out-of-tree module being patched, or the release's own module
(``.ko``, plain or compressed the ways distros ship them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.pairs import NoChangesError
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.parentsyms import parent_symtab
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.request import BuildRequest
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.results import ObjectDiff
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError, StepLog

# What follows ".ko" in a module file name: plain, or compressed the ways distros ship them.
MODULE_SUFFIXES = ("", ".xz", ".gz", ".zst")


def find_module_ko(modules_dir: Optional[Path], module: str, scratch: Path) -> Path:
    """The release's own ``<module>.ko`` (its symbol table is the parent for lookups).

    Distros ship modules compressed (Debian 6.12: ``.ko.xz``; others ``.ko.zst``/``.ko.gz``);
    a compressed one is unpacked into ``scratch`` and that plain copy is returned.
    """
    if modules_dir is None or not Path(modules_dir).is_dir():
        raise KbuildError(f"the patch changes module {module}, but no modules directory was given "
                          f"(/lib/modules/<release> of the target kernel)")
    names = {module, module.replace("_", "-")}
    for path in sorted(Path(modules_dir).rglob("*.ko*")):
        base, _sep, suffix = path.name.partition(".ko")
        if base in names and suffix in MODULE_SUFFIXES:
            return plain_module(path, scratch)
    raise KbuildError(f"module {module}.ko (plain, .xz, .gz or .zst) not found under {modules_dir}")


def plain_module(path: Path, scratch: Path) -> Path:
    """``path`` when it is a plain ``.ko``, else its contents unpacked into ``scratch``."""
    from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.compressed import decompress_module
    from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.errors import ElfFormatError

    base, _sep, suffix = Path(path).name.partition(".ko")
    if not suffix:
        return Path(path)
    try:
        plain = decompress_module(str(path), Path(path).read_bytes())
    except ElfFormatError as exc:
        raise KbuildError(str(exc)) from exc
    scratch.mkdir(parents=True, exist_ok=True)
    dest = scratch / f"{base}.ko"
    dest.write_bytes(plain)
    return dest


def _parent_file(req: BuildRequest, parent: str, scratch: Path) -> Path:
    """vmlinux, the out-of-tree module being patched, or the release's own module ``parent``."""
    if parent == "vmlinux":
        return Path(req.vmlinux)
    if req.oot and parent == req.oot.name:
        return plain_module(req.oot.ko, scratch)
    return find_module_ko(req.modules_dir, parent, scratch)


def engine_output_path(out_dir: Path, index: int, obj: str) -> Path:
    """Where ``run_engine`` writes the output of the ``index``-th object (sorted order)."""
    return out_dir / f"output-{index}-{Path(obj).stem}.o"


def run_engine(req: BuildRequest, pairs: Dict[str, str], orig_dir: Path, patched_dir: Path,
               out_dir: Path, sizes: Dict[str, int], log: StepLog) -> List[ObjectDiff]:
    """Diff each original/patched object pair; return what changed, write outputs to ``out_dir``."""
    # Imported here: the engine needs pyelftools, which the module reports missing on its own.
    from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.diff import create_diff_object

    symtabs: Dict[str, object] = {}
    symvers = Path(req.headers) / "Module.symvers"
    diffs: List[ObjectDiff] = []
    for index, (obj, parent) in enumerate(sorted(pairs.items())):
        with log.step("diff-object", obj) as res:
            if parent not in symtabs:
                scratch = out_dir.parent / "parents"
                source = _parent_file(req, parent, scratch)
                # A module unpacked into this build's scratch space is a new file each time: not cached.
                cached = scratch not in source.parents
                symtabs[parent] = parent_symtab(source, parent, Path(req.cache_dir) / "symtabs" if cached else None)
            out = engine_output_path(out_dir, index, obj)
            result = create_diff_object(str(orig_dir / obj), str(patched_dir / obj), parent, symtabs[parent],
                                        str(symvers) if symvers.is_file() else None, req.module_name, str(out),
                                        struct_sizes=sizes)
            res.detail = (f"{obj}: changed {' '.join(result.changed_functions) or '-'}; "
                          f"new {' '.join(result.new_functions) or '-'}")
        if result.has_changes:
            diffs.append(ObjectDiff(obj, parent, result.changed_functions, result.new_functions,
                                    result.klp_relocations, result.timings, result.inert_sites))
    if not diffs:
        raise NoChangesError(f"the patch {' '.join(str(p) for p in req.patches)} changes no function in "
                             f"{', '.join(sorted(pairs))}: nothing to live patch")
    return diffs
