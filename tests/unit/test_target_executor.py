"""The step executor on real files in a temporary install dir; the kernel's side is recorded.

Installs and uninstalls touch real files (atomic copy, kept-aside backups, rollback); loads and
unloads go to a stand-in for the loader that records its calls and can fail like the loader does,
since inserting modules needs a kernel (tests/integration/test_target_kpatch.py does that in a VM).
"""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._target.executor import (
    Executor, RunOptions, check_installed_file, host_session)
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.loader import LoaderError
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.modinfo import ModinfoError
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.state import (
    Desired, HostState, Step, StepKind, plan)
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.sysfs import LivePatch
from tests.unit.target_modules import OTHER_RELEASE, RELEASE, RecordingKernel, module_file, vermagic


@pytest.fixture
def install_dir(tmp_path: Path) -> Path:
    return tmp_path / "kpatch"


def test_install_then_uninstall_moves_real_bytes(tmp_path: Path, install_dir: Path) -> None:
    src = module_file(tmp_path / "staging", "lp")
    dest = install_dir / RELEASE / "lp.ko"
    kernel = RecordingKernel()
    outcome = Executor(RunOptions(timeout=30), kernel.ops()).run(
        [Step(StepKind.INSTALL, "lp", path=str(src), dest=str(dest), release=RELEASE)])
    assert dest.read_bytes() == src.read_bytes() and oct(dest.stat().st_mode & 0o777) == "0o644"
    assert outcome.actions == [f"install {src} as {dest}"] and outcome.changed and outcome.undone == []
    assert sorted(p.name for p in dest.parent.iterdir()) == ["lp.ko"]  # no temporary, no backup
    outcome = Executor(RunOptions(timeout=30), kernel.ops()).run(
        [Step(StepKind.UNINSTALL, "lp", path=str(dest), release=RELEASE)])
    assert not dest.parent.exists()  # the emptied release directory goes too
    assert outcome.actions == [f"uninstall {dest}"] and kernel.calls == []


def test_a_failed_load_puts_the_replaced_file_back(tmp_path: Path, install_dir: Path) -> None:
    old = module_file(install_dir / RELEASE, "lp", text="old build")
    old_bytes = old.read_bytes()
    new = module_file(tmp_path / "staging", "lp", text="new build")
    kernel = RecordingKernel(fail_load="load of lp did not finish within 30s")
    executor = Executor(RunOptions(timeout=30), kernel.ops())
    steps = [Step(StepKind.INSTALL, "lp", path=str(new), dest=str(old), release=RELEASE),
             Step(StepKind.LOAD, "lp", path=str(old))]
    with pytest.raises(LoaderError, match="did not finish") as err:
        executor.run(steps)
    assert err.value.reverted
    assert old.read_bytes() == old_bytes != new.read_bytes()
    assert executor.outcome.undone == [str(old)]
    # The install was taken (and undone); the load was tried with the installed path.
    assert executor.outcome.actions == [f"install {new} as {old}"] and executor.outcome.changed
    assert kernel.calls == [("load", "lp", str(old), 30, False)]
    assert sorted(p.name for p in old.parent.iterdir()) == ["lp.ko"]


def test_a_failed_load_removes_a_new_install(tmp_path: Path, install_dir: Path) -> None:
    new = module_file(tmp_path / "staging", "lp")
    dest = install_dir / RELEASE / "lp.ko"
    executor = Executor(RunOptions(timeout=5), RecordingKernel(fail_load="insmod failed").ops())
    with pytest.raises(LoaderError):
        executor.run([Step(StepKind.INSTALL, "lp", path=str(new), dest=str(dest), release=RELEASE),
                      Step(StepKind.LOAD, "lp", path=str(dest))])
    assert not dest.exists() and executor.outcome.undone == [str(dest)]


def test_each_kind_reaches_its_operation_in_plan_order() -> None:
    kernel = RecordingKernel(replaced=("lp_old",))
    path = f"/var/lib/kpatch/{RELEASE}/lp.ko"
    host = HostState(release=RELEASE, livepatch_supported=True, installed={RELEASE: {"lp": path}},
                     patches={"lp": LivePatch(name="lp", enabled=False, transition=True, replace=None)})
    steps = plan(host, Desired("loaded", "lp", RELEASE), path) + [
        Step(StepKind.RMMOD, "lp_stale")]
    outcome = Executor(RunOptions(timeout=12, force=True), kernel.ops()).run(steps)
    assert [s.kind for s in steps] == [StepKind.UNLOAD, StepKind.LOAD, StepKind.RMMOD]
    assert kernel.calls == [("unload", "lp", 12, True), ("load", "lp", path, 12, True),
                            ("rmmod", "lp_stale")]
    assert outcome.actions == [s.describe() for s in steps]
    assert outcome.replaced == ["lp_old"] and outcome.forced
    assert outcome.transition_seconds == pytest.approx(1.75)


