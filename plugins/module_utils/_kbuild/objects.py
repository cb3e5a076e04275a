# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Map changed source files to the kernel objects that must be rebuilt, and say where they link.

* ``foo.c`` → ``foo.o`` in the same directory, after checking that this kernel
  builds it (a single-object build compiles any object, even one the config
  leaves out, so this check is what tells "not in this kernel" apart).  The
  caller's decider answers that — ``debuginfo.decide_goal`` reads the
  distribution's debuginfo — and the kbuild Makefile reader below is the
  fallback.  A file from which this kernel builds no object is *skipped*, not
  refused: one fix can touch drivers a flavour leaves out;
* a header → every object whose kbuild dependency record (``deps_<obj>`` in
  ``.<obj>.cmd``) names it.  A tree prepared with ``modules_prepare`` holds few
  objects, so ``headers.py`` first compiles every object that could include the
  header (found by ``includes.py``), or builds the whole tree once when there are
  too many — the list is exact or the header is refused, never partial.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kconfig import read_config
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.makeflags import logical_lines
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prepared import PreparedTree

# Top directories a patch may touch (a selftest next to a fix) from which no kernel object is built.
OUTSIDE_KERNEL_DIRS = ("Documentation/", "tools/")
# Directories whose .cmd files describe host tools, not kernel objects.
_HOST_DIRS = ("scripts/", "tools/", "usr/")
_ASSIGN_RE = re.compile(r"^\s*([^\s#=:+?][^=#]*?)\s*(::=|:=|\+=|\?=|=)\s*(.*)$")
_CONFIG_REF_RE = re.compile(r"^\$\((CONFIG_\w+)\)$")
_SUBST_RE = re.compile(r"^\$\(subst ([^,()]*|\$\(CONFIG_\w+\)),([^,()]*|\$\(CONFIG_\w+\)),(\$\(CONFIG_\w+\))\)$")
_ADDPREFIX_RE = re.compile(r"\$\(addprefix\s+([^,\s()$]+)\s*,\s*([^()$]*)\)")


@dataclass(frozen=True)
class Goal:
    """Where an object ends up: ``vmlinux``, a module, nowhere, or unknown (with why)."""

    kind: str  # "vmlinux" | "module" | "unconfigured" | "unlisted" | "undecided"
    module: Optional[str] = None
    reason: str = ""
    decided_by: str = "Makefile"  # which source answered: "vmlinux DWARF", "xfs.ko DWARF", "modules.order", ...


# Where an object links: (tree root, tree-relative object, kernel config) -> Goal.
GoalDecider = Callable[[Path, str, Dict[str, str]], Goal]


@dataclass
class ObjectMap:
    """Result of ``objects_for_sources``."""

    objects: Dict[str, List[str]] = field(default_factory=dict)  # changed file -> objects to rebuild
    goals: Dict[str, Goal] = field(default_factory=dict)  # object -> where it links
    undecided: Dict[str, str] = field(default_factory=dict)  # changed file -> why no answer
    skipped: Dict[str, str] = field(default_factory=dict)  # changed file this kernel builds nothing from -> why
    # header -> how its object list was decided.  There is no "partial" answer: a header's list
    # comes from the dependency records of every object that could include it, or it is refused.
    header_basis: Dict[str, str] = field(default_factory=dict)

    @property
    def all_objects(self) -> List[str]:
        return sorted({o for objs in self.objects.values() for o in objs})


# --------------------------------------------------------------------------- .config and Makefiles


def kbuild_assignments(directory: Path, names: Optional[Sequence[str]] = None) -> List[Tuple[str, List[str]]]:
    """``(lhs, rhs tokens)`` of every assignment in a directory's Kbuild/Makefile, continuations joined.

    kbuild reads ``Kbuild`` when present, else ``Makefile``; ``names`` reads all of those given.
    """
    return [(lhs, tokens) for lhs, _op, tokens, _nested in kbuild_statements(directory, names)]


