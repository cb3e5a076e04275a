# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""The name and directory of every compile unit of a linked ELF file, read with the standard library.

``debuginfo`` needs only the first DIE of each of vmlinux's 2,200 compile units.  pyelftools
takes 13 s to reach them; here each unit's header is read, its first DIE decoded with its
abbreviation and the reader seeks to the next unit: under a second, and the 163 MB
``.debug_info`` is never loaded whole.  Only files whose DWARF needs no relocation (vmlinux,
not a ``.ko``) are read this way, DWARF 2 to 5, 32- and 64-bit.  A form this reader does not
know raises ``UnsupportedDwarf`` and the caller falls back to pyelftools.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, Optional, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.elfcomment import section_locations

DW_AT_NAME, DW_AT_COMP_DIR = 0x03, 0x1B
_FORM_STRING, _FORM_STRP, _FORM_LINE_STRP, _FORM_IMPLICIT_CONST, _FORM_INDIRECT = 0x08, 0x0E, 0x1F, 0x21, 0x16
# Forms of a fixed size in bytes ("offset" = 4 or 8 with the unit's DWARF format, "addr" = its
# address size).
_FIXED: Dict[int, object] = {
    0x01: "addr", 0x05: 2, 0x06: 4, 0x07: 8, 0x0B: 1, 0x0C: 1, 0x0E: "offset", 0x10: "offset", 0x11: 1,
    0x12: 2, 0x13: 4, 0x14: 8, 0x17: "offset", 0x19: 0, 0x1C: 4, 0x1D: "offset", 0x1E: 16, 0x1F: "offset",
    0x20: 8, 0x21: 0, 0x24: 8, 0x25: 1, 0x26: 2, 0x27: 3, 0x28: 4, 0x29: 1, 0x2A: 2, 0x2B: 3, 0x2C: 4,
    0x1F20: "offset", 0x1F21: "offset",
}
# Forms that are one LEB128 number.
_LEB = {0x0D, 0x0F, 0x15, 0x1A, 0x1B, 0x22, 0x23, 0x1F01, 0x1F02}
# Forms that are a length then that many bytes: the length's own size (None = ULEB128).
_BLOCKS = {0x03: 2, 0x04: 4, 0x09: None, 0x0A: 1, 0x18: None}

# An abbreviation: its attributes as (attribute, form, implicit constant).
Abbrev = List[Tuple[int, int, int]]


class UnsupportedDwarf(Exception):
    """The DWARF uses something this reader does not decode (the caller uses pyelftools)."""


