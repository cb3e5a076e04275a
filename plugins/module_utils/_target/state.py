# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""What a host has now, and the steps that take one patch module to a desired state.

``plan()`` is pure: it reads nothing and changes nothing, so check mode, diff mode and the
real run all come from the same list of steps, and it is unit-tested without a kernel.
States: ``loaded`` (inserted, enabled, settled), ``unloaded`` (removed from the kernel),
``installed`` (file under ``<install_dir>/<release>/``, and loaded now when asked and when the
release is the running one), ``absent`` (unloaded and uninstalled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Dict, List, Optional

from .sysfs import KernelModule, LivePatch

STATES = ("loaded", "unloaded", "installed", "absent")


class PlanError(ValueError):
    """The desired state cannot be reached from here; the message says why."""


@dataclass(frozen=True)
class HostState:
    """A snapshot of one host, as far as livepatches go."""

    release: str
    livepatch_supported: bool
    patches: Dict[str, LivePatch] = field(default_factory=dict)
    modules: Dict[str, KernelModule] = field(default_factory=dict)  # loaded, tainted 'K'
    installed: Dict[str, Dict[str, str]] = field(default_factory=dict)  # release→name→path
    installed_sha256: Dict[str, str] = field(default_factory=dict)  # path → sha256
    loaded_sha256: Dict[str, str] = field(default_factory=dict)  # name → sha256 it was loaded from
    forced: List[str] = field(default_factory=list)  # loaded modules of forced patches: not removable

    def loaded_names(self) -> List[str]:
        return sorted(n for n, p in self.patches.items() if p.enabled)

    def installed_names(self) -> Dict[str, List[str]]:
        return {rel: sorted(mods) for rel, mods in sorted(self.installed.items()) if mods}


@dataclass(frozen=True)
class Source:
    """The module file the task brings (already on the host), with what .modinfo says."""

    path: str
    name: str
    sha256: str
    srcversion: Optional[str]


@dataclass(frozen=True)
class Desired:
    state: str
    name: str
    release: str
    source: Optional[Source] = None
    load: bool = True


class StepKind(Enum):
    """The kinds of change a plan is made of; the executor runs one handler per kind."""

    INSTALL = "install"
    UNINSTALL = "uninstall"
    LOAD = "load"
    UNLOAD = "unload"
    RMMOD = "rmmod"  # a module whose patch is gone


@dataclass(frozen=True)
class Step:
    """One change of a plan, with what it acts on."""

    kind: StepKind
    name: str
    path: Optional[str] = None
    dest: Optional[str] = None
    release: Optional[str] = None

    def describe(self) -> str:
        if self.kind is StepKind.INSTALL:
            return f"install {self.path} as {self.dest}"
        if self.kind is StepKind.UNINSTALL:
            return f"uninstall {self.path}"
        if self.kind is StepKind.LOAD:
            return f"load {self.name} from {self.path}"
        if self.kind is StepKind.UNLOAD:
            return f"disable and unload {self.name}"
        return f"rmmod {self.name} (its patch is no longer registered)"


def _steps_to_unload(host: HostState, name: str) -> List[Step]:
    if name in host.patches:
        return [Step(StepKind.UNLOAD, name)]
    if name in host.modules and name not in host.forced:
        return [Step(StepKind.RMMOD, name)]
    # Not loaded, or a forced patch's module: disabled, and the kernel keeps it until reboot.
    return []


def _steps_to_load(host: HostState, name: str, path: Optional[str],
                   source: Optional[Source]) -> List[Step]:
    patch = host.patches.get(name)
    module = host.modules.get(name)
    if patch is not None and patch.enabled:
        loaded_from = host.loaded_sha256.get(name)
        if source and loaded_from and loaded_from != source.sha256:
            raise PlanError(
                f"a different build of {name} is loaded (sha256 {loaded_from}, the file has "
                f"{source.sha256}); unload it first, or ship the new build under a new name as "
                "an atomic-replace patch")
        if (source and source.srcversion and module and module.srcversion
                and module.srcversion != source.srcversion):
            raise PlanError(
                f"a different build of {name} is loaded (srcversion {module.srcversion}, the "
                f"file has {source.srcversion}); unload it first, or ship the new build under a "
                "new name as an atomic-replace patch")
        return []  # loaded; a running enable transition is awaited by the executor
    if name in host.forced:
        raise PlanError(f"{name} is disabled, but its module stays loaded until reboot: a forced "
                        "transition keeps a patch's module in the kernel; reboot to load it again, or "
                        "ship the fix under another name")
    if path is None:
        raise PlanError(f"{name} is not loaded, and no src was given and it is not installed "
                        f"for the running kernel {host.release}")
    steps = _steps_to_unload(host, name)  # a disabled leftover must go before insmod
    return steps + [Step(StepKind.LOAD, name, path=path)]


def _install_steps(host: HostState, desired: Desired, dest: str) -> List[Step]:
    src = desired.source
    current = host.installed.get(desired.release, {}).get(desired.name)
    if src is None:
        if current is None:
            raise PlanError(f"{desired.name} is not installed for {desired.release} "
                            "and no src was given")
        return []
    if current is not None and host.installed_sha256.get(current) == src.sha256:
        return []
    return [Step(StepKind.INSTALL, desired.name, path=src.path, dest=dest, release=desired.release)]


def plan(host: HostState, desired: Desired, dest: str) -> List[Step]:
    """Steps from ``host`` to ``desired``; ``dest`` is where an installed file belongs."""
    if desired.state not in STATES:
        raise PlanError(f"unknown state {desired.state!r}; expected one of {', '.join(STATES)}")
    running = desired.release == host.release
    if desired.state in ("loaded", "installed") and desired.load and running \
            and not host.livepatch_supported:
        raise PlanError(f"kernel {host.release} has no livepatch support "
                        "(/sys/kernel/livepatch is missing)")
    if desired.state == "loaded":
        if not running:
            raise PlanError(f"state=loaded acts on the running kernel {host.release}, "
                            f"not {desired.release}; use state=installed for another release")
        path = desired.source.path if desired.source else \
            host.installed.get(host.release, {}).get(desired.name)
        return _steps_to_load(host, desired.name, path, desired.source)
    if desired.state == "unloaded":
        return _steps_to_unload(host, desired.name) if running else []
    if desired.state == "installed":
        steps = _install_steps(host, desired, dest)
        if desired.load and running:
            steps += _steps_to_load(host, desired.name, dest, desired.source)
        return steps
    steps = _steps_to_unload(host, desired.name) if running else []
    current = host.installed.get(desired.release, {}).get(desired.name)
    if current is not None:
        steps.append(Step(StepKind.UNINSTALL, desired.name, path=current, release=desired.release))
    return steps


def predict(host: HostState, steps: List[Step]) -> Dict[str, object]:
    """The loaded and installed sets after ``steps`` (for check-mode diffs).

    An atomic-replace module's effect on other patches is only known once it is loaded,
    so the prediction lists only the patch being loaded.
    """
    loaded = set(host.loaded_names())
    installed = {rel: set(names) for rel, names in host.installed_names().items()}
    for step in steps:
        if step.kind is StepKind.LOAD:
            loaded.add(step.name)
        elif step.kind is StepKind.UNLOAD:
            loaded.discard(step.name)
        elif step.kind is StepKind.INSTALL:
            installed.setdefault(step.release or "", set()).add(step.name)
        elif step.kind is StepKind.UNINSTALL:
            installed.get(step.release or "", set()).discard(step.name)
    return {"loaded": sorted(loaded),
            "installed": {rel: sorted(n) for rel, n in sorted(installed.items()) if n}}


def snapshot(host: HostState) -> Dict[str, object]:
    """The loaded and installed sets now (the diff's ``before``/``after``)."""
    return {"loaded": host.loaded_names(), "installed": host.installed_names()}
