"""Fleet acceptance: the apply, status and rollback playbooks against three full Debian VMs.

Two VMs run 6.1.0-50-cloud-amd64 and one 6.12.107+deb12-cloud-amd64, reached over SSH on
loopback ports; the build host is the controller, given the testbed's Debian kernel
artifacts.  The tests run in order and share the fleet (module scope):

1. apply the meminfo example to all: one module per release, every host patched;
2. the re-run changes nothing (``changed=0`` in PLAY RECAP for every host);
3. status tells the truth, also after a patch is taken out by hand on one host, and a
   re-apply converges that host alone back;
4. a cumulative v2 patch while one host refuses module loads (``modules_disabled``): that
   host is reported failed with insmod's reason, the others run v2, the exit status is not 0;
5. rollback returns every host to the previous set (v1), boot state included;
6. a rebooted host comes back patched by the boot service;
7. declarative state from group_vars: an empty set with kpatch_exclusive removes every patch.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Dict, Iterator

import pytest

from tests.testbed.ansible_run import REPO
from tests.testbed.fleet import R61, R612, Fleet

pytestmark = pytest.mark.integration

V1 = REPO / "examples" / "patches" / "meminfo-string.patch"
V2 = REPO / "tests" / "integration" / "patches" / "fleet" / "meminfo-v2.patch"
V1_MODULE = "livepatch_meminfo_string"
V2_MODULE = "livepatch_meminfo_v2"
HOSTS = ("vm61a", "vm61b", "vm612")
FAILING = "vm61b"
APPLY_V1 = {"kpatch_patch_files": [str(V1)]}
STATE_READ = "Read the setup stamp and the livepatch state (one raw command)"
STATE_MODULE = "Gather kpatch_info (the runtime could not read the host)"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with Fleet(tmp_path_factory.mktemp("fleet")) as f:
        yield f


@pytest.fixture(scope="module")
def first_apply(fleet: Fleet):
    run = fleet.play("apply-livepatch.yml", APPLY_V1)
    return run, fleet.load_summary()


def installed(fleet: Fleet, host: str) -> list:
    return fleet.ssh(host, "ls /var/lib/kpatch/$(uname -r)/ 2>/dev/null || true").split()


def enabled_patches(fleet: Fleet, host: str) -> list:
    out = fleet.ssh(host, "for p in /sys/kernel/livepatch/*; do [ -e $p/enabled ] && "
                          "[ $(cat $p/enabled) = 1 ] && basename $p; done; true")
    return sorted(out.split())


def by_host(summary: Dict[str, object]) -> Dict[str, dict]:
    return {h["host"]: h for h in summary["hosts"]}


def task_statuses(output: str, task: str) -> Dict[str, str]:
    """host -> what the default callback printed for the task named ``task`` (ok, skipping, ...)."""
    statuses: Dict[str, str] = {}
    inside = False
    for line in output.splitlines():
        if line.startswith("TASK ["):
            inside = line.startswith(f"TASK [{task}]")
            continue
        found = re.match(r"^(ok|changed|skipping|failed|fatal): \[([^\] ]+)", line) if inside else None
        if found:
            statuses[found.group(2)] = found.group(1)
    return statuses


def junit_cases(fleet: Fleet) -> Dict[str, ET.Element]:
    """The JUnit report the playbook wrote beside the summary, by host."""
    root = ET.parse(fleet.summary.with_suffix(".junit.xml")).getroot()
    return {c.get("name"): c for c in root.iter("testcase")}


def test_build_only_builds_every_release_and_changes_no_target(fleet):
    """Runs before the first apply: the CI example's build stage (kpatch_build_only)."""
    run = fleet.play("apply-livepatch.yml", dict(APPLY_V1, kpatch_build_only=True))
    assert run.rc == 0, run.tail()
    hosts = by_host(fleet.load_summary())
    assert {h["outcome"] for h in hosts.values()} == {"built"}, hosts
    manifest = json.loads((fleet.artifacts / "manifest.json").read_text())
    assert {m["release"] for m in manifest["modules"]} == {R61, R612}
    cases = junit_cases(fleet)
    assert set(cases) == set(HOSTS) and not any(c.find("failure") is not None for c in cases.values())
    for host in HOSTS:
        assert run.changed(host) == 0, f"{host}: {run.recap}"
        assert enabled_patches(fleet, host) == [] and installed(fleet, host) == []
        assert fleet.meminfo_lines(host, "^(VMALLOCCHUNK|VmallocChunk):") == ["VmallocChunk"], host