def _uleb(data: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _sleb(data: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return (value - (1 << shift) if byte & 0x40 else value), pos


def first_abbrev(abbrevs: bytes, offset: int, code: int) -> Abbrev:
    """The attributes of abbreviation ``code`` in the table at ``offset`` of ``.debug_abbrev``."""
    pos = offset
    while True:
        found, pos = _uleb(abbrevs, pos)
        if found == 0:
            raise UnsupportedDwarf(f"abbreviation {code} not in the table at {offset:#x}")
        _tag, pos = _uleb(abbrevs, pos)
        pos += 1  # has-children flag
        attrs: Abbrev = []
        while True:
            attr, pos = _uleb(abbrevs, pos)
            form, pos = _uleb(abbrevs, pos)
            const = 0
            if form == _FORM_IMPLICIT_CONST:
                const, pos = _sleb(abbrevs, pos)
            if attr == 0 and form == 0:
                break
            attrs.append((attr, form, const))
        if found == code:
            return attrs


def _skip(data: bytes, pos: int, form: int, offset_size: int, addr_size: int) -> int:
    """Position after an attribute value of ``form`` starting at ``pos``."""
    fixed = _FIXED.get(form)
    if fixed is not None:
        return pos + (offset_size if fixed == "offset" else addr_size if fixed == "addr" else int(fixed))
    if form in _LEB:
        return _uleb(data, pos)[1]
    if form == _FORM_STRING:
        return data.index(b"\0", pos) + 1
    if form in _BLOCKS:
        width = _BLOCKS[form]
        if width is None:
            length, pos = _uleb(data, pos)
        else:
            length, pos = int.from_bytes(data[pos:pos + width], "little"), pos + width
        return pos + length
    raise UnsupportedDwarf(f"DWARF form {form:#x}")


class _Strings:
    """``.debug_str`` and ``.debug_line_str`` of a file, read on first use."""

    def __init__(self, fh: BinaryIO, sections: Dict[str, Tuple[int, int, int]]) -> None:
        self._fh, self._sections = fh, sections
        self._data: Dict[str, bytes] = {}

    def get(self, section: str, offset: int) -> str:
        if section not in self._data:
            where = self._sections.get(section)
            if where is None:
                raise UnsupportedDwarf(f"a string refers to {section}, which the file lacks")
            self._fh.seek(where[0])
            self._data[section] = self._fh.read(where[1])
        data = self._data[section]
        return data[offset:data.index(b"\0", offset)].decode(errors="replace")


def _unit_header(head: bytes) -> Tuple[int, int, int, int, int, int]:
    """(total length, offset size, version, abbrev offset, address size, header length) of a unit."""
    length = struct.unpack_from("<I", head)[0]
    pos, offset_size = 4, 4
    if length == 0xFFFFFFFF:
        length, pos, offset_size = struct.unpack_from("<Q", head, 4)[0], 12, 8
    total = pos + length
    version = struct.unpack_from("<H", head, pos)[0]
    pos += 2
    fmt = "<I" if offset_size == 4 else "<Q"
    if version >= 5:
        unit_type, addr_size = head[pos], head[pos + 1]
        abbrev = struct.unpack_from(fmt, head, pos + 2)[0]
        pos += 2 + offset_size
        if unit_type not in (1, 3):  # DW_UT_compile, DW_UT_partial: no extra header fields
            pos += 8 if unit_type in (4, 5) else offset_size + 8 if unit_type in (2, 6) else 0
    elif version >= 2:
        abbrev = struct.unpack_from(fmt, head, pos)[0]
        addr_size = head[pos + offset_size]
        pos += offset_size + 1
    else:
        raise UnsupportedDwarf(f"DWARF version {version}")
    return total, offset_size, version, abbrev, addr_size, pos


def _units(fh: BinaryIO, start: int, size: int) -> Iterator[Tuple[int, bytes]]:
    """(unit offset, the unit's first bytes) of every unit of ``.debug_info``."""
    offset = 0
    while offset < size:
        fh.seek(start + offset)
        head = fh.read(min(4096, size - offset))
        yield offset, head
        total = _unit_header(head)[0]
        if total <= 4:
            raise UnsupportedDwarf(f"unit at {offset:#x} has length {total}")
        offset += total


def compile_unit_names(path: Path) -> List[Tuple[str, str]]:
    """(DW_AT_name, DW_AT_comp_dir) of every compile unit that names its source, in file order."""
    sections = section_locations(path)
    info, abbrev = sections.get(".debug_info"), sections.get(".debug_abbrev")
    if info is None or abbrev is None:
        raise UnsupportedDwarf(f"{path} has no .debug_info/.debug_abbrev")
    out: List[Tuple[str, str]] = []
    with open(path, "rb") as fh:
        fh.seek(abbrev[0])
        abbrevs = fh.read(abbrev[1])
        strings = _Strings(fh, sections)
        tables: Dict[Tuple[int, int], Abbrev] = {}
        for _offset, head in _units(fh, info[0], info[1]):
            named = _first_die_names(head, abbrevs, tables, strings)
            if named is not None:
                out.append(named)
    return out


def _first_die_names(head: bytes, abbrevs: bytes, tables: Dict[Tuple[int, int], Abbrev],
                     strings: _Strings) -> Optional[Tuple[str, str]]:
    _total, offset_size, _version, abbrev_offset, addr_size, pos = _unit_header(head)
    code, pos = _uleb(head, pos)
    if code == 0:
        return None
    if (abbrev_offset, code) not in tables:
        tables[(abbrev_offset, code)] = first_abbrev(abbrevs, abbrev_offset, code)
    values: Dict[int, str] = {}
    for attr, form, _const in tables[(abbrev_offset, code)]:
        if form == _FORM_INDIRECT:
            form, pos = _uleb(head, pos)
        if attr in (DW_AT_NAME, DW_AT_COMP_DIR):
            values[attr] = _string_value(head, pos, form, offset_size, strings)
        pos = _skip(head, pos, form, offset_size, addr_size)
        if pos > len(head):
            raise UnsupportedDwarf("a compile unit's first DIE is longer than 4096 bytes")
    if DW_AT_NAME not in values:
        return None
    return values[DW_AT_NAME], values.get(DW_AT_COMP_DIR, "")


def _string_value(head: bytes, pos: int, form: int, offset_size: int, strings: _Strings) -> str:
    if form == _FORM_STRING:
        return head[pos:head.index(b"\0", pos)].decode(errors="replace")
    if form in (_FORM_STRP, _FORM_LINE_STRP):
        offset = int.from_bytes(head[pos:pos + offset_size], "little")
        return strings.get(".debug_str" if form == _FORM_STRP else ".debug_line_str", offset)
    raise UnsupportedDwarf(f"a compile unit's name has form {form:#x}")
