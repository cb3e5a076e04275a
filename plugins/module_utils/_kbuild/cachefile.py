# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Results measured once on a release's files and kept as JSON beside the build cache.

A cached result carries the key it was computed for (the input files' path, size and mtime and a
format number); a result whose key differs is recomputed.  Writes are atomic, so a reader sees a
whole file or none.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional


def file_key(path: Path) -> str:
    """Identity of a file for caching: its real path, size and mtime."""
    st = os.stat(path)
    return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"


def read_keyed_json(cache: Path, key: Dict[str, object]) -> Optional[Dict[str, object]]:
    """The cached document when every entry of ``key`` matches, else None (absent, unreadable, stale)."""
    try:
        data = json.loads(Path(cache).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and all(data.get(k) == v for k, v in key.items()):
        return data
    return None


def write_keyed_json(cache: Path, key: Dict[str, object], payload: Dict[str, object]) -> None:
    """Write ``key`` and ``payload`` as one JSON document, atomically."""
    cache = Path(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**key, **payload}, indent=1, sort_keys=True))
    os.replace(tmp, cache)
