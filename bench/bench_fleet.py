"""Benchmark of the fleet apply: wall time of apply-livepatch.yml and of its idempotent re-run.

For each fleet size (default 1, 2 and 3 VMs; the third runs the 6.12 kernel) it boots a fresh
fleet of full Debian VMs, then times with the repository's ansible.cfg (forks 20, SSH
pipelining, ControlPersist):
* first apply: the build (warm builder cache after the first size), the target role, copying,
  verifying and loading the module on every host;
* re-run: nothing to do (kpatch_info per host, one raw stamp read; the build is a cache hit).
Prints one line per size, measured in this run only.  Opt-in and slow (software-emulated VMs
on a shared machine): ``.venv/bin/python bench/bench_fleet.py [--sizes 1,2,3]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import List, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tools"), str(REPO)]
import _bootstrap  # noqa: E402,F401  pylint: disable=unused-import,wrong-import-position

from tests.testbed.fleet import DEFAULT_HOSTS, Fleet  # noqa: E402

PATCH = REPO / "examples" / "patches" / "meminfo-string.patch"


def measure(size: int) -> Tuple[float, float, int, int]:
    """(apply seconds, re-run seconds, rc of apply, changed tasks on the re-run) for ``size`` VMs."""
    hosts = list(DEFAULT_HOSTS[:size])
    with tempfile.TemporaryDirectory(prefix=f"kpatch-bench-fleet-{size}-") as tmp, \
            Fleet(Path(tmp), hosts=hosts) as fleet:
        extra = {"kpatch_patch_files": [str(PATCH)]}
        first = fleet.play("apply-livepatch.yml", extra)
        again = fleet.play("apply-livepatch.yml", extra)
        changed = sum(max(0, again.changed(h)) for h, _rel in hosts)
        if first.rc != 0 or again.rc != 0:
            print(first.tail(40) if first.rc else again.tail(40), file=sys.stderr)
        return first.seconds, again.seconds, first.rc or again.rc, changed


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,2,3", help="comma-separated fleet sizes (max 3)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if any(s < 1 or s > len(DEFAULT_HOSTS) for s in sizes):
        parser.error(f"sizes must be between 1 and {len(DEFAULT_HOSTS)}")
    print(f"{'hosts':>5} {'apply s':>9} {'re-run s':>9} {'rc':>3} {'re-run changed':>15}")
    status = 0
    for size in sizes:
        first, again, rc, changed = measure(size)
        print(f"{size:>5} {first:>9.1f} {again:>9.1f} {rc:>3} {changed:>15}", flush=True)
        status = status or rc
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
