# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Jump labels and static calls whose key lives in a module (#19 item 4).

Livepatch applies a module object's relocations when that module loads, which is after the
patch module's own ``__jump_table`` and ``.static_call_sites`` were processed: an entry keyed in
a module would be initialised against a zero key.  Three kinds are harmless without their entry,
as kpatch treats them: a tracepoint's jump label (key ``__tracepoint_*``), a dynamic-debug
``pr_debug()``/``dev_dbg()`` (key in the ``__dyndbg``/``__verbose`` descriptor table) and a
tracepoint's static call (key ``__SCK__tp_func_*``).  Their entries are dropped, which leaves the
site in its default state (the NOP compiled in: the tracepoint does not fire, the debug message
is not printed, while the patch is live), and reported.  Every other module-keyed entry stays and
is refused afterwards (``verify.check_keys``), naming the key and the function.
"""

from __future__ import annotations

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.record import record
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import ElfObject, Symbol
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.lookup import SymbolLookupError
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.resolver import Resolver
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.special import (
    KeptKey,
    SpecialResult,
    drop_entries,
)

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import List

_DYNAMIC_DEBUG_SECTIONS = ("__dyndbg", "__verbose")


@record(frozen=True)
class InertSite:
    """A dropped entry: the site in ``function`` keyed by ``key`` stays in its default state."""

    kind: str       # "tracepoint", "dynamic debug", "tracepoint static call"
    function: str
    key: str
    objname: str

    def describe(self) -> str:
        return "%s %s in %s (key in module %s)" % (self.kind, self.key, self.function, self.objname)


def _inert_kind(kept: KeptKey) -> str:
    key = kept.key
    if kept.section == "__jump_table":
        if key.name.startswith("__tracepoint_"):
            return "tracepoint"
        if key.section is not None and key.section.name in _DYNAMIC_DEBUG_SECTIONS or \
                key.name in _DYNAMIC_DEBUG_SECTIONS:
            return "dynamic debug"
    elif key.name.startswith("__SCK__tp_func_"):
        return "tracepoint static call"
    return ""


def key_module(key: Symbol, resolver: Resolver) -> str:
    """The module a key will be resolved in through a livepatch relocation, or "" (vmlinux, the
    patch module itself, or an ordinary reference)."""
    if key.section is not None and key.section.include:
        return ""   # carried into the patch module
    objname = resolver.symtab.objname
    if key.is_local:
        # a static of the patched object, reached through a livepatch relocation
        return objname if objname != "vmlinux" else ""
    try:   # a global left behind (a tracepoint defined in this file) or defined elsewhere
        need, where = resolver.resolve(key)
    except SymbolLookupError:
        return ""    # reported where the output pass resolves it
    if need and where is not None and where.objname != "vmlinux":
        return where.objname
    return ""


def drop_inert_module_keys(obj: ElfObject, special: SpecialResult, resolver: Resolver) -> List[InertSite]:
    """Drop the tracepoint / dynamic-debug / tracepoint static-call entries keyed in a module."""
    inert: List[InertSite] = []
    dropped: List[KeptKey] = []
    for kept in special.keys:
        kind = _inert_kind(kept)
        if not kind:
            continue
        objname = key_module(kept.key, resolver)
        if objname:
            dropped.append(kept)
            site = InertSite(kind, kept.function, kept.key.name, objname)
            if site not in inert:
                inert.append(site)
    if dropped:
        drop_entries(obj, special, dropped)
    return inert
