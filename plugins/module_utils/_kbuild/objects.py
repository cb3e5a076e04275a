# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Map changed source files to the kernel objects that must be rebuilt, and say where they link.

* ``foo.c`` → ``foo.o`` in the same directory, after checking the directory's
  kbuild Makefile lists it under a goal the config enables (a single-object
  build compiles any object, even one the config leaves out, so this check is
  what tells "not in this kernel" apart);
* a header → every object whose kbuild dependency record (``deps_<obj>`` in
  ``.<obj>.cmd``) names it, among the objects built in the tree so far.  A tree
  prepared with ``modules_prepare`` holds no kernel objects, so for it the
  answer is "cannot be decided" — reported in ``undecided`` with the reason,
  never guessed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prepared import PreparedTree

# Directories whose .cmd files describe host tools, not kernel objects.
_HOST_DIRS = ("scripts/", "tools/", "usr/")
_ASSIGN_RE = re.compile(r"^\s*([^\s#=:+?][^=#]*?)\s*(?::=|\+=|\?=|=)\s*(.*)$")
_CONFIG_REF_RE = re.compile(r"^\$\((CONFIG_\w+)\)$")


@dataclass(frozen=True)
class Goal:
    """Where an object ends up: ``vmlinux``, a module, nowhere, or unknown (with why)."""

    kind: str  # "vmlinux" | "module" | "unconfigured" | "unlisted" | "undecided"
    module: Optional[str] = None
    reason: str = ""


@dataclass
class ObjectMap:
    """Result of ``objects_for_sources``."""

    objects: Dict[str, List[str]] = field(default_factory=dict)  # changed file -> objects to rebuild
    goals: Dict[str, Goal] = field(default_factory=dict)  # object -> where it links
    undecided: Dict[str, str] = field(default_factory=dict)  # changed file -> why no answer
    partial: Dict[str, str] = field(default_factory=dict)  # header -> why the list may be incomplete

    @property
    def all_objects(self) -> List[str]:
        return sorted({o for objs in self.objects.values() for o in objs})


# --------------------------------------------------------------------------- .config and Makefiles


def read_config(tree_root: Path) -> Dict[str, str]:
    values: Dict[str, str] = {}
    for line in (tree_root / ".config").read_text(errors="replace").splitlines():
        m = re.match(r"^(CONFIG_\w+)=(.*)$", line)
        if m:
            values[m.group(1)] = m.group(2)
    return values


def kbuild_assignments(directory: Path) -> List[Tuple[str, List[str]]]:
    """``(lhs, rhs tokens)`` of every assignment in a directory's Kbuild/Makefile, continuations joined."""
    for name in ("Kbuild", "Makefile"):
        path = directory / name
        if path.is_file():
            text = path.read_text(errors="replace")
            break
    else:
        return []
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        m = _ASSIGN_RE.match(line)
        if m:
            out.append((m.group(1), m.group(2).split()))
    return out


def _lhs_state(suffix: str, config: Dict[str, str]) -> Optional[str]:
    """``y``/``m``/``n`` for an assignment suffix (``y``, ``m``, ``objs``, ``$(CONFIG_X)``); None if unknown."""
    if suffix in ("y", "objs"):
        return "y"
    if suffix == "m":
        return "m"
    m = _CONFIG_REF_RE.match(suffix)
    if m:
        return config.get(m.group(1), "n") if config.get(m.group(1), "n") in ("y", "m") else "n"
    return None


def object_goal(tree_root: Path, relobj: str, config: Optional[Dict[str, str]] = None, depth: int = 0) -> Goal:
    """Decide from the directory's kbuild Makefile whether ``relobj`` links into vmlinux or a module."""
    config = read_config(tree_root) if config is None else config
    directory, name = os.path.split(relobj)
    assignments = kbuild_assignments(tree_root / directory)
    if not assignments:
        return Goal("undecided", reason=f"no Kbuild/Makefile in {directory or '.'}")
    unknown: List[str] = []
    listed = False
    for lhs, rhs in assignments:
        if name not in rhs:
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
                return Goal("module", module=name[:-2])
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


def objects_for_sources(tree: PreparedTree, files: Sequence[str]) -> ObjectMap:
    """Objects to rebuild for changed ``files`` (tree-relative), with what could not be decided."""
    result = ObjectMap()
    with tree.log.step("objects-for-sources", f"{len(files)} files") as res:
        config = read_config(tree.root)
        headers = [f for f in files if f.endswith(".h")]
        for rel in files:
            if rel.endswith(".c"):
                _map_c_source(tree.root, rel, config, result)
            elif rel.endswith((".S", ".s")):
                result.undecided[rel] = "assembly changes cannot be live-patched (kpatch refuses them too)"
            elif not rel.endswith(".h"):
                result.undecided[rel] = "not a C source or header: build-system and data files cannot be live-patched"
        if headers:
            _map_headers(tree.root, headers, result)
        res.detail = (f"{len(result.all_objects)} objects, {len(result.undecided)} undecided"
                      f"{', partial header lists' if result.partial else ''}")
    return result


def _map_c_source(root: Path, rel: str, config: Dict[str, str], result: ObjectMap) -> None:
    if not (root / rel).is_file():
        result.undecided[rel] = f"{rel} does not exist in the tree"
        return
    obj = rel[:-2] + ".o"
    goal = object_goal(root, obj, config)
    if goal.kind == "unconfigured":
        result.undecided[rel] = f"{obj} is not built by this kernel's config ({goal.reason})"
        return
    if goal.kind == "unlisted" and _included_elsewhere(root, rel):
        result.undecided[rel] = (f"{rel} is #included by another file rather than built as {obj}; "
                                 "patch the including file's object instead")
        return
    if goal.kind in ("unlisted", "undecided"):
        result.undecided[rel] = f"cannot tell whether {obj} is built: {goal.reason}"
        return
    result.objects[rel] = [obj]
    result.goals[obj] = goal


def _included_elsewhere(root: Path, rel: str) -> bool:
    """A .c that its directory's Makefile never names is usually #included by a sibling .c."""
    directory = root / os.path.dirname(rel)
    needle = f'"{os.path.basename(rel)}"'
    for sibling in directory.glob("*.c"):
        if sibling.name != os.path.basename(rel) and needle in sibling.read_text(errors="replace"):
            return True
    return False


def _map_headers(root: Path, headers: List[str], result: ObjectMap) -> None:
    users, records = header_users(root, headers)
    complete = tree_fully_built(root)
    for header in headers:
        if records == 0:
            result.undecided[header] = ("no kernel object has been built in this tree yet, so no dependency "
                                        "records (.*.o.cmd) exist to tell which objects include it")
        elif not users[header] and not complete:
            result.undecided[header] = (f"none of the {records} objects built so far include it, and the tree "
                                        "is not fully built, so other objects may")
        else:
            result.objects[header] = users[header]
            for obj in users[header]:
                result.goals.setdefault(obj, object_goal(root, obj))
            if not complete:
                result.partial[header] = (f"only the {records} objects built so far were examined; the tree is "
                                          "not fully built")
