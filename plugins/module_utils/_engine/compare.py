# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Comparison pass: mark every patched section and symbol NEW, CHANGED or SAME.

A section is the same when its bytes and its relocations are the same;
relocations are equal when they name the paired symbol (or, for string
literals, the same text).  A function whose only difference is a ``__LINE__``
immediate passed to a line-taking helper (``__might_sleep``, ``printk``,
``__warn_printk`` ...) is the same: editing lines above it must not patch it.
A changed ``.cold``/``.part`` child makes its parent changed too, because the
child is only reachable through the parent's new copy.

Code that points at an entry of a special table (Linux 7.x x86-64 ``WARN()`` loads its
``__bug_table`` entry, which holds the format string) is compared through the entries it points
at, by content: an entry that only moved (another function gained or lost one) is no change, and
a changed entry (a new format string, a moved line) is one.
"""

from __future__ import annotations

from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.names import hide_line_numbers, ubsan_data_base
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import (
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_WRITE,
    SHT_GROUP,
    SHT_NOBITS,
    STT_FUNC,
    STT_OBJECT,
    STT_SECTION,
    ElfObject,
    Relocation,
    Section,
    Status,
    Symbol,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.correlate import (
    is_anonymous_constant,
    is_call_site_data,
    is_special_static,
    strip_number,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.special import (
    entry_referenced,
    special_section_names,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.stride import entry_period
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.linemacro import only_line_immediates_differ

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Tuple


def _symbols_equal(new: Symbol, old: Symbol) -> bool:
    if new.twin is not None:
        return new.twin is old
    if new.type == STT_SECTION and old.type == STT_SECTION:
        if new.section is None or old.section is None:
            return new.section is old.section
        if new.section.twin is old.section:
            return True
        if new.section.name != old.section.name:
            # UBSAN's per-check data is numbered in the order of the object: a check added above
            # renumbers every later one (Debian's 7.2 enables CONFIG_UBSAN_BOUNDS).
            return is_call_site_data(new.section) and _call_site_data_equal(new.section, old.section)
        # Never paired, so not compared on their own: an anonymous constant counts as part
        # of the code using it (kpatch compares only its name and would miss a changed value).
        return not is_anonymous_constant(new.section) or _contents_equal(new.section, old.section)
    if is_special_static(new) or is_special_static(old):
        return strip_number(new.name) == strip_number(old.name)
    # Undefined symbols (externs) are paired by name.
    return new.is_undefined and old.is_undefined and new.name == old.name


ALTINSTR_AUX = ".altinstr_aux"


def _call_site_data_equal(new: Section, old: Section, depth: int = 0) -> bool:
    """Two never-paired UBSAN data sections (source location, type descriptor) of equal content.

    Names are compared without their number; references to other such data recursively.
    """
    base = ubsan_data_base(new.name)
    if base is None or base != (ubsan_data_base(old.name) or old.name):
        return False
    if new.data != old.data or new.size != old.size or depth > 2:
        return False
    new_list, old_list = _relocs(new), _relocs(old)
    if len(new_list) != len(old_list):
        return False
    for a, b in zip(new_list, old_list):
        if a.offset != b.offset or a.type != b.type or a.string != b.string or \
                (a.string is None and a.addend != b.addend):
            return False
        if a.string is None and a.sym.name != b.sym.name and not (
                a.sym.section is not None and b.sym.section is not None
                and _call_site_data_equal(a.sym.section, b.sym.section, depth + 1)):
            return False
    return True


def _contents_equal(new: Section, old: Section) -> bool:
    """Same bytes and same relocations (by target name): for sections nothing pairs."""
    if new.data != old.data or new.size != old.size:
        return False
    return [_by_name(r) for r in _relocs(new)] == [_by_name(r) for r in _relocs(old)]


def _by_name(reloc: Relocation) -> tuple:
    return (reloc.offset, reloc.type, reloc.addend, reloc.sym.name, reloc.string)


def _table_entry(reloc: Relocation, in_text: bool) -> Optional[Tuple[Section, int, int]]:
    """(table, entry start, entry size) when ``reloc`` points at a special-table entry, else None."""
    sym = reloc.sym
    if sym.type != STT_SECTION or sym.section is None or sym.section.name not in special_section_names():
        return None
    size = entry_period(sym.section)
    start = entry_referenced(reloc, in_text, size) if size else None
    return None if start is None else (sym.section, start, size)


def _entry_relocations(sec: Section, start: int, size: int) -> List[tuple]:
    return [(r.offset - start, r.type, r.addend, r.string, r.sym) for r in _relocs(sec)
            if start <= r.offset < start + size]


def _table_references_equal(new: Relocation, old: Relocation, in_text: bool) -> Optional[bool]:
    """For two references to special-table entries: whether the entries are equal; else None."""
    new_entry, old_entry = _table_entry(new, in_text), _table_entry(old, in_text)
    if new_entry is None or old_entry is None:
        return None
    (nsec, nstart, nsize), (osec, ostart, osize) = new_entry, old_entry
    if nsec.name != osec.name or nsize != osize or new.addend - nstart != old.addend - ostart:
        return False
    if nsec.data[nstart:nstart + nsize] != osec.data[ostart:ostart + osize]:
        return False
    nrel, orel = _entry_relocations(nsec, nstart, nsize), _entry_relocations(osec, ostart, osize)
    # Offset in the entry and type always; then a string's text (wherever it sits), or the target.
    return len(nrel) == len(orel) and all(
        a[:2] == b[:2] and a[3] == b[3] and (a[3] is not None or (a[2] == b[2] and _symbols_equal(a[4], b[4])))
        for a, b in zip(nrel, orel))


def relocations_equal(new: Relocation, old: Relocation, line_tolerant: bool = False, in_text: bool = True) -> bool:
    """Same place, type and target; ``line_tolerant``: strings may differ in "file.c:LINE" only."""
    if new.offset != old.offset or new.type != old.type:
        return False
    entries = _table_references_equal(new, old, in_text)
    if entries is not None:
        return entries
    if new.sym.name == ALTINSTR_AUX == old.sym.name:
        # static_cpu_has()'s boot-time fallback code: inert in a module (alternatives are applied
        # before module code runs), and its offsets move whenever another function adds to it.
        return True
    if new.string is not None or old.string is not None:
        if line_tolerant and new.string is not None and old.string is not None:
            return hide_line_numbers(new.string) == hide_line_numbers(old.string)
        return new.string == old.string
    return new.addend == old.addend and _symbols_equal(new.sym, old.sym)


def _relocs(sec: Section) -> List[Relocation]:
    return sec.rela.relocations if sec.rela is not None else []


def _relocation_lists_equal(new: Section, old: Section, line_tolerant: bool = False) -> bool:
    new_list, old_list = _relocs(new), _relocs(old)
    if len(new_list) != len(old_list):
        return False
    return all(relocations_equal(a, b, line_tolerant, new.is_text) for a, b in zip(new_list, old_list))


def only_line_numbers_differ(new: Section, old: Section) -> bool:
    """True when code differs only in moved __LINE__ values (see ``linemacro``)."""
    if not new.is_text or len(new.data) != len(old.data):
        return False
    if not _relocation_lists_equal(new, old, line_tolerant=True):
        return False
    return only_line_immediates_differ(new.data, old.data, _relocs(new))


def compare_section(sec: Section) -> Status:
    old = sec.twin
    if old is None:
        return Status.NEW
    if sec.sh_type == SHT_GROUP:
        # Group data holds section indices, which differ between objects: compare names.
        same = sec.group_flags == old.group_flags and \
            [m.name for m in sec.group_members] == [m.name for m in old.group_members]
        return Status.SAME if same else Status.CHANGED
    if sec.sh_type == SHT_NOBITS or old.sh_type == SHT_NOBITS:
        same = sec.sh_type == old.sh_type and sec.size == old.size
        return Status.SAME if same else Status.CHANGED
    if sec.data == old.data and _relocation_lists_equal(sec, old):
        return Status.SAME
    if only_line_numbers_differ(sec, old):
        return Status.SAME
    return Status.CHANGED


def compare_sections(patched: ElfObject) -> None:
    for sec in patched.sections:
        if sec.is_rela:
            continue
        sec.status = compare_section(sec)
        if sec.rela is not None:
            sec.rela.status = sec.status


def mark_symbols(patched: ElfObject) -> None:
    """A symbol takes its section's status; unpaired symbols are new."""
    for sym in patched.symbols[1:]:
        if sym.twin is None:
            sym.status = Status.NEW
        elif sym.section is not None and sym.section.status is not None:
            sym.status = sym.section.status
            if sym.section.sym is not sym and sym.section.status == Status.CHANGED:
                sym.status = _unbundled_status(sym)
        else:
            sym.status = Status.SAME


