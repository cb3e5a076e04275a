# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Read one named section of an ELF file with the standard library only.

The compiler check needs only the ``.comment`` strings of vmlinux (600 MB) or a
module; the ELF layer's section table reader (``_elf.layout``) reads the headers
alone, so this stays free of pyelftools and never loads the whole file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.errors import ElfFormatError
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.layout import read_file_section_table
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError


def section_locations(path: Path) -> Dict[str, Tuple[int, int, int]]:
    """Section name -> (file offset, size, type) of an ELF file; KbuildError if it is not one."""
    try:
        with open(path, "rb") as fh:
            table = read_file_section_table(fh, str(path))
    except ElfFormatError as exc:
        raise KbuildError(str(exc)) from exc
    if not table.headers:
        raise KbuildError(f"{path} has no usable section header table")
    return {name: (hdr.offset, hdr.size, hdr.type) for name, hdr in table.by_name().items()}


def read_section(path: Path, name: str) -> bytes:
    """Bytes of section ``name``; KbuildError if the file is not ELF or lacks the section."""
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
