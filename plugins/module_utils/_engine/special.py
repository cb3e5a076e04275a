# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Special-section pass: rebuild the kernel's per-instruction tables.

Sections such as ``__bug_table`` or ``__jump_table`` are arrays of fixed-size
entries, each pointing (through relocations) at one spot of one function.  The
output keeps exactly the entries of the functions it includes, re-packed and
with relocation offsets rebased; the entries' other references (replacement
code, fix-up code, file-name strings, static keys) are then included like any
other reference.

Entry sizes of the kernel's structures are never assumed: they come from the
caller's ``struct_sizes`` dict (filled from the kernel's DWARF by
``_kbuild/structsizes.py``, or from the environment variables kpatch uses —
see :func:`struct_sizes_from_env`), and are checked against the period of the
section's own relocations (``stride.py``), which wins when the two disagree.  Arrays of ``s32`` offsets or of pointers
are sized by their C element type.  ``__patchable_function_entries`` (x86
CALL_PADDING kernels) is not kept: x86 ftrace uses ``__mcount_loc``, and the
section is SHF_LINK_ORDER-tied to one text section of the original object.

Code may point at a table entry itself: on Linux 7.x, x86-64's ``WARN()`` loads its
``__bug_table`` entry's address (``lea 2f(%rip)``) to pass it to ``__WARN_trap``.  Such references
(through the table's section symbol) follow their entry to its new place; one to a dropped entry
from included code is an error.

``.orc_unwind`` has no relocations: its entry *i* belongs to entry *i* of
``.orc_unwind_ip`` and is kept or dropped with it.  ``.printk_index`` is an
array of pointers to ``struct pi_entry`` objects; an entry is kept when the
``pi_entry``'s ``func`` string names an included function.
"""

from __future__ import annotations

import os

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.record import factory, record
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import (
    R_X86_64_PC32,
    R_X86_64_PLT32,
    STT_FUNC,
    STT_SECTION,
    ElfObject,
    Relocation,
    Section,
    Symbol,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.errors import PatchRejected
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.include import Includer
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.stride import (
    Stride,
    StrideError,
    relocation_width,
    section_stride,
)

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import Dict, List, Mapping, Optional, Tuple

# Key in struct_sizes → (C struct, environment variable).
STRUCT_KEYS = {
    "PARA": ("paravirt_patch_site", "PARA_STRUCT_SIZE"),
    "EX": ("exception_table_entry", "EX_STRUCT_SIZE"),
    "BUG": ("bug_entry", "BUG_STRUCT_SIZE"),
    "ALT": ("alt_instr", "ALT_STRUCT_SIZE"),
    "JUMP": ("jump_entry", "JUMP_STRUCT_SIZE"),
    "ORC": ("orc_entry", "ORC_STRUCT_SIZE"),
    "STATIC_CALL": ("static_call_site", "STATIC_CALL_STRUCT_SIZE"),
    "PRINTK_INDEX": ("pi_entry", "PRINTK_INDEX_STRUCT_SIZE"),
}
_S32 = 4   # sizeof(s32): the *_sites arrays and .orc_unwind_ip
_PTR = 8   # sizeof(void *) on x86-64: __mcount_loc, .printk_index

# Section → struct key (looked up in struct_sizes) or element size of a plain array.
SPECIAL_SECTIONS: Dict[str, object] = {
    "__bug_table": "BUG",
    "__ex_table": "EX",
    "__jump_table": "JUMP",
    ".static_call_sites": "STATIC_CALL",
    ".altinstructions": "ALT",
    ".parainstructions": "PARA",
    ".orc_unwind_ip": _S32,
    ".smp_locks": _S32,
    ".retpoline_sites": _S32,
    ".return_sites": _S32,
    ".call_sites": _S32,
    ".ibt_endbr_seal": _S32,
    "__mcount_loc": _PTR,
    ".printk_index": _PTR,
}
# objtool's annotations (include/linux/objtool.h, instrumentation.h, nospec-branch.h): lists of
# instructions or functions objtool treats specially.  The final link discards them; they matter
# where objtool reads the object again -- on the linked patch module of IBT kernels, which it
# gives fresh ORC data and site lists: without its unwind hints the ORC data of a hinted function
# would be wrong (stack traces the livepatch consistency model trusts), without the others
# objtool warns or gives up.
_UNWIND_HINT = 12   # struct unwind_hint: s32 ip, s16 sp_offset, u8 sp_reg, type, signal; .balign 4
# A list of one address per entry, spelled ``.long 1b``, ``.long 1b - .`` or ``.quad 1b`` depending
# on the list and the kernel version (6.1's noendbr and retpoline_safe are pointers, 6.12's are
# not): an entry is as wide as its relocation.
_ADDRESS_LIST = "address list"
OBJTOOL_ANNOTATIONS: Dict[str, object] = {
    ".discard.unwind_hints": _UNWIND_HINT,
    ".discard.reachable": _ADDRESS_LIST,
    ".discard.unreachable": _ADDRESS_LIST,
    ".discard.retpoline_safe": _ADDRESS_LIST,
    ".discard.noendbr": _ADDRESS_LIST,
    ".discard.instr_begin": _ADDRESS_LIST,
    ".discard.instr_end": _ADDRESS_LIST,
    ".discard.intra_function_calls": _ADDRESS_LIST,
    ".discard.validate_unret": _ADDRESS_LIST,
    ".discard.func_stack_frame_non_standard": _ADDRESS_LIST,
}
SPECIAL_SECTIONS.update(OBJTOOL_ANNOTATIONS)
# Entries whose key must be resolvable at load time.  The key is found among the entry's
# relocations (the one not pointing into code), never at an assumed offset: struct layouts differ
# between architectures and kernel versions.
KEYED_SECTIONS = (".static_call_sites", "__jump_table")


class SpecialSectionError(PatchRejected, ValueError):
    """A special section cannot be regenerated (unknown entry size, torn entry ...): the patch is refused."""


def struct_sizes_from_env(environ: Optional[Mapping[str, str]] = None) -> Dict[str, int]:
    """The struct sizes given as kpatch-style environment variables (only those set)."""
    environ = os.environ if environ is None else environ
    sizes = {}
    for key, (_struct, var) in STRUCT_KEYS.items():
        if environ.get(var):
            try:
                sizes[key] = int(environ[var], 0)
            except ValueError:
                raise SpecialSectionError("environment variable %s=%r is not an integer" % (var, environ[var]))
    return sizes


@record
class KeptKey:
    """A static key / static call key referenced by a kept entry."""

    section: str
    function: str
    offset: int
    key: Symbol


@record
class SpecialResult:
    """Per special section: entries kept and dropped, the entry size used, and the keys the kept entries need."""

    kept: Dict[str, int] = factory(dict)      # section → entries kept
    dropped: Dict[str, int] = factory(dict)   # section → entries dropped
    keys: List[KeptKey] = factory(list)
    sizes: Dict[str, int] = factory(dict)     # section → entry size


def declared_size(name: str, struct_sizes: Mapping[str, int]) -> Tuple[int, str]:
    """The entry size the kernel declares for ``name`` and where it comes from (for messages)."""
    kind = SPECIAL_SECTIONS[name]
    if isinstance(kind, int):
        return kind, "element size"
    if kind == _ADDRESS_LIST:
        return _S32, "address list"
    struct, var = STRUCT_KEYS[kind]
    if kind not in struct_sizes:
        raise SpecialSectionError("section %s is present but the size of struct %s is unknown: pass "
                                  "struct_sizes[%r] (from the kernel's DWARF) or set %s"
                                  % (name, struct, kind, var))
    return int(struct_sizes[kind]), "struct %s, %s" % (struct, var)


def entry_stride(name: str, sec: Section, struct_sizes: Mapping[str, int]) -> Stride:
    """How ``sec`` is cut into entries (see ``stride.py``)."""
    size, what = declared_size(name, struct_sizes)
    if SPECIAL_SECTIONS[name] == _ADDRESS_LIST and sec.rela is not None and sec.rela.relocations:
        size, what = relocation_width(sec.rela.relocations[0].type), "address list, its relocations' width"
    try:
        return section_stride(sec, size, what)
    except StrideError as exc:
        raise SpecialSectionError(str(exc))


def _function_of(sym: Symbol) -> Optional[Symbol]:
    """The function a relocation target belongs to (prefix symbols count as their function)."""
    if sym.type == STT_FUNC:
        return sym.parent if sym.parent is not None and sym.prefix is None and \
            sym.name.startswith(("__pfx_", "__cfi_")) else sym
    if sym.section is not None and sym.section.sym is not None and sym.section.sym.type == STT_FUNC:
        return sym.section.sym
    return None


def _group_relocations(sec: Section, size: int) -> Dict[int, List[Relocation]]:
    groups: Dict[int, List[Relocation]] = {}
    if sec.rela is None:
        return groups
    for reloc in sec.rela.relocations:
        groups.setdefault(reloc.offset - reloc.offset % size, []).append(reloc)
    return groups


def _entry_function(relocs: List[Relocation]) -> Optional[Symbol]:
    """The included function an entry describes, if any."""
    for reloc in relocs:
        func = _function_of(reloc.sym)
        if func is not None and func.section is not None and func.section.include:
            return func
    return None


def _printk_function(relocs: List[Relocation], included: Dict[str, Symbol],
                     pi_size: Optional[int]) -> Optional[Symbol]:
    # .printk_index[i] → _entry (struct pi_entry); its second pointer is __func__.
    for reloc in relocs:
        entry = reloc.sym
        sec = entry.section
        if sec is None or sec.rela is None:
            continue
        if pi_size is not None and entry.size and entry.size != pi_size:
            raise SpecialSectionError(".printk_index points to %s of %d bytes, but struct pi_entry is %d bytes "
                                      "(PRINTK_INDEX_STRUCT_SIZE)" % (entry.name, entry.size, pi_size))
        func_offset = entry.value + reloc.addend + _PTR
        for inner in sec.rela.relocations:
            if inner.offset == func_offset and inner.sym.section is not None:
                target = inner.sym.section.data
                start = inner.sym.value + inner.addend
                name = target[start:target.find(b"\0", start)].decode("latin-1")
                return included.get(name)
    return None


def _entry_keys(name: str, relocs: List[Relocation]) -> List[Symbol]:
    """The key of a jump label / static call entry: its relocations to code locate the site (and
    the jump target); the one left names the static key or static call key (data, or undefined)."""
    keys = [r.sym for r in relocs if r.sym.section is None or not r.sym.section.is_text]
    if len(keys) != 1:
        offsets = ", ".join("%#x -> %s" % (r.offset, r.sym.name) for r in relocs)
        raise SpecialSectionError("%s entry with %d key relocations (%s): cannot tell which is the key"
                                  % (name, len(keys), offsets or "none"))
    return keys


def _rebuild(sec: Section, keep: List[int], size: int, groups: Dict[int, List[Relocation]]) -> None:
    data = bytearray()
    relocs: List[Relocation] = []
    for old in keep:
        new = len(data)
        if sec.data:
            # a short last entry (no tail padding) gets its padding back: it may not stay last
            data += sec.data[old:old + size].ljust(size, b"\0")
        for reloc in groups.get(old, []):
            reloc.offset = reloc.offset - old + new
            relocs.append(reloc)
    if sec.data:
        sec.data = bytes(data)
    sec.size = len(keep) * size
    if sec.rela is not None:
        sec.rela.relocations = relocs


def _regenerate(name: str, sec: Section, stride: Stride, included: Dict[str, Symbol],
                inc: Includer, result: SpecialResult, pi_size: Optional[int] = None) -> List[int]:
    size = stride.size
    groups = _group_relocations(sec, size)
    keep: List[int] = []
    for offset in range(0, stride.count * size, size):
        relocs = groups.get(offset, [])
        if name == ".printk_index":
            func = _printk_function(relocs, included, pi_size)
        else:
            func = _entry_function(relocs)
        if func is None:
            continue
        if name in KEYED_SECTIONS:   # at the offset the entry gets in the rebuilt section
            result.keys.extend(KeptKey(name, func.name, len(keep) * size, key) for key in _entry_keys(name, relocs))
        keep.append(offset)
    result.sizes[name] = size
    result.kept[name] = len(keep)
    result.dropped[name] = stride.count - len(keep)
    _rebuild(sec, keep, size, groups)
    if keep:
        inc.include_section(sec)
    return keep


def drop_entries(obj: ElfObject, result: SpecialResult, drop: List[KeptKey]) -> None:
    """Remove the kept entries ``drop`` (of keyed sections) from their rebuilt sections."""
    for name in sorted({k.section for k in drop}):
        sec = obj.find_section(name)
        size = result.sizes[name]
        gone = {k.offset for k in drop if k.section == name}
        keep = [off for off in range(0, sec.size, size) if off not in gone]
        moved = {old: i * size for i, old in enumerate(keep)}
        _rebuild(sec, keep, size, _group_relocations(sec, size))
        result.kept[name] = len(keep)
        result.dropped[name] = result.dropped.get(name, 0) + len(gone)
        result.keys = [k if k.section != name else KeptKey(k.section, k.function, moved[k.offset], k.key)
                       for k in result.keys if k.section != name or k.offset not in gone]
        if not keep:
            sec.include = False
            if sec.rela is not None:
                sec.rela.include = False


def entry_referenced(reloc: Relocation, in_text: bool, size: int) -> Optional[int]:
    """Offset of the table entry a reference designates (its start); None when it is ambiguous.

    A PC-relative field in code is followed by 0-4 more bytes of its instruction, so it designates
    a byte in [addend+4, addend+8]; both ends must fall in one entry (``lea`` of an entry: its
    displacement ends the instruction, the window starts at the entry).
    """
    if in_text and reloc.type in (R_X86_64_PC32, R_X86_64_PLT32):
        low, high = reloc.addend + 4, reloc.addend + 8
    else:
        low = high = reloc.addend
    return low - low % size if low - low % size == high - high % size else None


def _follow_moved_entries(obj: ElfObject, sec: Section, keep: List[int], size: int) -> None:
    """Relocations elsewhere that point into ``sec`` through its section symbol follow their entry.

    The code that refers to an entry is the code the entry describes (one asm statement makes
    both), so an included section's reference always has its entry kept; anything else is refused.
    """
    moved = {old: index * size for index, old in enumerate(keep)}
    for rela in obj.sections:
        if not rela.is_rela or rela is sec.rela or rela.base is None or rela.base.is_debug:
            continue
        for reloc in rela.relocations:
            if reloc.sym.type != STT_SECTION or reloc.sym.section is not sec:
                continue
            old = entry_referenced(reloc, rela.base.is_text, size)
            if old is not None and old in moved:
                reloc.addend += moved[old] - old
            elif rela.base.include:
                raise SpecialSectionError("%s+%#x refers to %s%+#x, which is not the start of an entry kept for "
                                          "an included function (entries of %d bytes)"
                                          % (rela.base.name, reloc.offset, sec.name, reloc.addend, size))


def _regenerate_orc(obj: ElfObject, ip_keep: List[int], struct_sizes: Mapping[str, int],
                    result: SpecialResult, inc: Includer) -> None:
    orc = obj.find_section(".orc_unwind")
    if orc is None:
        return
    size = entry_size_of_orc(orc, struct_sizes)
    ip = obj.find_section(".orc_unwind_ip")
    total_ip = result.kept.get(".orc_unwind_ip", 0) + result.dropped.get(".orc_unwind_ip", 0)
    if ip is None or orc.size // size != total_ip:
        raise SpecialSectionError(".orc_unwind has %d entries of %d bytes but .orc_unwind_ip has %d"
                                  % (orc.size // size, size, total_ip))
    keep = [(off // _S32) * size for off in ip_keep]
    _rebuild(orc, keep, size, {})
    result.kept[".orc_unwind"] = len(keep)
    result.dropped[".orc_unwind"] = total_ip - len(keep)
    if keep:
        inc.include_section(orc)


def entry_size_of_orc(sec: Section, struct_sizes: Mapping[str, int]) -> int:
    if "ORC" not in struct_sizes:
        raise SpecialSectionError("section .orc_unwind is present but the size of struct orc_entry is "
                                  "unknown: pass struct_sizes['ORC'] or set ORC_STRUCT_SIZE")
    size = int(struct_sizes["ORC"])
    if size <= 0 or sec.size % size:
        raise SpecialSectionError("section .orc_unwind: size %d is not a multiple of its entry size %d"
                                  % (sec.size, size))
    return size


def regenerate_special_sections(obj: ElfObject, struct_sizes: Mapping[str, int],
                                inc: Includer) -> SpecialResult:
    """Trim every special section of ``obj`` to the entries of included functions."""
    result = SpecialResult()
    included = {s.name: s for s in obj.symbols[1:]
                if s.type == STT_FUNC and s.section is not None and s.section.include}
    ip_keep: List[int] = []
    for sec in obj.sections:
        if sec.name not in SPECIAL_SECTIONS or sec.is_rela:
            continue
        stride = entry_stride(sec.name, sec, struct_sizes)
        pi_size = struct_sizes.get("PRINTK_INDEX")
        keep = _regenerate(sec.name, sec, stride, included, inc, result, int(pi_size) if pi_size else None)
        _follow_moved_entries(obj, sec, keep, stride.size)
        if sec.name == ".orc_unwind_ip":
            ip_keep = keep
    if obj.find_section(".orc_unwind") is not None:
        _regenerate_orc(obj, ip_keep, struct_sizes, result, inc)
    inc.drain()
    return result


def special_section_names() -> Tuple[str, ...]:
    return tuple(SPECIAL_SECTIONS) + (".orc_unwind",)
