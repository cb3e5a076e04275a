# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""A patched header → exactly the objects that include it, never a partial list.

kbuild's dependency records (``deps_<obj>`` in ``.<obj>.cmd``) name every header an object
was compiled with, but only objects already built have one, and the cached tree is prepared
with ``modules_prepare`` only.  So, for each patched header:

1. ``includes.py`` finds every source that could include it (a superset);
2. those sources become objects whose goal the caller's decider gives (the distribution's
   debuginfo in a build, else the kbuild Makefiles, ``object_goal``): unconfigured
   ones are dropped, and one whose goal the Makefiles do not spell out is compiled too (if it
   does not compile in this config, it is not part of its build).  Objects with no source in
   the pristine tree (generated or built from elsewhere: ``*.asn1.o``, ``lib/raid6/int8.o``,
   ``kernel/bpf/relo_core.o``) are compiled once per tree so that their records exist too;
3. at most ``MAX_HEADER_CANDIDATES`` candidates are compiled, unpatched, as single objects; the
   records then give the exact list (any record naming the header from an object the scan did
   not predict means the scan was wrong, and the list is not trusted);
4. otherwise the whole tree is built once (``make vmlinux modules``, cached: the tree then
   counts as fully built) and the records of the full build decide — unless the caller refused
   that build, in which case the header is refused with the reason.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.includes import (
    Closure,
    IncludeGraph,
    load_include_graph,
    tree_arch,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.objects import (
    Goal,
    GoalDecider,
    header_users,
    kbuild_assignments,
    object_goal,
    tree_fully_built,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prepared import PreparedTree, tree_lock
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError, run_logged

# Compiling one kernel object takes 1-3 s of CPU; 150 of them on the 2-core build hosts this
# collection targets take 2-4 minutes, against 10.5 minutes for vmlinux alone (and more for the
# modules) in a full build.  Above that, a full build costs about as much and, once cached,
# answers every later header patch for the release at once.
MAX_HEADER_CANDIDATES = 150
# The include walk stops after this many kernel sources: even if only one in twenty were
# configured objects, the header would still be over MAX_HEADER_CANDIDATES.  Stopping early only
# ever leads to the full build, never to a shorter list.
CLOSURE_SOURCE_LIMIT = 20 * MAX_HEADER_CANDIDATES
# Sources compiled to generate headers (asm-offsets.h, bounds.h), never linked as objects.
_GENERATOR_RE = re.compile(r"(^|/)(asm-offsets(_\d+)?|kvm-asm-offsets|bounds)\.c$")
# Make functions that build object names a plain reading of the Makefile cannot see.
_CONSTRUCTED_RE = re.compile(r"\$\((addsuffix|patsubst|foreach|wildcard|notdir|filter|sort|basename)\b")
# kbuild variables whose .o words are not objects linked into vmlinux or a module.
_NOT_OBJECT_PREFIXES = {"always", "extra", "targets", "hostprogs", "subdir", "userprogs", "clean", "no-clean",
                        "ccflags", "asflags", "cppflags", "subdir-ccflags", "subdir-asflags"}


@dataclass
class Candidates:
    """Objects that may include one header, before compiling them."""

    header: str
    closure: Closure
    required: Dict[str, Goal] = field(default_factory=dict)  # configured objects: must compile
    uncertain: Dict[str, Goal] = field(default_factory=dict)  # goal unknown: compiled; failing = not built
    skipped: Dict[str, str] = field(default_factory=dict)  # source -> why no object of it is compiled
    too_many: str = ""  # why the candidates are not compiled one by one

    @property
    def objects(self) -> List[str]:
        return sorted(set(self.required) | set(self.uncertain))


# --------------------------------------------------------------------------- candidates


def header_candidates(root: Path, graph: IncludeGraph, header: str, config: Dict[str, str],
                      decide: GoalDecider = object_goal) -> Candidates:
    """The objects whose sources could include ``header``, sorted by how sure their goal is.

    ``decide`` says where an object links (``debuginfo.decide_goal`` in a build; the Makefiles by default).
    """
    closure = graph.closure(header, source_limit=CLOSURE_SOURCE_LIMIT)
    cands = Candidates(header=header, closure=closure)
    if closure.everything:
        cands.too_many = f"every object includes it ({closure.everything})"
        return cands
    if closure.truncated:
        sources = [f for f in closure.files if f.endswith((".c", ".S")) and not graph.area(f)]
        configured = sum(decide(root, f[:-2] + ".o", config).kind in ("vmlinux", "module") for f in sources)
        cands.too_many = (f"at least {configured} candidate objects may include it (more than "
                          f"{MAX_HEADER_CANDIDATES}; the include walk stopped after {len(sources)} sources)")
        return cands
    for src in sorted(closure.files):
        if not src.endswith((".c", ".S")) or graph.area(src):
            continue  # headers, host programs, other architectures
        obj = src[:-2] + ".o"
        if _GENERATOR_RE.search(src):
            cands.skipped[src] = "compiled only to generate a header, never linked"
            continue
        goal = decide(root, obj, config)
        if goal.kind in ("vmlinux", "module"):
            cands.required[obj] = goal
        elif goal.kind == "unconfigured":
            cands.skipped[src] = goal.reason
        elif graph.direct_includers(src):
            # A .c included by another .c (unity builds): the includer, also in the closure, is the object.
            cands.skipped[src] = "#included by another file, whose object is a candidate"
        elif goal.kind == "unlisted" and not _constructed_names(root, os.path.dirname(src)):
            cands.skipped[src] = f"{goal.reason} (nor in any parent Makefile): not built"
        else:
            cands.uncertain[obj] = goal
    count = len(cands.required) + len(cands.uncertain)
    if count > MAX_HEADER_CANDIDATES:
        cands.too_many = f"{count} candidate objects may include it (more than {MAX_HEADER_CANDIDATES})"
    return cands


def _constructed_names(root: Path, directory: str) -> bool:
    """The directory's or a parent's Makefile builds object names with make functions."""
    for _level in range(4):
        for _lhs, rhs in kbuild_assignments(root / directory):
            if any(_CONSTRUCTED_RE.search(token) for token in rhs):
                return True
        if not directory:
            break
        directory = os.path.dirname(directory)
    return False


def opaque_objects(root: Path, config: Dict[str, str], arch: Optional[str],
                   pristine: Optional[Path] = None) -> Dict[str, Goal]:
    """Configured objects with no C or assembly source beside them in the pristine source.

    Their source is generated (``*.asn1.c``, ``lib/raid6/int8.c``) or lies elsewhere (``kernel/bpf/
    relo_core.o`` is built from ``tools/lib/bpf/``): the include scan cannot tell what they include,
    their dependency records can.
    """
    pristine = Path(pristine) if pristine is not None else Path(root)
    probe = IncludeGraph(root=root, includes={}, arch=arch)
    found: Dict[str, Goal] = {}
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel
        if rel and probe.area(rel + "/"):
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if "Makefile" not in files and "Kbuild" not in files:
            continue
        assignments = kbuild_assignments(Path(dirpath))
        composites = {lhs.rpartition("-")[0] for lhs, _rhs in assignments}
        for lhs, rhs in assignments:
            if lhs.rpartition("-")[0] in _NOT_OBJECT_PREFIXES:
                continue
            for token in rhs:
                if not token.endswith(".o") or "$" in token or token[:-2] in composites:
                    continue
                stem = os.path.normpath(os.path.join(rel, token[:-2]))
                if stem.startswith("..") or any((pristine / (stem + ext)).exists() for ext in (".c", ".S", ".rs")):
                    continue
                obj = stem + ".o"
                if obj not in found:
                    goal = object_goal(root, obj, config)
                    if goal.kind in ("vmlinux", "module"):
                        found[obj] = goal
    return found


# --------------------------------------------------------------------------- builds


def compile_for_records(tree: PreparedTree, objects: Sequence[str], extra_cflags: str, jobs: int) -> Tuple[Set[str], str]:
    """Compile ``objects`` unpatched (``make -k``); return those that exist afterwards and the error output.

    kbuild deletes a target whose command failed (``.DELETE_ON_ERROR``), so an object that is
    there afterwards compiled.  Objects already up to date are not recompiled.
    """
    if not objects:
        return set(), ""
    argv = tree.make_argv(["-k", *objects], jobs=jobs, extra=[f"KCFLAGS={extra_cflags}"] if extra_cflags else [])
    proc = run_logged(tree.log, argv, what="compiling header candidates", check=False)
    built = {o for o in objects if (tree.root / o).is_file()}
    errors = "" if proc.returncode == 0 else "\n".join(proc.stdout.splitlines()[-25:])
    return built, errors


def full_build(tree: PreparedTree, extra_cflags: str, jobs: int) -> None:
    """Build vmlinux and every module in the cached tree, once: afterwards every object has a record."""
    extra = [f"KCFLAGS={extra_cflags}"] if extra_cflags else []
    with tree.log.step("full-build", f"make -j{jobs} vmlinux modules in {tree.root}") as res:
        run_logged(tree.log, tree.make_argv(["vmlinux", "modules"], jobs=jobs, extra=extra, whole_kernel=True),
                   what="the full kernel build (needed to map a patched header)")
        if not tree_fully_built(tree.root):
            raise KbuildError(f"make vmlinux modules succeeded but {tree.root} has no vmlinux and modules.order")
        res.detail = f"{tree.root} fully built: every object now has a dependency record"


# --------------------------------------------------------------------------- entry point


def map_headers(tree: PreparedTree, headers: Sequence[str], config: Dict[str, str], extra_cflags: str = "",
                jobs: int = 2, full_build_fallback: bool = False,
                decide: GoalDecider = object_goal) -> Dict[str, Tuple[List[str], str]]:
    """``header -> (objects that include it, how that was decided)``; complete, or KbuildError.

    ``full_build_fallback=False`` refuses a header that would need the full build instead of
    running it.  Objects are compiled with ``extra_cflags`` (KCFLAGS) so that a later build with
    the same flags finds them up to date.
    """
    headers = [os.path.normpath(h) for h in headers]
    with tree_lock(tree.state_dir):
        if tree_fully_built(tree.root):
            return _from_full_build(tree, headers, "the tree is fully built")
        graph, cands = _candidates(tree, headers, config, rescan=False, decide=decide)
        problems = {h: c.too_many for h, c in cands.items() if c.too_many}
        if not problems:
            # Objects with generated sources: building them (once per tree) also generates the
            # headers that come with them (*.asn1.h), which the include scan must then see.  Only
            # generated files can be new, and they only add includers: a "too many" verdict above
            # stands without them, so a refused header builds nothing.
            opaque, generated = _build_opaque(tree, config, extra_cflags, jobs)
            if generated:
                graph, cands = _candidates(tree, headers, config, rescan=True, decide=decide)
                problems = {h: c.too_many for h, c in cands.items() if c.too_many}
            if not problems:
                exact, problems = _compile_candidates(tree, graph, cands, opaque, extra_cflags, jobs)
                if not problems:
                    return exact
        reasons = "; ".join(f"{h}: {why}" for h, why in sorted(problems.items()))
        if not full_build_fallback:
            raise KbuildError(f"cannot tell which objects include the patched header(s) without a full kernel build, "
                              f"and full_build_fallback is off: {reasons}")
        tree.log.note("full-build-needed", reasons)
        full_build(tree, extra_cflags, jobs)
        return _from_full_build(tree, headers, f"full build ({reasons})")


def _candidates(tree: PreparedTree, headers: Sequence[str], config: Dict[str, str],
                rescan: bool, decide: GoalDecider) -> Tuple[IncludeGraph, Dict[str, Candidates]]:
    with tree.log.step("include-graph") as res:
        graph = load_include_graph(tree.root, tree.state_dir, rescan=rescan)
        res.detail = (f"{len(graph.includes)} files with #include lines, "
                      f"{'cached' if graph.cached else 'scanned'} in {graph.seconds:.2f}s")
    cands: Dict[str, Candidates] = {}
    for header in headers:
        with tree.log.step("header-candidates", header) as res:
            cands[header] = c = header_candidates(tree.root, graph, header, config, decide)
            res.detail = (f"{header}: {c.too_many}" if c.too_many else
                          f"{header}: {len(c.required)} objects, {len(c.uncertain)} of unknown goal; "
                          f"{len(c.skipped)} sources ruled out")
    return graph, cands


def _from_full_build(tree: PreparedTree, headers: Sequence[str], why: str) -> Dict[str, Tuple[List[str], str]]:
    with tree.log.step("header-users", "from the dependency records of the full build") as res:
        users, records = header_users(tree.root, headers)
        res.detail = f"{records} records: " + "; ".join(f"{h}: {len(users[h])} objects" for h in headers)
    return {h: (users[h], f"dependency records of the full build; {why}") for h in headers}


def _build_opaque(tree: PreparedTree, config: Dict[str, str], extra_cflags: str, jobs: int) -> Tuple[Dict[str, Goal], bool]:
    """The opaque objects that have a dependency record (building those without); whether any was built."""
    with tree.log.step("opaque-objects") as res:
        opaque = opaque_objects(tree.root, config, tree_arch(tree.root), tree.source)
        missing = sorted(o for o in opaque if not _record(tree.root, o).is_file())
        res.detail = f"{len(opaque)} configured objects without a source in the pristine tree, {len(missing)} not built yet"
    if not missing:
        return opaque, False
    with tree.log.step("compile-opaque", f"{len(missing)} objects, once per tree") as res:
        built, _errors = compile_for_records(tree, missing, extra_cflags, jobs)
        failed = sorted(set(missing) - built)
        res.detail = f"{len(built)} built" + (f"; not buildable alone: {' '.join(failed)}" if failed else "")
    return {o: g for o, g in opaque.items() if o not in failed}, bool(built)


def _compile_candidates(tree: PreparedTree, graph: IncludeGraph, cands: Dict[str, Candidates], opaque: Dict[str, Goal],
                        extra_cflags: str, jobs: int) -> Tuple[Dict[str, Tuple[List[str], str]], Dict[str, str]]:
    """Compile every candidate, then read the records: (exact lists, headers whose list cannot be trusted)."""
    required = sorted({o for c in cands.values() for o in c.required})
    uncertain = sorted({o for c in cands.values() for o in c.uncertain} - set(required))
    start = time.monotonic()
    with tree.log.step("compile-candidates", f"{len(required)} objects + {len(uncertain)} of unknown goal") as res:
        # The opaque objects too: up to date they cost nothing, and one compiled from a patched
        # tree earlier gets its pristine record back.
        built, errors = compile_for_records(tree, required + uncertain + sorted(set(opaque) - set(required)),
                                            extra_cflags, jobs)
        opaque = {o: g for o, g in opaque.items() if o in built}
        broken = sorted(set(required) - built)
        if broken:
            raise KbuildError(f"the unpatched tree does not compile {' '.join(broken)} (needed to tell which objects "
                              f"include the patched header):\n{errors}\nfull output: {tree.log.output_path}")
        dropped = sorted(set(uncertain) - built)
        res.detail = (f"{len(built)} objects in {time.monotonic() - start:.1f}s"
                      + (f"; {len(dropped)} of unknown goal do not compile in this config (not built): "
                         f"{' '.join(dropped[:10])}{' ...' if len(dropped) > 10 else ''}" if dropped else ""))
    exact: Dict[str, Tuple[List[str], str]] = {}
    problems: Dict[str, str] = {}
    with tree.log.step("header-users", "from the dependency records") as res:
        names = {h: [os.path.normpath(a) for a in graph.aliases(h)] for h in cands}
        users, _records = header_users(tree.root, [a for aliases in names.values() for a in aliases])
        for header, cand in cands.items():
            found = sorted({u for a in names[header] for u in users[a]})
            compiled = (set(cand.required) | set(cand.uncertain)) & built
            missed = [u for u in found if u not in compiled and u not in opaque and not _source_in(u, cand.closure)
                      and not _stale(tree.root, u)]
            if missed:
                problems[header] = (f"the include scan did not predict {' '.join(missed[:5])}, whose dependency "
                                    "records name it, so its candidate list cannot be trusted")
                continue
            exact[header] = ([u for u in found if u in compiled or u in opaque],
                             f"dependency records of {len(compiled)} compiled candidates "
                             f"({len(cand.skipped)} sources ruled out)")
        res.detail = "; ".join(f"{h}: {len(v[0])} objects" for h, v in exact.items()) or "no exact answer"
    return exact, problems


def _record(root: Path, obj: str) -> Path:
    return root / os.path.dirname(obj) / f".{os.path.basename(obj)}.cmd"


def _stale(root: Path, obj: str) -> bool:
    """The object is older than its source (e.g. compiled patched, then the source restored): its record is stale."""
    try:
        built = (root / obj).stat().st_mtime
    except OSError:
        return True
    return any((root / (obj[:-2] + ext)).is_file() and (root / (obj[:-2] + ext)).stat().st_mtime > built
               for ext in (".c", ".S"))


def _source_in(obj: str, closure: Closure) -> bool:
    return any(obj[:-2] + ext in closure.files for ext in (".c", ".S"))
