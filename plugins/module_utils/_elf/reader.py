# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Read an ELF64 little-endian x86-64 file into the model (``model.py``).

Standard library only: the file header and section table come from the ELF layer
(``layout.read_section_table``, extended numbering included), and the bulky tables --
symbols, RELA entries, group members, SHN_XINDEX words -- are decoded in one
``struct.iter_unpack`` sweep each.  pyelftools is not imported on this path: the
engine's start-up stays small (``tools/create-diff-object`` runs once per object).

``read_elf`` loads a whole object (sections with data, symbols, relocations, groups,
all wired to each other); ``read_symbols`` reads only the section headers and the
symbol table of a possibly huge file (vmlinux) without loading any section data.

Conventions (as in kpatch): an STT_SECTION symbol is named after its section (ELF
leaves its name empty; the writer does again); ``Symbol.shndx`` holds the resolved
section index (through SHN_XINDEX) or the special index (UND/ABS/COMMON/LIVEPATCH)
when ``section`` is None; ``Symbol.file`` is the STT_FILE symbol a local follows;
group members get ``grouped`` set.  ``Section.sym`` (bundling) is left to the engine.
"""

from __future__ import annotations

import struct

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.errors import ElfFormatError
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.layout import (
    EHDR_SIZE,
    ELFCLASS32,
    ELFDATA2LSB,
    RELA,
    RELA_ENTSIZE,
    SYM,
    SYM_ENTSIZE,
    SectionHeader,
    bytes_reader,
    file_reader,
    identify,
    read_section_table,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import (
    EM_X86_64,
    SHF_RELA_LIVEPATCH,
    SHN_LORESERVE,
    SHN_XINDEX,
    SHT_GROUP,
    SHT_NOBITS,
    SHT_REL,
    SHT_RELA,
    SHT_SYMTAB,
    SHT_SYMTAB_SHNDX,
    STB_LOCAL,
    STT_FILE,
    STT_SECTION,
    ElfObject,
    Relocation,
    Section,
    Symbol,
)

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Tuple

    from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.layout import Read


def __getattr__(name: str) -> object:
    """``HAS_PYELFTOOLS`` / ``PYELFTOOLS_IMPORT_ERROR``, looked up when first asked for.

    The reader needs no pyelftools; the build module still checks for it, because the build's
    DWARF readers (``_kbuild.structsizes``, ``_kbuild.debuginfo``) use it.  Looked up, not
    imported, and only on request: the search walks ``sys.path``, which ``create-diff-object``
    (one process per object) would otherwise pay on every run.
    """
    if name not in ("HAS_PYELFTOOLS", "PYELFTOOLS_IMPORT_ERROR"):
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    from importlib.util import find_spec  # pylint: disable=import-outside-toplevel

    found = find_spec("elftools") is not None
    globals().update(HAS_PYELFTOOLS=found,
                     PYELFTOOLS_IMPORT_ERROR=None if found else "ModuleNotFoundError: No module named 'elftools'")
    return globals()[name]


_MACHINE_NAMES = {3: "i386", 8: "MIPS", 20: "PowerPC", 21: "PowerPC64", 22: "S/390",
                  40: "ARM", 183: "AArch64", 243: "RISC-V", 258: "LoongArch"}


def check_ident(head: bytes, where: str) -> None:
    """Reject anything but an ELF64 little-endian x86-64 file, naming file and reason."""
    header = identify(head[:EHDR_SIZE], where)  # not ELF, truncated, unknown class or encoding
    if header.elf_class == ELFCLASS32:
        raise ElfFormatError("%s: 32-bit ELF (ELFCLASS32); only ELF64 is supported" % where)
    if header.byte_order != ELFDATA2LSB:
        raise ElfFormatError("%s: big-endian data encoding (ELFDATA2MSB); only little-endian "
                             "(ELFDATA2LSB) is supported" % where)
    if header.e_machine != EM_X86_64:
        name = _MACHINE_NAMES.get(header.e_machine, "unknown")
        raise ElfFormatError("%s: machine %s (e_machine=%d) is not x86-64 (EM_X86_64=%d)"
                             % (where, name, header.e_machine, EM_X86_64))


def _section_table(head: bytes, where: str, read: Read,
                   with_data: bool) -> Tuple[List[Optional[Section]], List[SectionHeader]]:
    """Section objects by ELF index (``[0]`` is None) and the raw headers.

    ``with_data`` False reads headers only (``data`` stays empty).
    """
    layout = read_section_table(head, read, where)
    headers = layout.headers
    table: List[Optional[Section]] = [None]
    count = len(headers)
    for index in range(1, count):
        _name, sh_type, flags, addr, offset, size, _link, info, align, entsize = headers[index]
        sec = Section(name=layout.names[index], sh_type=sh_type, flags=flags,
                      addr=addr, size=size, addralign=align, entsize=entsize, info_raw=info, index=index)
        if with_data and sh_type != SHT_NOBITS:
            sec.data = read(offset, size, "section %s [%d]" % (sec.name, index))
        table.append(sec)
    for index in range(1, count):
        link = headers[index].link
        if link:
            if link >= count:
                raise ElfFormatError("%s: section %s links to section %d of %d"
                                     % (where, table[index].name, link, count))
            table[index].link = table[link]
    return table, headers


def _find_symtab(table: List[Optional[Section]], where: str) -> Optional[Section]:
    found = [sec for sec in table[1:] if sec.sh_type == SHT_SYMTAB]
    if len(found) > 1:
        raise ElfFormatError("%s: %d SHT_SYMTAB sections; expected one" % (where, len(found)))
    if found and found[0].entsize not in (0, SYM_ENTSIZE):
        raise ElfFormatError("%s: .symtab entry size %d, expected %d" % (where, found[0].entsize, SYM_ENTSIZE))
    return found[0] if found else None


def _find_xindex(table: List[Optional[Section]], symtab: Section) -> Optional[Section]:
    for sec in table[1:]:
        if sec.sh_type == SHT_SYMTAB_SHNDX and sec.link is symtab:
            return sec
    return None


def _words(raw: bytes) -> Tuple[int, ...]:
    """Little-endian 32-bit words (SHT_GROUP, SHT_SYMTAB_SHNDX) without a per-word loop (``struct``:
    ``array`` would import ``collections`` on every start of the tool)."""
    return struct.unpack_from("<%dI" % (len(raw) // 4), raw)


def _decode_symbols(symdata: bytes, strtab: bytes, xindex: Optional[Tuple[int, ...]],
                    table: List[Optional[Section]], where: str) -> List[Symbol]:
    """Every entry of a symbol table, with section, secsym and file wired."""
    if len(symdata) % SYM_ENTSIZE:
        raise ElfFormatError("%s: .symtab size %d is not a multiple of %d" % (where, len(symdata), SYM_ENTSIZE))
    nsec = len(table)
    symbols: List[Symbol] = []
    append = symbols.append
    find = strtab.find
    current_file: Optional[Symbol] = None
    for index, (st_name, info, other, shndx, value, size) in enumerate(SYM.iter_unpack(symdata)):
        sec = None
        if shndx == SHN_XINDEX:
            if xindex is None or index >= len(xindex):
                raise ElfFormatError("%s: symbol %d uses SHN_XINDEX but there is no .symtab_shndx entry for it"
                                     % (where, index))
            shndx = xindex[index]
            if not 0 < shndx < nsec:
                raise ElfFormatError("%s: symbol %d has extended section index %d of %d" % (where, index, shndx, nsec))
            sec = table[shndx]
        elif 0 < shndx < SHN_LORESERVE:
            if shndx >= nsec:
                raise ElfFormatError("%s: symbol %d is in section %d of %d" % (where, index, shndx, nsec))
            sec = table[shndx]
        typ = info & 0xF
        if typ == STT_SECTION and sec is not None:
            name = sec.name  # section symbols are known by their section's name
        else:
            end = find(b"\0", st_name)
            if end < 0:
                raise ElfFormatError("%s: symbol %d name offset %d is outside .strtab (%d bytes)"
                                     % (where, index, st_name, len(strtab)))
            name = strtab[st_name:end].decode("utf-8", "surrogateescape")
        bind = info >> 4
        sym = Symbol(name, value, size, bind, typ, other, sec, shndx, index)
        if typ == STT_FILE:
            current_file = sym
        elif bind == STB_LOCAL and index:
            sym.file = current_file
        if typ == STT_SECTION and sec is not None and sec.secsym is None:
            sec.secsym = sym
        append(sym)
    if not symbols:
        symbols.append(Symbol(""))
    return symbols


def _decode_relocations(sec: Section, symtab: Optional[Section], symbols: List[Symbol],
                        table: List[Optional[Section]], where: str) -> None:
    """Fill ``relocations`` of one SHT_RELA section and wire base/rela."""
    if symtab is None or sec.link is not symtab:
        raise ElfFormatError("%s: relocation section %s does not refer to the symbol table" % (where, sec.name))
    if not 0 < sec.info_raw < len(table):
        raise ElfFormatError("%s: relocation section %s applies to section %d of %d"
                             % (where, sec.name, sec.info_raw, len(table)))
    if sec.entsize != RELA_ENTSIZE or sec.size % RELA_ENTSIZE:
        raise ElfFormatError("%s: relocation section %s has entry size %d and size %d, expected multiples of %d"
                             % (where, sec.name, sec.entsize, sec.size, RELA_ENTSIZE))
    base = table[sec.info_raw]
    sec.base = base
    # A livepatch module may add .klp.rela.* sections for a base: keep the ordinary one as its rela.
    if base.rela is None or base.rela.flags & SHF_RELA_LIVEPATCH:
        base.rela = sec
    try:
        sec.relocations = [Relocation(offset, info & 0xFFFFFFFF, symbols[info >> 32], addend)
                           for offset, info, addend in RELA.iter_unpack(sec.data)]
    except IndexError:
        bad = max(info >> 32 for _o, info, _a in RELA.iter_unpack(sec.data))
        raise ElfFormatError("%s: relocation section %s refers to symbol %d of %d"
                             % (where, sec.name, bad, len(symbols)))


def _decode_group(sec: Section, symtab: Optional[Section], symbols: List[Symbol],
                  table: List[Optional[Section]], where: str) -> None:
    """Flags word, member sections and signature symbol of one SHT_GROUP section."""
    if len(sec.data) < 4 or len(sec.data) % 4:
        raise ElfFormatError("%s: group section %s has size %d, expected a non-empty multiple of 4"
                             % (where, sec.name, len(sec.data)))
    words = _words(sec.data)
    sec.group_flags = words[0]
    members = []
    for index in words[1:]:
        if not 0 < index < len(table):
            raise ElfFormatError("%s: group section %s lists section %d of %d" % (where, sec.name, index, len(table)))
        member = table[index]
        member.grouped = True
        members.append(member)
    sec.group_members = members
    if symtab is None or sec.link is not symtab or sec.info_raw >= len(symbols):
        raise ElfFormatError("%s: group section %s has no valid signature symbol (sh_link %s, sh_info %d)"
                             % (where, sec.name, sec.link.name if sec.link else 0, sec.info_raw))
    sec.signature = symbols[sec.info_raw]


def read_elf_bytes(data: bytes, where: str = "<bytes>") -> ElfObject:
    """Parse a whole ELF64 x86-64 file held in memory; ``where`` names it in errors."""
    head = data[:EHDR_SIZE]
    check_ident(head, where)
    table, _headers = _section_table(head, where, bytes_reader(data, where), True)
    symtab = _find_symtab(table, where)
    symbols = [Symbol("")]
    if symtab is not None:
        strtab = symtab.link.data if symtab.link is not None else b""
        xsec = _find_xindex(table, symtab)
        xindex = _words(xsec.data) if xsec is not None else None
        symbols = _decode_symbols(symtab.data, strtab, xindex, table, where)
    for sec in table[1:]:
        if sec.sh_type == SHT_RELA:
            _decode_relocations(sec, symtab, symbols, table, where)
        elif sec.sh_type == SHT_REL:
            raise ElfFormatError("%s: SHT_REL section %s is not supported on x86-64 (RELA only)" % (where, sec.name))
        elif sec.sh_type == SHT_GROUP:
            _decode_group(sec, symtab, symbols, table, where)
    hdr = identify(head, where)
    return ElfObject(path=where, ei_osabi=hdr.osabi, ei_abiversion=hdr.abiversion, e_type=hdr.e_type,
                     e_machine=EM_X86_64, e_flags=hdr.e_flags, sections=table[1:], symbols=symbols)


def read_elf(path: str) -> ElfObject:
    """Read a whole ELF64 x86-64 relocatable object, kernel module or executable."""
    path = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ElfFormatError("%s: cannot read: %s" % (path, exc.strerror or exc))
    return read_elf_bytes(data, path)


def read_symbols(path: str) -> List[Symbol]:
    """Only the symbol table of ``path`` (e.g. a 600 MB vmlinux), read in one sweep.

    Returns the same list ``read_elf(path).symbols`` would hold (null symbol first,
    ``index`` = position, ``file`` and ``section`` set), but the sections the symbols
    point at are header-only: their ``data`` is not loaded (``size`` is the real size).
    """
    path = str(path)
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise ElfFormatError("%s: cannot read: %s" % (path, exc.strerror or exc))
    with fh:
        head = fh.read(EHDR_SIZE)
        check_ident(head, path)
        read = file_reader(fh, path)
        table, headers = _section_table(head, path, read, False)
        symtab = _find_symtab(table, path)
        if symtab is None:
            raise ElfFormatError("%s: no symbol table (.symtab); was it stripped?" % path)

        def contents(sec: Section, what: str) -> bytes:
            return read(headers[sec.index].offset, headers[sec.index].size, what)

        symdata = contents(symtab, "symbol table")
        strtab = contents(symtab.link, "symbol string table") if symtab.link is not None else b""
        xsec = _find_xindex(table, symtab)
        xindex = _words(contents(xsec, ".symtab_shndx")) if xsec is not None else None
        return _decode_symbols(symdata, strtab, xindex, table, path)


def symbols_by_name(symbols: List[Symbol]) -> Dict[str, List[Symbol]]:
    """Name → every symbol of that name (locals of the same name from different files)."""
    table: Dict[str, List[Symbol]] = {}
    for sym in symbols[1:]:
        table.setdefault(sym.name, []).append(sym)
    return table
