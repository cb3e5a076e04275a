# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""The compile stage of a build: the original and patched objects, each with its parent.

For the kernel, the objects come from the prepared tree: which files of the patches build which
object, and where it links, is decided from the distribution's debuginfo (``debuginfo.py``) with
the kbuild Makefiles as the fallback; files this kernel builds nothing from are skipped.  For an
out-of-tree module (``oot.py``) they come from a copy of its source built with its own Kbuild.
Either way each object is compiled unpatched, then patched inside ``patched_tree``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.debuginfo import ReleaseDebuginfo, decide_goal
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.objcache import build_unpatched
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.oot import (
    OotModule,
    oot_objects,
    oot_source_tree,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.patching import HunkAdjustment
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prepared import PreparedTree
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.recorded import build_recorded
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.request import BuildRequest
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError, StepLog
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.vmlinuxreads import read_debuginfo
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.tree import (
    build_objects,
    changed_files,
    objects_for_sources,
    patched_tree,
    prepare_tree,
)

# Objects kpatch refuses for good reasons: lib/ objects may be archive members linked only when
# used, so a function there may not exist in vmlinux at all, or exist in several copies.
REFUSED_DIRS = ("lib/", "arch/x86/lib/")


class NoChangesError(KbuildError):
    """The patches change no function: nothing to live patch."""


def parent_of(goal_kind: str, goal_module: Optional[str], obj: str) -> str:
    """The livepatch object an object's functions live in: vmlinux or the module's name."""
    if any(obj.startswith(d) for d in REFUSED_DIRS):
        raise KbuildError(f"{obj}: changes under {', '.join(REFUSED_DIRS)} are not supported (library objects "
                          "are linked only where used, so the patched function may not be in the kernel, or be there twice)")
    if goal_kind == "module" and goal_module:
        return goal_module.replace("-", "_")
    if goal_kind == "vmlinux":
        return "vmlinux"
    raise KbuildError(f"{obj}: cannot tell whether it links into vmlinux or a module ({goal_kind})")


@dataclass
class CompiledPairs:
    """The original and patched objects of a build, and what the patches' application reported."""

    pairs: Dict[str, str]  # object -> parent (vmlinux or a module)
    orig_dir: Path
    patched_dir: Path
    source_root: Path  # a tree with the kernel's headers (the loader's features are read there)
    adjustments: List[HunkAdjustment] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)


def patched_files(req: BuildRequest) -> List[str]:
    """The source files the request's patches change, each once."""
    return sorted({f for p in req.patches for f in changed_files(Path(p)).all})


def compile_both(tree: PreparedTree, req: BuildRequest, files: List[str], objects: List[str], cflags: str,
                 work: Path, compiler: Optional[str] = None) -> Tuple[Path, Path, List[HunkAdjustment]]:
    """Compile ``objects`` unpatched, then patched (the tree restored afterwards); ``files`` are the
    source files the patches change (``patched_files``).

    With ``compiler`` (the ``.comment`` identity of the compiler kbuild runs) unpatched objects
    whose every dependency is unchanged come from the tree's cache instead (``objcache``).
    """
    orig_dir, patched_dir = work / "orig", work / "patched"
    # Patched C files only: kbuild's recorded commands (proven here) compile the patched side without make.
    only_c = all(f.endswith(".c") for f in files)
    outcome = build_unpatched(tree, objects, cflags, orig_dir, req.jobs, compiler, build=build_objects,
                              prove_commands=only_c)
    with patched_tree(tree, [Path(p) for p in req.patches], fuzz=req.fuzz) as applied:
        through_make = [o for o in objects if o not in outcome.commands]
        if outcome.commands:
            through_make += build_recorded(tree, outcome.commands, patched_dir, orig_dir)
        if through_make:
            build_objects(tree, sorted(through_make), cflags, patched_dir, jobs=req.jobs)
    return orig_dir, patched_dir, [a for patch in applied for a in patch.adjustments]