def _unbundled_status(sym: Symbol) -> Status:
    """Several symbols share one section: compare the symbol's own byte range."""
    old = sym.twin
    if old is None or old.section is None or sym.section is None or sym.size != old.size:
        return Status.CHANGED
    if sym.section.sh_type == SHT_NOBITS:
        return Status.SAME
    new_bytes = sym.section.data[sym.value:sym.value + sym.size]
    old_bytes = old.section.data[old.value:old.value + old.size]
    if new_bytes != old_bytes:
        return Status.CHANGED
    new_relocs = [r for r in _relocs(sym.section) if sym.value <= r.offset < sym.value + sym.size]
    old_relocs = [r for r in _relocs(old.section) if old.value <= r.offset < old.value + old.size]
    if len(new_relocs) != len(old_relocs):
        return Status.CHANGED
    for a, b in zip(new_relocs, old_relocs):
        if a.offset - sym.value != b.offset - old.value or a.type != b.type:
            return Status.CHANGED
        if (a.string or b.string) and a.string != b.string:
            return Status.CHANGED
        if not (a.string or b.string) and (a.addend != b.addend or not _symbols_equal(a.sym, b.sym)):
            return Status.CHANGED
    return Status.SAME


def _callers_index(patched: ElfObject) -> Dict[int, List[Symbol]]:
    """id(symbol) → the functions whose code references it (one pass over all relocations)."""
    callers: Dict[int, List[Symbol]] = {}
    for rela in patched.sections:
        base = rela.base
        if not rela.is_rela or base is None or not base.is_text or base.sym is None:
            continue
        for reloc in rela.relocations:
            bucket = callers.setdefault(id(reloc.sym), [])
            if base.sym not in bucket:
                bucket.append(base.sym)
    return callers


