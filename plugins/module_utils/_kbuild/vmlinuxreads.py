# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""What a build reads from vmlinux's DWARF, read in a background thread while the tree is prepared.

The compile units linked into vmlinux (``debuginfo``, 13 s for a release not yet cached) and the
special-section struct sizes (``structsizes``, 3 s) are pure-Python reads of a 282 MB file; the
tree preparation they used to precede runs ``make`` in child processes.  Started side by side
they overlap, and each is still cached per release so a second build reads nothing.  A failure
in the background is raised where the result is first needed, with its own message.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Dict, Optional, Type

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.debuginfo import (
    ReleaseDebuginfo,
    release_debuginfo,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.request import BuildRequest
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import StepLog
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.structsizes import special_struct_sizes


def read_debuginfo(req: BuildRequest, log: StepLog) -> ReleaseDebuginfo:
    """What the release's debuginfo says was linked where (scanned once per release, then cached)."""
    return release_debuginfo(Path(req.vmlinux), req.release, req.modules_dir, req.debug_modules_dir,
                             Path(req.cache_dir) / "debuginfo", log)


def read_struct_sizes(req: BuildRequest, log: StepLog) -> Dict[str, int]:
    """The special-section entry sizes of the release's vmlinux (measured once per release)."""
    with log.step("struct-sizes") as res:
        sizes = special_struct_sizes(Path(req.vmlinux), req.release, Path(req.cache_dir) / "structsizes",
                                     config=Path(req.config))
        res.detail = " ".join(f"{k}={v}" for k, v in sorted(sizes.items()))
    return sizes


class VmlinuxReads:
    """Context manager: the reads start on entry; ``debuginfo()`` / ``struct_sizes()`` wait for them."""

    def __init__(self, req: BuildRequest, log: StepLog) -> None:
        self._req, self._log = req, log
        # One worker: both reads hold the interpreter lock; what they overlap with is make.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vmlinux-reads")
        self._debuginfo: Optional[Future] = None
        self._sizes: Optional[Future] = None

    def __enter__(self) -> "VmlinuxReads":
        if not self._req.oot:  # an out-of-tree module's objects are placed without vmlinux's units
            self._debuginfo = self._pool.submit(read_debuginfo, self._req, self._log)
        self._sizes = self._pool.submit(read_struct_sizes, self._req, self._log)
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        # A failed build does not wait for reads not yet started; a running one finishes (it
        # writes its cache atomically either way).
        self._pool.shutdown(wait=True, cancel_futures=True)

    def debuginfo(self) -> ReleaseDebuginfo:
        if self._debuginfo is None:
            return read_debuginfo(self._req, self._log)
        return self._debuginfo.result()

    def struct_sizes(self) -> Dict[str, int]:
        if self._sizes is None:
            raise RuntimeError("VmlinuxReads.struct_sizes() called outside its with block")
        return self._sizes.result()
