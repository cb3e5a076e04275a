# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Emit the intermediate ``.kpatch.*`` sections of the engine's output object.

The diff engine cannot resolve references to symbols that live only in the
patched object (vmlinux or a module): non-exported globals and every local.
It records them, together with the list of functions to patch, in four
sections.  Two consumers read them and MUST agree with this layout:

* the klp converter (``_engine/klp.py`` / ``tools/create-klp-module``) turns
  ``.kpatch.relocations`` + ``.kpatch.symbols`` into ``.klp.rela.*`` sections and
  ``.klp.sym.*`` symbols after the module is linked, then drops those two
  sections (and their ``.rela`` sections);
* the C hook in ``kmod/`` walks ``.kpatch.funcs`` at module init to build the
  ``klp_func``/``klp_object`` arrays.

All integers are little-endian x86-64.  A *string pointer* is an 8-byte field
that is zero in the section data and carries an ``R_X86_64_64`` relocation
against the section symbol of ``.kpatch.strings`` with the string's offset as
addend (so ``ld -r`` keeps them valid when objects are merged).

``.kpatch.strings`` — SHT_PROGBITS, flags SHF_ALLOC, align 1.
    NUL-terminated strings (function/symbol names, object names), each stored
    once.  Not SHF_MERGE: offsets stay as the engine wrote them.

``.kpatch.funcs`` — SHT_PROGBITS, flags SHF_ALLOC, align 8, entsize 56.
    One entry per function to replace (changed functions only; new functions
    and ``.cold``/``.part`` children are reached through their callers)::

        off size field     meaning
          0   8  new_addr  R_X86_64_64 → the replacement function symbol, addend 0
          8   8  new_size  size of the replacement function
         16   8  old_addr  value of the function in the parent's symbol table
                           (vmlinux: its link address; module: section offset);
                           informational only, livepatch looks up by name
         24   8  old_size  size of the function in the parent's symbol table
         32   8  sympos    kallsyms position among same-named symbols (0 = unique)
         40   8  name      string pointer: the function name
         48   8  objname   string pointer: "vmlinux" or the module name
                           (Module.symvers spelling, '-' → '_')

``.kpatch.symbols`` — SHT_PROGBITS, flags SHF_ALLOC, align 8, entsize 40.
    (SHF_ALLOC only keeps modpost from warning about a non-allocatable
    section; the klp converter removes this section before the module loads.)
    One entry per distinct (objname, name, sympos) a relocation needs::

          0   8  src       reserved, 0
          8   8  sympos    as above (0 for exported/unique symbols)
         16   1  bind      STB_LOCAL/STB_GLOBAL/STB_WEAK in the parent
         17   1  type      STT_FUNC/STT_OBJECT/STT_NOTYPE... in the parent
         18   6  padding   zero
         24   8  name      string pointer: the symbol name
         32   8  objname   string pointer: the object defining it

``.kpatch.relocations`` — SHT_PROGBITS, flags SHF_ALLOC (as above), align 8, entsize 40.
    One entry per relocation removed from the ordinary ``.rela`` sections
    because its target is not in this module::

          0   8  dest      R_X86_64_64 → the section symbol of the section the
                           relocation applies to, addend = offset inside it.
                           After linking, (dest's section, dest's addend) is
                           where the klp relocation must be written.
          8   4  type      the x86-64 relocation type (R_X86_64_PC32, _64 ...)
         12   4  external  1 when the symbol is another module's export (per
                           Module.symvers) used by the patched module: the
                           ksym's objname is that exporting module, sympos 0;
                           0 otherwise
         16   8  addend    the relocation addend (signed)
         24   8  objname   string pointer: the object the relocation applies to,
                           i.e. the patched object ("vmlinux" or the module);
                           it names the ``.klp.rela.<objname>.<section>``
         32   8  ksym      R_X86_64_64 → the section symbol of
                           ``.kpatch.symbols``, addend = 40 * entry index

``.kpatch.callbacks.<kind>`` — written by the patch author (``kmod/kpatch-macros.h``),
    16 bytes per record: ``fn`` (8) and ``objname`` (8, a string pointer).  The
    author leaves ``objname`` NULL; the engine fills it with the object the source
    file belongs to (the parent: "vmlinux" or the module), so the hook attaches the
    callback to that object's ``klp_object`` -- livepatch then runs it when that
    object is patched, which for a module is when the module is (or gets) loaded.

The ``.rela.kpatch.*`` sections holding those relocations are ordinary
SHT_RELA sections (flags SHF_INFO_LINK) written by the ELF writer.

