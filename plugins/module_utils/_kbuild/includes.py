# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Which files of a kernel tree could ``#include`` a header: a cheap, conservative include graph.

A patched header must be mapped to every object that includes it.  kbuild's dependency records
say so exactly, but only for objects already built; this graph gives a *superset* of the files
that could include the header, so that only those objects need compiling to get their records.
Missing an includer would silently leave callers of a patched inline function unpatched, so
every shortcut below errs towards including more:

* every text file of the tree is scanned with ``grep -r`` (Debian's 6.1 tree: 381,000 lines in
  53,000 files; 1.5-3.5 s for grep and 5 s in all on a busy 2-core host with a warm page cache,
  about 15 s cold), not only ``.c``/``.h`` — kernel code includes ``.inl``, ``.inc``, ``.S`` and
  files under ``tools/`` and ``scripts/`` too;
* an ``#include`` line names a header when the path components it spells are a suffix of the
  header's path (``<linux/mm.h>`` names ``include/linux/mm.h`` whichever ``-I`` directory is
  searched); only a quoted name that exists beside the including file is resolved exactly,
  because the compiler looks there first;
* ``#include MACRO`` is resolved through every ``#define MACRO "file"`` / ``<file>`` in the
  tree (the file defining the macro becomes an includer); a macro defined nowhere (other than a
  ``CONFIG_`` symbol, which ``autoconf.h`` would define) makes the file a possible includer of
  every header;
* headers forced on the command line (``-include``/``-imacros`` in kbuild flags) make every
  object of the Makefile's scope an includer;
* symlinks are followed both ways (a header reached as ``include/dt-bindings/...``);
* the one restriction: a kernel compile's ``-I`` directories never lie in another architecture's
  tree nor in ``tools/``, ``scripts/``, ``usr/`` unless a kbuild flag variable names them (read
  from every Makefile, ``open_dirs``), so files there are reached only by a path relative to the
  includer — without it, ``tools/include/linux/*.h`` and every ``arch/*/include/asm/*.h`` would
  make every header look included by everything.

The graph is cached beside the prepared tree, keyed on the tree's preparation stamp.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.makeflags import makefile_flags
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prepared import STAMP_NAME
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError

# Bumped when the scan or the cached layout changes: an older cache is rescanned.
GRAPH_FORMAT = 2
GRAPH_CACHE = "include-graph.json"
_CACHED_FIELDS = ("includes", "wildcards", "forced", "forced_unresolved", "symlinks", "arch", "open_dirs", "open_all")
# Build products and version control: never sources, and skipping them halves the scan.
_SCAN_EXCLUDES = ("*.o", "*.cmd", "*.ko", "*.a", "*.d", "*.mod", "*.mod.c", "*.order", "*.symvers", "*.tmp")
_LINE_RE = re.compile(r"^\s*#\s*(?:include(_next)?\s*(?:\"([^\"\n]*)\"|<([^>\n]*)>|(\S.*?))\s*(?:/[*/].*)?$"
                      r"|define\s+(\w+)\s+(?:\"([^\"\n]*)\"|<([^>\n]*)>))")
_GREP_PATTERN = r'^[[:space:]]*#[[:space:]]*(include|define[[:space:]]+[A-Za-z_][A-Za-z0-9_]*[[:space:]]+[<"])'
# Trees of host programs: no kernel object's -I points into them unless a Makefile says so.
_HOST_AREAS = ("tools", "scripts", "usr", "Documentation")
_MACRO_NAME_RE = re.compile(r"^[A-Za-z_]\w*$")
_MACRO_EXPR_RE = re.compile(r"^[A-Za-z_]\w*(\s*\(.*\))?$")
# kbuild flag variables and tokens that force a header into every compile of their scope.


@dataclass
class Closure:
    """Every file that could include a header (the header itself included) and why it is that large."""

    files: Set[str]
    everything: str = ""  # non-empty: every object may include it (a forced include), with the reason
    truncated: bool = False  # the walk stopped at the caller's source limit: "too many", not a list


