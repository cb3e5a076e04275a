"""Fleet faults against two full Debian VMs (6.1), driven by apply-livepatch.yml and livepatch-status.yml.

The tests run in order and share the fleet (module scope):

1. two apply runs at once against the whole fleet (each with its own build output, summary and
   artifacts; the same builder cache and the same targets): both succeed, every host ends with
   the patch once, and a third run changes nothing;
2. a host that loses power between two batches (its qemu killed once the first batch is in the
   summary): it is ``not_reached`` in the summary and in the JUnit report, the other host got the
   new patch, the exit status is not 0; booted again, the re-run finishes it alone;
3. a host rebooted into another kernel release in the middle of a rollout: the boot service does
   not load its modules of the old release, the status reports the new release as missing from
   the manifest and the host as missing the patch; the apply for the new release converges it.
"""

from __future__ import annotations

import json
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from tests.integration.test_fleet import V1, V1_MODULE, V2, V2_MODULE, enabled_patches, installed
from tests.testbed.fleet import DEFAULT_HOSTS, R61, R612, Fleet, PlaybookRun
from tests.testbed.kernels import fetch_kernel

pytestmark = pytest.mark.integration

HOSTS = ("vm61a", "vm61b")
APPLY_V1 = {"kpatch_patch_files": [str(V1)]}
APPLY_V2 = {"kpatch_patch_files": [str(V2)], "kpatch_patch_name": "livepatch-meminfo-v2"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with Fleet(tmp_path_factory.mktemp("fleet-faults"), hosts=DEFAULT_HOSTS[:2]) as f:
        yield f


def own_outputs(fleet: Fleet, tag: str) -> Dict[str, str]:
    """Variables that give one run its own build output, artifacts and summary."""
    base = fleet.workdir / tag
    return {"kpatch_build_output_dir": str(base / "build-output"), "kpatch_build_work_dir": str(base / "build-work"),
            "kpatch_artifacts_dir": str(base / "artifacts"), "kpatch_summary_path": str(base / "summary.json")}


def outcomes(summary_path: Path) -> Dict[str, str]:
    return {h["host"]: h["outcome"] for h in json.loads(summary_path.read_text())["hosts"]}


def play_in_background(fleet: Fleet, playbook: str, extra: Dict[str, object]):
    """Start a playbook run in a thread; the returned function joins it and gives the run."""
    box: List[PlaybookRun] = []
    thread = threading.Thread(target=lambda: box.append(fleet.play(playbook, extra)), daemon=True)
    thread.start()

    def join() -> PlaybookRun:
        thread.join(3000)
        assert box, f"{playbook} did not finish"
        return box[0]
    return join


def test_two_apply_runs_at_once_converge(fleet: Fleet):
    first_vars, second_vars = (dict(APPLY_V1, **own_outputs(fleet, tag)) for tag in ("run-a", "run-b"))
    first = play_in_background(fleet, "apply-livepatch.yml", first_vars)
    time.sleep(1)
    second = fleet.play("apply-livepatch.yml", second_vars)
    runs = [first(), second]
    assert [r.rc for r in runs] == [0, 0], "\n".join(r.tail(60) for r in runs)
    a, b = (outcomes(Path(v["kpatch_summary_path"])) for v in (first_vars, second_vars))
    for host in HOSTS:
        # The host lock serialised the two kpatch tasks: one changed the host, the other found it done.
        assert sorted([a[host], b[host]]) == ["changed", "unchanged"], (host, a, b)
        assert enabled_patches(fleet, host) == [V1_MODULE]
        assert installed(fleet, host) == [f"{V1_MODULE}.ko"]
        assert fleet.ssh(host, f"ls -A /var/lib/kpatch/{R61}").split() == [f"{V1_MODULE}.ko"]
        assert fleet.meminfo_lines(host, "^(VMALLOCCHUNK|VmallocChunk):") == ["VMALLOCCHUNK"], host
    again = fleet.play("apply-livepatch.yml", APPLY_V1)
    assert again.rc == 0 and all(again.changed(h) == 0 for h in HOSTS), again.recap


def test_host_lost_between_batches_is_not_reached_and_the_rerun_finishes_it(fleet: Fleet):
    run_vars = dict(APPLY_V2, kpatch_serial=[1, "100%"], **own_outputs(fleet, "lost"))
    summary = Path(run_vars["kpatch_summary_path"])
    run = play_in_background(fleet, "apply-livepatch.yml", run_vars)
    deadline = time.monotonic() + 1800
    while not (summary.exists() and outcomes(summary).get("vm61a") == "changed"):
        assert time.monotonic() < deadline, "the first batch never reached the summary"
        time.sleep(0.3)
    fleet.vms["vm61b"].close()  # power cut: qemu killed, the disk kept
    lost = run()
    assert lost.rc != 0, lost.tail()
    report = json.loads(summary.read_text())
    hosts = {h["host"]: h for h in report["hosts"]}
    assert hosts["vm61a"]["outcome"] == "changed" and hosts["vm61b"]["outcome"] == "not_reached", hosts
    assert report["counts"]["not_reached"] == 1 and report["ok"] is False
    cases = {c.get("name"): c for c in ET.parse(summary.with_suffix(".junit.xml")).getroot().iter("testcase")}
    assert cases["vm61b"].find("skipped") is not None and cases["vm61a"].find("failure") is None
    assert enabled_patches(fleet, "vm61a") == [V2_MODULE]

    vm = fleet.vms["vm61b"]
    vm.start()
    vm.wait_ssh()
    # Untouched by the lost batch: the boot service loaded v1 again.
    assert enabled_patches(fleet, "vm61b") == [V1_MODULE]
    rerun_vars = dict(APPLY_V2, **own_outputs(fleet, "lost-rerun"))
    rerun = fleet.play("apply-livepatch.yml", rerun_vars)
    assert rerun.rc == 0, rerun.tail()
    assert outcomes(Path(rerun_vars["kpatch_summary_path"])) == {"vm61a": "unchanged", "vm61b": "changed"}
    for host in HOSTS:
        assert enabled_patches(fleet, host) == [V2_MODULE] and installed(fleet, host) == [f"{V2_MODULE}.ko"]


def test_reboot_into_another_release_during_a_rollout(fleet: Fleet):
    vm = fleet.vms["vm61a"]
    vm.restart(release=R612)
    assert fleet.ssh("vm61a", "uname -r").strip() == R612
    assert enabled_patches(fleet, "vm61a") == []
    journal = fleet.ssh("vm61a", "journalctl -b -u kpatch-livepatch --no-pager -o cat")
    assert f"{V2_MODULE}: skipped, installed for {R61}, running {R612}" in journal, journal
    status = fleet.play("livepatch-status.yml", {"kpatch_status_expect": V2_MODULE})
    assert status.rc == 0, status.tail()
    report = json.loads((fleet.workdir / "status.json").read_text())["report"]
    assert report["releases_without_module"] == [R612], report
    assert report["missing"] == {V2_MODULE: ["vm61a"]} and report["ok"] is False, report

    # The rollout goes on with the new release built: the host converges on it.
    fleet.kernels[R612] = fetch_kernel(R612)
    run = fleet.play("apply-livepatch.yml", APPLY_V2)
    assert run.rc == 0, run.tail()
    assert outcomes(fleet.summary) == {"vm61a": "changed", "vm61b": "unchanged"}
    assert enabled_patches(fleet, "vm61a") == [V2_MODULE]
    assert fleet.ssh("vm61a", f"ls /var/lib/kpatch/{R612}/").split() == [f"{V2_MODULE}.ko"]
    assert fleet.meminfo_lines("vm61a", "^(PERCPU|Percpu|VMALLOCCHUNK):") == ["VMALLOCCHUNK", "PERCPU"]
