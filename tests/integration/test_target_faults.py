"""Faults on one target, in the session's Debian VM over SSH: each ends with a host that converges.

* two ``kpatch`` tasks at once (two ansible-playbook runs): the host lock serialises them, one
  changes the host, the other finds it done; a lock held elsewhere fails a task with a message
  naming the lock;
* the ``kpatch`` module frozen (SIGSTOP) the moment its install's temp file appears, then killed
  (SIGKILL): no ``.ko`` is ever half-written, the boot service loads nothing from the leftover and
  removes it, the next run installs;
* the module killed while its load waits on a transition held up by a task in the patched
  function: the next run sees that transition through (reverses it while the task holds, loads
  once it is let go);
* a soak: 20 enable/disable cycles of the sample patch while a loop reads /proc/cmdline (the
  patched function), with no failure, stall or kernel warning.

The counts of faults tried and survived are printed at the end of the module (``-s``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from tests.integration.kmods.build import SAMPLE_TEXT
from tests.integration.test_target_kpatch import (  # noqa: F401  pylint: disable=unused-import
    Ansible, clean_vm, livepatches, lsmod_ours, mods, sh, sha256, vm)
from tests.testbed.soak import run_soak
from tests.testbed.sshvm import DebianVM

pytestmark = pytest.mark.integration

LOCK = "/run/lock/kpatch-livepatch.lock"
STOP_ON_CREATE = Path(__file__).resolve().parents[1] / "testbed" / "stop_on_create.py"
FAULTS: Dict[str, bool] = {}


@pytest.fixture(scope="module")
def ansible(vm: DebianVM, tmp_path_factory) -> Ansible:
    """An Ansible runner, with the target role applied once (runtime archive and boot service)."""
    runner = Ansible(vm, tmp_path_factory.mktemp("ansible-faults"))
    setup = runner.play({"roles": [{"role": "kpatch.livepatch.target"}]})
    assert not any(r.get("failed") for r in setup), setup
    yield runner
    print("\nfaults tried/survived with nothing lost: "
          f"{len(FAULTS)}/{sum(FAULTS.values())} {FAULTS}")


def in_background(call: Callable[[], dict]) -> Callable[[float], dict]:
    """Start ``call`` in a thread; the returned function joins it and gives its result."""
    box: List[object] = []
    thread = threading.Thread(target=lambda: box.append(call()), daemon=True)
    thread.start()

    def join(timeout: float) -> dict:
        thread.join(timeout)
        assert box, f"the background task did not finish within {timeout}s"
        return box[0]  # type: ignore[return-value]
    return join


def wait_for(vm: DebianVM, cmd: str, what: str, timeout: float = 300) -> str:
    """Poll a guest command until it prints something; that output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = vm.ssh(cmd).stdout.strip()
        if out:
            return out
        time.sleep(0.5)
    raise AssertionError(f"{what}: nothing within {timeout}s")


def lock_holder(vm: DebianVM) -> str:
    """The pid of the process holding the host lock open (the kpatch module at work)."""
    return wait_for(vm, f"for p in /proc/[0-9]*; do ls -l $p/fd 2>/dev/null | grep -q '{LOCK}' &&"
                        " basename $p; done | head -1", "a process holding the host lock")


def release_dir_listing(vm: DebianVM, release: str) -> List[str]:
    return sh(vm, f"ls -A /var/lib/kpatch/{release} 2>/dev/null || true").split()


def boot_service_run(vm: DebianVM) -> str:
    """Run the real boot unit once more and return what this run logged."""
    sh(vm, "systemctl restart kpatch-livepatch.service || true")
    invocation = sh(vm, "systemctl show -p InvocationID --value kpatch-livepatch.service")
    return sh(vm, f"journalctl _SYSTEMD_INVOCATION_ID={invocation} -o cat")


def test_two_tasks_at_once_serialise_on_the_lock(ansible: Ansible, vm: DebianVM, mods, tmp_path):
    _art, built = mods
    clean_vm(vm)
    other = Ansible(vm, tmp_path)
    first = in_background(lambda: ansible.kpatch(src=built.sample, state="installed"))
    second = other.kpatch(src=built.sample, state="installed")
    results = [first(600), second]
    assert not any(r.get("failed") for r in results), results
    assert sorted(r["changed"] for r in results) == [False, True], results
    assert livepatches(vm) == ["livepatch_sample"] and sh(vm, "cat /proc/cmdline") == SAMPLE_TEXT
    release = results[0]["release"]
    assert release_dir_listing(vm, release) == ["livepatch_sample.ko"]
    assert sh(vm, f"sha256sum /var/lib/kpatch/{release}/livepatch_sample.ko").split()[0] == sha256(built.sample)

    # The lock held by another process for longer than the task waits: a clear failure, nothing done.
    holder = sh(vm, f"setsid flock {LOCK} sleep 300 >/dev/null 2>&1 < /dev/null & echo $!")
    try:
        wait_for(vm, f"ls -l /proc/{holder}/fd 2>/dev/null | grep '{LOCK}'", "flock holding the lock", 30)
        held = ansible.kpatch(name="livepatch_sample", state="unloaded", timeout=1)
    finally:
        vm.ssh(f"kill {holder}")
    assert held.get("failed") and held["changed"] is False, held
    assert f"another kpatch run holds {LOCK}; gave up after 34s" in held["msg"], held
    assert livepatches(vm) == ["livepatch_sample"]
    res = ansible.kpatch(name="livepatch_sample", state="absent")
    assert not res.get("failed") and res["changed"] is True and res["loaded"] == [], res
    FAULTS["two kpatch tasks at once"] = True
    FAULTS["host lock held elsewhere"] = True


