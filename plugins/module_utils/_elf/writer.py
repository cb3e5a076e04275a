# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Serialise the model (``model.py``) as an ELF64 little-endian x86-64 relocatable object.

Only the standard library is used.  What the model holds as objects is turned back
into indices here: the writer numbers the sections in list order, puts local symbols
before the others (ELF requires it; ``.symtab``'s sh_info is the first non-local),
and regenerates ``.shstrtab``, ``.strtab``, ``.symtab``, ``.symtab_shndx`` (only
when a symbol's section index needs it), every SHT_RELA section from its
``relocations`` and every SHT_GROUP section from ``group_flags``/``group_members``.
All other sections are written from ``data`` as they are.  ``Section.index`` and
``Symbol.index`` are updated to the numbers written.

Layout: ELF header, section contents in index order (each at its alignment), then
the section header table.  ``write_elf`` writes a temporary file next to the
destination and renames it, so a failure never leaves a half-written object.
"""

from __future__ import annotations

import os
import struct

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.record import factory, record
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.errors import ElfWriteError
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.layout import (
    EHDR,
    EHDR_SIZE,
    ELF_MAGIC,
    ELFCLASS64,
    ELFDATA2LSB,
    GROUP_WORD,
    RELA,
    RELA_ENTSIZE,
    SHDR,
    SHDR_SIZE,
    SYM,
    SYM_ENTSIZE,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import (
    EM_X86_64,
    ET_REL,
    SHN_ABS,
    SHN_COMMON,
    SHN_LIVEPATCH,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHN_XINDEX,
    SHT_GROUP,
    SHT_NOBITS,
    SHT_REL,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    SHT_SYMTAB_SHNDX,
    STB_LOCAL,
    STT_SECTION,
    ElfObject,
    Section,
    Symbol,
)

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import Dict, List, Optional

# Indices a symbol without a section may carry (elf.h special section indices).
_SPECIAL_SHNDX = (SHN_UNDEF, SHN_ABS, SHN_COMMON, SHN_LIVEPATCH)


class StringTable:
    """An ELF string table being built: offset 0 is the empty string, equal names shared."""

    def __init__(self) -> None:
        self._chunks: List[bytes] = [b"\0"]
        self._size = 1
        self._offsets: Dict[str, int] = {"": 0}

    def add(self, name: str) -> int:
        offset = self._offsets.get(name)
        if offset is None:
            raw = name.encode("utf-8", "surrogateescape")
            if b"\0" in raw:
                raise ElfWriteError("name %r contains a NUL byte" % name)
            offset = self._offsets[name] = self._size
            self._chunks.append(raw + b"\0")
            self._size += len(raw) + 1
        return offset

    def data(self) -> bytes:
        return b"".join(self._chunks)


@record
class _Plan:
    """Everything the layout step needs: output sections and their regenerated contents."""

    sections: List[Section]
    symbols: List[Symbol]
    first_global: int
    symtab: Section
    strtab: Section
    shstrtab: Section
    shndx: Optional[Section]
    contents: Dict[int, bytes] = factory(dict)  # id(section) -> bytes
    links: Dict[int, int] = factory(dict)  # id(section) -> sh_link
    infos: Dict[int, int] = factory(dict)  # id(section) -> sh_info
    names: Dict[int, int] = factory(dict)  # id(section) -> sh_name


def _find_or_make(obj: ElfObject, sections: List[Section], name: str, sh_type: int) -> Section:
    for sec in sections:
        if sec.name == name and sec.sh_type == sh_type:
            return sec
    sec = Section(name=name, sh_type=sh_type)
    sections.append(sec)
    return sec


def _special_sections(obj: ElfObject, sections: List[Section]) -> List[Section]:
    """The .symtab, .strtab and .shstrtab to regenerate (made and appended when absent)."""
    symtabs = [sec for sec in sections if sec.sh_type == SHT_SYMTAB]
    if len(symtabs) > 1:
        raise ElfWriteError("%s: %d SHT_SYMTAB sections in the model; expected at most one" % (obj.path, len(symtabs)))
    symtab = symtabs[0] if symtabs else _find_or_make(obj, sections, ".symtab", SHT_SYMTAB)
    strtab = symtab.link
    if strtab is None or strtab.sh_type != SHT_STRTAB or strtab.name == ".shstrtab" or strtab not in sections:
        strtab = _find_or_make(obj, sections, ".strtab", SHT_STRTAB)
    shstrtab = _find_or_make(obj, sections, ".shstrtab", SHT_STRTAB)
    if shstrtab is strtab:
        raise ElfWriteError("%s: .strtab and .shstrtab are the same section" % obj.path)
    return [symtab, strtab, shstrtab]


def _ordered_symbols(obj: ElfObject) -> List[Symbol]:
    """Null symbol, then locals, then globals/weaks, each group in model order."""
    if not obj.symbols:
        raise ElfWriteError("%s: the model has no symbols; symbols[0] must be the null symbol" % obj.path)
    null = obj.symbols[0]
    if null.name or null.section is not None or null.shndx or null.value or null.size or null.bind or null.type:
        raise ElfWriteError("%s: symbols[0] must be the null symbol, found %r" % (obj.path, null.name))
    rest = obj.symbols[1:]
    return [null] + [s for s in rest if s.bind == STB_LOCAL] + [s for s in rest if s.bind != STB_LOCAL]


def _number(sections: List[Section], symbols: List[Symbol]) -> None:
    for index, sec in enumerate(sections, 1):
        sec.index = index
    for index, sym in enumerate(symbols):
        sym.index = index


def _needs_xindex(symbols: List[Symbol]) -> bool:
    return any(sym.section is not None and sym.section.index >= SHN_LORESERVE for sym in symbols)


def _plan_sections(obj: ElfObject) -> _Plan:
    """Choose the output sections, number them and the symbols."""
    sections = [sec for sec in obj.sections if sec.sh_type != SHT_SYMTAB_SHNDX]
    symtab, strtab, shstrtab = _special_sections(obj, sections)
    symbols = _ordered_symbols(obj)
    first_global = sum(1 for s in symbols if s.bind == STB_LOCAL)
    _number(sections, symbols)
    shndx = None
    if _needs_xindex(symbols):
        # Only indices after the symbol table move, so one insertion settles it.
        shndx = next((s for s in obj.sections if s.sh_type == SHT_SYMTAB_SHNDX), None)
        shndx = shndx or Section(name=".symtab_shndx", sh_type=SHT_SYMTAB_SHNDX)
        sections.insert(sections.index(symtab) + 1, shndx)
        _number(sections, symbols)
    return _Plan(sections, symbols, first_global, symtab, strtab, shstrtab, shndx)


def _check_member(obj: ElfObject, member: Optional[Section], present: Dict[int, Section], what: str) -> int:
    if member is None or present.get(id(member)) is not member:
        raise ElfWriteError("%s: %s refers to section %r, which is not in the model's section list"
                            % (obj.path, what, member.name if member else None))
    return member.index


def _symbol_index(obj: ElfObject, sym: Symbol, present: Dict[int, Symbol], what: str) -> int:
    if present.get(id(sym)) is not sym:
        raise ElfWriteError("%s: %s refers to symbol %r, which is not in the model's symbol list"
                            % (obj.path, what, sym.name))
    return sym.index


def _symtab_contents(obj: ElfObject, plan: _Plan, present: Dict[int, Section]) -> None:
    """.symtab, .strtab and (when planned) .symtab_shndx bytes."""
    strings = StringTable()
    out: List[bytes] = []
    xwords: List[int] = []
    pack = SYM.pack
    for sym in plan.symbols:
        xword = 0
        if sym.section is not None:
            shndx = _check_member(obj, sym.section, present, "symbol %r" % sym.name)
            if shndx >= SHN_LORESERVE:
                shndx, xword = SHN_XINDEX, shndx
        elif sym.shndx in _SPECIAL_SHNDX or SHN_LORESERVE <= sym.shndx < SHN_XINDEX:
            shndx = sym.shndx
        else:
            raise ElfWriteError("%s: symbol %r has section index %d but no section; set Symbol.section, "
                                "or shndx to SHN_UNDEF/ABS/COMMON/LIVEPATCH" % (obj.path, sym.name, sym.shndx))
        # Section symbols are named by their section; like as(1), leave st_name empty.
        name = 0 if sym.type == STT_SECTION else strings.add(sym.name)
        out.append(pack(name, (sym.bind << 4) | (sym.type & 0xF), sym.other, shndx, sym.value, sym.size))
        xwords.append(xword)
    plan.contents[id(plan.symtab)] = b"".join(out)
    plan.contents[id(plan.strtab)] = strings.data()
    plan.links[id(plan.symtab)] = plan.strtab.index
    plan.infos[id(plan.symtab)] = plan.first_global
    if plan.shndx is not None:
        plan.contents[id(plan.shndx)] = struct.pack("<%dI" % len(xwords), *xwords)
        plan.links[id(plan.shndx)] = plan.symtab.index


def _rela_contents(obj: ElfObject, sec: Section, plan: _Plan, present: Dict[int, Section],
                   symbols: Dict[int, Symbol]) -> None:
    base = _check_member(obj, sec.base, present, "relocation section %r (its base)" % sec.name)
    pack = RELA.pack
    what = "a relocation in %r" % sec.name
    try:
        raw = [pack(r.offset, (symbols[id(r.sym)].index << 32) | r.type, r.addend) for r in sec.relocations]
    except KeyError:
        for rel in sec.relocations:
            _symbol_index(obj, rel.sym, symbols, what)
        raise
    except struct.error as exc:
        raise ElfWriteError("%s: relocation section %r has an entry out of range: %s" % (obj.path, sec.name, exc))
    plan.contents[id(sec)] = b"".join(raw)
    plan.links[id(sec)] = plan.symtab.index
    plan.infos[id(sec)] = base


def _group_contents(obj: ElfObject, sec: Section, plan: _Plan, present: Dict[int, Section],
                    symbols: Dict[int, Symbol]) -> None:
    if sec.signature is None:
        raise ElfWriteError("%s: group section %r has no signature symbol" % (obj.path, sec.name))
    members = [_check_member(obj, m, present, "group section %r" % sec.name) for m in sec.group_members]
    plan.contents[id(sec)] = struct.pack("<%dI" % (len(members) + 1), sec.group_flags, *members)
    plan.links[id(sec)] = plan.symtab.index
    plan.infos[id(sec)] = _symbol_index(obj, sec.signature, symbols, "group section %r" % sec.name)


def _plain_contents(obj: ElfObject, sec: Section, plan: _Plan, present: Dict[int, Section]) -> None:
    if sec.sh_type == SHT_NOBITS:
        plan.contents[id(sec)] = b""
    elif sec.size != len(sec.data):
        raise ElfWriteError("%s: section %r has size %d but %d bytes of data; update Section.size with data"
                            % (obj.path, sec.name, sec.size, len(sec.data)))
    else:
        plan.contents[id(sec)] = sec.data
    if sec.link is not None:
        plan.links[id(sec)] = _check_member(obj, sec.link, present, "sh_link of section %r" % sec.name)
    plan.infos[id(sec)] = sec.info_raw


def _fill_contents(obj: ElfObject, plan: _Plan) -> None:
    present = {id(sec): sec for sec in plan.sections}
    symbols = {id(sym): sym for sym in plan.symbols}
    regenerated = {id(plan.symtab), id(plan.strtab), id(plan.shstrtab), id(plan.shndx)}
    _symtab_contents(obj, plan, present)
    for sec in plan.sections:
        if id(sec) in regenerated:
            continue
        if sec.sh_type == SHT_RELA:
            _rela_contents(obj, sec, plan, present, symbols)
        elif sec.sh_type == SHT_REL:
            raise ElfWriteError("%s: SHT_REL section %r cannot be written (x86-64 uses RELA)" % (obj.path, sec.name))
        elif sec.sh_type == SHT_GROUP:
            _group_contents(obj, sec, plan, present, symbols)
        else:
            _plain_contents(obj, sec, plan, present)
    names = StringTable()
    for sec in plan.sections:
        plan.names[id(sec)] = names.add(sec.name)
    plan.contents[id(plan.shstrtab)] = names.data()


# sh_entsize/sh_addralign the writer imposes on the sections it regenerates.
_FIXED_GEOMETRY = {SHT_SYMTAB: (SYM_ENTSIZE, 8), SHT_RELA: (RELA_ENTSIZE, 8), SHT_GROUP: (GROUP_WORD, GROUP_WORD),
                   SHT_SYMTAB_SHNDX: (GROUP_WORD, GROUP_WORD), SHT_STRTAB: (0, 1)}


def _geometry(sec: Section, regenerated: bool) -> tuple:
    if regenerated or sec.sh_type in (SHT_RELA, SHT_GROUP):
        return _FIXED_GEOMETRY.get(sec.sh_type, (sec.entsize, sec.addralign))
    return sec.entsize, sec.addralign


def _align(offset: int, alignment: int) -> int:
    if alignment > 1:
        return (offset + alignment - 1) & ~(alignment - 1)
    return offset


def serialise(obj: ElfObject) -> bytes:
    """The bytes of ``obj`` as an ELF64 relocatable object (indices updated in the model)."""
    if obj.e_type != ET_REL:
        raise ElfWriteError("%s: only relocatable objects (ET_REL) can be written, e_type is %d" % (obj.path, obj.e_type))
    if obj.e_machine != EM_X86_64:
        raise ElfWriteError("%s: only x86-64 objects can be written, e_machine is %d" % (obj.path, obj.e_machine))
    plan = _plan_sections(obj)
    _fill_contents(obj, plan)
    regenerated = {id(plan.symtab), id(plan.strtab), id(plan.shstrtab), id(plan.shndx)}
    body = bytearray(EHDR_SIZE)
    headers = [bytes(SHDR_SIZE)]  # section 0; patched below for extended numbering
    for sec in plan.sections:
        entsize, align = _geometry(sec, id(sec) in regenerated)
        if align and align & (align - 1):
            raise ElfWriteError("%s: section %r has alignment %d, not a power of two" % (obj.path, sec.name, align))
        data = plan.contents[id(sec)]
        offset = _align(len(body), align)
        body.extend(bytes(offset - len(body)))
        body.extend(data)
        size = sec.size if sec.sh_type == SHT_NOBITS else len(data)
        flags = sec.flags if id(sec) not in regenerated else 0
        headers.append(SHDR.pack(plan.names[id(sec)], sec.sh_type, flags, sec.addr, offset, size,
                                 plan.links.get(id(sec), 0), plan.infos.get(id(sec), 0), align, entsize))
    count = len(headers)
    shstrndx = plan.shstrtab.index
    if count >= SHN_LORESERVE or shstrndx >= SHN_LORESERVE:
        # Extended numbering: the real values live in section 0's sh_size / sh_link.
        headers[0] = SHDR.pack(0, 0, 0, 0, 0, count if count >= SHN_LORESERVE else 0,
                               shstrndx if shstrndx >= SHN_LORESERVE else 0, 0, 0, 0)
    shoff = _align(len(body), 8)
    body.extend(bytes(shoff - len(body)))
    body.extend(b"".join(headers))
    ident = ELF_MAGIC + bytes([ELFCLASS64, ELFDATA2LSB, 1, obj.ei_osabi, obj.ei_abiversion]) + bytes(7)
    EHDR.pack_into(body, 0, ident, ET_REL, EM_X86_64, 1, 0, 0, shoff, obj.e_flags, EHDR_SIZE, 0, 0,
                   SHDR_SIZE, count if count < SHN_LORESERVE else 0,
                   shstrndx if shstrndx < SHN_LORESERVE else SHN_XINDEX)
    return bytes(body)


def write_elf(obj: ElfObject, path: str) -> None:
    """Write ``obj`` to ``path`` atomically (temporary file in the same directory, then rename):
    readers see the old file or the whole new one, never a part."""
    path = str(path)
    data = serialise(obj)
    directory = os.path.dirname(os.path.abspath(path))
    mode = _target_mode(path)
    fd, tmp = _create_temporary(directory, os.path.basename(path))
    try:
        # No fsync: the rename makes the file appear whole or not at all to concurrent readers, which
        # is what an engine output needs (the build links it at once); forcing it to disk cost more
        # than the whole diff of a small object.
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _create_temporary(directory: str, base: str) -> tuple:
    """(fd, path) of a new private file beside the output (O_EXCL: never someone else's file).

    Not ``tempfile``: its import (random, shutil and the compressors) costs the engine's start-up
    more than this whole function, and the engine starts once per object.
    """
    for attempt in range(100):
        tmp = os.path.join(directory, ".%s.%d.%d.tmp" % (base, os.getpid(), attempt))
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), tmp
        except FileExistsError:
            continue  # a leftover of an earlier process with the same pid
    raise ElfWriteError("%s: cannot create a temporary file beside it in %s" % (base, directory))


def _target_mode(path: str) -> int:
    """Keep the mode of a file being replaced; new files get 0644 less the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o644 & ~umask
