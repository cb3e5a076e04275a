# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""The parent's symbol table (vmlinux or a module) for the diff engine, parsed once per file and cached.

Reading vmlinux's 119,000 symbols through the ELF reader costs 0.6-1.5 s a build; the same rows
kept as a ``marshal`` file (7 MB, one tuple per symbol) load in about 0.07 s.  The cache entry
is keyed by the file's real path, size and mtime and a format number; any difference re-reads
the file.  ``marshal`` is used only for files this cache wrote itself (it holds plain tuples,
and a corrupt or foreign file is simply re-read from the ELF).
"""

from __future__ import annotations

import hashlib
import marshal
import os
from pathlib import Path
from typing import List, Optional, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.cachefile import file_key

CACHE_FORMAT = 1
# name, value, size, bind, type, defined, index: the fields of the engine's ParentSymbol.
Row = Tuple[str, int, int, int, int, bool, int]


def _cache_path(cache_dir: Path, path: Path) -> Path:
    ident = hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{Path(path).name}-{ident}.symtab"


def _read_rows(cache: Path, key: str) -> Optional[List[Row]]:
    try:
        with open(cache, "rb") as fh:
            data = marshal.load(fh)
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(data, tuple) or len(data) != 3 or data[:2] != (CACHE_FORMAT, key):
        return None
    return data[2]


def _write_rows(cache: Path, key: str, rows: List[Row]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        marshal.dump((CACHE_FORMAT, key, rows), fh)
    os.replace(tmp, cache)


def parent_symtab(path: Path, objname: str, cache_dir: Optional[Path]):
    """The engine's ``ParentSymtab`` of ``path``, through the cache when ``cache_dir`` is given.

    Only ELF parents are cached (vmlinux, modules); readelf text goes to the engine's loader.
    """
    # Imported here: the engine is loaded only when a build diffs objects.
    from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_symbols
    from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.lookup import (
        ParentSymbol,
        ParentSymtab,
        load_parent_symtab,
        symbols_from_model,
    )

    with open(path, "rb") as fh:
        is_elf = fh.read(4) == b"\x7fELF"
    if cache_dir is None or not is_elf:
        return load_parent_symtab(str(path), objname)
    cache, key = _cache_path(cache_dir, path), file_key(path)
    rows = _read_rows(cache, key)
    if rows is not None:
        return ParentSymtab([ParentSymbol(*row) for row in rows], objname)
    symbols = symbols_from_model(read_symbols(str(path)))
    _write_rows(cache, key, [(s.name, s.value, s.size, s.bind, s.type, s.defined, s.index) for s in symbols])
    return ParentSymtab(symbols, objname)