def kbuild_statements(directory: Path, names: Optional[Sequence[str]] = None) -> List[Tuple[str, str, List[str], bool]]:
    """``(lhs, operator, rhs tokens, inside a conditional)`` of every assignment, in order."""
    found = [directory / n for n in (names or ("Kbuild", "Makefile")) if (directory / n).is_file()]
    if not found:
        return []
    found = found if names else found[:1]
    # Mapping a header asks about thousands of objects in the same few hundred directories.
    key = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in found)
    cached = _STATEMENTS.get(key)
    if cached is None:
        cached = _STATEMENTS[key] = _parse_statements(found)
    return cached


_STATEMENTS: Dict[Tuple[Tuple[str, int, int], ...], List[Tuple[str, str, List[str], bool]]] = {}


def _parse_statements(found: Sequence[Path]) -> List[Tuple[str, str, List[str], bool]]:
    text = "\n".join(line for p in found for line in logical_lines(p.read_text(errors="replace")))
    # "$(addprefix libxfs/, a.o b.o)" lists libxfs/a.o and libxfs/b.o (xfs, scrub, ...).
    text = _ADDPREFIX_RE.sub(lambda m: " ".join(m.group(1) + w for w in m.group(2).split()), text)
    out = []
    depth = 0
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        word = line.split(None, 1)[0] if line.strip() else ""
        if word in ("ifeq", "ifneq", "ifdef", "ifndef"):
            depth += 1
        elif word == "endif":
            depth = max(0, depth - 1)
        m = _ASSIGN_RE.match(line)
        if m:
            out.append((m.group(1), m.group(2), m.group(3).split(), depth > 0))
    return out


def kbuild_variables(directory: Path, config: Dict[str, str]) -> List[Tuple[str, List[str]]]:
    """The object lists of a directory's Makefile as make leaves them: ``(variable, tokens)``.

    ``obj-$(CONFIG_X)`` becomes ``obj-y``/``obj-m``/``obj-n``, and a plain ``:=`` or ``=``
    outside any conditional replaces what came before (fs/proc's ``proc-y := nommu.o ...`` is
    replaced by ``proc-$(CONFIG_MMU) := task_mmu.o``).  Inside a conditional both branches are
    kept: conditionals are not evaluated, so more objects may count as listed, never fewer.
    """
    values: Dict[str, List[str]] = {}
    for lhs, op, tokens, nested in kbuild_statements(directory):
        prefix, sep, suffix = lhs.rpartition("-")
        state = _lhs_state(suffix, config) if sep and suffix != "objs" else None
        key = f"{prefix}-{state}" if state else lhs
        refers = any(f"$({name})" in " ".join(tokens) for name in (lhs, key))
        if op in (":=", "::=", "=") and not nested and not refers:
            # (crypto's "crypto_algapi-y := algapi.o $(crypto_algapi-y)" keeps the old value: append.)
            values[key] = list(tokens)
        elif op == "?=" and key in values:
            continue
        else:
            values.setdefault(key, []).extend(tokens)
    return list(values.items())


def _lhs_state(suffix: str, config: Dict[str, str]) -> Optional[str]:
    """``y``/``m``/``n`` for an assignment suffix (``y``, ``m``, ``objs``, ``$(CONFIG_X)``); None if unknown."""
    if suffix in ("y", "objs"):
        return "y"
    if suffix in ("m", "n"):
        return suffix
    m = _CONFIG_REF_RE.match(suffix)
    if m:
        return config.get(m.group(1), "n") if config.get(m.group(1), "n") in ("y", "m") else "n"
    m = _SUBST_RE.match(suffix)
    if m:
        # obj-$(subst m,y,$(CONFIG_IPV6)): builtin whenever IPv6 is enabled at all.
        old, new, text = (_config_value(a.strip(), config) for a in m.groups())
        if None in (old, new, text):
            return None
        value = text.replace(old, new) if old else text  # type: ignore[union-attr,arg-type]
        return value if value in ("y", "m") else ("n" if value in ("", "n") else None)
    return None