def test_apply_patches_every_host_with_one_module_per_release(fleet, first_apply):
    run, summary = first_apply
    assert run.rc == 0, run.tail()
    # No runtime on the hosts yet: the runtime sent inside the command read their state, no module.
    assert task_statuses(run.output, STATE_READ) == {h: "ok" for h in HOSTS}, run.tail()
    assert task_statuses(run.output, STATE_MODULE) == {h: "skipping" for h in HOSTS}, run.tail()
    hosts = by_host(summary)
    assert set(hosts) == set(HOSTS)
    assert all(h["outcome"] == "changed" for h in hosts.values()), hosts
    builds = {b["release"]: b for b in summary["builds"]}
    assert set(builds) == {R61, R612} and all(b["built"] for b in builds.values())
    manifest = json.loads((fleet.artifacts / "manifest.json").read_text())
    assert {(m["release"], m["sha256"]) for m in manifest["modules"]} == \
        {(r, b["sha256"]) for r, b in builds.items()}
    for host, rel in (("vm61a", R61), ("vm61b", R61), ("vm612", R612)):
        assert hosts[host]["release"] == rel
        assert hosts[host]["sha256"] == builds[rel]["sha256"], host
        assert fleet.meminfo_lines(host, "^(VMALLOCCHUNK|VmallocChunk):") == ["VMALLOCCHUNK"], host
        assert enabled_patches(fleet, host) == [V1_MODULE]
        assert installed(fleet, host) == [f"{V1_MODULE}.ko"]
        # The bytes on the host are the bytes in the controller's manifest.
        digest = fleet.ssh(host, f"sha256sum /var/lib/kpatch/{rel}/{V1_MODULE}.ko").split()[0]
        assert digest == builds[rel]["sha256"]
    cases = junit_cases(fleet)
    assert set(cases) == set(HOSTS) and not any(c.find("failure") is not None for c in cases.values())
    assert {c.get("classname") for c in cases.values()} == {f"kpatch.livepatch.{R61}", f"kpatch.livepatch.{R612}"}


def test_rerun_changes_nothing(fleet, first_apply):
    run = fleet.play("apply-livepatch.yml", APPLY_V1)
    assert run.rc == 0, run.tail()
    for host in HOSTS + ("localhost",):
        assert run.changed(host) == 0, f"{host}: {run.recap}\n{run.tail()}"
    assert {h["outcome"] for h in fleet.load_summary()["hosts"]} == {"unchanged"}
    # The runtime the first apply installed read each host's state: no module run.
    assert task_statuses(run.output, STATE_READ) == {h: "ok" for h in HOSTS}
    assert task_statuses(run.output, STATE_MODULE) == {h: "skipping" for h in HOSTS}
    print(f"\nfleet apply: first {first_apply[0].seconds}s, idempotent re-run {run.seconds}s")


def status(fleet: Fleet, expect: str = V1_MODULE) -> Dict[str, object]:
    run = fleet.play("livepatch-status.yml", {"kpatch_status_expect": expect})
    assert run.rc == 0, run.tail()
    return json.loads((fleet.workdir / "status.json").read_text())["report"]


def test_status_tells_the_truth(fleet, first_apply):
    report = status(fleet)
    assert report["missing"] == {V1_MODULE: []}
    assert report["transitions"] == [] and report["not_loaded"] == [] and report["unreachable"] == []
    assert report["releases_without_module"] == []
    taint = {t["host"]: t for t in report["taint"]}
    assert all("livepatch" in taint[h]["names"] for h in HOSTS)
    assert report["ok"] is True
    # A patch taken out by hand on one host shows up as missing and as installed-not-loaded.
    fleet.ssh("vm61a", f"echo 0 > /sys/kernel/livepatch/{V1_MODULE}/enabled; "
                       f"while [ -e /sys/kernel/livepatch/{V1_MODULE} ]; do sleep 0.5; done; rmmod {V1_MODULE}")
    report = status(fleet)
    assert report["missing"] == {V1_MODULE: ["vm61a"]}
    assert report["not_loaded"] == [{"host": "vm61a", "installed_not_loaded": [V1_MODULE],
                                     "disabled_but_loaded": []}]
    assert report["ok"] is False
    # Another patch name nobody has: every host misses it.
    assert sorted(status(fleet, "livepatch_nobody")["missing"]["livepatch_nobody"]) == sorted(HOSTS)


def test_reapply_converges_only_the_drifted_host(fleet, first_apply):
    run = fleet.play("apply-livepatch.yml", APPLY_V1)
    assert run.rc == 0, run.tail()
    outcomes = {h["host"]: h["outcome"] for h in fleet.load_summary()["hosts"]}
    assert outcomes == {"vm61a": "changed", "vm61b": "unchanged", "vm612": "unchanged"}
    assert enabled_patches(fleet, "vm61a") == [V1_MODULE]


