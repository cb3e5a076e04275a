# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Find the tasks that hold up a livepatch transition, and nudge them.

During a transition every task has ``/proc/<pid>/task/<tid>/patch_state`` 0 (unpatched) or 1
(patched); the target is 1 while enabling and 0 while disabling (the patch's ``enabled`` file
flips with the target, also on reversal).  Outside transitions all tasks read -1.  A task whose
state differs from the target is "stalled": usually it sleeps inside a function being replaced.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

PROC_ROOT = "/proc"
PF_KTHREAD = 0x00200000  # include/linux/sched.h
KLP_UNDEFINED = -1


@dataclass(frozen=True)
class StalledTask:
    pid: int  # thread-group id (the process)
    tid: int
    comm: str
    patch_state: int
    kthread: bool
    stack: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None  # the task exited meanwhile, or /proc/*/stack is root-only


def _is_kthread(task_dir: str) -> bool:
    stat = _read(os.path.join(task_dir, "stat"))
    if not stat:
        return False
    # Fields after the ")" that closes comm: state is field 3, flags field 9 of stat(5).
    after = stat.rsplit(")", 1)[-1].split()
    return len(after) > 6 and int(after[6]) & PF_KTHREAD != 0


def _stack(task_dir: str) -> List[str]:
    text = _read(os.path.join(task_dir, "stack")) or ""
    return [line.strip() for line in text.splitlines() if line.strip()]


def _task_dirs(proc_root: str):
    for pid in os.listdir(proc_root):
        if not pid.isdigit():
            continue
        task_root = os.path.join(proc_root, pid, "task")
        try:
            tids = os.listdir(task_root)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for tid in tids:
            if tid.isdigit():
                yield int(pid), int(tid), os.path.join(task_root, tid)


def find_stalled_tasks(target_state: int, proc_root: str = PROC_ROOT,
                       with_stacks: bool = True) -> List[StalledTask]:
    """Tasks whose patch_state is defined and differs from ``target_state`` (0 or 1)."""
    if target_state not in (0, 1):
        raise ValueError(f"target patch state must be 0 or 1, got {target_state}")
    stalled = []
    for pid, tid, task_dir in _task_dirs(proc_root):
        raw = _read(os.path.join(task_dir, "patch_state"))
        if raw is None or not raw.strip().lstrip("-").isdigit():
            continue
        state = int(raw)
        if state == KLP_UNDEFINED or state == target_state:
            continue
        comm = (_read(os.path.join(task_dir, "comm")) or "").strip()
        stalled.append(StalledTask(pid=pid, tid=tid, comm=comm, patch_state=state,
                                   kthread=_is_kthread(task_dir),
                                   stack=_stack(task_dir) if with_stacks else []))
    return sorted(stalled, key=lambda t: (t.pid, t.tid))


def any_task_in_transition(proc_root: str = PROC_ROOT) -> bool:
    """True while some task has a defined patch_state (a transition is running)."""
    for _pid, _tid, task_dir in _task_dirs(proc_root):
        raw = _read(os.path.join(task_dir, "patch_state"))
        if raw is not None and raw.strip() not in ("-1", ""):
            return True
    return False


def nudge_user_tasks(tasks: List[StalledTask], pause: float = 0.05) -> List[int]:
    """SIGSTOP+SIGCONT each stalled user process so it passes the kernel exit path.

    That is where a task switches to the target state.  Kernel threads cannot be signalled
    this way (the kernel wakes them itself); they are skipped.  Returns the pids signalled.
    """
    signalled = []
    for pid in sorted({t.pid for t in tasks if not t.kthread}):
        try:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(pause)
            os.kill(pid, signal.SIGCONT)
            signalled.append(pid)
        except ProcessLookupError:
            continue
    return signalled