def _config_value(text: str, config: Dict[str, str]) -> Optional[str]:
    """A literal, or ``$(CONFIG_X)`` as make expands it (``y``, ``m`` or empty); None for anything else."""
    m = _CONFIG_REF_RE.match(text)
    if m:
        value = config.get(m.group(1), "")
        return value if value in ("y", "m") else ""
    return None if "$" in text else text


def object_goal(tree_root: Path, relobj: str, config: Optional[Dict[str, str]] = None, depth: int = 0) -> Goal:
    """Decide from the kbuild Makefiles whether ``relobj`` links into vmlinux or a module.

    The object's own directory decides first.  A subdirectory without a Makefile of its own is
    listed by an ancestor (kvm's ``kvm-intel-y += vmx/vmx.o``, xfs's ``libxfs/``), so an object
    not named beside it is looked up there.  An object whose directory the parent Makefile
    enables only under options this config disables is not built at all.
    """
    config = read_config(tree_root) if config is None else config
    directory, name = os.path.split(relobj)
    goal = _goal_in(tree_root, directory, name, config, depth)
    up, sub = directory, name
    for _level in range(3):
        if goal.kind not in ("unlisted", "nomakefile") or not up:
            break
        up, last = os.path.split(up)
        sub = f"{last}/{sub}"
        found = _goal_in(tree_root, up, sub, config, depth)
        if found.kind not in ("unlisted", "nomakefile"):
            goal = found
    if goal.kind == "nomakefile":
        goal = Goal("undecided", reason=goal.reason)
    if depth == 0 and goal.kind != "unconfigured":
        disabled = _disabled_directory(tree_root, directory, config)
        if disabled:
            return Goal("unconfigured", reason=disabled)
    return goal


def _goal_in(tree_root: Path, directory: str, name: str, config: Dict[str, str], depth: int) -> Goal:
    """The goal of ``name`` (possibly ``sub/x.o``) as the Makefile of ``directory`` lists it."""
    assignments = kbuild_variables(tree_root / directory, config)
    if not assignments:
        return Goal("nomakefile", reason=f"no Kbuild/Makefile in {directory or '.'}")
    unknown: List[str] = []
    listed = False
    # x86 and sparc name their 32/64-bit variants irq_$(BITS).o.
    bits = "64" if config.get("CONFIG_64BIT") == "y" else "32"
    for lhs, rhs in assignments:
        if name not in rhs and name not in (t.replace("$(BITS)", bits) for t in rhs if "$(BITS)" in t):
            continue
        listed = True
        prefix, _sep, suffix = lhs.rpartition("-")
        state = _lhs_state(suffix, config)
        if state is None:
            unknown.append(lhs)
            continue
        if state == "n":
            continue
        if prefix in ("obj", "lib"):
            if state == "m" and prefix == "obj":
                return Goal("module", module=os.path.basename(name)[:-2])
            return Goal("vmlinux")
        if prefix and prefix not in ("always", "extra", "targets", "hostprogs", "subdir", "userprogs"):
            # Part of a composite object: <prefix>.o decides.
            if depth >= 4:
                return Goal("undecided", reason=f"composite chain too deep at {lhs}")
            parent = object_goal(tree_root, os.path.join(directory, prefix + ".o"), config, depth + 1)
            if parent.kind not in ("unconfigured", "unlisted"):
                return parent
    if unknown:
        return Goal("undecided", reason=f"{name} is listed under {', '.join(unknown)} in {directory}/Makefile, "
                                        "which cannot be evaluated without running make")
    if not listed:
        return Goal("unlisted", reason=f"{name} is not named in {directory or '.'}/Makefile")
    return Goal("unconfigured", reason=f"{name} is not enabled by this config in {directory or '.'}/Makefile")