Placeholders: every relocation recorded in ``.kpatch.relocations`` also stays in
its ordinary ``.rela`` section, retargeted to an undefined STB_WEAK symbol named
``.klp.sym.<ksym objname>.<name>,<sympos>`` (``placeholder_name``), so that the
linked module's code reads as calls and references to a named external symbol
(objtool needs that; weak keeps modpost quiet).  The klp converter deletes each
such relocation after matching it with its record (same place, type, addend and
name); a placeholder relocation left over is an error, never loaded.
"""

from __future__ import annotations

import struct

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.record import factory, record
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.layout import RELA_ENTSIZE
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import (
    R_X86_64_64,
    SHF_ALLOC,
    SHF_INFO_LINK,
    SHT_PROGBITS,
    SHT_RELA,
    STB_LOCAL,
    STT_SECTION,
    ElfObject,
    Relocation,
    Section,
    Symbol,
)

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import Callable, Dict, List, Tuple

FUNC_ENTRY = struct.Struct("<QQQQQQQ")
SYMBOL_ENTRY = struct.Struct("<QQBB6xQQ")
RELOCATION_ENTRY = struct.Struct("<QIIqQQ")
if (FUNC_ENTRY.size, SYMBOL_ENTRY.size, RELOCATION_ENTRY.size) != (56, 40, 40):  # pragma: no cover
    raise ImportError("intermediate entry layouts drifted from the documented 56/40/40 bytes")


@record
class PatchedFunc:
    """A ``.kpatch.funcs`` entry before encoding."""

    symbol: Symbol
    old_addr: int
    old_size: int
    sympos: int
    objname: str
    old_name: str = ""  # the running kernel's name when gcc renumbered it (``foo.isra.1``)


@record(frozen=True)
class KlpSymbol:
    """A ``.kpatch.symbols`` entry: one symbol of the parent object."""

    name: str
    objname: str
    sympos: int
    bind: int
    type: int


KLP_SYM_PREFIX = ".klp.sym."


def klp_symbol_name(objname: str, name: str, sympos: int) -> str:
    """``.klp.sym.<objname>.<name>,<sympos>``: the name the kernel's livepatch core parses."""
    return "%s%s.%s,%d" % (KLP_SYM_PREFIX, objname, name, sympos)


def placeholder_name(ksym: KlpSymbol) -> str:
    """The livepatch symbol name ``ksym`` will have, used for its placeholder until then."""
    return klp_symbol_name(ksym.objname, ksym.name, ksym.sympos)


@record
class KlpRelocation:
    """A relocation moved out of ``.rela.<section>`` into ``.kpatch.relocations``.

    ``objname`` is the patched object the relocation applies to; ``target.objname``
    the object defining the symbol (they differ only for ``external`` ones).
    """

    section: Section
    offset: int
    type: int
    addend: int
    target: KlpSymbol
    external: bool
    objname: str = ""


@record
class _StringTable:
    """A NUL-separated string table, each string stored once (``add`` returns its offset)."""

    data: bytearray = factory(bytearray)
    offsets: Dict[str, int] = factory(dict)

    def add(self, text: str) -> int:
        if text not in self.offsets:
            self.offsets[text] = len(self.data)
            self.data += text.encode() + b"\0"
        return self.offsets[text]


def _new_section(obj: ElfObject, name: str, flags: int, align: int, entsize: int) -> Section:
    sec = Section(name=name, sh_type=SHT_PROGBITS, flags=flags, addralign=align, entsize=entsize)
    sec.secsym = Symbol(name=sec.name, type=STT_SECTION, bind=STB_LOCAL, section=sec)
    sec.include = True
    sec.secsym.include = True
    obj.sections.append(sec)
    obj.symbols.append(sec.secsym)
    return sec


def _attach_rela(obj: ElfObject, base: Section, relocs: List[Relocation]) -> None:
    symtab = obj.find_section(".symtab")
    rela = Section(name=".rela" + base.name, sh_type=SHT_RELA, flags=SHF_INFO_LINK,
                   addralign=8, entsize=RELA_ENTSIZE, link=symtab, base=base, relocations=relocs)
    rela.include = True
    base.rela = rela
    obj.sections.append(rela)


def _finish(sec: Section, data: bytes) -> None:
    sec.data = bytes(data)
    sec.size = len(data)


CALLBACK_SECTION_PREFIX = ".kpatch.callbacks."
CALLBACK_ENTRY_SIZE = 16
CALLBACK_OBJNAME_OFFSET = 8


