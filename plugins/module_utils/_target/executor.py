# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Run a plan's steps on the host: one handler per step kind, installs undone when a later step fails.

``state.plan`` says what to do; this module does it, for the ``kpatch`` module and for the boot
service alike.  It also holds what both need around a run: the host lock (with the removal of
what killed runs left behind), the checks an installed file passes before it is loaded, the wait
for a patch some earlier run left enabling, and the metrics refresh.  Standard library only.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from .facts import gather_info
from .leftovers import remove_leftovers
from .loader import (LOCK_PATHS, HostLock, InstallJournal, LoadResult, LoaderError, TransitionOutcome,
                     finish_enable, load_module, remove_file, rmmod, unload_module, validate_module)
from .metrics import write_metrics
from .modinfo import normalize_module_name, read_modinfo
from .state import HostState, Step, StepKind


@dataclass(frozen=True)
class RunOptions:
    """How long transitions may take, and whether a stalled one is forced instead of reversed."""

    timeout: float
    force: bool = False


@dataclass(frozen=True)
class KernelOps:
    """The operations that change the running kernel (the loader's; tests may stand in for them)."""

    load: Callable[[str, str, float, bool], LoadResult] = load_module
    unload: Callable[[str, float, bool], Optional[TransitionOutcome]] = unload_module
    rmmod: Callable[[str], None] = rmmod
    finish_enable: Callable[[str, float, bool], TransitionOutcome] = finish_enable


@dataclass
class Outcome:
    """What a run did: the steps taken, the patches a replace retired, the time spent waiting."""

    actions: List[str] = field(default_factory=list)
    replaced: List[str] = field(default_factory=list)
    forced: bool = False
    transition_seconds: float = 0.0
    undone: List[str] = field(default_factory=list)  # installs put back after a later step failed

    @property
    def changed(self) -> bool:
        return bool(self.actions)


class Executor:
    """Runs steps in order, recording each one taken into ``outcome``."""

    def __init__(self, options: RunOptions, ops: Optional[KernelOps] = None) -> None:
        self.options = options
        self.ops = ops or KernelOps()
        self.outcome = Outcome()
        self._journal = InstallJournal()
        self._handlers: Dict[StepKind, Callable[[Step], None]] = {
            StepKind.INSTALL: self._install,
            StepKind.UNINSTALL: self._uninstall,
            StepKind.RMMOD: self._rmmod,
            StepKind.UNLOAD: self._unload,
            StepKind.LOAD: self._load,
        }

    def run(self, steps: List[Step]) -> Outcome:
        """All steps, or LoaderError with every install of this run undone (``outcome.undone``)."""
        self._journal = InstallJournal()
        try:
            for step in steps:
                self._handlers[step.kind](step)
                self.outcome.actions.append(step.describe())
        except LoaderError:
            self.outcome.undone = self._journal.rollback()
            raise
        self._journal.commit()
        return self.outcome

    def settle_enable(self, host: HostState, name: str) -> None:
        """A patch found enabling (the boot service, or a run killed in its wait): see it through.

        Stalled, it is reversed (or forced) like a load of this run, so the host is not left in a
        transition nobody waits for.
        """
        patch = host.patches.get(name)
        if patch is not None and patch.enabled and patch.transition:
            waited = self.ops.finish_enable(name, self.options.timeout, self.options.force).waited
            self.outcome.transition_seconds += waited

    def _install(self, step: Step) -> None:
        self._journal.install(_required(step.path, step), _required(step.dest, step))

    def _uninstall(self, step: Step) -> None:
        remove_file(_required(step.path, step))

    def _rmmod(self, step: Step) -> None:
        self.ops.rmmod(step.name)

    def _unload(self, step: Step) -> None:
        result = self.ops.unload(step.name, self.options.timeout, self.options.force)
        if result is not None:
            self.outcome.transition_seconds += result.waited

    def _load(self, step: Step) -> None:
        result = self.ops.load(_required(step.path, step), step.name, self.options.timeout,
                               self.options.force)
        self.outcome.replaced.extend(result.replaced)
        self.outcome.forced = self.outcome.forced or result.forced
        if result.transition is not None:
            self.outcome.transition_seconds += result.transition.waited


def _required(value: Optional[str], step: Step) -> str:
    if value is None:
        raise LoaderError(f"step '{step.describe()}' has no path to act on")
    return value


@contextmanager
def host_session(install_dir: str, lock_wait: float, dry_run: bool = False,
                 lock_paths: Tuple[str, ...] = LOCK_PATHS) -> Iterator[Optional[List[str]]]:
    """Hold the host lock and yield the leftovers of killed runs it removed; a dry run takes nothing.

    Only a holder of the lock may remove them: an install temporary found then belongs to a run
    that was killed, never to one still running.
    """
    if dry_run:
        yield None
        return
    with HostLock(timeout=lock_wait, paths=lock_paths):
        yield remove_leftovers(install_dir)


def check_installed_file(path: str, name: str, release: str, sha256: Optional[str],
                         reference: Optional[str]) -> None:
    """An installed file is held to the checks of a src before it is loaded (ModinfoError/LoaderError)."""
    info = read_modinfo(path)
    if info.name != normalize_module_name(name):
        # The file name is what plans and sysfs paths are made of: a file holding another module
        # would be inserted under one name and waited for under the other.
        raise LoaderError(f"{path} holds module {info.name}, not {name}")
    validate_module(info, release, sha256, reference)


def refresh_metrics(path: str, install_dir: str, changed: bool) -> Optional[str]:
    """Rewrite the metrics file; returns why it could not be written (the run's outcome stands)."""
    try:
        write_metrics(path, gather_info(install_dir), changed=changed)
    except (OSError, ValueError) as exc:
        return f"metrics file {path} not written: {exc}"
    return None
