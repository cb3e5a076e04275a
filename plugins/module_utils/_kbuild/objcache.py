# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Unpatched objects kept per prepared tree, so a second patch to a file compiles only its patched side.

The unpatched object of ``fs/proc/meminfo.o`` is the same bytes for every patch of a release as
long as nothing it was compiled from changed.  An entry is found by a key of the tree's stamp
(release, config, source identity, make variables, the time the tree was prepared), the object's
name, the extra flags and the compiler's ``.comment`` identity; it is used only when every file
kbuild recorded as a dependency of the object (its ``.<name>.o.cmd``: the source and each header)
still has the content it had when the object was compiled.  Anything else is a miss and kbuild
compiles the object.  Trees without a stamp (an out-of-tree module's copy) are never cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prepared import (
    STAMP_NAME,
    PreparedTree,
    tree_lock,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.recorded import prove

CACHE_FORMAT = 1
CACHE_DIRNAME = "unpatched-objects"
# Entries kept per key (object, flags, compiler, tree): one per content its dependencies had.
MAX_ENTRIES = 4

# (tree, objects, extra_cflags, out_dir, jobs) -> built objects: ``tree.build_objects``.
Builder = Callable[..., List[object]]


@dataclass(frozen=True)
class CacheOutcome:
    """Which objects came from the cache and which kbuild compiled; the proven recorded commands."""

    reused: List[str]
    compiled: List[str]
    # object -> kbuild's recorded command, proven to reproduce its unpatched object (recorded.py)
    commands: Dict[str, str] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def entry_key(tree: PreparedTree, relobj: str, extra_cflags: str, compiler: str) -> Optional[str]:
    """The cache key of ``relobj`` in ``tree``; None when the tree has no stamp (never cached)."""
    if tree.kbuild_dir is not None:
        return None
    try:
        stamp = json.loads((tree.root / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None
    parts = {"format": CACHE_FORMAT, "stamp": stamp, "object": relobj, "cflags": extra_cflags,
             "compiler": compiler}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def object_dependencies(tree: PreparedTree, relobj: str) -> Optional[List[str]]:
    """The files kbuild recorded for ``relobj`` (source and headers), from its ``.cmd`` file."""
    obj = Path(relobj)
    cmd = tree.root / obj.parent / f".{obj.name}.cmd"
    try:
        text = cmd.read_text(errors="replace")
    except OSError:
        return None
    deps: List[str] = []
    for line in text.splitlines():
        line = line.strip().rstrip("\\").strip()
        if line.startswith("source_"):
            deps.append(line.split(":=", 1)[1].strip())
        elif line and not line.startswith(("deps_", "cmd_", "$(", "#")) and ":" not in line:
            deps.append(line)
    return deps or None


def dependency_hashes(tree: PreparedTree, deps: Sequence[str]) -> Optional[Dict[str, str]]:
    """path -> sha256 of each dependency; None when one is missing (the entry cannot be checked)."""
    hashes = {}
    for dep in deps:
        path = Path(dep) if os.path.isabs(dep) else tree.root / dep
        try:
            hashes[dep] = _sha256(path)
        except OSError:
            return None
    return hashes


def _entries(tree: PreparedTree, key: str) -> Path:
    return tree.state_dir / CACHE_DIRNAME / key


def lookup(tree: PreparedTree, key: str) -> Optional[Path]:
    """A cached object of ``key`` whose every recorded dependency still has its recorded content."""
    try:
        entries = sorted((p for p in _entries(tree, key).iterdir()
                          if not p.name.startswith(".")), key=lambda p: -p.stat().st_mtime_ns)
    except OSError:
        return None
    for entry in entries:
        hit = _valid_object(tree, entry)
        if hit is not None:
            return hit
    return None


def _valid_object(tree: PreparedTree, entry: Path) -> Optional[Path]:
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    recorded = manifest.get("dependencies")
    if not isinstance(recorded, dict) or not recorded:
        return None
    if dependency_hashes(tree, sorted(recorded)) != recorded:
        return None
    obj = entry / "object.o"
    return obj if obj.is_file() and _sha256(obj) == manifest.get("object_sha256") else None


def store(tree: PreparedTree, key: str, relobj: str, built: Path) -> bool:
    """Keep ``built`` (just compiled) under ``key`` beside the entries of other dependency contents.

    Entries of one key differ in what the object was compiled from (the source or a header as
    patched, or restored); the newest ``MAX_ENTRIES`` are kept.  False if it cannot be checked.
    """
    deps = object_dependencies(tree, relobj)
    hashes = dependency_hashes(tree, deps) if deps else None
    if not hashes:
        return False
    digest = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:32]
    entry = _entries(tree, key) / digest
    tmp = entry.with_name(f".{digest}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(built, tmp / "object.o")
    (tmp / "manifest.json").write_text(json.dumps(
        {"object": relobj, "object_sha256": _sha256(built), "dependencies": hashes}, indent=1, sort_keys=True))
    shutil.rmtree(entry, ignore_errors=True)
    os.replace(tmp, entry)
    _drop_oldest(entry.parent)
    return True


def _drop_oldest(key_dir: Path) -> None:
    entries = sorted((p for p in key_dir.iterdir() if not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in entries[MAX_ENTRIES:]:
        shutil.rmtree(old, ignore_errors=True)


def clear(state_dir: Path) -> None:
    """Drop every cached object of a tree (it is being prepared afresh)."""
    shutil.rmtree(Path(state_dir) / CACHE_DIRNAME, ignore_errors=True)


def build_unpatched(tree: PreparedTree, objects: Sequence[str], extra_cflags: str, out_dir: Path, jobs: int,
                    compiler: Optional[str], build: Builder, prove_commands: bool = False) -> CacheOutcome:
    """The unpatched ``objects`` into ``out_dir``: cached ones copied, the others compiled by ``build``.

    ``compiler`` is the ``.comment`` identity of the compiler kbuild runs; None disables the cache.
    ``prove_commands``: also find which objects' recorded kbuild commands reproduce them (``recorded``),
    so that their patched side can be compiled without make.
    """
    out_dir = Path(out_dir)
    with tree_lock(tree.state_dir):
        keys = {rel: entry_key(tree, rel, extra_cflags, compiler) if compiler else None for rel in objects}
        reused, missing = [], []
        for rel in objects:
            hit = lookup(tree, keys[rel]) if keys[rel] else None
            if hit is None:
                missing.append(rel)
                continue
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(hit, dest)
            reused.append(rel)
        if missing:
            build(tree, missing, extra_cflags, out_dir, jobs=jobs)
            for rel in missing:
                key = keys[rel]
                if key:
                    store(tree, key, rel, out_dir / rel)
        if reused:
            tree.log.note("unpatched-cached", f"{' '.join(reused)} (every dependency unchanged since compiled)")
        commands = {}
        for rel in objects if prove_commands else ():
            command = prove(tree, _entries(tree, keys[rel]), rel, out_dir / rel, out_dir.parent / "proof") \
                if keys[rel] else None
            if command:
                commands[rel] = command
    return CacheOutcome(reused=reused, compiled=missing, commands=commands)