def _mark_changed(sym: Symbol) -> None:
    sym.status = Status.CHANGED
    if sym.section is not None and sym.section.sym is sym:
        sym.section.status = Status.CHANGED


def propagate_child_changes(patched: ElfObject) -> List[Symbol]:
    """Mark changed every function that reaches a changed/new ``.cold``/``.part`` child.

    The child has no fentry call of its own, so it is only replaced through new
    copies of its callers: its parent, and any function a ``.part`` was inlined
    into.  Returns the functions so promoted.
    """
    callers = _callers_index(patched)
    promoted: List[Symbol] = []
    pending = [s for s in patched.symbols[1:]
               if s.parent is not None and not s.name.startswith(("__pfx_", "__cfi_"))
               and s.status in (Status.CHANGED, Status.NEW)]
    while pending:
        child = pending.pop()
        for caller in callers.get(id(child), []) + ([child.parent] if child.parent else []):
            if caller is child or caller.status != Status.SAME:
                continue
            _mark_changed(caller)
            promoted.append(caller)
            if caller.parent is not None:
                pending.append(caller)  # a child calling a child: climb to the real function
    return promoted


def propagate_constant_changes(patched: ElfObject) -> List[Symbol]:
    """Mark changed every function that reads a changed read-only object.

    A ``const`` table whose contents changed leaves its users' code byte-identical;
    patching the users makes them use the new copy the module carries.  (Changed
    writable data is refused by the verification pass instead.)
    """
    callers = _callers_index(patched)
    promoted: List[Symbol] = []
    for sym in patched.symbols[1:]:
        sec = sym.section
        if sym.type != STT_OBJECT or sym.status != Status.CHANGED or sec is None or sec.sym is not sym:
            continue
        if sec.flags & (SHF_WRITE | SHF_EXECINSTR) or not sec.flags & SHF_ALLOC or is_special_static(sym):
            continue
        for caller in callers.get(id(sym), []):
            if caller.status == Status.SAME:
                _mark_changed(caller)
                promoted.append(caller)
    return promoted


def apply_ignore_directives(patched: ElfObject) -> List[str]:
    """Honour KPATCH_IGNORE_FUNCTION / KPATCH_IGNORE_SECTION: those count as unchanged.

    ``.kpatch.ignore.functions`` holds pointers to functions and
    ``.kpatch.ignore.sections`` pointers to section-name strings (kmod/kpatch-macros.h).
    Returns the names ignored.
    """
    ignored: List[str] = []
    by_name = patched.section_by_name()
    funcs = by_name.get(".kpatch.ignore.functions")
    for reloc in _relocs(funcs) if funcs is not None else []:
        sym = reloc.sym if reloc.sym.type == STT_FUNC else (reloc.sym.section.sym if reloc.sym.section else None)
        if sym is not None and sym.status == Status.CHANGED:
            _mark_same(sym)
            ignored.append(sym.name)
    names = by_name.get(".kpatch.ignore.sections")
    for reloc in _relocs(names) if names is not None else []:
        target = by_name.get(reloc.string or "")
        if target is not None and target.status == Status.CHANGED:
            target.status = Status.SAME
            # every function of the section is ignored, bundled or not (.init.text holds many)
            for sym in patched.symbols[1:]:
                if sym.section is target and sym.status == Status.CHANGED:
                    _mark_same(sym)
            ignored.append(target.name)
    return ignored


def _mark_same(sym: Symbol) -> None:
    sym.status = Status.SAME
    if sym.section is not None and sym.section.sym is sym:
        sym.section.status = Status.SAME
        if sym.section.rela is not None:
            sym.section.rela.status = Status.SAME


def compare(patched: ElfObject) -> Tuple[List[Symbol], List[str]]:
    """Run the comparison pass family.

    Returns the functions promoted by their children or by a changed constant
    they read, and the names ignored by the patch's KPATCH_IGNORE_* directives.
    """
    compare_sections(patched)
    mark_symbols(patched)
    ignored = apply_ignore_directives(patched)
    promoted = propagate_constant_changes(patched)
    return promoted + propagate_child_changes(patched), ignored
