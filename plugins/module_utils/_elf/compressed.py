# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Plain ELF bytes of a kernel module file that may be compressed (``.ko.xz``, ``.ko.gz``, ``.ko.zst``).

Standard library only (part of the ELF layer the target runtime ships).  xz and gzip are
decompressed in memory; zstd goes through the ``zstd`` command, since Python's own zstd support
arrives only with 3.14.  The format is told by the file's magic bytes, not by its name.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess

from .errors import ElfFormatError
from .layout import ELF_MAGIC

XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def decompress_module(path: str, data: bytes) -> bytes:
    """Plain ELF bytes of a possibly compressed module file; ElfFormatError naming ``path`` otherwise."""
    if data.startswith(ELF_MAGIC):
        return data
    try:
        if data.startswith(XZ_MAGIC):
            return lzma.decompress(data)
        if data.startswith(GZIP_MAGIC):
            return gzip.decompress(data)
    except (lzma.LZMAError, OSError, EOFError) as exc:
        raise ElfFormatError(f"{path}: corrupt compressed module: {exc}") from exc
    if data.startswith(ZSTD_MAGIC):
        return _zstd_decompress(path, data)
    raise ElfFormatError(f"{path}: not an ELF file (no ELF magic) nor an xz/gzip/zstd compressed one")


def _zstd_decompress(path: str, data: bytes) -> bytes:
    tool = shutil.which("zstd")
    if tool is None:
        raise ElfFormatError(f"{path}: zstd-compressed module but no 'zstd' command on this host")
    proc = subprocess.run([tool, "-dc"], input=data, capture_output=True, check=False)
    if proc.returncode != 0:
        raise ElfFormatError(f"{path}: zstd failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout
