"""Acceptance of the target side in a full Debian VM over SSH, driven by ansible-playbook.

The kpatch and kpatch_info modules and the target role run against the session VM exactly as
on a fleet host: load → effect visible → idempotent → unload; check and diff mode; refusals
(other release, tampered file); atomic replace; a transition stalled on purpose (reverted, task
reported, host as before); install → reboot → loaded at boot; kpatch.enable=0 → not loaded.
The modules are built at test time from the kernel's samples/livepatch and tests/integration/kmods.
The VM is left as found: every module unloaded, /var/lib/kpatch removed, normal cmdline.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import jmespath
import pytest

from tests.integration.kmods.build import REPLACE_TEXT, SAMPLE_TEXT, cached_test_modules
from tests.testbed.sshvm import DebianVM

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
CALLBACKS = Path(__file__).resolve().parent / "callbacks"
OUR_MODULES = ("livepatch_sample", "livepatch_replace", "livepatch_stall", "kpatch_stall_target")


class Ansible:
    """Runs one-play playbooks against the VM and returns each task's result for the host."""

    def __init__(self, vm: DebianVM, workdir: Path) -> None:
        self.vm = vm
        self.workdir = workdir
        self.runs = 0

    def play(self, play: Dict[str, object], extra_args: Optional[List[str]] = None) -> List[dict]:
        self.runs += 1
        inventory = self.vm.inventory(self.workdir / "inventory.ini")
        book = self.workdir / f"play{self.runs}.yml"
        book.write_text(json.dumps([dict({"hosts": "all", "gather_facts": False}, **play)]))
        results = self.workdir / f"play{self.runs}.jsonl"
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_CALLBACK_PLUGINS=str(CALLBACKS), ANSIBLE_CALLBACKS_ENABLED="task_results",
                   KPATCH_TASK_RESULTS=str(results))
        proc = subprocess.run([str(PLAYBOOK), "-i", str(inventory), str(book), *(extra_args or [])],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
                              check=False)
        rows = [json.loads(line) for line in results.read_text().splitlines()] \
            if results.exists() else []
        # Ansible drops "failed" from the result it hands to callbacks; the status keeps it.
        rows = [dict(r["result"], failed=r["status"] == "failed") for r in rows
                if r["host"] == self.vm.name]
        if not rows:
            raise AssertionError(f"ansible-playbook ran no task (rc {proc.returncode}):\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return rows

    def kpatch(self, check: bool = False, diff: bool = False, **args) -> dict:
        task = {"kpatch.livepatch.kpatch": {k: (str(v) if isinstance(v, Path) else v)
                                            for k, v in args.items()},
                "check_mode": check, "diff": diff, "ignore_errors": True}
        return self.play({"tasks": [task]})[-1]

    def info(self) -> dict:
        return self.play({"tasks": [{"kpatch.livepatch.kpatch_info": {}}]})[-1]


def sh(vm: DebianVM, cmd: str) -> str:
    return vm.ssh(cmd, check=True).stdout.strip()


def lsmod_ours(vm: DebianVM) -> List[str]:
    names = sh(vm, "cut -d' ' -f1 /proc/modules").split()
    return sorted(n for n in names if n in OUR_MODULES)


def livepatches(vm: DebianVM) -> List[str]:
    return sh(vm, "ls /sys/kernel/livepatch").split()


def host_snapshot(vm: DebianVM) -> Dict[str, object]:
    """What 'nothing changed' compares: modules, patches, /proc/cmdline, installed files."""
    return {"modules": lsmod_ours(vm), "patches": livepatches(vm),
            "cmdline": sh(vm, "cat /proc/cmdline"),
            "installed": sh(vm, "find /var/lib/kpatch -path '*/.staging' -prune -o -type f -print "
                                "2>/dev/null | sort")}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clean_vm(vm: DebianVM) -> None:
    """Unload every module of ours (patches first) and drop installed files."""
    for name in ("livepatch_stall", "livepatch_replace", "livepatch_sample"):
        vm.ssh(f"test -d /sys/kernel/livepatch/{name} && echo 0 > /sys/kernel/livepatch/{name}/enabled;"
               f" for i in $(seq 50); do test -d /sys/kernel/livepatch/{name} || break; sleep 0.2; done;"
               f" rmmod {name} 2>/dev/null; true")
    vm.ssh("echo 0 > /sys/module/kpatch_stall_target/parameters/hold 2>/dev/null;"
           " rmmod kpatch_stall_target 2>/dev/null; rm -rf /var/lib/kpatch; true")


@pytest.fixture(scope="module")
def mods():
    return cached_test_modules()


@pytest.fixture(scope="module")
def vm(debian_vm: DebianVM):
    clean_vm(debian_vm)
    original_append = debian_vm.append
    yield debian_vm
    if debian_vm.append != original_append:
        debian_vm.restart(append=original_append)
    clean_vm(debian_vm)
    debian_vm.ssh("systemctl disable --now kpatch-livepatch.service 2>/dev/null;"
                  " rm -f /etc/systemd/system/kpatch-livepatch.service; systemctl daemon-reload;"
                  " rm -rf /usr/lib/kpatch-livepatch; true")


@pytest.fixture(scope="module")
def ansible(vm: DebianVM, tmp_path_factory) -> Ansible:
    return Ansible(vm, tmp_path_factory.mktemp("ansible-target"))


def test_role_installs_runtime_idempotently(ansible: Ansible, vm: DebianVM):
    play = {"roles": [{"role": "kpatch.livepatch.target"}]}
    first = ansible.play(play)
    assert not any(r.get("failed") for r in first), first
    assert any(r.get("changed") for r in first)
    assert sh(vm, "systemctl is-enabled kpatch-livepatch.service") == "enabled"
    assert sh(vm, "ls /usr/lib/kpatch-livepatch").split() == ["kpatch_target.zip"]
    # The boot service's own command line, run by hand: the package imports from the archive.
    assert "kpatch_target.boot" in sh(vm, "PYTHONPATH=/usr/lib/kpatch-livepatch/kpatch_target.zip"
                                          " python3 -B -m kpatch_target.boot --help")
    second = ansible.play(play)
    assert not any(r.get("changed") for r in second), [r for r in second if r.get("changed")]


def test_check_mode_changes_nothing(ansible: Ansible, vm: DebianVM, mods):
    _art, built = mods
    before = host_snapshot(vm)
    res = ansible.kpatch(src=built.sample, state="installed", check=True, diff=True)
    assert not res.get("failed"), res
    assert res["changed"] is True
    assert [a.split()[0] for a in res["actions"]] == ["install", "load"]
    assert res["diff"]["before"]["loaded"] == [] and res["diff"]["after"]["loaded"] == ["livepatch_sample"]
    assert host_snapshot(vm) == before
    assert vm.ssh("ls /var/lib/kpatch/.staging/*.ko").returncode != 0, "check mode staged a file"


def test_load_effect_idempotent_unload(ansible: Ansible, vm: DebianVM, mods):
    _art, built = mods
    original = sh(vm, "cat /proc/cmdline")
    res = ansible.kpatch(src=built.sample, sha256=sha256(built.sample), state="loaded", diff=True)
    assert not res.get("failed"), res
    assert res["changed"] is True and res["transferred"] is True
    assert res["loaded"] == ["livepatch_sample"]
    assert res["diff"]["after"]["loaded"] == ["livepatch_sample"]
    assert sh(vm, "cat /proc/cmdline") == SAMPLE_TEXT

    info = ansible.info()
    q = jmespath.search("patches[?name=='livepatch_sample'] | [0]", info)
    assert q["enabled"] is True and q["transition"] is False and q["module_loaded"] is True
    assert q["loaded_sha256"] == sha256(built.sample)
    assert jmespath.search("objects[0].functions[].name", q) == ["cmdline_proc_show"]
    assert "livepatch" in info["taint"]["names"]
    assert info["stalled_tasks"] == []

    again = ansible.kpatch(src=built.sample, state="loaded")
    assert again["changed"] is False and again["transferred"] is False, again
    other_build = ansible.kpatch(src=built.sample_v2, state="loaded")
    assert other_build["failed"] and "different build of livepatch_sample" in other_build["msg"]
    assert sh(vm, "cat /proc/cmdline") == SAMPLE_TEXT

    res = ansible.kpatch(name="livepatch-sample", state="unloaded")
    assert res["changed"] is True and res["loaded"] == [], res
    assert sh(vm, "cat /proc/cmdline") == original
    assert lsmod_ours(vm) == []
    assert ansible.kpatch(name="livepatch_sample", state="unloaded")["changed"] is False


def test_other_release_module_is_refused(ansible: Ansible, vm: DebianVM, mods):
    art, built = mods
    before = host_snapshot(vm)
    for state in ("loaded", "installed"):
        res = ansible.kpatch(src=built.other_release, state=state)
        assert res.get("failed") and res["changed"] is False, res
        assert built.other_release_name in res["msg"] and art.release in res["msg"]
    assert host_snapshot(vm) == before


def test_tampered_module_is_refused(ansible: Ansible, vm: DebianVM, mods):
    _art, built = mods
    before = host_snapshot(vm)
    res = ansible.kpatch(src=built.tampered, sha256=sha256(built.sample), state="loaded")
    assert res.get("failed") and res["changed"] is False, res
    assert "sha256" in res["msg"] and sha256(built.sample) in res["msg"]
    assert host_snapshot(vm) == before


def test_names_and_files_at_the_boundary_are_refused(ansible: Ansible, vm: DebianVM, mods, tmp_path):
    """No sysfs or file path is made from an unchecked name; a file that is no livepatch is refused by name."""
    _art, built = mods
    before = host_snapshot(vm)
    vm.ssh("rm -rf /tmp/kpatch-boundary; mkdir -p /tmp/kpatch-boundary")
    # One bad name in every state, the others in one state each: tasks of one play (one Ansible run).
    cases = [("../x", state) for state in ("loaded", "unloaded", "installed", "absent")]
    cases += [("a b", "absent"), ("x;touch /tmp/kpatch-boundary/pwned", "installed"), ("x" * 56, "loaded")]
    tasks = [{"kpatch.livepatch.kpatch": {"name": name, "state": state, "install_dir": "/tmp/kpatch-boundary/lib"},
              "ignore_errors": True} for name, state in cases]
    tasks.append({"kpatch.livepatch.kpatch": {"name": "livepatch_sample", "release": "../../etc", "state": "absent",
                                              "install_dir": "/tmp/kpatch-boundary/lib"}, "ignore_errors": True})
    results = ansible.play({"tasks": tasks})
    assert len(results) == len(tasks)
    for (name, state), res in zip(cases, results):
        assert res.get("failed") and res["changed"] is False, (name, state, res)
        assert "is not a kernel module name" in res["msg"], res
    assert results[-1].get("failed") and "is not a kernel release name" in results[-1]["msg"], results[-1]
    text = tmp_path / "notes.ko"
    text.write_text("not a module\n")
    res = ansible.kpatch(src=text, state="loaded")
    assert res.get("failed") and "not an ELF file" in res["msg"] and "notes.ko" in res["msg"], res
    res = ansible.kpatch(src=built.stall_target, state="loaded")
    assert res.get("failed") and "is not a livepatch module" in res["msg"], res
    assert "kpatch_stall_target" in res["msg"]
    assert sh(vm, "find /tmp/kpatch-boundary") == "/tmp/kpatch-boundary"
    assert host_snapshot(vm) == before


def test_atomic_replace_retires_earlier_patches(ansible: Ansible, vm: DebianVM, mods):
    _art, built = mods
    assert ansible.kpatch(src=built.sample, state="loaded")["changed"] is True
    res = ansible.kpatch(src=built.replace, state="loaded")
    assert not res.get("failed"), res
    assert res["replaced"] == ["livepatch_sample"]
    assert res["loaded"] == ["livepatch_replace"]
    assert lsmod_ours(vm) == ["livepatch_replace"]
    assert sh(vm, "cat /proc/cmdline") == REPLACE_TEXT
    assert ansible.kpatch(name="livepatch_replace", state="unloaded")["changed"] is True
    assert lsmod_ours(vm) == []


def test_stalled_transition_is_reverted_and_reported(ansible: Ansible, vm: DebianVM, mods):
    _art, built = mods
    vm.scp_to(built.stall_target, "/root/kpatch_stall_target.ko")
    sh(vm, "insmod /root/kpatch_stall_target.ko")
    try:
        assert sh(vm, "cat /proc/kpatch_stall_target") == "original"
        before = host_snapshot(vm)
        res = ansible.kpatch(src=built.stall_patch, state="loaded", timeout=20)
        assert res.get("failed") and res["reverted"] is True, res
        stalled = [t for t in res["stalled_tasks"] if t["comm"] == "kpatch_stall"]
        assert stalled and stalled[0]["kthread"] is True
        assert any("kpatch_stall_wait" in line for line in stalled[0]["stack"])
        assert "kpatch_stall" in res["msg"] and "reversed" in res["msg"]
        after = host_snapshot(vm)
        assert after == before
        assert sh(vm, "cat /proc/kpatch_stall_target") == "original"

        # state=installed whose load stalls and is reversed leaves nothing installed for the boot service.
        res = ansible.kpatch(src=built.stall_patch, state="installed", timeout=20)
        assert res.get("failed") and res["reverted"] is True, res
        assert res["undone"] == [f"/var/lib/kpatch/{_art.release}/livepatch_stall.ko"], res
        assert "the install was undone" in res["msg"]
        assert host_snapshot(vm) == before

        # Let the thread out of the function: the same patch now goes through.
        sh(vm, "echo 0 > /sys/module/kpatch_stall_target/parameters/hold")
        res = ansible.kpatch(src=built.stall_patch, state="loaded", timeout=20)
        assert not res.get("failed") and res["changed"] is True, res
        assert sh(vm, "cat /proc/kpatch_stall_target") == "patched"
        assert ansible.kpatch(name="livepatch_stall", state="unloaded")["changed"] is True
    finally:
        clean_vm(vm)


def test_force_completes_a_stalled_transition_and_the_module_stays(ansible: Ansible, vm: DebianVM, mods):
    """force=true: the stalled transition completes, a warning says the module can no longer be
    removed, kpatch_info reports it not removable, and unloading disables it without an rmmod."""
    _art, built = mods
    vm.scp_to(built.stall_target, "/root/kpatch_stall_target.ko")
    sh(vm, "insmod /root/kpatch_stall_target.ko")
    try:
        res = ansible.kpatch(src=built.stall_patch, state="loaded", timeout=10, force=True)
        assert not res.get("failed") and res["changed"] is True and res["forced"] is True, res
        assert any("can no longer be removed" in w for w in res.get("warnings", [])), res
        # Forced: the stalled kernel thread still runs the old code, new calls get the patch.
        assert sh(vm, "cat /proc/kpatch_stall_target") == "patched"
        row = jmespath.search("patches[?name=='livepatch_stall'] | [0]", ansible.info())
        assert row["enabled"] is True and row["forced"] is True and row["removable"] is False, row
        sh(vm, "echo 0 > /sys/module/kpatch_stall_target/parameters/hold")
        res = ansible.kpatch(name="livepatch_stall", state="unloaded", timeout=20)
        assert not res.get("failed") and res["changed"] is True, res
        assert "livepatch_stall" not in livepatches(vm)
        assert "livepatch_stall" in sh(vm, "cut -d' ' -f1 /proc/modules").split()
        assert ansible.kpatch(name="livepatch_stall", state="unloaded")["changed"] is False
        again = ansible.kpatch(src=built.stall_patch, state="loaded")
        assert again.get("failed") and "stays loaded until reboot" in again["msg"], again
    finally:
        # Only a reboot frees a forced patch's module.
        vm.reboot()
        clean_vm(vm)


def test_install_then_reboot_loads_at_boot(ansible: Ansible, vm: DebianVM, mods):
    art, built = mods
    res = ansible.kpatch(src=built.sample, state="installed", diff=True)
    assert not res.get("failed") and res["changed"] is True, res
    assert res["installed"] == {art.release: ["livepatch_sample"]}
    assert res["loaded"] == ["livepatch_sample"]
    # A module installed for another release is accepted for that release, and not loaded.
    other = ansible.kpatch(src=built.other_release, state="installed",
                           release=built.other_release_name)
    assert not other.get("failed") and other["changed"] is True, other
    assert other["loaded"] == ["livepatch_sample"]
    assert ansible.kpatch(src=built.sample, state="installed")["changed"] is False

    vm.reboot()
    assert livepatches(vm) == ["livepatch_sample"]
    assert sh(vm, "cat /sys/kernel/livepatch/livepatch_sample/transition") == "0"
    assert sh(vm, "cat /proc/cmdline") == SAMPLE_TEXT
    journal = sh(vm, "journalctl -b -u kpatch-livepatch.service -o cat")
    assert f"kpatch: livepatch_sample: loaded from /var/lib/kpatch/{art.release}/livepatch_sample.ko" in journal
    assert f"kpatch: livepatch_sample: skipped, installed for {built.other_release_name}" in journal
    assert ansible.kpatch(name="livepatch_sample", state="installed")["changed"] is False


def test_kpatch_enable_0_loads_nothing(ansible: Ansible, vm: DebianVM, mods):
    art, _built = mods
    vm.restart(append="kpatch.enable=0")
    assert livepatches(vm) == []
    journal = sh(vm, "journalctl -b -u kpatch-livepatch.service -o cat")
    assert "kpatch.enable=0 on the kernel command line" in journal
    info = ansible.info()
    row = jmespath.search("installed[?name=='livepatch_sample' && for_running_kernel] | [0]", info)
    assert row["release"] == art.release and row["loaded"] is False


def test_absent_removes_everything(ansible: Ansible, vm: DebianVM, mods):
    art, built = mods
    res = ansible.kpatch(name="livepatch_sample", state="loaded")  # by name, from the install dir
    assert res["changed"] is True and sh(vm, "cat /proc/cmdline") == SAMPLE_TEXT, res
    res = ansible.kpatch(name="livepatch_sample", state="absent", diff=True)
    assert res["changed"] is True and res["loaded"] == [], res
    assert art.release not in res["installed"]
    res = ansible.kpatch(name="livepatch_sample", state="absent", release=built.other_release_name)
    assert res["changed"] is True and res["installed"] == {}, res
    assert ansible.kpatch(name="livepatch_sample", state="absent")["changed"] is False
    assert lsmod_ours(vm) == [] and livepatches(vm) == []


def read_metrics(vm: DebianVM, path: str) -> dict:
    """The textfile as node-exporter would read it: (name, labels) -> value, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families  # pylint: disable=import-outside-toplevel

    text = sh(vm, f"cat {path}") + "\n"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_file_follows_every_change(ansible: Ansible, vm: DebianVM, mods):
    _art, built = mods
    prom = "/var/lib/node-exporter/kpatch.prom"
    # Independent of the tests before it: none of our modules loaded or installed, no textfile
    # directory, and the current runtime (the role is idempotent: it changes nothing when current).
    clean_vm(vm)
    vm.ssh("rm -rf /var/lib/node-exporter")
    assert not any(r.get("failed") for r in ansible.play({"roles": [{"role": "kpatch.livepatch.target"}]}))
    check = ansible.kpatch(src=built.sample, state="loaded", metrics_file=prom, check=True)
    assert check["changed"] is True and sh(vm, f"test -e {prom} && echo yes || echo no") == "no"
    res = ansible.kpatch(src=built.sample, state="loaded", metrics_file=prom)
    assert not res.get("failed") and res["changed"] is True, res
    loaded = read_metrics(vm, prom)
    patch = (("patch", "livepatch_sample"),)
    assert loaded[("kpatch_livepatch_patch_enabled", patch)] == 1
    assert loaded[("kpatch_livepatch_patch_transition", patch)] == 0
    assert loaded[("kpatch_livepatch_kernel_taint_flag", (("flag", "livepatch"),))] == 1
    first_change = loaded[("kpatch_livepatch_last_change_timestamp_seconds", ())]
    assert abs(first_change - float(sh(vm, "date +%s"))) < 120
    # An unchanged run rewrites the file but keeps the time of the last change.
    assert ansible.kpatch(src=built.sample, state="loaded", metrics_file=prom)["changed"] is False
    assert read_metrics(vm, prom)[("kpatch_livepatch_last_change_timestamp_seconds", ())] == first_change
    # The boot service's command, by hand: the patch is already loaded, the file is refreshed.
    out = sh(vm, f"rm -f {prom}; PYTHONPATH=/usr/lib/kpatch-livepatch/kpatch_target.zip python3 -B -m"
                 f" kpatch_target.boot --install-dir /var/lib/kpatch --metrics-file {prom}")
    assert "kpatch:" in out
    assert read_metrics(vm, prom)[("kpatch_livepatch_patch_enabled", patch)] == 1
    time.sleep(1.1)
    res = ansible.kpatch(name="livepatch_sample", state="unloaded", metrics_file=prom)
    assert res["changed"] is True, res
    after = read_metrics(vm, prom)
    assert ("kpatch_livepatch_patch_enabled", patch) not in after
    assert after[("kpatch_livepatch_last_change_timestamp_seconds", ())] > first_change
    bad = ansible.kpatch(name="livepatch_sample", state="unloaded", metrics_file="/tmp/kpatch.txt")
    assert bad["failed"] and "must be an absolute path ending in .prom" in bad["msg"]
    assert sh(vm, "ls /var/lib/node-exporter") == "kpatch.prom"
