# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Read one named section of an ELF64 little-endian file with the standard library only.

The compiler check needs only the ``.comment`` strings of vmlinux (600 MB) or a
module; reading the section header table directly keeps it free of pyelftools,
so it also runs where only the standard library is available.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Dict, List, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")


def section_locations(path: Path) -> Dict[str, Tuple[int, int, int]]:
    """Section name -> (file offset, size, type) of an ELF64 LE file; KbuildError if it is not one."""
    with open(path, "rb") as fh:
        ident = fh.read(_EHDR.size)
        if len(ident) < _EHDR.size or ident[:4] != b"\x7fELF":
            raise KbuildError(f"{path} is not an ELF file")
        if ident[4] != 2 or ident[5] != 1:
            raise KbuildError(f"{path} is not a 64-bit little-endian ELF file")
        fields = _EHDR.unpack(ident)
        shoff, shentsize, shnum, shstrndx = fields[6], fields[11], fields[12], fields[13]
        if shoff == 0 or shentsize != _SHDR.size:
            raise KbuildError(f"{path} has no usable section header table")
        fh.seek(shoff)
        table = fh.read(shentsize * shnum)
        headers = [_SHDR.unpack_from(table, i * shentsize) for i in range(shnum)]
        if shnum == 0 or shstrndx >= shnum:
            raise KbuildError(f"{path} has no section name table")
        strtab_hdr = headers[shstrndx]
        fh.seek(strtab_hdr[4])
        names = fh.read(strtab_hdr[5])
    found: Dict[str, Tuple[int, int, int]] = {}
    for hdr in headers:
        end = names.find(b"\0", hdr[0])
        found.setdefault(names[hdr[0]:end].decode(errors="replace"), (hdr[4], hdr[5], hdr[1]))
    return found


def read_section(path: Path, name: str) -> bytes:
    """Bytes of section ``name``; KbuildError if the file is not ELF64 LE or lacks the section."""
    where = section_locations(path).get(name)
    if where is None:
        raise KbuildError(f"{path} has no {name} section")
    with open(path, "rb") as fh:
        fh.seek(where[0])
        return fh.read(where[1])


def comment_strings(path: Path) -> List[str]:
    """The NUL-separated strings of ``.comment`` (compiler and linker identification)."""
    data = read_section(path, ".comment")
    return [s.decode(errors="replace") for s in data.split(b"\0") if s]
