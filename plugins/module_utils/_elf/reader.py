# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Read an ELF64 little-endian x86-64 file into the model (``model.py``).

Build host only: pyelftools parses the file and section headers (it handles the
extended-numbering corner cases), while the bulky tables -- symbols, RELA entries,
group members, SHN_XINDEX words -- are decoded here in one ``struct.iter_unpack``
sweep each, because per-entry pyelftools objects are far too slow for multi-MB
kernel objects and the vmlinux symbol table.

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

import io
import struct
import sys
import traceback
from array import array
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.errors import (
    ElfFormatError,
    PyelftoolsMissingError,
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

try:
    from elftools.common.exceptions import ELFError
    from elftools.elf import enums as _elf_enums
    from elftools.elf.elffile import ELFFile

    HAS_PYELFTOOLS = True
    PYELFTOOLS_IMPORT_ERROR = None  # type: Optional[str]
except ImportError:
    HAS_PYELFTOOLS = False
    PYELFTOOLS_IMPORT_ERROR = traceback.format_exc()

ELF_MAGIC = b"\x7fELF"
EHDR_SIZE = 64
SHDR_SIZE = 64
SYM_ENTSIZE = 24
RELA_ENTSIZE = 24

_SYM = struct.Struct("<IBBHQQ")  # st_name st_info st_other st_shndx st_value st_size
_RELA = struct.Struct("<QQq")  # r_offset r_info r_addend
_SHDR = struct.Struct("<IIQQQQIIQQ")  # name type flags addr offset size link info addralign entsize
_MACHINE_NAMES = {3: "i386", 8: "MIPS", 20: "PowerPC", 21: "PowerPC64", 22: "S/390",
                  40: "ARM", 183: "AArch64", 243: "RISC-V", 258: "LoongArch"}


def require_pyelftools() -> None:
    """Raise ``PyelftoolsMissingError`` (an ImportError) when pyelftools is absent."""
    if not HAS_PYELFTOOLS:
        detail = (PYELFTOOLS_IMPORT_ERROR or "").strip().splitlines()
        raise PyelftoolsMissingError(
            "the ELF reader needs the Python library pyelftools on the build host "
            "(pip install pyelftools): %s" % (detail[-1] if detail else "not importable"))


def check_ident(head: bytes, where: str) -> None:
    """Reject anything but an ELF64 little-endian x86-64 file, naming file and reason."""
    if len(head) < 4 or head[:4] != ELF_MAGIC:
        raise ElfFormatError("%s: not an ELF file (starts with %r)" % (where, bytes(head[:4])))
    if len(head) < EHDR_SIZE:
        raise ElfFormatError("%s: truncated ELF header (%d of %d bytes)" % (where, len(head), EHDR_SIZE))
    if head[4] == 1:
        raise ElfFormatError("%s: 32-bit ELF (ELFCLASS32); only ELF64 is supported" % where)
    if head[4] != 2:
        raise ElfFormatError("%s: invalid ELF class %d; only ELF64 is supported" % (where, head[4]))
    if head[5] != 1:
        raise ElfFormatError("%s: big-endian or invalid data encoding %d; only little-endian "
                             "(ELFDATA2LSB) is supported" % (where, head[5]))
    machine = struct.unpack_from("<H", head, 18)[0]
    if machine != EM_X86_64:
        name = _MACHINE_NAMES.get(machine, "unknown")
        raise ElfFormatError("%s: machine %s (e_machine=%d) is not x86-64 (EM_X86_64=%d)"
                             % (where, name, machine, EM_X86_64))
    shentsize = struct.unpack_from("<H", head, 58)[0]
    shoff = struct.unpack_from("<Q", head, 40)[0]
    if shoff and shentsize != SHDR_SIZE:
        raise ElfFormatError("%s: section header entry size %d, expected %d" % (where, shentsize, SHDR_SIZE))


def _open_elffile(stream: BinaryIO, where: str) -> "ELFFile":
    require_pyelftools()
    try:
        return ELFFile(stream)
    except (ELFError, struct.error, ValueError) as exc:
        raise ElfFormatError("%s: malformed ELF header: %s" % (where, exc))


def _header_table(elf: "ELFFile", where: str, read: Callable[[int, int, str], bytes]) -> List[tuple]:
    """All section header tuples, decoded in one sweep (pyelftools gives count and offset).

    ``num_sections`` already resolves extended numbering (e_shnum 0 → section 0's sh_size).
    """
    try:
        count = elf.num_sections()
        shoff = elf.header["e_shoff"]
    except (ELFError, struct.error, ValueError) as exc:
        raise ElfFormatError("%s: malformed section header table: %s" % (where, exc))
    if count == 0:
        return []
    return list(_SHDR.iter_unpack(read(shoff, count * SHDR_SIZE, "section header table")))


def _shstrndx(elf: "ELFFile", where: str, count: int) -> int:
    try:
        index = elf.get_shstrndx()  # resolves SHN_XINDEX through section 0's sh_link
    except (ELFError, struct.error, ValueError) as exc:
        raise ElfFormatError("%s: malformed section header string table index: %s" % (where, exc))
    if not 0 < index < count:
        raise ElfFormatError("%s: section header string table index %d of %d sections" % (where, index, count))
    return index


def _section_table(elf: "ELFFile", where: str, read: Callable[[int, int, str], bytes],
                   with_data: bool) -> Tuple[List[Optional[Section]], List[tuple]]:
    """Section objects by ELF index (``[0]`` is None) and the raw header tuples.

    ``with_data`` False reads headers only (``data`` stays empty).
    """
    headers = _header_table(elf, where, read)
    table: List[Optional[Section]] = [None]
    if not headers:
        return table, headers
    count = len(headers)
    str_hdr = headers[_shstrndx(elf, where, count)]
    names = read(str_hdr[4], str_hdr[5], "section header string table")
    for index in range(1, count):
        sh_name, sh_type, flags, addr, offset, size, _link, info, align, entsize = headers[index]
        end = names.find(b"\0", sh_name)
        if end < 0:
            raise ElfFormatError("%s: section %d name offset %d is outside the section name table"
                                 % (where, index, sh_name))
        sec = Section(name=names[sh_name:end].decode("utf-8", "surrogateescape"), sh_type=sh_type, flags=flags,
                      addr=addr, size=size, addralign=align, entsize=entsize, info_raw=info, index=index)
        if with_data and sh_type != SHT_NOBITS:
            sec.data = read(offset, size, "section %s [%d]" % (sec.name, index))
        table.append(sec)
    for index in range(1, count):
        link = headers[index][6]
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


def _words(raw: bytes) -> array:
    """Little-endian 32-bit words (SHT_GROUP, SHT_SYMTAB_SHNDX) without a per-word loop."""
    words = array("I")
    if words.itemsize != 4:  # pragma: no cover - every Linux ABI has a 4-byte unsigned int
        words = array("L")
    words.frombytes(raw[:len(raw) - len(raw) % 4])
    if sys.byteorder != "little":
        words.byteswap()
    return words


def _decode_symbols(symdata: bytes, strtab: bytes, xindex: Optional[array],
                    table: List[Optional[Section]], where: str) -> List[Symbol]:
    """Every entry of a symbol table, with section, secsym and file wired."""
    if len(symdata) % SYM_ENTSIZE:
        raise ElfFormatError("%s: .symtab size %d is not a multiple of %d" % (where, len(symdata), SYM_ENTSIZE))
    nsec = len(table)
    symbols: List[Symbol] = []
    append = symbols.append
    find = strtab.find
    current_file: Optional[Symbol] = None
    for index, (st_name, info, other, shndx, value, size) in enumerate(_SYM.iter_unpack(symdata)):
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
                           for offset, info, addend in _RELA.iter_unpack(sec.data)]
    except IndexError:
        bad = max(info >> 32 for _o, info, _a in _RELA.iter_unpack(sec.data))
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


