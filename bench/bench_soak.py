"""Soak benchmark: N enable/disable cycles of the sample livepatch in a full Debian VM, under load.

Boots the testbed's Debian VM (6.1 by default), builds the kernel's livepatch sample for it, and
runs tests/testbed/soak_guest.py through tests/testbed/soak.py: every cycle loads and unloads the
patch with the collection's own loader while a loop reads /proc/cmdline (the patched function).
Prints cycles, seconds, failures, stalls, kernel warnings and newly set taint flags; exit 1 when
any cycle failed, stalled or warned.  Opt-in and slow: ``.venv/bin/python bench/bench_soak.py
[--cycles 100]`` (the suite runs 20 in tests/integration/test_target_faults.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tools"), str(REPO)]
import _bootstrap  # noqa: E402,F401  pylint: disable=unused-import,wrong-import-position

from tests.integration.kmods.build import SAMPLE_TEXT, cached_test_modules  # noqa: E402
from tests.testbed.image import build_debian_image  # noqa: E402
from tests.testbed.kernels import DEFAULT_RELEASE, fetch_kernel  # noqa: E402
from tests.testbed.soak import run_soak  # noqa: E402
from tests.testbed.sshvm import DebianVM  # noqa: E402


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--release", default=DEFAULT_RELEASE)
    args = parser.parse_args(argv)
    _art, built = cached_test_modules(args.release)
    image = build_debian_image(fetch_kernel(args.release, with_dbg=False, with_source=False))
    with tempfile.TemporaryDirectory(prefix="kpatch-bench-soak-") as tmp, \
            DebianVM(image, args.release, name="soak", workdir=Path(tmp)) as vm:
        report = run_soak(vm, built.sample, "livepatch_sample", args.cycles, patched_text=SAMPLE_TEXT)
    print(f"soak {args.release}: {report.cycles} cycles in {report.seconds:.0f}s, "
          f"{len(report.failures)} failures, {report.stalls} stalls, {len(report.warnings)} kernel warnings, "
          f"new taint {report.new_taint:#x}")
    for line in report.failures + report.warnings:
        print(f"  {line}")
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
