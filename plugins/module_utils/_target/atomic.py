# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Write a file so that a reader sees the old bytes or the new ones, never half of either.

Used for what other programs read while it is rewritten: the node-exporter textfile (the
collector may read at any moment) and the controller's runtime archive (a concurrent play may
copy it).  Standard library only.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """``data`` into ``path`` through a temporary file in the same directory and a rename."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    # A dot name with a .tmp suffix: never matched by node-exporter's *.prom or our archive name.
    fd, tmp = tempfile.mkstemp(prefix=".kpatch-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def holds(path: str, data: bytes, mode: Optional[int] = None) -> bool:
    """Whether ``path`` already holds exactly ``data`` (and, given ``mode``, those permission bits):
    the writers that skip a write which would change nothing ask this."""
    try:
        with open(path, "rb") as handle:
            return handle.read() == data and (mode is None or (os.fstat(handle.fileno()).st_mode & 0o7777) == mode)
    except FileNotFoundError:
        return False