def test_killed_at_the_install_temp_file(ansible: Ansible, vm: DebianVM, mods):
    art, built = mods
    clean_vm(vm)
    rdir = f"/var/lib/kpatch/{art.release}"
    vm.scp_to(STOP_ON_CREATE, "/root/stop_on_create.py")
    sh(vm, f"mkdir -p {rdir}; rm -f /root/stop.out; setsid python3 -u /root/stop_on_create.py {rdir}"
           " > /root/stop.out 2>&1 < /dev/null &")
    wait_for(vm, "grep ready /root/stop.out", "the inotify watcher", 60)
    task = in_background(lambda: ansible.kpatch(src=built.sample, state="installed"))
    pid = wait_for(vm, "sed -n 2p /root/stop.out", "the install's temp file")
    # Frozen between its copy and its rename: the temp file is there, no .ko yet.
    assert release_dir_listing(vm, art.release) == [f"livepatch_sample.ko.tmp.{pid}"]
    sh(vm, f"kill -KILL {pid}")
    killed = task(300)
    assert killed.get("failed"), killed
    assert livepatches(vm) == [] and lsmod_ours(vm) == []

    journal = boot_service_run(vm)
    assert f"removed {rdir}/livepatch_sample.ko.tmp.{pid}, left by an interrupted install" in journal, journal
    assert f"no patch module installed for {art.release}" in journal, journal
    assert livepatches(vm) == [] and release_dir_listing(vm, art.release) == []

    res = ansible.kpatch(src=built.sample, state="installed")
    assert not res.get("failed") and res["changed"] is True and res["loaded"] == ["livepatch_sample"], res
    assert release_dir_listing(vm, art.release) == ["livepatch_sample.ko"]
    assert ansible.kpatch(src=built.sample, state="installed")["changed"] is False
    # A leftover a killed run left beside a good install: the next task removes it, the .ko stays.
    sh(vm, f"head -c 4096 {rdir}/livepatch_sample.ko > {rdir}/livepatch_sample.ko.tmp.999999")
    res = ansible.kpatch(src=built.sample, state="installed")
    assert res["changed"] is False and res["leftovers_removed"] == [f"{rdir}/livepatch_sample.ko.tmp.999999"], res
    assert release_dir_listing(vm, art.release) == ["livepatch_sample.ko"]
    assert ansible.kpatch(name="livepatch_sample", state="absent")["changed"] is True
    FAULTS["SIGKILL mid-install (at the temp file)"] = True


def test_killed_while_the_load_waits_on_a_stalled_transition(ansible: Ansible, vm: DebianVM, mods):
    art, built = mods
    clean_vm(vm)
    vm.scp_to(built.stall_target, "/root/kpatch_stall_target.ko")
    sh(vm, "insmod /root/kpatch_stall_target.ko")
    try:
        task = in_background(lambda: ansible.kpatch(src=built.stall_patch, state="installed", timeout=600))
        wait_for(vm, "grep -x 1 /sys/kernel/livepatch/livepatch_stall/transition", "the stalled transition")
        sh(vm, f"kill -KILL {lock_holder(vm)}")
        killed = task(300)
        assert killed.get("failed"), killed
        # Left behind: the patch mid-enable, and a whole installed file (renamed into place).
        assert sh(vm, "cat /sys/kernel/livepatch/livepatch_stall/transition") == "1"
        path = f"/var/lib/kpatch/{art.release}/livepatch_stall.ko"
        assert sh(vm, f"sha256sum {path}").split()[0] == sha256(built.stall_patch)

        # The next run, the task still held: it sees the transition through by reversing it.
        res = ansible.kpatch(src=built.stall_patch, state="installed", timeout=15)
        assert res.get("failed") and res["reverted"] is True, res
        assert "kpatch_stall" in res["msg"] and "reversed" in res["msg"], res
        assert "livepatch_stall" not in livepatches(vm) and "livepatch_stall" not in lsmod_ours(vm)
        assert sh(vm, "cat /proc/kpatch_stall_target") == "original"

        # Let the task go: the next run converges.
        sh(vm, "echo 0 > /sys/module/kpatch_stall_target/parameters/hold")
        res = ansible.kpatch(src=built.stall_patch, state="installed", timeout=30)
        assert not res.get("failed") and res["changed"] is True and "livepatch_stall" in res["loaded"], res
        assert sh(vm, "cat /proc/kpatch_stall_target") == "patched"
        assert ansible.kpatch(src=built.stall_patch, state="installed")["changed"] is False
        res = ansible.kpatch(name="livepatch_stall", state="absent")
        assert not res.get("failed") and res["changed"] is True, res
    finally:
        clean_vm(vm)
    FAULTS["SIGKILL mid-load (stalled transition)"] = True


def test_soak_twenty_cycles_under_load(ansible: Ansible, vm: DebianVM, mods):
    _art, built = mods
    clean_vm(vm)
    report = run_soak(vm, built.sample, "livepatch_sample", cycles=20)
    print(f"\nsoak: {report}")
    assert report.cycles == 20
    assert report.failures == [] and report.stalls == 0, report
    assert report.warnings == [] and not report.warn_taint, report
    assert livepatches(vm) == [] and lsmod_ours(vm) == []
    FAULTS["soak 20 enable/disable cycles under load"] = report.clean
