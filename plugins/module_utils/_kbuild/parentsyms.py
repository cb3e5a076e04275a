# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""The parent's symbol table (vmlinux or a module) for the diff engine, parsed once per file and cached.

Reading vmlinux's 119,000 symbols through the ELF reader costs 0.6-1.5 s a build.  The cache
keeps the table in the engine's own indexed form (``SymbolRows``: a few flat columns and the
rows of each name), written with ``marshal``: loading it costs about 0.02 s for vmlinux (a few
large copies and one split of the names), and no row becomes a Python object until a lookup
reads it.
The entry is keyed by the file's real path, size and mtime and a format number; any difference
re-reads the file.  ``marshal`` is used only for files this cache wrote itself (it holds plain
strings, bytes and numbers), and a corrupt or foreign file is simply re-read from the ELF.
"""

from __future__ import annotations

import hashlib
import marshal
import os
from pathlib import Path
from typing import Dict, Optional

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.cachefile import file_key

# 2: the indexed columns, with each row's .init* flag (format 1 kept rows without it).
CACHE_FORMAT = 2


def _cache_path(cache_dir: Path, path: Path) -> Path:
    ident = hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{Path(path).name}-{ident}.symtab"


def _read_payload(cache: Path, key: str) -> Optional[Dict[str, object]]:
    try:
        with open(cache, "rb") as fh:
            data = marshal.load(fh)
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(data, tuple) or len(data) != 3 or data[:2] != (CACHE_FORMAT, key):
        return None
    return data[2]


def _write_payload(cache: Path, key: str, payload: Dict[str, object]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        marshal.dump((CACHE_FORMAT, key, payload), fh)
    os.replace(tmp, cache)


def parent_symtab(path: Path, objname: str, cache_dir: Optional[Path]):
    """The engine's ``ParentSymtab`` of ``path``, through the cache when ``cache_dir`` is given.

    Only ELF parents are cached (vmlinux, modules); readelf text goes to the engine's loader.
    """
    # Imported here: the engine is loaded only when a build diffs objects.
    from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_symbols
    from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.lookup import (
        ParentSymtab,
        load_parent_symtab,
        symbols_from_model,
    )
    from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.parentrows import SymbolRows

    with open(path, "rb") as fh:
        is_elf = fh.read(4) == b"\x7fELF"
    if cache_dir is None or not is_elf:
        return load_parent_symtab(str(path), objname)
    cache, key = _cache_path(cache_dir, path), file_key(path)
    payload = _read_payload(cache, key)
    if payload is not None:
        try:
            return ParentSymtab(SymbolRows.from_payload(payload), objname)
        except ValueError:
            pass  # written by another version or machine, or damaged: read the ELF again
    table = ParentSymtab(symbols_from_model(read_symbols(str(path))), objname)
    _write_payload(cache, key, table.rows.to_payload())
    return table
