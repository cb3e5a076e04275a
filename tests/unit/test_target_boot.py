"""Boot loader decisions that need no kernel: the kpatch.enable= switch, what is loaded or skipped, the lock.

Installed modules are real files (gcc-compiled objects with a ``.modinfo``) under a temporary
install dir; the kernel's side of a load is a recording stand-in (tests/unit/target_modules.py),
and the booted kernel's side is tests/integration/test_target_kpatch.py's.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._target.boot import (
    disabled_on_cmdline, load_installed)
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.executor import RunOptions
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.loader import (
    HostLock, LoaderError, list_installed)
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.state import HostState
from tests.unit.target_modules import OTHER_RELEASE, RELEASE, RecordingKernel, host_state, module_file, vermagic


@pytest.mark.parametrize("cmdline,disabled", [
    ("BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro kpatch.enable=0 quiet", True),
    ("root=/dev/vda1 kpatch.enable=1", False),
    ("root=/dev/vda1", False),
    ("kpatch.enable=off", True),
    ("kpatch.enable=0 kpatch.enable=1", False),  # the last one wins, as for kernel params
    ("xkpatch.enable=0", False),
    ("kpatch.enable", False),
])
def test_kpatch_enable_switch(cmdline, disabled):
    assert disabled_on_cmdline(cmdline) is disabled


def booted_host(install_dir: Path, patches=(), stale=(), supported: bool = True) -> HostState:
    """The host as gather_host_state sees it at boot, with the installed files really listed."""
    return host_state(RELEASE, patches, stale, installed=list_installed(str(install_dir)), supported=supported)


def test_loads_the_running_kernels_modules_in_name_order_and_skips_others(tmp_path: Path) -> None:
    mine = tmp_path / RELEASE
    b, a = module_file(mine, "lp_b"), module_file(mine, "lp_a")
    module_file(tmp_path / OTHER_RELEASE, "lp_next")
    kernel = RecordingKernel(replaced=("lp_old",))
    lines = load_installed(booted_host(tmp_path), RunOptions(timeout=9), vermagic(RELEASE), kernel.ops())
    assert lines == [f"lp_next: skipped, installed for {OTHER_RELEASE}, running {RELEASE}",
                     f"lp_a: loaded from {a} (replaced lp_old)",
                     f"lp_b: loaded from {b} (replaced lp_old)"]
    assert kernel.calls == [("load", "lp_a", str(a), 9, False), ("load", "lp_b", str(b), 9, False)]


def test_an_enabled_patch_is_not_loaded_again(tmp_path: Path) -> None:
    module_file(tmp_path / RELEASE, "lp")
    kernel = RecordingKernel()
    lines = load_installed(booted_host(tmp_path, patches=[("lp", True)]), RunOptions(timeout=9), None,
                           kernel.ops())
    assert lines == ["lp: already loaded"] and kernel.calls == []


def test_a_disabled_leftover_is_removed_before_the_load(tmp_path: Path) -> None:
    path = module_file(tmp_path / RELEASE, "lp")
    kernel = RecordingKernel()
    lines = load_installed(booted_host(tmp_path, stale=["lp"]), RunOptions(timeout=9), None, kernel.ops())
    assert lines == [f"lp: loaded from {path}"]
    assert kernel.calls == [("rmmod", "lp"), ("load", "lp", str(path), 9, False)]


def test_a_file_named_with_dashes_loads_under_the_kernels_name(tmp_path: Path) -> None:
    # kbuild names a livepatch-x.c module livepatch_x; a file placed by hand may keep the dash.
    dashed = module_file(tmp_path / RELEASE, "lp_dash").rename(tmp_path / RELEASE / "lp-dash.ko")
    kernel = RecordingKernel()
    lines = load_installed(booted_host(tmp_path, patches=[("lp_dash", False)]), RunOptions(timeout=9), None,
                           kernel.ops())
    assert lines == [f"lp_dash: loaded from {dashed}"]
    assert kernel.calls == [("unload", "lp_dash", 9, False), ("load", "lp_dash", str(dashed), 9, False)]


def test_a_refused_module_fails_alone_and_is_never_inserted(tmp_path: Path) -> None:
    mine = tmp_path / RELEASE
    good = module_file(mine, "lp_good")
    # Built for another kernel but installed under this one's directory: refused by its vermagic.
    wrong = module_file(tmp_path / "build", "lp_wrong", OTHER_RELEASE)
    wrong.rename(mine / "lp_wrong.ko")
    kernel = RecordingKernel()
    lines = load_installed(booted_host(tmp_path), RunOptions(timeout=9), vermagic(RELEASE), kernel.ops())
    assert lines[0] == f"lp_good: loaded from {good}"
    assert lines[1].startswith("lp_wrong: FAILED: ") and f"built for kernel {OTHER_RELEASE}" in lines[1]
    assert [c[1] for c in kernel.calls] == ["lp_good"]


def test_a_load_that_fails_is_logged_and_the_next_still_loads(tmp_path: Path) -> None:
    mine = tmp_path / RELEASE
    module_file(mine, "lp_a")
    module_file(mine, "lp_b")
    kernel = RecordingKernel(fail_load="load of lp stalled")
    lines = load_installed(booted_host(tmp_path), RunOptions(timeout=9), None, kernel.ops())
    assert lines == ["lp_a: FAILED: load of lp stalled", "lp_b: FAILED: load of lp stalled"]
    assert [c[1] for c in kernel.calls] == ["lp_a", "lp_b"]
    assert sorted(p.name for p in mine.iterdir()) == ["lp_a.ko", "lp_b.ko"]  # boot never uninstalls


def test_nothing_installed_and_no_livepatch_support(tmp_path: Path) -> None:
    kernel = RecordingKernel()
    assert load_installed(booted_host(tmp_path), RunOptions(timeout=9), None, kernel.ops()) == \
        [f"no patch module installed for {RELEASE}"]
    module_file(tmp_path / RELEASE, "lp")
    assert load_installed(booted_host(tmp_path, supported=False), RunOptions(timeout=9), None, kernel.ops()) == \
        ["lp: FAILED: kernel has no livepatch support"]
    assert kernel.calls == []


def _hold(path: str, log: str, ready, release) -> None:
    with HostLock(timeout=5, paths=(path,)):
        ready.set()
        release.wait(10)
        with open(log, "a", encoding="ascii") as handle:
            handle.write("holder done\n")


def test_lock_serialises_processes(tmp_path: Path) -> None:
    path, log = str(tmp_path / "kpatch.lock"), tmp_path / "order.log"
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(path, str(log), ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(LoaderError, match="another kpatch run holds"):
            with HostLock(timeout=0.3, paths=(path,)):
                pass
        release.set()
        with HostLock(timeout=10, paths=(path,)):
            # Granted only once the holder had finished its work under the lock.
            with open(log, "a", encoding="ascii") as handle:
                handle.write("waiter got it\n")
        assert log.read_text().splitlines() == ["holder done", "waiter got it"]
    finally:
        release.set()
        holder.join(10)
    assert holder.exitcode == 0