def _disabled_directory(tree_root: Path, directory: str, config: Dict[str, str]) -> str:
    """Why kbuild never descends into ``directory`` (a parent lists it only under disabled options), or ""."""
    parts = directory.split("/") if directory else []
    for i in range(len(parts)):
        parent, child = "/".join(parts[:i]), parts[i] + "/"
        # The top directory has both: Kbuild lists most subdirectories, the Makefile a few more.
        assignments = kbuild_assignments(tree_root / parent, names=("Kbuild", "Makefile") if not parent else None)
        states = [(lhs, _lhs_state(lhs.rpartition("-")[2], config)) for lhs, rhs in assignments if child in rhs]
        if states and all(state == "n" for _lhs, state in states):
            return (f"{parent}/Makefile enables {child} only under {', '.join(lhs for lhs, _s in states)}, "
                    "which this config disables")
    return ""


# --------------------------------------------------------------------------- dependency records


def built_cmd_files(tree_root: Path) -> List[Path]:
    """``.<obj>.o.cmd`` files of kernel objects (host tools excluded)."""
    found = []
    for dirpath, _dirs, files in os.walk(tree_root):
        rel = os.path.relpath(dirpath, tree_root)
        if (rel + "/").startswith(_HOST_DIRS):
            continue
        found.extend(Path(dirpath) / f for f in files if f.startswith(".") and f.endswith(".o.cmd"))
    return found


def cmd_dependencies(cmd_file: Path) -> Tuple[str, List[str]]:
    """(object, dependencies) from a kbuild ``.cmd`` file's ``deps_<obj> :=`` block."""
    obj = cmd_file.name[1:-len(".cmd")]
    deps: List[str] = []
    in_deps = False
    for line in cmd_file.read_text(errors="replace").splitlines():
        if line.startswith("deps_"):
            in_deps = True
            continue
        if in_deps:
            entry = line.strip().rstrip("\\").strip()
            if not entry:
                if not line.rstrip().endswith("\\"):
                    break
                continue
            if not entry.startswith("$(wildcard"):
                deps.append(os.path.normpath(entry))
            if not line.rstrip().endswith("\\"):
                break
    return obj, deps


def header_users(tree_root: Path, headers: Sequence[str]) -> Tuple[Dict[str, List[str]], int]:
    """Objects (tree-relative) whose dependency record names each header; also how many records were read."""
    wanted = {os.path.normpath(h): h for h in headers}
    users: Dict[str, List[str]] = {h: [] for h in headers}
    cmd_files = built_cmd_files(tree_root)
    for cmd in cmd_files:
        obj, deps = cmd_dependencies(cmd)
        relobj = os.path.relpath(cmd.parent / obj, tree_root)
        for dep in deps:
            if dep in wanted:
                users[wanted[dep]].append(relobj)
    return {h: sorted(v) for h, v in users.items()}, len(cmd_files)


def tree_fully_built(tree_root: Path) -> bool:
    """vmlinux and modules.order exist: every configured object has a dependency record."""
    return (tree_root / "vmlinux").is_file() and (tree_root / "modules.order").is_file()


# --------------------------------------------------------------------------- entry point


def objects_for_sources(tree: PreparedTree, files: Sequence[str], extra_cflags: str = "", jobs: int = 2,
                        full_build_fallback: bool = False, decide: Optional[GoalDecider] = None) -> ObjectMap:
    """Objects to rebuild for changed ``files`` (tree-relative), with what could not be decided.

    A changed header may compile objects in the tree (unpatched) to read their dependency
    records, with ``extra_cflags`` as KCFLAGS so that a build with the same flags reuses them;
    ``full_build_fallback`` allows the full build of the tree when that is the only way to know
    (else KbuildError names the header).  ``decide`` says where an object links (default: the
    kbuild Makefiles).
    """
    result = ObjectMap()
    decide = decide or object_goal
    with tree.log.step("objects-for-sources", f"{len(files)} files") as res:
        config = read_config(tree.root)

        def goal_of(obj: str) -> Goal:
            return decide(tree.root, obj, config)  # type: ignore[misc]

        headers = [f for f in files if f.endswith(".h") and not f.startswith(OUTSIDE_KERNEL_DIRS)]
        for rel in files:
            if rel.startswith(OUTSIDE_KERNEL_DIRS):
                result.skipped[rel] = "documentation and user-space tools are no part of the kernel's objects"
            elif rel.endswith(".c"):
                _map_c_source(tree.root, rel, goal_of, result)
            elif rel.endswith((".S", ".s")):
                result.undecided[rel] = "assembly changes cannot be live-patched (kpatch refuses them too)"
            elif not rel.endswith(".h"):
                result.undecided[rel] = "not a C source or header: build-system and data files cannot be live-patched"
        if headers:
            _map_headers(tree, headers, config, result, extra_cflags, jobs, full_build_fallback, decide)
        res.detail = (f"{len(result.all_objects)} objects, {len(result.skipped)} files skipped, "
                      f"{len(result.undecided)} undecided")
    return result