@dataclass
class IncludeGraph:
    """``#include`` edges of one tree, indexed by the path components each include line pins down."""

    root: Path
    includes: Dict[str, List[str]]  # file -> ["q:name", "a:name", "n:name", "m:name"]
    wildcards: List[str] = field(default_factory=list)  # files with a computed include we cannot resolve
    forced: List[Tuple[str, str]] = field(default_factory=list)  # (scope dir, "" = all; name) of -include
    forced_unresolved: List[str] = field(default_factory=list)  # scopes with a forced include of a variable
    symlinks: Dict[str, str] = field(default_factory=dict)  # link -> target, both tree-relative
    arch: Optional[str] = None  # the tree's SRCARCH; None = unknown (no directory is ruled out)
    open_dirs: List[str] = field(default_factory=list)  # restricted directories a kernel compile has on -I
    open_all: str = ""  # why no area is restricted (an -I we could not evaluate), if so
    seconds: float = 0.0
    cached: bool = False
    _by_suffix: Dict[Tuple[str, ...], List[Tuple[str, str, str]]] = field(default_factory=dict, repr=False)
    _aliases: Dict[str, List[str]] = field(default_factory=dict, repr=False)
    _alias_cache: Dict[str, List[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for includer, entries in self.includes.items():
            for entry in entries:
                kind, name = entry[0], entry[2:]
                self._by_suffix.setdefault(_suffix(name), []).append((includer, kind, name))
        for link, target in self.symlinks.items():
            self._aliases.setdefault(target, []).append(link)

    # ------------------------------------------------------------------ queries

    def aliases(self, rel: str) -> List[str]:
        """``rel`` and every symlinked path that reaches the same file."""
        cached = self._alias_cache.get(rel)
        if cached is not None:
            return cached
        out = [rel]
        for target, links in self._aliases.items():
            if rel == target:
                out.extend(links)
            elif rel.startswith(target + "/"):
                out.extend(link + rel[len(target):] for link in links)
        self._alias_cache[rel] = out
        return out

    def direct_includers(self, rel: str, skip: Optional[Set[str]] = None) -> Set[str]:
        """Files with an ``#include`` line that could name ``rel`` (those in ``skip`` are not examined)."""
        found: Set[str] = set()
        skip = skip if skip is not None else set()
        for alias in self.aliases(rel):
            parts = tuple(alias.split("/"))
            for k in range(1, len(parts) + 1):
                for includer, kind, name in self._by_suffix.get(parts[-k:], ()):
                    if includer not in found and includer not in skip and \
                            self._could_name(includer, kind, name, alias, parts):
                        found.add(includer)
        return found

    def closure(self, header: str, source_limit: Optional[int] = None) -> Closure:
        """The header and every file that includes it, directly or through other files.

        With ``source_limit``, the walk stops once more kernel C/assembly sources than that are
        found (``truncated``): the caller then treats the header as included by too many objects,
        which costs a full build but can never miss one.
        """
        header = os.path.normpath(header)
        seen: Set[str] = {header}
        queue = [header]
        for wild in self.wildcards:
            if wild not in seen:
                seen.add(wild)
                queue.append(wild)
        sources = 0
        while queue:
            rel = queue.pop()
            new = self.direct_includers(rel, skip=seen)
            for scope, name in self.forced:
                if any(_names(name, tuple(a.split("/"))) for a in self.aliases(rel)):
                    if not scope:
                        # Every object includes it: no list is needed, and walking tens of thousands
                        # of includers would take longer than deciding.
                        why = f"{rel} is forced into every compile by '-include {name}'"
                        return Closure(files=seen, everything=why)
                    new.update(self._files_under(scope))
            for rel_new in sorted(new - seen):  # sorted: the same walk, and the same counts, every run
                seen.add(rel_new)
                queue.append(rel_new)
                if rel_new.endswith((".c", ".S")) and not self.area(rel_new):
                    sources += 1
            if source_limit is not None and sources > source_limit:
                return Closure(files=seen, truncated=True)
        for scope in self.forced_unresolved:
            seen.update(self._files_under(scope))
        return Closure(files=seen)

    # ------------------------------------------------------------------ helpers

    def _could_name(self, includer: str, kind: str, name: str, target: str, parts: Tuple[str, ...]) -> bool:
        if not _names(name, parts):
            return False
        area = self.area(target)
        if area and area != self.area(includer):
            # Kernel compiles search another architecture's tree or tools/, scripts/, usr/ only through
            # the -I directories the Makefiles name (open_dirs), or a path relative to the includer.
            if any(os.path.normpath(os.path.join(d, name)) == target for d in self.open_dirs):
                return True
            return self._beside(includer, name, target) is True
        if kind != "q" or len(self.aliases(includer)) > 1:
            # Angle brackets, #include_next and names from macros search -I directories we do not
            # evaluate; a file reachable under two paths has two "current directories".
            return True
        beside = self._beside(includer, name, target)
        # Not beside the includer: the -I directories decide, so any match counts.  Beside it: the
        # compiler takes that file first, so the answer is exact.
        return True if beside is None else beside

    def _beside(self, includer: str, name: str, target: str) -> Optional[bool]:
        """Whether ``name`` written in ``includer`` is ``target`` when it exists beside the includer; None if absent."""
        text = os.path.normpath(os.path.join(os.path.dirname(includer), name))
        if text == target and not self._via_symlink(text):
            return True
        if not (self.root / text).is_file():
            return None
        if not self._via_symlink(text) and not self._via_symlink(target):
            return False  # two different paths without a symlink in them: two different files
        return os.path.realpath(self.root / text) == os.path.realpath(self.root / target)

    def _via_symlink(self, rel: str) -> bool:
        parts = rel.split("/")
        return any("/".join(parts[:i]) in self.symlinks for i in range(1, len(parts) + 1))

    def area(self, rel: str) -> str:
        """The restricted area a file lies in (another architecture, tools/, scripts/, usr/), or ""."""
        if self.open_all:
            return ""
        parts = rel.split("/", 2)
        if parts[0] in _HOST_AREAS:
            return parts[0]
        if self.arch and len(parts) > 2 and parts[0] == "arch" and parts[1] != self.arch:
            return f"arch/{parts[1]}"
        return ""

    def _files_under(self, scope: str) -> Set[str]:
        prefix = scope.rstrip("/") + "/"
        return {f for f in self.includes if f.startswith(prefix)} | _sources_under(self.root, scope)


def _suffix(name: str) -> Tuple[str, ...]:
    """The path components an include name pins down: leading ``./``/``../`` say nothing about the rest."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    while parts and parts[0] == "..":
        parts.pop(0)
    if ".." in parts:
        return tuple(parts[-1:])
    return tuple(parts)


def _names(name: str, parts: Tuple[str, ...]) -> bool:
    suffix = _suffix(name)
    return bool(suffix) and len(suffix) <= len(parts) and parts[-len(suffix):] == suffix


def _sources_under(root: Path, scope: str) -> Set[str]:
    out: Set[str] = set()
    for dirpath, _dirs, files in os.walk(root / scope):
        rel = os.path.relpath(dirpath, root)
        out.update(os.path.normpath(os.path.join(rel, f)) for f in files if f.endswith((".c", ".S")))
    return out


# --------------------------------------------------------------------------- scanning


def _grep(root: Path, pattern: str, includes: Iterable[str] = (), excludes: Iterable[str] = ()) -> List[Tuple[str, str]]:
    """``(tree-relative file, line)`` of every line matching ``pattern`` (GNU grep, text files only)."""
    argv = ["grep", "-rIZE", "--exclude-dir=.git"]
    argv += [f"--include={g}" for g in includes] + [f"--exclude={g}" for g in excludes]
    argv += ["-e", pattern, "."]
    try:
        proc = subprocess.run(argv, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False,
                              env={**os.environ, "LC_ALL": "C"})
    except FileNotFoundError as exc:
        raise KbuildError(f"cannot scan {root} for #include lines: grep not found ({exc})") from exc
    if proc.returncode not in (0, 1):
        raise KbuildError(f"scanning {root} for #include lines failed (grep exit {proc.returncode}): "
                          f"{proc.stderr.decode(errors='replace').strip()[:500]}")
    out = []
    for raw in proc.stdout.split(b"\n"):
        path, sep, line = raw.partition(b"\0")
        if sep:
            out.append((os.path.normpath(path.decode(errors="surrogateescape")), line.decode(errors="replace")))
    return out


def _walk(root: Path) -> Tuple[Dict[str, str], List[str]]:
    """Symlinks inside the tree that point inside it (both sides tree-relative), and the kbuild Makefiles."""
    links: Dict[str, str] = {}
    makefiles: List[str] = []
    real_root = os.path.realpath(root)
    for dirpath, dirs, files in os.walk(root):
        if dirpath == str(root) and ".git" in dirs:
            dirs.remove(".git")
        rel_dir = os.path.relpath(dirpath, root)
        for name in files:
            if name.startswith(("Makefile", "Kbuild")) or name.endswith(".mk"):
                makefiles.append(os.path.normpath(os.path.join(rel_dir, name)))
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                target = os.path.realpath(path)
                if target.startswith(real_root + "/"):
                    links[os.path.relpath(path, root)] = os.path.relpath(target, real_root)
    return links, makefiles


def tree_arch(root: Path) -> Optional[str]:
    """The architecture a prepared tree is configured for: the one ``arch/*/include/generated`` exists in."""
    found = [p.parent.parent.name for p in (root / "arch").glob("*/include/generated")]
    return found[0] if len(found) == 1 else None


def scan_includes(root: Path) -> IncludeGraph:
    """Read every ``#include`` (and include-naming ``#define``) line of the tree into a graph."""
    start = time.monotonic()
    root = Path(root)
    includes: Dict[str, List[str]] = {}
    computed: Dict[str, Set[str]] = {}  # macro -> files that #include it
    defines: Dict[str, List[Tuple[str, str]]] = {}  # macro -> (definer, "q:name"/"a:name")
    for rel, line in _grep(root, _GREP_PATTERN, excludes=_SCAN_EXCLUDES):
        m = _LINE_RE.match(line)
        if not m:
            continue
        nxt, quoted, angled, other, macro, dquoted, dangled = m.groups()
        if macro:
            defines.setdefault(macro, []).append((rel, dquoted if dquoted is not None else dangled))
        elif quoted is not None or angled is not None:
            kind = "n" if nxt else ("q" if quoted is not None else "a")
            includes.setdefault(rel, []).append(f"{kind}:{quoted if quoted is not None else angled}")
        elif other:
            computed.setdefault(other.strip(), set()).add(rel)
    wildcards: Set[str] = set()
    for expr, files in computed.items():
        if expr.startswith("TRACE_INCLUDE("):
            # define_trace.h re-includes the trace header that included it (TRACE_INCLUDE_FILE is that
            # header by the tracepoint convention), which its includers already name directly.
            continue
        if not _MACRO_EXPR_RE.match(expr):
            continue  # "# include the ..." in a comment of a script or Makefile: no preprocessor accepts it
        if _MACRO_NAME_RE.match(expr) and expr in defines:
            for definer, name in defines[expr]:
                includes.setdefault(definer, []).append(f"m:{name}")
        elif _MACRO_NAME_RE.match(expr) and expr.startswith("CONFIG_"):
            continue  # not set in autoconf.h: the line is compiled out (it would not compile otherwise)
        else:
            wildcards.update(files)
    arch = tree_arch(root)
    symlinks, makefiles = _walk(root)
    flags = makefile_flags(root, arch, makefiles, IncludeGraph(root=root, includes={}, arch=arch).area)
    return IncludeGraph(root=root, includes=includes, wildcards=sorted(wildcards), forced=flags.forced,
                        forced_unresolved=sorted(set(flags.forced_unresolved)), symlinks=symlinks,
                        arch=None if flags.open_all else arch, open_dirs=sorted(flags.open_dirs),
                        open_all=flags.open_all, seconds=time.monotonic() - start)


# --------------------------------------------------------------------------- cache


def _cache_key(root: Path) -> Optional[str]:
    try:
        stamp = (root / STAMP_NAME).read_bytes()
    except OSError:
        return None  # not a prepared tree (or being prepared): never cache
    return hashlib.sha256(f"{GRAPH_FORMAT}\0{root.resolve()}\0".encode() + stamp).hexdigest()


def load_include_graph(root: Path, cache_dir: Optional[Path], rescan: bool = False) -> IncludeGraph:
    """The tree's include graph, from ``cache_dir`` when it was scanned for the same preparation stamp.

    ``rescan``: files were generated in the tree since (the cache is replaced).
    """
    root = Path(root)
    key = _cache_key(root)
    cache = Path(cache_dir) / GRAPH_CACHE if cache_dir is not None else None
    if cache is not None and key is not None and not rescan:
        start = time.monotonic()
        try:
            data = json.loads(cache.read_text())
        except (OSError, ValueError):
            data = None
        if data and data.get("key") == key:
            fields = {name: data[name] for name in _CACHED_FIELDS}
            fields["forced"] = [tuple(pair) for pair in fields["forced"]]  # JSON keeps them as lists
            return IncludeGraph(root=root, seconds=time.monotonic() - start, cached=True, **fields)
    graph = scan_includes(root)
    if cache is not None and key is not None:
        tmp = cache.with_name(cache.name + ".tmp")
        tmp.write_text(json.dumps({"key": key, **{name: getattr(graph, name) for name in _CACHED_FIELDS}}))
        os.replace(tmp, cache)
    return graph