def _name_callback_objects(obj: ElfObject, objname: str, string_ref: Callable[[int, str], Relocation]) -> int:
    """Point every callback record's NULL ``objname`` at ``objname``; returns how many."""
    named = 0
    for sec in obj.sections:
        if sec.is_rela or not sec.name.startswith(CALLBACK_SECTION_PREFIX):
            continue
        if sec.size % CALLBACK_ENTRY_SIZE:
            raise ValueError("%s: %d bytes is not a whole number of %d-byte callback records"
                             % (sec.name, sec.size, CALLBACK_ENTRY_SIZE))
        if sec.rela is None:
            _attach_rela(obj, sec, [])
        taken = {r.offset for r in sec.rela.relocations}
        for base in range(0, sec.size, CALLBACK_ENTRY_SIZE):
            if base + CALLBACK_OBJNAME_OFFSET not in taken:
                sec.rela.relocations.append(string_ref(base + CALLBACK_OBJNAME_OFFSET, objname))
                named += 1
    return named


def emit_intermediate_sections(obj: ElfObject, funcs: List[PatchedFunc],
                               klp_relocs: List[KlpRelocation], objname: str = "") -> Tuple[int, int]:
    """Append the four ``.kpatch.*`` sections (and their relocations) to ``obj``.

    With ``objname`` (the patched object), the callback records get it as their object.
    Returns (number of funcs, number of klp relocations).  Section symbols of
    the destination sections are created when the engine dropped them.
    """
    strings = _StringTable()
    str_sec = _new_section(obj, ".kpatch.strings", SHF_ALLOC, 1, 0)
    funcs_sec = _new_section(obj, ".kpatch.funcs", SHF_ALLOC, 8, FUNC_ENTRY.size)
    syms_sec = _new_section(obj, ".kpatch.symbols", SHF_ALLOC, 8, SYMBOL_ENTRY.size)
    relocs_sec = _new_section(obj, ".kpatch.relocations", SHF_ALLOC, 8, RELOCATION_ENTRY.size)

    def string_ref(offset: int, text: str) -> Relocation:
        return Relocation(offset=offset, type=R_X86_64_64, sym=str_sec.secsym, addend=strings.add(text))

    data = bytearray()
    relocs: List[Relocation] = []
    for func in funcs:
        base = len(data)
        data += FUNC_ENTRY.pack(0, func.symbol.size, func.old_addr, func.old_size, func.sympos, 0, 0)
        relocs.append(Relocation(offset=base, type=R_X86_64_64, sym=func.symbol, addend=0))
        relocs.append(string_ref(base + 40, func.old_name or func.symbol.name))
        relocs.append(string_ref(base + 48, func.objname))
    _finish(funcs_sec, data)
    _attach_rela(obj, funcs_sec, relocs)

    index: Dict[KlpSymbol, int] = {}
    data, relocs = bytearray(), []
    for reloc in klp_relocs:
        if reloc.target in index:
            continue
        index[reloc.target] = len(index)
        base = len(data)
        ksym = reloc.target
        data += SYMBOL_ENTRY.pack(0, ksym.sympos, ksym.bind, ksym.type, 0, 0)
        relocs.append(string_ref(base + 24, ksym.name))
        relocs.append(string_ref(base + 32, ksym.objname))
    _finish(syms_sec, data)
    _attach_rela(obj, syms_sec, relocs)

    data, relocs = bytearray(), []
    for reloc in klp_relocs:
        base = len(data)
        data += RELOCATION_ENTRY.pack(0, reloc.type, int(reloc.external), reloc.addend, 0, 0)
        relocs.append(Relocation(offset=base, type=R_X86_64_64, sym=section_symbol(obj, reloc.section),
                                 addend=reloc.offset))
        relocs.append(string_ref(base + 24, reloc.objname or reloc.target.objname))
        relocs.append(Relocation(offset=base + 32, type=R_X86_64_64, sym=syms_sec.secsym,
                                 addend=SYMBOL_ENTRY.size * index[reloc.target]))
    _finish(relocs_sec, data)
    _attach_rela(obj, relocs_sec, relocs)

    if objname:
        _name_callback_objects(obj, objname, string_ref)
    _finish(str_sec, strings.data)
    return len(funcs), len(klp_relocs)


def section_symbol(obj: ElfObject, sec: Section) -> Symbol:
    """The STT_SECTION symbol of ``sec`` in ``obj``'s table, created if the engine dropped it."""
    if sec.secsym is None:
        sec.secsym = Symbol(name=sec.name, type=STT_SECTION, bind=STB_LOCAL, section=sec)
    if not any(s is sec.secsym for s in obj.symbols):
        obj.symbols.append(sec.secsym)
    sec.secsym.include = True
    return sec.secsym


def decode_funcs(data: bytes) -> List[Tuple[int, int, int, int, int]]:
    """(new_size, old_addr, old_size, sympos, entry offset) per ``.kpatch.funcs`` entry."""
    out = []
    for i, entry in enumerate(FUNC_ENTRY.iter_unpack(data)):
        new_size, old_addr, old_size, sympos = entry[1:5]
        out.append((new_size, old_addr, old_size, sympos, i * FUNC_ENTRY.size))
    return out
