# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Correlation pass: pair ("twin") each section and symbol of the patched object
with its counterpart in the original object.

Pairing is by name through dictionaries (one pass over each object).  Names the
compiler numbers differently between builds — static locals ``foo.123`` vs
``foo.456``, ``__UNIQUE_ID_x12`` vs ``__UNIQUE_ID_x34``, clones ``f.isra.0`` vs
``f.isra.1`` — are paired when the name without its number is unique on both
sides; static locals are first paired through the functions that use them, which
also disambiguates several locals sharing a base name.  "Special" statics
(lockdep ``__key``, ``__warned``, ``__already_done``, ``__func__``, ratelimit
``_rs``, ``CSWTCH`` tables, dynamic-debug descriptors, ``.data.once``) are never
paired: the patched copy must be a fresh variable.
"""

from __future__ import annotations

from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.names import unique_id_base, without_number_parts
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import (
    STT_FILE,
    STT_FUNC,
    STT_OBJECT,
    STT_SECTION,
    ElfObject,
    Relocation,
    Section,
    Symbol,
)

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Set

_SPECIAL_STATIC_BASES = ("__key", "__warned", "__already_done", "__func__", "_rs",
                         "__print_once", "descriptor", "__msg", "__print_fmt")
ANONYMOUS_CONSTANT_PREFIXES = (".data..L__unnamed_", ".data.__unnamed_")
# Data the kernel keeps per call site of the code that owns it: dynamic-debug descriptors,
# UBSAN's source locations and type descriptors, clang's anonymous constants (renumbered
# whenever code moves) and warn-once flags.  Such sections are never paired: the patched code
# gets fresh copies, which is what a new call site would get (a once-flag fires once more).
CALL_SITE_DATA_PREFIXES = ("__verbose", "__dyndbg", ".data.once", ".data..once", ".data.unlikely",
                           ".data..unlikely", ".data..Lubsan_data", ".data.rel.local..Lubsan_data",
                           ".data..Lubsan_type") + ANONYMOUS_CONSTANT_PREFIXES


def strip_number(name: str) -> str:
    """``foo`` for ``foo.123``/``foo.123.45``, ``foo.constprop.cold`` for ``foo.constprop.19.cold.28``;
    ``__UNIQUE_ID_x`` for ``__UNIQUE_ID_x77``
    and ``__UNIQUE_ID_x77.12`` (the counter and gcc's suffix both vary between builds)."""
    base = without_number_parts(name)  # gcc's ".N" anywhere: foo.123, foo.constprop.19.cold.28
    # __UNIQUE_ID_<name><counter>, also as clang's <func>.__UNIQUE_ID_ddebug<counter>
    return unique_id_base(base) or base


def is_anonymous_constant(sec: Section) -> bool:
    """clang's ``.data..L__unnamed_N``: an anonymous constant only its section symbol names."""
    return sec.name.startswith(ANONYMOUS_CONSTANT_PREFIXES)


def is_call_site_data(sec: Section) -> bool:
    """A section of per-call-site data the kernel owns (see ``CALL_SITE_DATA_PREFIXES``)."""
    return sec.name.startswith(CALL_SITE_DATA_PREFIXES)


def is_special_static(sym: Symbol) -> bool:
    """Statics that must never be paired with their original counterpart."""
    if sym.type == STT_SECTION:
        return sym.section is not None and is_call_site_data(sym.section)
    if not sym.is_local or sym.type not in (STT_OBJECT, 0):
        return False
    if sym.section is not None and is_call_site_data(sym.section):
        return True
    base = strip_number(sym.name)
    if base in _SPECIAL_STATIC_BASES or base.startswith("CSWTCH"):
        return True
    return "__UNIQUE_ID_ddebug" in base


def is_static_local(sym: Symbol) -> bool:
    """A function-scope static: a local object whose name carries gcc's ``.N`` suffix."""
    return sym.is_local and sym.type == STT_OBJECT and "." in sym.name and strip_number(sym.name) != sym.name


def _pair(new: Symbol, old: Symbol) -> None:
    new.twin, old.twin = old, new
    if new.section is not None and old.section is not None and new.section.sym is new and old.section.sym is old:
        _pair_sections(new.section, old.section)


def _pair_sections(new: Section, old: Section) -> None:
    if new.twin is not None or old.twin is not None:
        return
    new.twin, old.twin = old, new
    if new.rela is not None and old.rela is not None:
        new.rela.twin, old.rela.twin = old.rela, new.rela
    if new.secsym is not None and old.secsym is not None:
        new.secsym.twin, old.secsym.twin = old.secsym, new.secsym


def _symbol_key(sym: Symbol) -> tuple:
    return (sym.name, sym.type, sym.is_local)


def _candidates(syms: List[Symbol], key_fn) -> Dict[tuple, List[Symbol]]:
    table: Dict[tuple, List[Symbol]] = {}
    for sym in syms:
        table.setdefault(key_fn(sym), []).append(sym)
    return table


def _pairable(sym: Symbol) -> bool:
    return sym.type not in (STT_SECTION, STT_FILE) and sym.twin is None and not is_special_static(sym)


def family_relocations(func: Symbol) -> List[Relocation]:
    """Relocations of a function's code and of its ``.part``/``.cold`` children's code.

    gcc moves code between a function and its children from build to build (issue 1054: the
    static locals of audit_log_end moved into audit_log_end.part.17).  Call after bundling.
    """
    out: List[Relocation] = []
    seen: Set[int] = set()
    pending = [func]
    while pending:
        sym = pending.pop()
        sec = sym.section
        if sec is not None and sec.rela is not None and id(sec) not in seen:
            seen.add(id(sec))
            out.extend(sec.rela.relocations)
        pending.extend(sym.children)
    return out


def correlate_static_locals(orig: ElfObject, patched: ElfObject) -> int:
    """Pair static locals through the (already paired) functions referencing them."""
    paired = 0
    for func in patched.symbols[1:]:
        if func.type != STT_FUNC or func.twin is None or func.section is None or func.parent is not None:
            continue
        old_func = func.twin
        if old_func.section is None:
            continue
        old_locals: Dict[str, List[Symbol]] = {}
        for reloc in family_relocations(old_func):
            if is_static_local(reloc.sym) and not is_special_static(reloc.sym):
                bucket = old_locals.setdefault(strip_number(reloc.sym.name), [])
                if reloc.sym not in bucket:
                    bucket.append(reloc.sym)
        for reloc in family_relocations(func):
            sym = reloc.sym
            if not is_static_local(sym) or is_special_static(sym) or sym.twin is not None:
                continue
            bucket = old_locals.get(strip_number(sym.name), [])
            free = [old for old in bucket if old.twin is None]
            if len(free) >= 1:
                _pair(sym, free[0])
                paired += 1
    return paired


def correlate_symbols_by_name(orig: ElfObject, patched: ElfObject) -> None:
    """Exact-name pairing, unique on both sides (locals by name within the object)."""
    old_table = _candidates([s for s in orig.symbols[1:] if _pairable(s)], _symbol_key)
    new_table = _candidates([s for s in patched.symbols[1:] if _pairable(s)], _symbol_key)
    for key, news in new_table.items():
        olds = old_table.get(key)
        if olds and len(olds) == len(news):
            for new, old in zip(news, olds):  # same order in both symbol tables
                if not is_static_local(new):
                    _pair(new, old)


def correlate_symbols_by_base_name(orig: ElfObject, patched: ElfObject) -> None:
    """Pair leftover numbered names whose number-less form is unique on both sides."""
    def key(sym: Symbol) -> tuple:
        return (strip_number(sym.name), sym.type, sym.is_local)

    old_table = _candidates([s for s in orig.symbols[1:] if _pairable(s)], key)
    new_table = _candidates([s for s in patched.symbols[1:] if _pairable(s)], key)
    for k, news in new_table.items():
        olds = old_table.get(k)
        if olds and len(olds) == 1 and len(news) == 1:
            _pair(news[0], olds[0])


def correlate_sections_by_name(orig: ElfObject, patched: ElfObject) -> None:
    """Pair sections not already paired through their symbols, by exact name."""
    old_table: Dict[str, List[Section]] = {}
    for sec in orig.sections:
        if sec.twin is None and not sec.is_rela:
            old_table.setdefault(sec.name, []).append(sec)
    for sec in patched.sections:
        if sec.twin is not None or sec.is_rela:
            continue
        if sec.sym is not None and (sec.sym.twin is None or is_special_static(sec.sym)):
            continue  # a bundled section follows its symbol
        if is_call_site_data(sec):
            continue
        olds = old_table.get(sec.name)
        if olds and len(olds) == 1 and olds[0].sym is None:
            _pair_sections(sec, olds[0])
        elif olds and len(olds) == 1 and sec.sym is not None and olds[0].sym is sec.sym.twin:
            _pair_sections(sec, olds[0])


def correlate_section_symbols(patched: ElfObject) -> None:
    for sec in patched.sections:
        if sec.twin is not None and sec.secsym is not None and sec.twin.secsym is not None:
            sec.secsym.twin, sec.twin.secsym.twin = sec.twin.secsym, sec.secsym


def correlate(orig: ElfObject, patched: ElfObject) -> None:
    """Run the correlation pass family: functions/globals first, then statics, then sections."""
    correlate_symbols_by_name(orig, patched)
    correlate_static_locals(orig, patched)
    correlate_symbols_by_base_name(orig, patched)
    correlate_sections_by_name(orig, patched)
    correlate_section_symbols(patched)
    _check_twins_consistent(patched)


def _check_twins_consistent(patched: ElfObject) -> None:
    # A bundled symbol whose section got no twin (e.g. name moved sections) is new.
    for sym in patched.symbols[1:]:
        if sym.twin is not None and sym.section is not None and sym.section.sym is sym:
            if sym.section.twin is None:
                old: Optional[Section] = sym.twin.section
                if old is not None and old.twin is None and old.sym is sym.twin:
                    _pair_sections(sym.section, old)
