# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""One ``kpatch`` task: check the request, plan under the host lock, run or predict, report.

The Ansible module turns its parameters into a ``TaskRequest`` and calls ``run_task``; the
result is the module's return value (``RETURN`` of plugins/modules/kpatch.py), and a
``TaskFailure`` carries the message and the keys a failed task returns.  Check mode plans and
predicts without the lock and changes nothing.  Standard library only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .executor import Executor, RunOptions, check_installed_file, host_session
from .facts import gather_host_state, running_release
from .loader import (DEFAULT_INSTALL_DIR, LoaderError, check_release, installed_path,
                     reference_vermagic, validate_module)
from .modinfo import ModInfo, ModinfoError, normalize_module_name, read_modinfo, sha256_of
from .state import Desired, HostState, PlanError, Source, plan, predict, snapshot

# States whose task loads the module (now, or for the boot service): a file must pass the checks.
LOADING_STATES = ("loaded", "installed")


@dataclass(frozen=True)
class TaskRequest:
    """The module's parameters, as the task needs them."""

    state: str = "loaded"
    name: Optional[str] = None
    src: Optional[str] = None  # on the host (the action plugin has sent a controller file)
    sha256: Optional[str] = None
    load: bool = True
    release: Optional[str] = None
    timeout: int = 60
    force: bool = False
    install_dir: str = DEFAULT_INSTALL_DIR

    def lock_wait(self) -> float:
        # Long enough for another run's load, stall handling and reversal to finish first.
        return self.timeout * 4 + 30


class TaskFailure(Exception):
    """Ends the task as failed; ``extra`` goes into the result."""

    def __init__(self, msg: str, **extra: object) -> None:
        super().__init__(msg)
        self.extra = extra


def _source(request: TaskRequest, release: str, running: str) -> Tuple[Optional[ModInfo], Optional[Source]]:
    """Read and check the module file; (None, None) when the task names a module only."""
    src = request.src
    if not src:
        return None, None
    if not os.path.isfile(src):
        raise TaskFailure(f"src {src} does not exist on the host")
    try:
        info = read_modinfo(src)
    except ModinfoError as exc:
        raise TaskFailure(str(exc)) from exc
    if request.name and normalize_module_name(request.name) != info.name:
        raise TaskFailure(f"src {src} holds module {info.name}, not {request.name}")
    if request.state in LOADING_STATES:
        target = running if request.state == "loaded" else release
        try:
            validate_module(info, target, request.sha256, reference_vermagic(target))
        except LoaderError as exc:
            raise TaskFailure(str(exc)) from exc
    return info, Source(path=src, name=info.name, sha256=sha256_of(src), srcversion=info.srcversion)


def _check_request(request: TaskRequest, release: str, running: str) -> None:
    if request.state == "loaded" and release != running:
        raise TaskFailure(f"state=loaded acts on the running kernel {running}; release={release} "
                          "needs state=installed")
    if not request.src and not request.name:
        raise TaskFailure("one of name or src is required")
    # Names become sysfs and file paths: refuse anything else before any path is made.
    try:
        if request.name:
            normalize_module_name(request.name)
        check_release(release)
    except (ModinfoError, LoaderError) as exc:
        raise TaskFailure(str(exc)) from exc


def _check_installed(host: HostState, name: str, request: TaskRequest, release: str) -> None:
    """Loading by name uses the installed file: hold it to the same checks as a src."""
    path = host.installed.get(release, {}).get(name)
    if path is None or request.state not in LOADING_STATES:
        return
    try:
        check_installed_file(path, name, release, request.sha256, reference_vermagic(release))
    except (ModinfoError, LoaderError) as exc:
        raise TaskFailure(str(exc)) from exc


def _execute(executor: Executor, steps: list, host: HostState, name: str, wants_loaded: bool) -> None:
    try:
        executor.run(steps)
        if wants_loaded:
            executor.settle_enable(host, name)
    except LoaderError as exc:
        outcome = executor.outcome
        undone = outcome.undone
        msg = str(exc) + (f"; the install was undone ({', '.join(undone)})" if undone else "")
        raise TaskFailure(msg, changed=outcome.changed, actions=outcome.actions,
                          stalled_tasks=[t.as_dict() for t in exc.stalled],
                          reverted=exc.reverted, undone=undone) from exc


def run_task(request: TaskRequest, check_mode: bool = False, diff: bool = False) -> Dict[str, object]:
    """Reach the requested state (or, in check mode, say how); the module's result."""
    running = running_release()
    release = request.release or running
    _check_request(request, release, running)
    info, source = _source(request, release, running)
    name = info.name if info else normalize_module_name(request.name or "")
    result: Dict[str, object] = dict(changed=False, name=name, release=release, actions=[], replaced=[],
                                     reverted=False, forced=False, transition_seconds=0.0)
    try:
        session = host_session(request.install_dir, request.lock_wait(), dry_run=check_mode)
        with session as leftovers:
            if leftovers is not None:
                result["leftovers_removed"] = leftovers
            host = gather_host_state(request.install_dir)
            if source is None:
                _check_installed(host, name, request, release)
            desired = Desired(state=request.state, name=name, release=release, source=source,
                              load=request.load)
            try:
                steps = plan(host, desired, installed_path(name, release, request.install_dir))
            except (PlanError, LoaderError) as exc:
                raise TaskFailure(str(exc)) from exc
            before = snapshot(host)
            if check_mode:
                result.update(changed=bool(steps), actions=[s.describe() for s in steps])
                after = predict(host, steps)
            else:
                wants_loaded = request.state == "loaded" or (
                    request.state == "installed" and request.load and release == running)
                executor = Executor(RunOptions(timeout=request.timeout, force=request.force))
                _execute(executor, steps, host, name, wants_loaded)
                outcome = executor.outcome
                result.update(changed=outcome.changed, actions=outcome.actions, replaced=outcome.replaced,
                              forced=outcome.forced, transition_seconds=outcome.transition_seconds)
                after = snapshot(gather_host_state(request.install_dir))
    except LoaderError as exc:  # the host lock: another run held it too long
        raise TaskFailure(str(exc)) from exc
    result.update(loaded=after["loaded"], installed=after["installed"])
    if diff:
        result["diff"] = dict(before=before, after=after)
    return result
