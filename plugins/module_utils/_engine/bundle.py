# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Bundling pass: tie symbols to their -ffunction-sections/-fdata-sections section.

With one function or object per section the section *is* the symbol, so the
later passes compare, include and drop sections and symbols together.  This
pass also links compiler-split children (``foo.cold``, ``foo.part.3``) to their
parent, attaches ``__pfx_``/``__cfi_`` padding symbols (CALL_PADDING/IBT
kernels) to the function they precede, and rewrites relocations that name a
section symbol to name the real symbol instead, so that relocations compare
equal across objects even when section layouts differ.
"""

from __future__ import annotations

import bisect

from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.names import child_parent_name
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import (
    R_X86_64_PC32,
    R_X86_64_PLT32,
    STT_FILE,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
    ElfObject,
    Relocation,
    Section,
    Symbol,
)

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Tuple


# Prefixes under which gcc places a symbol's own section.
_SECTION_PREFIXES = (".text.", ".text.unlikely.", ".text.hot.", ".text.startup.", ".data.",
                     ".data.rel.", ".data.rel.local.", ".data.rel.ro.", ".data.rel.ro.local.",
                     ".rodata.", ".bss.", ".init.text.", ".init.data.", ".exit.text.",
                     ".data..read_mostly.", ".data..percpu.", ".ref.text.", ".init.rodata.")
PREFIX_SYMBOLS = ("__pfx_", "__cfi_")


_SECTION_PREFIX_SET = frozenset(_SECTION_PREFIXES)


def is_own_section(section_name: str, name: str) -> bool:
    """Whether gcc names ``section_name`` after the symbol ``name`` (a prefix of ``_SECTION_PREFIXES``
    and the name; for a .cold/.part child also ``.text.unlikely.<parent>``).  Tested by splitting the
    section name, not by building every candidate: it runs for every function and object symbol."""
    if section_name.endswith(name) and section_name[:len(section_name) - len(name)] in _SECTION_PREFIX_SET:
        return True
    parent = child_parent_name(name)
    # gcc 12 puts foo.cold in .text.unlikely.foo
    return parent is not None and section_name == ".text.unlikely." + parent


def bundle_symbols(obj: ElfObject) -> None:
    """Set ``sec.sym`` for sections that hold exactly the symbol named after them."""
    by_name = obj.section_by_name()
    for sym in obj.symbols[1:]:
        if sym.type not in (STT_FUNC, STT_OBJECT) or sym.section is None:
            continue
        if sym.name.startswith(PREFIX_SYMBOLS):
            continue
        sec = sym.section
        if sec.sym is not None:
            continue
        if is_own_section(sec.name, sym.name) and by_name.get(sec.name) is sec:
            if sym.value == 0 or _prefix_at_start(sec, sym) or _padding_before(sec, sym):
                sec.sym = sym


def _prefix_at_start(sec: Section, sym: Symbol) -> bool:
    # CALL_PADDING after objtool: the section starts with __pfx_foo and foo follows it.
    return sym.prefix is not None and sym.prefix.section is sec and sym.prefix.value == 0


# Bytes gcc's -fpatchable-function-entry=N,N and objtool put in front of a function.
_PADDING_BYTES = frozenset(b"\x90\xcc")
MAX_FUNCTION_PADDING = 64


def _padding_before(sec: Section, sym: Symbol) -> bool:
    # CALL_PADDING before objtool: N bytes of NOP padding, no symbol yet.
    return sym.type == STT_FUNC and 0 < sym.value <= MAX_FUNCTION_PADDING and sec.is_text and \
        len(sec.data) >= sym.value and set(sec.data[:sym.value]) <= _PADDING_BYTES


def link_prefix_symbols(obj: ElfObject) -> None:
    """Attach ``__pfx_foo``/``__cfi_foo`` to ``foo`` (both live in foo's section)."""
    funcs: Dict[Tuple[str, int], Symbol] = {}
    for sym in obj.symbols[1:]:
        if sym.type == STT_FUNC and not sym.name.startswith(PREFIX_SYMBOLS):
            funcs[(sym.name, id(sym.section))] = sym
    for sym in obj.symbols[1:]:
        for prefix in PREFIX_SYMBOLS:
            if sym.name.startswith(prefix):
                owner = funcs.get((sym.name[len(prefix):], id(sym.section)))
                if owner is not None:
                    owner.prefix = sym
                    sym.parent = owner


def link_children(obj: ElfObject) -> None:
    """Link ``foo.cold``/``foo.part.N`` functions to ``foo`` (same object only)."""
    funcs = {sym.name: sym for sym in obj.symbols[1:] if sym.type == STT_FUNC}
    for sym in funcs.values():
        parent_name = child_parent_name(sym.name)
        if parent_name is None:
            continue
        parent = funcs.get(parent_name)
        if parent is not None and parent is not sym:
            sym.parent = parent
            parent.children.append(sym)


def assign_files(obj: ElfObject) -> None:
    """Fill ``Symbol.file`` for locals when the reader did not."""
    current: Optional[Symbol] = None
    for sym in obj.symbols[1:]:
        if sym.type == STT_FILE:
            current = sym
        elif sym.is_local and sym.file is None:
            sym.file = current


def _candidate_offsets(reloc: Relocation, base: Section) -> Tuple[int, ...]:
    """Offsets in the target section a relocation may mean, most likely first.

    In code a PC-relative field is followed by 0-4 more instruction bytes (an
    immediate operand), so the target is ``addend + 4`` .. ``addend + 8``; data
    tables (jump tables, exception tables ...) store the target offset directly.
    """
    if base.is_text and reloc.type in (R_X86_64_PC32, R_X86_64_PLT32):
        return tuple(reloc.addend + bias for bias in (4, 5, 6, 8))
    return (reloc.addend,)


def pc_relative_bias(reloc: Relocation, base: Section) -> int:
    """The usual distance from a PC-relative field to the end of its instruction."""
    if base.is_text and reloc.type in (R_X86_64_PC32, R_X86_64_PLT32):
        return 4
    return 0


class _SymbolIndex:
    """Per-section sorted symbol starts, for finding the symbol containing an offset."""

    def __init__(self, obj: ElfObject) -> None:
        self.starts: Dict[int, List[int]] = {}
        self.syms: Dict[int, List[Symbol]] = {}
        grouped: Dict[int, List[Symbol]] = {}
        for sym in obj.symbols[1:]:
            if sym.section is not None and sym.type in (STT_FUNC, STT_OBJECT):
                grouped.setdefault(id(sym.section), []).append(sym)
        for key, syms in grouped.items():
            syms.sort(key=lambda s: (s.value, s.name.startswith(PREFIX_SYMBOLS)))
            self.syms[key] = syms
            self.starts[key] = [s.value for s in syms]
        self._sole: Dict[int, bool] = {}

    def holds_only_its_symbol(self, sec: Section) -> bool:
        """Whether ``sec`` holds just ``sec.sym`` (prefix symbols aside): -fdata/-ffunction-sections.
        Remembered per section: every relocation through the section symbol asks."""
        key = id(sec)
        sole = self._sole.get(key)
        if sole is None:
            only = self.syms.get(key, [])
            sole = self._sole[key] = sec.sym is not None and \
                [s for s in only if not s.name.startswith(PREFIX_SYMBOLS)] == [sec.sym]
        return sole

    def containing(self, sec: Section, offset: int) -> Optional[Symbol]:
        starts = self.starts.get(id(sec))
        if not starts:
            return None
        syms = self.syms[id(sec)]
        pos = bisect.bisect_right(starts, offset) - 1
        while pos >= 0:
            sym = syms[pos]
            if sym.value <= offset < sym.value + max(sym.size, 1):
                return sym
            if sym.value < offset:
                break
            pos -= 1
        return None


def replace_section_symbols(obj: ElfObject) -> int:
    """Point relocations at the function/object symbol instead of its section symbol.

    The addend is rebased from the section start to the symbol start.  Returns
    the number of relocations rewritten.  String and constant-pool sections keep
    their section symbol: nothing else names them.
    """
    index = _SymbolIndex(obj)
    rewritten = 0
    for rela in obj.sections:
        if not rela.is_rela or rela.base is None or rela.base.is_debug:
            continue
        for reloc in rela.relocations:
            target_sec = reloc.sym.section
            if reloc.sym.type != STT_SECTION or target_sec is None:
                continue
            sym = _target_symbol(index, target_sec, _candidate_offsets(reloc, rela.base))
            if sym is None:
                continue
            reloc.sym = sym
            reloc.addend -= sym.value
            rewritten += 1
    return rewritten


def _target_symbol(index: "_SymbolIndex", sec: Section, offsets: Tuple[int, ...]) -> Optional[Symbol]:
    """The symbol a section-relative reference designates, if one does."""
    if index.holds_only_its_symbol(sec):
        return sec.sym  # -fdata/-ffunction-sections: the section holds just this symbol
    for offset in offsets:
        sym = index.containing(sec, offset)
        if sym is not None:
            return sym
    return None


_STRINGS = -1  # _pointed_kind of a .rodata.str* section (a constant pool's kind is its width)


def _pointed_kind(sec: Section) -> int:
    return _STRINGS if is_string_section(sec) else constant_width(sec)


def annotate_pointed_values(obj: ElfObject) -> None:
    """Record in ``reloc.string`` what a relocation of non-debug code or data through a section or
    untyped symbol points at: the literal of a ``.rodata.str*`` string, or the bytes of a
    ``.rodata.cstN`` constant (``cst:<hex>``).

    The assembler merges equal constants, so a pool's layout shifts when one constant changes;
    comparing the referenced value catches a changed constant even when its offset did not move.
    One walk over the relocations, the target's kind decided once per section.
    """
    kinds: Dict[int, int] = {}
    for rela in obj.sections:
        if not rela.is_rela or rela.base is None or rela.base.is_debug:
            continue
        for reloc in rela.relocations:
            sec = reloc.sym.section
            if sec is None or reloc.sym.type not in (STT_SECTION, STT_NOTYPE):
                continue
            kind = kinds.get(id(sec))
            if kind is None:
                kind = kinds[id(sec)] = _pointed_kind(sec)
            if not kind:
                continue
            start = reloc.sym.value + reloc.addend + pc_relative_bias(reloc, rela.base)
            if kind == _STRINGS:
                end = sec.data.find(b"\0", start)
                if 0 <= start <= len(sec.data):
                    reloc.string = sec.data[start:end if end >= 0 else len(sec.data)].decode("latin-1")
            elif 0 <= start <= len(sec.data) - kind:
                reloc.string = "cst:" + sec.data[start:start + kind].hex()


def constant_width(sec: Section) -> int:
    """N for a ``.rodata.cstN`` (or ``.rodata.<fn>.cstN``) constant pool, else 0."""
    tail = sec.name.rsplit(".", 1)[-1]
    if sec.name.startswith(".rodata") and tail.startswith("cst") and tail[3:].isdigit():
        return int(tail[3:])
    return 0


def is_string_section(sec: Section) -> bool:
    return sec.name.startswith(".rodata.str") or sec.name.startswith(".rodata.") and ".str1." in sec.name


def bundle(obj: ElfObject) -> None:
    """Run the whole bundling pass family on one object."""
    assign_files(obj)
    link_prefix_symbols(obj)
    bundle_symbols(obj)
    link_children(obj)
    annotate_pointed_values(obj)
    replace_section_symbols(obj)