def test_no_steps_change_nothing() -> None:
    kernel = RecordingKernel()
    outcome = Executor(RunOptions(timeout=12), kernel.ops()).run([])
    assert not outcome.changed and outcome.actions == [] and kernel.calls == []


@pytest.mark.parametrize("enabled,transition,waits", [(True, True, True), (True, False, False),
                                                      (False, True, False)])
def test_only_a_patch_still_enabling_is_waited_for(enabled: bool, transition: bool, waits: bool) -> None:
    kernel = RecordingKernel()
    host = HostState(release=RELEASE, livepatch_supported=True,
                     patches={"lp": LivePatch(name="lp", enabled=enabled, transition=transition, replace=None)})
    executor = Executor(RunOptions(timeout=7), kernel.ops())
    executor.settle_enable(host, "lp")
    executor.settle_enable(host, "not_there")
    assert kernel.calls == ([("finish_enable", "lp", 7, False)] if waits else [])
    assert executor.outcome.transition_seconds == (2.0 if waits else 0.0)
    assert not executor.outcome.changed  # waiting is not a change


def test_a_step_without_its_path_is_refused_by_name() -> None:
    with pytest.raises(LoaderError, match="'uninstall None' has no path"):
        Executor(RunOptions(timeout=1), RecordingKernel().ops()).run([Step(StepKind.UNINSTALL, "lp")])


def test_session_removes_leftovers_holding_the_lock(tmp_path: Path, install_dir: Path) -> None:
    rdir = install_dir / RELEASE
    module_file(rdir, "lp")
    for leftover in ("lp.ko.tmp.4242", "lp.ko.prev.77"):
        (rdir / leftover).write_bytes(b"partial")
    lock = tmp_path / "kpatch.lock"
    with host_session(str(install_dir), lock_wait=1, lock_paths=(str(lock),)) as removed:
        assert removed == [str(rdir / "lp.ko.prev.77"), str(rdir / "lp.ko.tmp.4242")]
        with open(lock, "a+") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held for the whole session
    assert sorted(p.name for p in rdir.iterdir()) == ["lp.ko"]
    with open(lock, "a+") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after it


def test_a_dry_session_takes_no_lock_and_removes_nothing(tmp_path: Path, install_dir: Path) -> None:
    rdir = install_dir / RELEASE
    rdir.mkdir(parents=True)
    (rdir / "lp.ko.tmp.4242").write_bytes(b"partial")
    lock = tmp_path / "kpatch.lock"
    with open(lock, "a+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with host_session(str(install_dir), lock_wait=0, dry_run=True, lock_paths=(str(lock),)) as removed:
            assert removed is None
    assert (rdir / "lp.ko.tmp.4242").exists()


def test_a_held_lock_fails_the_session_naming_the_lock(tmp_path: Path, install_dir: Path) -> None:
    lock = tmp_path / "kpatch.lock"
    with open(lock, "a+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(LoaderError, match=f"another kpatch run holds {lock}"):
            with host_session(str(install_dir), lock_wait=0, lock_paths=(str(lock),)):
                pytest.fail("the session ran without the lock")


def test_installed_file_checks(tmp_path: Path) -> None:
    good = module_file(tmp_path / "a", "lp")
    check_installed_file(str(good), "lp", RELEASE, None, vermagic(RELEASE))
    misnamed = module_file(tmp_path / "b", "other")
    renamed = misnamed.with_name("lp.ko")
    misnamed.rename(renamed)
    with pytest.raises(LoaderError, match=f"{renamed} holds module other, not lp"):
        check_installed_file(str(renamed), "lp", RELEASE, None, None)
    with pytest.raises(LoaderError, match=f"built for kernel {OTHER_RELEASE}"):
        check_installed_file(str(module_file(tmp_path / "c", "lp", OTHER_RELEASE)), "lp", RELEASE, None, None)
    with pytest.raises(LoaderError, match="not a livepatch module"):
        check_installed_file(str(module_file(tmp_path / "d", "lp", livepatch=False)), "lp", RELEASE, None, None)
    with pytest.raises(LoaderError, match="does not match the expected"):
        check_installed_file(str(good), "lp", RELEASE, "0" * 64, None)
    with pytest.raises(LoaderError, match="differs from the kernel's"):
        check_installed_file(str(good), "lp", RELEASE, None, f"{RELEASE} SMP mod_unload ")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "lp.ko").write_bytes(b"not an ELF file")
    with pytest.raises(ModinfoError):
        check_installed_file(str(tmp_path / "e" / "lp.ko"), "lp", RELEASE, None, None)
