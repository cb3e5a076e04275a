"""Benchmark of the ELF reader/writer against GNU readelf on real kernel artifacts.

Measures (best of N runs, wall clock):
* ``read_symbols`` on the Debian 6.1 vmlinux (~590 MB, ~118k symbols) vs ``readelf -s --wide``;
* ``read_elf`` and ``write_elf`` on big objects -- net/core/dev.o built from the Debian tree
  with kpatch's flags and DWARF, and the largest Debian module (xfs.ko) -- vs ``readelf -a --wide``.

Run: ``.venv/bin/python bench/bench_elf.py [--runs N]`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tools"), str(REPO)]
import _bootstrap  # noqa: E402,F401  pylint: disable=unused-import,wrong-import-position

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf, read_symbols  # noqa: E402
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.writer import write_elf  # noqa: E402
from tests.testbed.kernels import DEFAULT_RELEASE, fetch_kernel  # noqa: E402


def best_of(runs: int, fn: Callable[[], object]) -> float:
    times: List[float] = []
    for _run in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def readelf_time(runs: int, path: Path, *options: str) -> float:
    def run() -> None:
        subprocess.run(["readelf", *options, "--wide", str(path)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)
    return best_of(runs, run)


def report(label: str, ours: float, theirs: float, what: str) -> None:
    print(f"{label:<44} ours {ours * 1000:8.1f} ms   readelf {what:<3} {theirs * 1000:8.1f} ms   "
          f"ratio {ours / theirs:5.2f}x")


def bench_vmlinux(runs: int, vmlinux: Path) -> None:
    count = len(read_symbols(str(vmlinux)))
    ours = best_of(runs, lambda: read_symbols(str(vmlinux)))
    theirs = readelf_time(runs, vmlinux, "-s")
    size_mb = vmlinux.stat().st_size / 2**20
    report(f"read_symbols vmlinux ({size_mb:.0f} MB, {count} syms)", ours, theirs, "-s")


def bench_object(runs: int, path: Path, label: str) -> None:
    obj = read_elf(str(path))
    relocs = sum(len(s.relocations) for s in obj.sections)
    ours = best_of(runs, lambda: read_elf(str(path)))
    theirs = readelf_time(runs, path, "-a")
    name = f"{label} ({path.stat().st_size / 2**20:.1f} MB, {len(obj.sections)} secs, {relocs} relas)"
    report("read_elf  " + name, ours, theirs, "-a")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, path.name)
        wrote = best_of(runs, lambda: write_elf(obj, out))
    print(f"{'write_elf ' + label:<44} ours {wrote * 1000:8.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="best of this many runs (default 3)")
    args = parser.parse_args()
    kernel = fetch_kernel(DEFAULT_RELEASE)
    from tests.integration.engine_pairs import build_pair  # builds net/core/dev.o once, then cached

    print(f"ELF reader/writer benchmark on {kernel.release} (best of {args.runs})")
    bench_vmlinux(args.runs, kernel.vmlinux)
    bench_object(args.runs, build_pair("dev_valid_name", kernel).orig, "net/core/dev.o")
    bench_object(args.runs, kernel.modules_dir / "kernel" / "fs" / "xfs" / "xfs.ko", "xfs.ko")
    return 0


if __name__ == "__main__":
    sys.exit(main())
