# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Read a kernel module's ``.modinfo`` section with the standard library only.

Targets have no pyelftools: the section table comes from the collection's standard-library ELF
layer (``_elf.layout``, shipped in the target runtime archive beside this package), enough to find
``.modinfo`` (NUL-separated ``key=value`` strings) and report the module's name, vermagic and
livepatch flag.  Compressed modules (``.ko.xz``, ``.ko.gz``, ``.ko.zst``) are decompressed first
(``_elf.compressed``).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .._elf.compressed import decompress_module
from .._elf.errors import ElfFormatError
from .._elf.layout import bytes_reader, read_section_table


class ModinfoError(ValueError):
    """The file is not a readable kernel module; the message names the file and the problem."""


@dataclass(frozen=True)
class ModInfo:
    """What ``.modinfo`` says about one module file."""

    path: str
    name: str
    vermagic: str
    livepatch: bool
    fields: Dict[str, List[str]] = field(default_factory=dict)

    @property
    def release(self) -> str:
        """The kernel release the module was built for: vermagic's first word."""
        return self.vermagic.split()[0] if self.vermagic else ""

    @property
    def srcversion(self) -> Optional[str]:
        return self.first("srcversion")

    def first(self, key: str) -> Optional[str]:
        values = self.fields.get(key)
        return values[0] if values else None


def module_name_from_filename(path: str) -> str:
    """What the kernel would call a module file: basename without ``.ko*``, ``-`` → ``_``."""
    base = os.path.basename(path)
    for suffix in (".ko.xz", ".ko.gz", ".ko.zst", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return normalize_module_name(base)


# What the kernel accepts as a module name: MODULE_NAME_LEN is 64 - sizeof(unsigned long), one
# byte of it the terminating NUL; kbuild makes names of letters, digits, '_' (and '-' in files).
MODULE_NAME_MAX = 55
_MODULE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,%d}$" % MODULE_NAME_MAX)


def is_module_name(name: str) -> bool:
    return bool(_MODULE_NAME_RE.fullmatch(name or ""))


def normalize_module_name(name: str) -> str:
    """The kernel's name for ``name`` (``-`` and ``_`` are alike; sysfs shows ``_``).

    Anything that is not a kernel module name is refused here, before a sysfs or file path can be
    made from it (``../x``, spaces, ``;``, an empty or over-long name).
    """
    if not is_module_name(name):
        raise ModinfoError(f"{name!r} is not a kernel module name: letters, digits, '_' and '-' only, "
                           f"1 to {MODULE_NAME_MAX} characters")
    return name.replace("-", "_")


def find_section(path: str, elf: bytes, wanted: str) -> Optional[bytes]:
    """Bytes of the section called ``wanted``, or None when the file has none."""
    try:
        table = read_section_table(elf[:64], bytes_reader(elf, path), path)
    except ElfFormatError as exc:
        raise ModinfoError(str(exc)) from exc
    if not table.headers:
        raise ModinfoError(f"{path}: ELF file has no section header table")
    index = table.index_of(wanted)
    if index is None:
        return None
    hdr = table.headers[index]
    if hdr.offset + hdr.size > len(elf):
        raise ModinfoError(f"{path}: section {wanted} runs past the end of the file")
    return elf[hdr.offset:hdr.offset + hdr.size]


def parse_modinfo_strings(blob: bytes) -> Dict[str, List[str]]:
    """``key=value`` strings (NUL-separated, NUL-padded) → key → values, in file order."""
    fields: Dict[str, List[str]] = {}
    for raw in blob.split(b"\0"):
        if not raw or b"=" not in raw:
            continue
        key, _sep, value = raw.decode("utf-8", "replace").partition("=")
        fields.setdefault(key, []).append(value)
    return fields


def read_modinfo_bytes(path: str, data: bytes) -> ModInfo:
    """ModInfo from a module file's bytes (compressed or not)."""
    try:
        elf = decompress_module(path, data)
    except ElfFormatError as exc:
        raise ModinfoError(str(exc)) from exc
    blob = find_section(path, elf, ".modinfo")
    if blob is None:
        raise ModinfoError(f"{path}: no .modinfo section: not a kernel module")
    fields = parse_modinfo_strings(blob)
    vermagic = (fields.get("vermagic") or [""])[0]
    if not vermagic:
        raise ModinfoError(f"{path}: .modinfo has no vermagic: not a loadable kernel module")
    name = (fields.get("name") or [module_name_from_filename(path)])[0]
    livepatch = (fields.get("livepatch") or [""])[0] == "Y"
    return ModInfo(path=path, name=normalize_module_name(name), vermagic=vermagic,
                   livepatch=livepatch, fields=fields)


def read_modinfo(path: str) -> ModInfo:
    """ModInfo of a module file on disk."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ModinfoError(f"{path}: cannot read: {exc.strerror}") from exc
    return read_modinfo_bytes(path, data)


def sha256_of(path: str) -> str:
    """Hex SHA-256 of a file, read in chunks (modules can be megabytes with debug info)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