def compile_kernel(req: BuildRequest, log: StepLog, work: Path, other_compiler: Optional[str], cflags: str,
                   compiler: Optional[str] = None,
                   debuginfo: Optional[Callable[[], ReleaseDebuginfo]] = None) -> CompiledPairs:
    """The changed kernel objects (vmlinux or in-tree modules), compiled in the prepared tree.

    ``compiler`` keys the cache of unpatched objects; ``debuginfo``, when given, returns the
    release's debuginfo (read while the tree was being prepared) instead of reading it here.
    """
    trees = Path(req.cache_dir) / "trees"
    if other_compiler:
        # The shared tree is configured for the kernel's compiler (CONFIG_CC_VERSION_TEXT): kbuild
        # would reconfigure it in place for another one. That compiler gets a tree of its own.
        trees = Path(req.cache_dir) / "trees-by-compiler" / hashlib.sha256(other_compiler.encode()).hexdigest()[:16]
        log.note("prepare-tree", f"compiler '{other_compiler}' is not the kernel's: tree under {trees}")
    with log.stage("prepare_tree"):
        tree = prepare_tree(Path(req.source_dir), Path(req.config), req.release, trees, log, jobs=req.jobs,
                            compiler=compiler, headers=Path(req.headers))
    files = patched_files(req)
    info = debuginfo() if debuginfo else read_debuginfo(req, log)
    objmap = objects_for_sources(tree, files, extra_cflags=cflags, jobs=req.jobs,
                                 full_build_fallback=req.full_build_fallback, decide=partial(decide_goal, info))
    if objmap.undecided:
        raise KbuildError("cannot live patch: " + "; ".join(f"{f}: {why}" for f, why in sorted(objmap.undecided.items())))
    for obj, goal in sorted(objmap.goals.items()):
        log.note("object-goal", f"{obj}: {goal.module or goal.kind} (decided by {goal.decided_by})")
    for skipped, why in sorted(objmap.skipped.items()):
        log.note("skip-file", f"{skipped}: {why}")
    unmapped = [f for f in files if f.endswith(".h") and f not in objmap.header_basis and f not in objmap.skipped]
    if unmapped:
        # Never build from a partial list: a header without a complete answer stops the build.
        raise KbuildError(f"cannot live patch: no complete list of the objects that include {', '.join(unmapped)}")
    for header, basis in sorted(objmap.header_basis.items()):
        log.note("header-objects", f"{header}: {' '.join(objmap.objects[header]) or '-'} ({basis})")
    pairs = {obj: parent_of(objmap.goals[obj].kind, objmap.goals[obj].module, obj) for obj in objmap.all_objects}
    if not pairs:
        skipped = "; ".join(f"{f}: {why}" for f, why in sorted(objmap.skipped.items()))
        raise NoChangesError(f"nothing to live patch: this kernel builds no object from the files the patches "
                             f"change ({skipped or ', '.join(files)})")
    orig_dir, patched_dir, adjustments = compile_both(tree, req, files, sorted(pairs), cflags, work, compiler)
    return CompiledPairs(pairs, orig_dir, patched_dir, tree.root, adjustments, objmap.skipped)


def compile_oot(req: BuildRequest, oot: OotModule, log: StepLog, work: Path, cflags: str) -> CompiledPairs:
    """The changed objects of an out-of-tree module, compiled in a copy of its source with its Kbuild."""
    files = patched_files(req)
    objects, refused = oot_objects(files)
    if refused:
        raise KbuildError("cannot live patch: " + "; ".join(f"{f}: {why}" for f, why in sorted(refused.items())))
    tree = oot_source_tree(oot, work, req.release, Path(req.headers), log)
    log.note("object-goal", f"{' '.join(objects)}: {oot.name} (out-of-tree module {oot.ko})")
    orig_dir, patched_dir, adjustments = compile_both(tree, req, files, objects, cflags, work)
    return CompiledPairs({obj: oot.name for obj in objects}, orig_dir, patched_dir, Path(req.headers), adjustments)
