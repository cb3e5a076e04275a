"""Module files for the target-side unit tests: ELF objects gcc compiles at test time.

Each carries a real ``.modinfo`` section (the strings kbuild's modpost writes: name, vermagic,
livepatch) so that the stdlib reader, the loader's checks and the executor see what they see in a
``.ko``.  Nothing here is loadable: ``RecordingKernel`` stands in for the loader's kernel
operations, and the tests that really load run in the VM (tests/integration/test_target_kpatch.py).
``host_state`` builds the HostState the planner and the boot service are given.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._target.executor import KernelOps
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.loader import (
    LoadResult, LoaderError, TransitionOutcome)
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.state import HostState
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.sysfs import KernelModule, LivePatch
from tests.unit.elf_samples import compile_c

RELEASE = "6.1.0-50-cloud-amd64"
OTHER_RELEASE = "6.1.0-51-cloud-amd64"


def host_state(release: str, patches=(), stale=(), installed=None, hashes=None, supported: bool = True) -> HostState:
    """The host as gather_host_state sees it: ``patches`` are (name, enabled) or (name, enabled, in
    transition), each with its module loaded; ``stale`` names modules loaded without a patch."""
    lps = {p[0]: LivePatch(name=p[0], enabled=p[1], transition=p[2] if len(p) > 2 else False, replace=None)
           for p in patches}
    mods = {name: KernelModule(name=name, taint="OEK", srcversion=None, refcnt=0)
            for name in list(lps) + list(stale)}
    return HostState(release=release, livepatch_supported=supported, patches=lps, modules=mods,
                     installed=installed or {}, installed_sha256=hashes or {})


def vermagic(release: str) -> str:
    """A vermagic string as Debian's cloud kernels write it."""
    return f"{release} SMP preempt mod_unload modversions "


def module_file(directory: Path, name: str, release: str = RELEASE, livepatch: bool = True,
                text: str = "") -> Path:
    """``<directory>/<name>.ko``: an object whose .modinfo names ``name`` and ``release``.

    ``text`` goes into another .modinfo string, so two files of one name differ in bytes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    strings = [f"name={name}", f"vermagic={vermagic(release)}", "license=GPL"]
    if livepatch:
        strings.append("livepatch=Y")
    if text:
        strings.append(f"description={text}")
    source = "".join(
        f'static const char modinfo_{i}[] __attribute__((used, section(".modinfo"), aligned(1))) = "{s}";\n'
        for i, s in enumerate(strings))
    work = directory / f".build-{name}"
    work.mkdir(exist_ok=True)
    obj = compile_c(work, name, source, flags=("-O2",))
    dest = directory / f"{name}.ko"
    shutil.move(str(obj), dest)
    shutil.rmtree(work)
    return dest


class RecordingKernel:
    """Stands in for the loader's kernel operations; ``fail_load`` makes a load fail as a stall does."""

    def __init__(self, fail_load: Optional[str] = None, replaced: Tuple[str, ...] = ()) -> None:
        self.calls: List[tuple] = []
        self.fail_load = fail_load
        self.replaced = list(replaced)

    def ops(self) -> KernelOps:
        return KernelOps(load=self.load, unload=self.unload, rmmod=self.rmmod,
                         finish_enable=self.finish_enable)

    def load(self, path: str, name: str, timeout: float, force: bool) -> LoadResult:
        self.calls.append(("load", name, path, timeout, force))
        if self.fail_load:
            raise LoaderError(self.fail_load, reverted=True)
        return LoadResult(name=name, replaced=self.replaced, forced=force,
                          transition=TransitionOutcome(complete=True, waited=1.5))

    def unload(self, name: str, timeout: float, force: bool) -> Optional[TransitionOutcome]:
        self.calls.append(("unload", name, timeout, force))
        return TransitionOutcome(complete=True, waited=0.25)

    def rmmod(self, name: str) -> None:
        self.calls.append(("rmmod", name))

    def finish_enable(self, name: str, timeout: float, force: bool) -> TransitionOutcome:
        self.calls.append(("finish_enable", name, timeout, force))
        return TransitionOutcome(complete=True, waited=2.0)