def test_failing_host_is_reported_and_the_rest_get_v2(fleet, first_apply):
    # The kernel refuses every module load from now on (until reboot): a real insmod failure.
    fleet.ssh(FAILING, "echo 1 > /proc/sys/kernel/modules_disabled")
    run = fleet.play("apply-livepatch.yml", {"kpatch_patch_files": [str(V2)],
                                             "kpatch_patch_name": "livepatch-meminfo-v2",
                                             "kpatch_max_fail_percentage": 50})
    assert run.rc != 0, run.tail()
    hosts = by_host(fleet.load_summary())
    assert hosts[FAILING]["outcome"] == "failed"
    assert "Operation not permitted" in hosts[FAILING]["reason"], hosts[FAILING]
    # The refused module is not left installed for the next boot.
    assert hosts[FAILING]["undone"] == [V2_MODULE]
    assert installed(fleet, FAILING) == [f"{V1_MODULE}.ko"]
    assert enabled_patches(fleet, FAILING) == [V1_MODULE]
    for host in ("vm61a", "vm612"):
        assert hosts[host]["outcome"] == "changed" and hosts[host]["removed"] == [V1_MODULE], hosts[host]
        assert enabled_patches(fleet, host) == [V2_MODULE]
        assert installed(fleet, host) == [f"{V2_MODULE}.ko"]
        assert fleet.meminfo_lines(host, "^(PERCPU|Percpu|VMALLOCCHUNK):") == ["VMALLOCCHUNK", "PERCPU"]
    report = status(fleet, V2_MODULE)
    assert report["missing"] == {V2_MODULE: [FAILING]}


def test_rollback_restores_every_host(fleet, first_apply):
    run = fleet.play("rollback-livepatch.yml")
    assert run.rc == 0, run.tail()
    outcomes = {h["host"]: h["outcome"] for h in fleet.load_summary()["hosts"]}
    assert outcomes == {"vm61a": "changed", "vm61b": "unchanged", "vm612": "changed"}
    for host in HOSTS:
        assert enabled_patches(fleet, host) == [V1_MODULE], host
        assert installed(fleet, host) == [f"{V1_MODULE}.ko"], host
        assert fleet.meminfo_lines(host, "^(PERCPU|Percpu|VMALLOCCHUNK):") == ["VMALLOCCHUNK", "Percpu"]
    # The record is consumed: a second rollback changes nothing anywhere.
    again = fleet.play("rollback-livepatch.yml")
    assert again.rc == 0, again.tail()
    assert all(again.changed(h) == 0 for h in HOSTS), again.recap


def test_rebooted_host_comes_back_patched(fleet, first_apply):
    vm = fleet.vms[FAILING]
    vm.reboot()
    assert fleet.ssh(FAILING, "cat /proc/sys/kernel/modules_disabled").strip() == "0"
    assert enabled_patches(fleet, FAILING) == [V1_MODULE]
    assert fleet.meminfo_lines(FAILING, "^(VMALLOCCHUNK|VmallocChunk):") == ["VMALLOCCHUNK"]
    journal = fleet.ssh(FAILING, "journalctl -b -u kpatch-livepatch --no-pager -o cat")
    assert f"{V1_MODULE}: loaded from" in journal, journal
    report = status(fleet)
    assert report["missing"] == {V1_MODULE: []} and report["ok"] is True


def test_declared_empty_set_with_exclusive_removes_every_patch(fleet, first_apply):
    # Declarative state from the inventory's group_vars, no patch files on the command line.
    group_vars = fleet.workdir / "group_vars"
    group_vars.mkdir(exist_ok=True)
    (group_vars / "kpatch_targets.yml").write_text("kpatch_patches: []\nkpatch_exclusive: true\n")
    try:
        run = fleet.play("apply-livepatch.yml")
        assert run.rc == 0, run.tail()
        assert {h["outcome"] for h in fleet.load_summary()["hosts"]} == {"changed"}
        for host in HOSTS:
            assert enabled_patches(fleet, host) == [] and installed(fleet, host) == [], host
            assert fleet.meminfo_lines(host, "^(VMALLOCCHUNK|VmallocChunk):") == ["VmallocChunk"]
        again = fleet.play("apply-livepatch.yml")
        assert again.rc == 0 and all(again.changed(h) == 0 for h in HOSTS), again.recap
    finally:
        (group_vars / "kpatch_targets.yml").unlink()
