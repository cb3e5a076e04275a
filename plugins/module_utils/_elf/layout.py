# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""The one ELF layer of the collection: on-disk layouts, the file header and the section table.

Standard library only, so that the target runtime (``_target``, which reads ``.modinfo`` on hosts
without pyelftools) uses the same code as the build host's reader and writer.  Everything that
decodes or encodes an ELF header, a section header, a symbol or a RELA entry takes its layout from
here; :func:`read_section_table` is the one parser of the file header and the section header
table (extended numbering included: more than 0xff00 sections keep their count in section 0's
``sh_size`` and the name table index in its ``sh_link``).

The reader proper (``reader.py``) needs ELF64 little-endian; the section table reader also
understands ELF32 and big-endian files, because a module file handed to a target can be any
kernel module (its ``.modinfo`` is read, nothing else).
"""

from __future__ import annotations

import struct
from operator import itemgetter

# Relative: the target runtime archive ships this package under another top-level name.
from .errors import ElfFormatError
from .record import factory, record

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import BinaryIO, Callable, Dict, List, Optional

    Read = Callable[[int, int, str], bytes]  # (offset, size, what) -> the bytes, or ElfFormatError

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2
SHN_XINDEX = 0xFFFF
SHN_LORESERVE = 0xFF00

# ELF64 little-endian, the layouts the reader and the writer use.
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # ident type machine version entry phoff shoff flags
#                                            ehsize phentsize phnum shentsize shnum shstrndx
SHDR = struct.Struct("<IIQQQQIIQQ")  # name type flags addr offset size link info addralign entsize
SYM = struct.Struct("<IBBHQQ")  # st_name st_info st_other st_shndx st_value st_size
RELA = struct.Struct("<QQq")  # r_offset r_info r_addend
EHDR_SIZE = EHDR.size
SHDR_SIZE = SHDR.size
SYM_ENTSIZE = SYM.size
RELA_ENTSIZE = RELA.size
GROUP_WORD = 4  # SHT_GROUP and SHT_SYMTAB_SHNDX entries are 32-bit words

# The same two headers for every class and byte order (field order is the same; only widths differ).
_HEADER_FORMATS = {ELFCLASS64: ("16sHHIQQQIHHHHHH", "IIQQQQIIQQ"), ELFCLASS32: ("16sHHIIIIIHHHHHH", "IIIIIIIIII")}
_BYTE_ORDERS = {ELFDATA2LSB: "<", ELFDATA2MSB: ">"}


class SectionHeader(tuple):
    """One section header as stored (indices and offsets, nothing resolved), every field an int:
    ``SectionHeader(unpacked_fields)``, read by name (``hdr.link``) or unpacked as a tuple.

    What ``collections.namedtuple`` would give, without collections' import on the start-up of
    ``tools/create-diff-object`` (one process per object)."""

    __slots__ = ()
    name = property(itemgetter(0))
    type = property(itemgetter(1))
    flags = property(itemgetter(2))
    addr = property(itemgetter(3))
    offset = property(itemgetter(4))
    size = property(itemgetter(5))
    link = property(itemgetter(6))
    info = property(itemgetter(7))
    addralign = property(itemgetter(8))
    entsize = property(itemgetter(9))


@record(frozen=True)
class FileHeader:
    """The fields of the ELF file header the collection uses, extended numbering resolved."""

    elf_class: int
    byte_order: int
    osabi: int
    abiversion: int
    e_type: int
    e_machine: int
    e_flags: int
    shoff: int
    shentsize: int
    shnum: int  # as stored: 0 means "see section 0" (extended numbering)
    shstrndx: int  # as stored: SHN_XINDEX means "see section 0"


@record
class SectionTable:
    """The file header, every section header (``headers[0]`` is the null section) and their names."""

    header: FileHeader
    headers: List[SectionHeader] = factory(list)
    names: List[str] = factory(list)
    shstrndx: int = 0

    def index_of(self, name: str) -> Optional[int]:
        """Index of the first section called ``name``, None when there is none."""
        for index, found in enumerate(self.names):
            if found == name and index:
                return index
        return None

    def by_name(self) -> Dict[str, SectionHeader]:
        """Name -> header of the first section of that name."""
        table: Dict[str, SectionHeader] = {}
        for index in range(1, len(self.headers)):
            table.setdefault(self.names[index], self.headers[index])
        return table


def identify(head: bytes, where: str) -> FileHeader:
    """The file header of any ELF file (class and byte order as found); ElfFormatError if it is none."""
    if len(head) < 4 or head[:4] != ELF_MAGIC:
        raise ElfFormatError("%s: not an ELF file (starts with %r)" % (where, bytes(head[:4])))
    if len(head) < 6 or head[4] not in _HEADER_FORMATS or head[5] not in _BYTE_ORDERS:
        raise ElfFormatError("%s: unknown ELF class %d / data encoding %d"
                             % (where, head[4] if len(head) > 4 else -1, head[5] if len(head) > 5 else -1))
    layout = struct.Struct(_BYTE_ORDERS[head[5]] + _HEADER_FORMATS[head[4]][0])
    if len(head) < layout.size:
        raise ElfFormatError("%s: truncated ELF header (%d of %d bytes)" % (where, len(head), layout.size))
    fields = layout.unpack_from(head, 0)
    return FileHeader(elf_class=head[4], byte_order=head[5], osabi=head[7], abiversion=head[8], e_type=fields[1],
                      e_machine=fields[2], e_flags=fields[7], shoff=fields[6], shentsize=fields[11],
                      shnum=fields[12], shstrndx=fields[13])


def read_section_table(head: bytes, read: Read, where: str) -> SectionTable:
    """The section table of the file whose first bytes are ``head``; ``read(offset, size, what)``
    returns file bytes or raises ElfFormatError naming ``what``."""
    header = identify(head, where)
    shnum, shstrndx = header.shnum, header.shstrndx
    table = SectionTable(header=header)
    if header.shoff == 0:
        return table
    layout = struct.Struct(_BYTE_ORDERS[header.byte_order] + _HEADER_FORMATS[header.elf_class][1])
    if header.shentsize != layout.size:
        raise ElfFormatError("%s: section header entry size %d, expected %d" % (where, header.shentsize, layout.size))
    first = SectionHeader(layout.unpack(read(header.shoff, layout.size, "section header table")))
    if shnum == 0:  # extended numbering: the count lives in section 0
        shnum = first.size
    if shstrndx == SHN_XINDEX:
        shstrndx = first.link
    if shnum == 0:
        return table
    raw = read(header.shoff, shnum * layout.size, "section header table")
    table.headers = [SectionHeader(fields) for fields in layout.iter_unpack(raw)]
    if not 0 < shstrndx < shnum:
        raise ElfFormatError("%s: section header string table index %d of %d sections" % (where, shstrndx, shnum))
    table.shstrndx = shstrndx
    strings = table.headers[shstrndx]
    names = read(strings.offset, strings.size, "section header string table")
    table.names = [""] + [_section_name(names, hdr.name, index, where)
                          for index, hdr in enumerate(table.headers[1:], 1)]
    return table


def _section_name(names: bytes, offset: int, index: int, where: str) -> str:
    end = names.find(b"\0", offset)
    if end < 0:
        raise ElfFormatError("%s: section %d name offset %d is outside the section name table"
                             % (where, index, offset))
    return names[offset:end].decode("utf-8", "surrogateescape")


def bytes_reader(data: bytes, where: str) -> Read:
    """A ``read`` over bytes already in memory, refusing ranges past the end."""
    def read(offset: int, size: int, what: str) -> bytes:
        if offset + size > len(data):
            raise ElfFormatError("%s: %s (offset %#x, size %#x) extends past the end of the file (%#x bytes)"
                                 % (where, what, offset, size, len(data)))
        return data[offset:offset + size]
    return read


def file_reader(fh: BinaryIO, where: str) -> Read:
    """A ``read`` that seeks in an open file (for files too big to hold, such as vmlinux)."""
    def read(offset: int, size: int, what: str) -> bytes:
        fh.seek(offset)
        chunk = fh.read(size)
        if len(chunk) != size:
            raise ElfFormatError("%s: %s (offset %#x, size %#x) extends past the end of the file"
                                 % (where, what, offset, size))
        return chunk
    return read


def read_file_section_table(fh: BinaryIO, where: str) -> SectionTable:
    """The section table of an open ELF file, reading only the headers."""
    fh.seek(0)
    return read_section_table(fh.read(EHDR_SIZE), file_reader(fh, where), where)
