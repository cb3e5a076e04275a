"""Benchmark of the fleet apply: wall time of apply-livepatch.yml and of its idempotent re-run.

For each fleet size (default 1 and 3 VMs; the third runs the 6.12 kernel) it boots a fresh
fleet of full Debian VMs, then times with the repository's ansible.cfg (forks 20, SSH
pipelining, ControlPersist):
* first apply: the target role, copying, verifying and loading the module on every host, with
  the build cache warm as the goal states it: an untimed build-only run (``kpatch_build_only``,
  the CI example's build stage, which reads each host once and changes none) comes first, so a
  code change or a release new to the cache does not count a build in the apply;
* re-run: nothing to do (one raw command per host reads its setup stamp and, through the
  installed runtime, its state: no module runs on the hosts; the build is a cache hit).
Prints one line per size with the ratio first/re-run (goal: at most 4), then the slowest tasks
of each first apply and of each re-run (bench/callbacks/task_timings.py), and what a re-run
executes: a third, untimed run at -vvv counts per host the module runs (Python through
Ansible's module wrapper) and the other commands, and the controller's module runs.  Opt-in and
slow (software-emulated VMs on a shared machine):
``.venv/bin/python bench/bench_fleet.py [--sizes 1,3] [--keep-logs DIR]``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tools"), str(REPO)]
import _bootstrap  # noqa: E402,F401  pylint: disable=unused-import,wrong-import-position

from tests.testbed.fleet import DEFAULT_HOSTS, Fleet  # noqa: E402

PATCH = REPO / "examples" / "patches" / "meminfo-string.patch"
CALLBACKS = Path(__file__).resolve().parent / "callbacks"
GOAL_RATIO = 4.0
# At -vvv, Ansible prints every command it executes: over SSH with the host's port, locally with
# no "SSH:".  A module run is its interpreter (pipelined: alone; else with the AnsiballZ file)
# followed by "&& sleep 0", which raw commands never get.
SSH_EXEC = re.compile(r"SSH: EXEC ssh .*?-o Port=(\d+)")
LOCAL_EXEC = re.compile(r"^<[^>]+> EXEC /bin/sh -c")
MODULE_RUN = re.compile(r"python[\w.]*( \S*AnsiballZ_\S+)? && sleep 0")


@dataclass
class FleetTimes:
    """One fleet size's figures."""

    size: int
    first: float
    again: float
    rc: int
    changed_again: int
    slowest: List[Dict[str, object]] = field(default_factory=list)
    slowest_again: List[Dict[str, object]] = field(default_factory=list)
    # host -> (module runs, other commands) in a re-run; "(controller)" for the local ones.
    executions: Dict[str, Tuple[int, int]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.first / self.again if self.again else float("inf")


def timing_env(path: Path) -> Dict[str, str]:
    return {"ANSIBLE_CALLBACK_PLUGINS": str(CALLBACKS), "ANSIBLE_CALLBACKS_ENABLED": "task_timings",
            "KPATCH_TASK_TIMINGS": str(path)}


def slowest_tasks(path: Path, count: int = 8) -> List[Dict[str, object]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return sorted(rows, key=lambda r: -float(r["seconds"]))[:count]


def count_executions(output: str, ports: Dict[str, str]) -> Dict[str, Tuple[int, int]]:
    """-vvv output -> host -> (module runs, other commands); ``ports`` maps SSH port -> host."""
    counts: Dict[str, List[int]] = {}
    for line in output.splitlines():
        ssh = SSH_EXEC.search(line)
        if ssh:
            host = ports.get(ssh.group(1), "port " + ssh.group(1))
        elif LOCAL_EXEC.match(line):
            host = "(controller)"
        else:
            continue
        counts.setdefault(host, [0, 0])[0 if MODULE_RUN.search(line) else 1] += 1
    return {host: (n[0], n[1]) for host, n in sorted(counts.items())}


def measure(size: int, keep_logs: Optional[Path]) -> FleetTimes:
    """First apply and idempotent re-run on a fresh fleet of ``size`` VMs."""
    hosts = list(DEFAULT_HOSTS[:size])
    with tempfile.TemporaryDirectory(prefix=f"kpatch-bench-fleet-{size}-") as tmp, \
            Fleet(Path(tmp), hosts=hosts) as fleet:
        extra = {"kpatch_patch_files": [str(PATCH)]}
        warm = fleet.play("apply-livepatch.yml", dict(extra, kpatch_build_only=True))
        if warm.rc != 0:
            print(warm.tail(40), file=sys.stderr)
        timings = Path(tmp) / "first-apply-timings.jsonl"
        first = fleet.play("apply-livepatch.yml", extra, env=timing_env(timings))
        again_timings = Path(tmp) / "rerun-timings.jsonl"
        again = fleet.play("apply-livepatch.yml", extra, env=timing_env(again_timings))
        changed = sum(max(0, again.changed(h)) for h, _rel in hosts)
        counted = fleet.play("apply-livepatch.yml", extra, args=["-vvv"])
        executions = count_executions(counted.output, {str(vm.port): name for name, vm in fleet.vms.items()})
        if first.rc != 0 or again.rc != 0:
            print(first.tail(40) if first.rc else again.tail(40), file=sys.stderr)
        if keep_logs:
            dest = keep_logs / f"fleet-{size}"
            shutil.copytree(fleet.workdir / "logs", dest / "logs", dirs_exist_ok=True)
            for jsonl in Path(tmp).glob("*-timings.jsonl"):
                shutil.copy(jsonl, dest / jsonl.name)
        return FleetTimes(size, first.seconds, again.seconds, warm.rc or first.rc or again.rc or counted.rc, changed,
                          slowest_tasks(timings), slowest_tasks(again_timings, 5), executions)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,3", help="comma-separated fleet sizes (max 3)")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the playbook logs and timings here")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if any(s < 1 or s > len(DEFAULT_HOSTS) for s in sizes):
        parser.error(f"sizes must be between 1 and {len(DEFAULT_HOSTS)}")
    results = []
    print(f"{'hosts':>5} {'apply s':>9} {'re-run s':>9} {'ratio':>6} {'rc':>3} {'re-run changed':>15}")
    for size in sizes:
        res = measure(size, args.keep_logs)
        results.append(res)
        print(f"{size:>5} {res.first:>9.1f} {res.again:>9.1f} {res.ratio:>6.2f} {res.rc:>3} {res.changed_again:>15}",
              flush=True)
    for res in results:
        for label, rows in (("the first apply", res.slowest), ("the re-run", res.slowest_again)):
            print(f"\nslowest tasks of {label}, {res.size} host(s):")
            for row in rows:
                print(f"  {float(row['seconds']):7.1f}s  {row['play'][:40]:40}  {row['task']}")
        print(f"\nwhat a re-run executes, {res.size} host(s) (module runs / other commands):")
        for host, (modules, others) in res.executions.items():
            print(f"  {host:14} {modules:3} / {others}")
    status = max(r.rc for r in results)
    missed = [r.size for r in results if r.ratio > GOAL_RATIO]
    if missed:
        print(f"\nfirst apply above {GOAL_RATIO:.0f}x the re-run for {missed} host(s)")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
