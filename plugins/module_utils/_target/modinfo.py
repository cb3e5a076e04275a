# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Read a kernel module's ``.modinfo`` section with the standard library only.

Targets have no pyelftools, so this is a minimal ELF section-table reader: enough to find
``.modinfo`` (NUL-separated ``key=value`` strings) and report the module's name, vermagic and
livepatch flag.  Compressed modules (``.ko.xz``, ``.ko.gz``; ``.ko.zst`` through the ``zstd``
command when it exists) are decompressed in memory first.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

ELF_MAGIC = b"\x7fELF"
XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SHN_XINDEX = 0xFFFF


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


def decompress_module(path: str, data: bytes) -> bytes:
    """Plain ELF bytes of a possibly compressed module file."""
    if data.startswith(ELF_MAGIC):
        return data
    try:
        if data.startswith(XZ_MAGIC):
            return lzma.decompress(data)
        if data.startswith(GZIP_MAGIC):
            return gzip.decompress(data)
    except (lzma.LZMAError, OSError, EOFError) as exc:
        raise ModinfoError(f"{path}: corrupt compressed module: {exc}") from exc
    if data.startswith(ZSTD_MAGIC):
        return _zstd_decompress(path, data)
    raise ModinfoError(f"{path}: not an ELF file (no ELF magic) nor an xz/gzip/zstd compressed one")


def _zstd_decompress(path: str, data: bytes) -> bytes:
    # Python's zstd support arrives only in 3.14; the zstd command is the portable route.
    tool = shutil.which("zstd")
    if tool is None:
        raise ModinfoError(f"{path}: zstd-compressed module but no 'zstd' command on this host")
    proc = subprocess.run([tool, "-dc"], input=data, capture_output=True, check=False)
    if proc.returncode != 0:
        raise ModinfoError(f"{path}: zstd failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def _section_headers(path: str, elf: bytes) -> Tuple[List[Tuple[int, int, int]], int]:
    """(name offset, file offset, size) for every section, and the section-name table index."""
    if len(elf) < 64 or not elf.startswith(ELF_MAGIC):
        raise ModinfoError(f"{path}: truncated or not ELF")
    elf_class, elf_data = elf[4], elf[5]
    if elf_class not in (1, 2) or elf_data not in (1, 2):
        raise ModinfoError(f"{path}: unknown ELF class {elf_class} / data encoding {elf_data}")
    end = "<" if elf_data == 1 else ">"
    if elf_class == 2:
        shoff, = struct.unpack_from(end + "Q", elf, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", elf, 0x3A)
        shdr, name_i, off_i, size_i = end + "IIQQQQIIQQ", 0, 4, 5
    else:
        shoff, = struct.unpack_from(end + "I", elf, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", elf, 0x2E)
        shdr, name_i, off_i, size_i = end + "IIIIIIIIII", 0, 4, 5
    if shoff == 0 or shentsize < struct.calcsize(shdr):
        raise ModinfoError(f"{path}: ELF file has no section header table")

    def entry(index: int) -> tuple:
        at = shoff + index * shentsize
        if at + struct.calcsize(shdr) > len(elf):
            raise ModinfoError(f"{path}: section header {index} lies beyond the end of the file")
        return struct.unpack_from(shdr, elf, at)

    first = entry(0)
    if shnum == 0:  # more than 0xff00 sections: the count lives in section 0's size
        shnum = first[size_i]
    if shstrndx == SHN_XINDEX:
        shstrndx = first[6]  # sh_link
    sections = [(e[name_i], e[off_i], e[size_i]) for e in (entry(i) for i in range(shnum))]
    if shstrndx >= len(sections):
        raise ModinfoError(f"{path}: section name table index {shstrndx} out of range")
    return sections, shstrndx


def find_section(path: str, elf: bytes, wanted: str) -> Optional[bytes]:
    """Bytes of the section called ``wanted``, or None when the file has none."""
    sections, shstrndx = _section_headers(path, elf)
    _name, str_off, str_size = sections[shstrndx]
    names = elf[str_off:str_off + str_size]
    for name_off, off, size in sections:
        end = names.find(b"\0", name_off)
        if names[name_off:end].decode("ascii", "replace") == wanted:
            if off + size > len(elf):
                raise ModinfoError(f"{path}: section {wanted} runs past the end of the file")
            return elf[off:off + size]
    return None


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
    elf = decompress_module(path, data)
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