def _bytes_reader(data: bytes, where: str) -> Callable[[int, int, str], bytes]:
    def read(offset: int, size: int, what: str) -> bytes:
        if offset + size > len(data):
            raise ElfFormatError("%s: %s (offset %#x, size %#x) extends past the end of the file (%#x bytes)"
                                 % (where, what, offset, size, len(data)))
        return data[offset:offset + size]
    return read


def _file_reader(fh: BinaryIO, where: str) -> Callable[[int, int, str], bytes]:
    def read(offset: int, size: int, what: str) -> bytes:
        fh.seek(offset)
        chunk = fh.read(size)
        if len(chunk) != size:
            raise ElfFormatError("%s: %s (offset %#x, size %#x) extends past the end of the file"
                                 % (where, what, offset, size))
        return chunk
    return read


def read_elf_bytes(data: bytes, where: str = "<bytes>") -> ElfObject:
    """Parse a whole ELF64 x86-64 file held in memory; ``where`` names it in errors."""
    check_ident(data[:EHDR_SIZE], where)
    elf = _open_elffile(io.BytesIO(data), where)
    table, _headers = _section_table(elf, where, _bytes_reader(data, where), True)
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
    hdr = elf.header
    return ElfObject(path=where, ei_osabi=data[7], ei_abiversion=data[8], e_type=_e_type_number(hdr["e_type"]),
                     e_machine=EM_X86_64, e_flags=hdr["e_flags"], sections=table[1:], symbols=symbols)


def _e_type_number(value: Any) -> int:
    """pyelftools maps e_type to a name; turn it back into the number."""
    if isinstance(value, int):
        return value
    return _elf_enums.ENUM_E_TYPE[value]


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
        check_ident(fh.read(EHDR_SIZE), path)
        elf = _open_elffile(fh, path)
        read = _file_reader(fh, path)
        table, headers = _section_table(elf, path, read, False)
        symtab = _find_symtab(table, path)
        if symtab is None:
            raise ElfFormatError("%s: no symbol table (.symtab); was it stripped?" % path)

        def contents(sec: Section, what: str) -> bytes:
            return read(headers[sec.index][4], headers[sec.index][5], what)

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