def _map_c_source(root: Path, rel: str, goal_of: Callable[[str], Goal], result: ObjectMap) -> None:
    if not (root / rel).is_file():
        result.undecided[rel] = f"{rel} does not exist in the tree"
        return
    obj = rel[:-2] + ".o"
    goal = goal_of(obj)
    if goal.kind == "unconfigured":
        result.skipped[rel] = f"{obj} is not built by this kernel ({goal.reason}; decided by {goal.decided_by})"
        return
    if goal.kind == "unlisted":
        includers = _including_files(root, rel)
        if includers:
            _map_included_source(rel, includers, goal_of, result)
            return
    if goal.kind in ("unlisted", "undecided"):
        result.undecided[rel] = f"cannot tell whether {obj} is built: {goal.reason}"
        return
    result.objects[rel] = [obj]
    result.goals[obj] = goal


def _including_files(root: Path, rel: str) -> List[str]:
    """Sibling .c files that ``#include "<this file>"`` (kbuild's unity builds, e.g. kernel/sched/build_utility.c).

    A .c that its directory's Makefile never names is usually compiled that way.
    """
    directory = root / os.path.dirname(rel)
    needle = re.compile(r'^\s*#\s*include\s+"%s"' % re.escape(os.path.basename(rel)), re.M)
    return sorted(os.path.relpath(sibling, root) for sibling in directory.glob("*.c")
                  if sibling.name != os.path.basename(rel) and needle.search(sibling.read_text(errors="replace")))


def _map_included_source(rel: str, includers: List[str], goal_of: Callable[[str], Goal], result: ObjectMap) -> None:
    """Map a #included .c to the objects of the files including it: its code is compiled there."""
    objects = []
    goals = {including: goal_of(including[:-2] + ".o") for including in includers}
    for including, goal in goals.items():
        if goal.kind in ("vmlinux", "module"):
            objects.append(including[:-2] + ".o")
            result.goals[including[:-2] + ".o"] = goal
    if not objects:
        if all(goal.kind == "unconfigured" for goal in goals.values()):
            result.skipped[rel] = f"{rel} is #included by {', '.join(includers)}, none of which this kernel builds"
        else:
            result.undecided[rel] = (f"{rel} is #included by {', '.join(includers)}, and none is known to be "
                                     f"built: {'; '.join(g.reason for g in goals.values() if g.reason)}")
        return
    result.objects[rel] = objects


def _map_headers(tree: PreparedTree, headers: List[str], config: Dict[str, str], result: ObjectMap,
                 extra_cflags: str, jobs: int, full_build_fallback: bool, decide: GoalDecider) -> None:
    # Imported here: headers.py builds on this module's Makefile evaluation.
    from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.headers import map_headers

    for header in headers:
        if not (tree.root / header).is_file():
            result.undecided[header] = f"{header} does not exist in the tree"
    present = [h for h in headers if h not in result.undecided]
    if not present:
        return
    found = map_headers(tree, present, config, extra_cflags=extra_cflags, jobs=jobs,
                        full_build_fallback=full_build_fallback, decide=decide)
    for header, (objects, basis) in found.items():
        result.objects[header] = objects
        result.header_basis[header] = basis
        if not objects:
            result.skipped[header] = f"no object this kernel builds includes it ({basis})"
        for obj in objects:
            result.goals.setdefault(obj, decide(tree.root, obj, config))
