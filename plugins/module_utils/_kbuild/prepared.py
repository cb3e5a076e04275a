# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""``PreparedTree``: a kernel build tree made ready by ``tree.prepare_tree``.

Kept apart from ``tree.py`` so that the patching and object-mapping helpers can
take a prepared tree without importing the preparation code (and vice versa).
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prebuilt import make_skips
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import StepLog

STAMP_NAME = ".kpatch-livepatch-prepared.json"
STAMP_FORMAT = 1


@dataclass(frozen=True)
class PreparedTree:
    """A configured kernel tree (cached copy of a pristine source) ready for single-object builds.

    ``make_vars`` must accompany every ``make`` run in the tree: they make the
    kernel release string (``UTS_RELEASE``, hence vermagic) equal ``release``.
    ``source`` is the pristine tree the copy came from; patch restores are
    checked against it.
    """

    root: Path
    source: Path
    release: str
    make_vars: Tuple[str, ...]
    config_sha256: str
    source_identity: str
    reused: bool
    seconds: float
    log: StepLog
    # Set for an out-of-tree module's source copy: make runs in this kernel build directory (the
    # release's headers) with M=<root>, as the module's own build does.
    kbuild_dir: Optional[Path] = None
    # objtool was taken from the release's headers (prebuilt.py): make must not build its tools.
    prebuilt_tools: bool = False

    @property
    def state_dir(self) -> Path:
        """Per-tree scratch space outside the tree (patch journal, lock)."""
        return self.root.parent

    def make_argv(self, targets: Sequence[str], jobs: int = 2, extra: Sequence[str] = (),
                  whole_kernel: bool = False) -> List[str]:
        """``make`` command line for ``targets`` run in this tree with the release variables.

        ``whole_kernel``: the targets link vmlinux or modules in this tree (tools they need are built).
        """
        where = (["-C", str(self.kbuild_dir), f"M={self.root}"] if self.kbuild_dir
                 else ["-C", str(self.root), *make_skips(self.prebuilt_tools, whole_kernel)])
        return ["make", *where, f"-j{max(1, int(jobs))}", *self.make_vars, *extra, *targets]


# Locks this process already holds, by state directory, with their nesting depth:
# flock(2) on a second descriptor of the same file would block on ourselves when
# build_objects runs inside patched_tree.
_HELD_LOCKS: Dict[str, int] = {}


@contextmanager
def tree_lock(state_dir: Path) -> Iterator[None]:
    """Serialise preparation, patching and builds of one cached tree across processes (re-entrant)."""
    key = os.path.realpath(state_dir)
    if _HELD_LOCKS.get(key):
        _HELD_LOCKS[key] += 1
        try:
            yield
        finally:
            _HELD_LOCKS[key] -= 1
        return
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    with open(os.path.join(key, ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        _HELD_LOCKS[key] = 1
        try:
            yield
        finally:
            _HELD_LOCKS.pop(key, None)
            fcntl.flock(fh, fcntl.LOCK_UN)
