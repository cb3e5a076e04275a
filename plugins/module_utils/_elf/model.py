# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""The mutable in-memory model of one ELF64 relocatable object (or kernel module).

Reader (``reader.py``) fills it, the diff engine (``_engine``) walks and edits it,
and the writer (``writer.py``) serialises it back.  Objects reference each other
directly (a relocation holds its ``Symbol``, a symbol its ``Section``) so that
passes can add, drop and renumber entries freely; indices are recomputed by the
writer.  Engine bookkeeping (status, twin, include) lives on the entries because
every pass needs it and a side table per pass would only duplicate the lookup.
"""

from __future__ import annotations

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.record import factory, record

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import Dict, List, Optional
# ELF constants used across the collection (subset of elf.h, x86-64 only).
SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_NOBITS = 8
SHT_REL = 9
SHT_GROUP = 17
SHT_SYMTAB_SHNDX = 18

SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHF_MERGE = 0x10
SHF_STRINGS = 0x20
SHF_INFO_LINK = 0x40
SHF_GROUP = 0x200
SHF_RELA_LIVEPATCH = 0x00100000

SHN_UNDEF = 0
SHN_LIVEPATCH = 0xFF20
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
SHN_XINDEX = 0xFFFF
SHN_LORESERVE = 0xFF00

STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2

STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STT_FILE = 4
STT_TLS = 6

STV_DEFAULT = 0

GRP_COMDAT = 1

EM_X86_64 = 62
ET_REL = 1

R_X86_64_NONE = 0
R_X86_64_64 = 1
R_X86_64_PC32 = 2
R_X86_64_PLT32 = 4
R_X86_64_32 = 10
R_X86_64_32S = 11
R_X86_64_PC64 = 24


class Status:
    """Result of comparing an entry with its twin in the other object: ``Status.NEW``,
    ``Status.CHANGED`` or ``Status.SAME``, compared by identity.

    Three constants, not an ``enum.Enum``: enum's import is ~5 ms of every start of
    ``tools/create-diff-object`` (one process per object), about a small object's whole diff.
    """

    NEW: "Status"
    CHANGED: "Status"
    SAME: "Status"

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "Status.%s" % self.value.upper()


Status.NEW, Status.CHANGED, Status.SAME = Status("new"), Status("changed"), Status("same")


@record(eq=False)
class Relocation:
    """One RELA entry.  ``offset`` is relative to the base section."""

    offset: int
    type: int
    sym: "Symbol"
    addend: int
    # Engine: the string a relocation to a .rodata.str* section points at, when known.
    string: Optional[str] = None


@record(eq=False)
class Section:
    """One section header plus its contents.

    ``data`` is the raw bytes (empty for SHT_NOBITS; ``size`` is authoritative).
    For SHT_RELA sections ``relocations`` holds the decoded entries and ``base``
    the section they apply to; the base has ``rela`` pointing back.
    ``link``/``info`` hold *section objects* where ELF stores indices of sections
    (symtab link, rela info), and raw integers otherwise (``info_raw``).
    """

    name: str
    sh_type: int
    flags: int = 0
    addr: int = 0
    data: bytes = b""
    size: int = 0
    addralign: int = 1
    entsize: int = 0
    link: Optional["Section"] = None
    info_raw: int = 0
    index: int = 0
    # RELA wiring
    base: Optional["Section"] = None
    rela: Optional["Section"] = None
    relocations: List[Relocation] = factory(list)
    # The STT_SECTION symbol for this section, and the function/object symbol it bundles.
    secsym: Optional["Symbol"] = None
    sym: Optional["Symbol"] = None
    # SHT_GROUP: the member sections (the first word of data is the flags word).
    group_flags: int = 0
    group_members: List["Section"] = factory(list)
    # SHT_GROUP: the symbol whose name is the group's signature (ELF stores its index in sh_info).
    signature: Optional["Symbol"] = None
    # Engine bookkeeping
    twin: Optional["Section"] = None
    status: Optional[Status] = None
    include: bool = False
    ignore: bool = False
    grouped: bool = False

    @property
    def is_rela(self) -> bool:
        return self.sh_type == SHT_RELA

    @property
    def is_text(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR)

    @property
    def is_debug(self) -> bool:
        return self.name.startswith((".debug_", ".rela.debug_"))


@record(eq=False)
class Symbol:
    """One symbol table entry.  ``section`` is None for SHN_UNDEF/ABS/COMMON/LIVEPATCH
    (the raw index is then kept in ``shndx``)."""

    name: str
    value: int = 0
    size: int = 0
    bind: int = STB_LOCAL
    type: int = STT_NOTYPE
    other: int = STV_DEFAULT
    section: Optional[Section] = None
    shndx: int = SHN_UNDEF
    index: int = 0
    # Engine bookkeeping
    twin: Optional["Symbol"] = None
    status: Optional[Status] = None
    include: bool = False
    strip: bool = False
    # Child functions (.cold, .part.N) and their parent.
    parent: Optional["Symbol"] = None
    children: List["Symbol"] = factory(list)
    # __pfx_/__cfi_ padding symbol in front of this function (CALL_PADDING/IBT kernels).
    prefix: Optional["Symbol"] = None
    has_func_profiling: bool = False
    # The source file (STT_FILE) this local symbol follows in the symbol table.
    file: Optional["Symbol"] = None

    @property
    def is_local(self) -> bool:
        return self.bind == STB_LOCAL

    @property
    def is_func(self) -> bool:
        return self.type == STT_FUNC

    @property
    def is_undefined(self) -> bool:
        return self.section is None and self.shndx == SHN_UNDEF


@record(eq=False)
class ElfObject:
    """A whole relocatable object.  ``symbols[0]`` is always the null symbol.

    ``sections`` excludes the null section at index 0; the writer regenerates
    .shstrtab, .strtab, .symtab and .symtab_shndx from the model, so passes only
    edit sections, symbols and relocations.
    """

    path: str = ""
    ei_osabi: int = 0
    ei_abiversion: int = 0
    e_type: int = ET_REL
    e_machine: int = EM_X86_64
    e_flags: int = 0
    sections: List[Section] = factory(list)
    symbols: List[Symbol] = factory(list)

    def section_by_name(self) -> Dict[str, Section]:
        """Name → section (first wins); build once per pass, not per lookup."""
        table: Dict[str, Section] = {}
        for sec in self.sections:
            table.setdefault(sec.name, sec)
        return table

    def symbol_by_name(self) -> Dict[str, Symbol]:
        """Name → symbol (first wins, null symbol excluded)."""
        table: Dict[str, Symbol] = {}
        for sym in self.symbols[1:]:
            table.setdefault(sym.name, sym)
        return table

    def find_section(self, name: str) -> Optional[Section]:
        for sec in self.sections:
            if sec.name == name:
                return sec
        return None

    def find_symbol(self, name: str) -> Optional[Symbol]:
        for sym in self.symbols[1:]:
            if sym.name == name:
                return sym
        return None
