"""Benchmark of kpatch_build's fast path on the Debian 6.1 cloud kernel (the meminfo example).

Prints, measured in this one run:
* cold: a fresh cache (the source tree is copied, configured and ``modules_prepare``d, then the
  two objects are compiled, diffed and the module built and converted);
* warm: the prepared tree cached, a new module name so that nothing but the tree (and the release's
  cached vmlinux reads and unpatched object) is reused;
* second patch: another change to the same file, so only its patched side is compiled;
* the peak memory (maximum resident set) of this process;
* with ``--full-build``: a full ``make -j$(nproc) vmlinux`` of the same tree (what the reference
  tool's cold cache costs, ~10.5 min on 2 cores) and the ratios against it.

Run: ``.venv/bin/python bench/bench_build.py [--full-build]`` from the repository root.
"""

from __future__ import annotations

import argparse
import difflib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tools"), str(REPO)]
import _bootstrap  # noqa: E402,F401  pylint: disable=unused-import,wrong-import-position

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.pipeline import (  # noqa: E402
    BuildRequest,
    build_livepatch,
)
from tests.testbed.kernels import DEFAULT_RELEASE, fetch_kernel  # noqa: E402

PATCH = REPO / "examples" / "patches" / "meminfo-string.patch"
# Goals as ratios against a full ``make vmlinux`` of the same tree measured in the same run.
GOALS = {"cold": 40, "warm": 150, "second patch": 200}


def second_patch(art, dest: Path) -> Path:
    """Another change to fs/proc/meminfo.c than the example's (a different string)."""
    rel = "fs/proc/meminfo.c"
    text = (Path(art.source_tree()) / rel).read_text()
    old = 'show_val_kb(m, "Percpu:         ", pcpu_nr_pages());'
    new = text.replace(old, 'show_val_kb(m, "PERCPU:         ", pcpu_nr_pages());', 1)
    if new == text:
        raise SystemExit(f"{rel} no longer contains {old!r}: update the benchmark's second patch")
    dest.write_text("".join(difflib.unified_diff(text.splitlines(True), new.splitlines(True), f"a/{rel}", f"b/{rel}")))
    return dest


def request(art, cache: Path, out: Path, name: str, patch: Path = PATCH) -> BuildRequest:
    return BuildRequest(patches=[patch], release=art.release, source_dir=art.source_tree(), config=art.config,
                        vmlinux=art.vmlinux, headers=art.headers, cache_dir=cache, output_dir=out, name=name,
                        modules_dir=art.modules_dir, jobs=os.cpu_count() or 2)


def timed_build(art, cache: Path, out: Path, name: str, patch: Path = PATCH) -> float:
    start = time.monotonic()
    result = build_livepatch(request(art, cache, out, name, patch))
    seconds = time.monotonic() - start
    stages = " ".join(f"{k}={v:.1f}s" for k, v in result.timings.items())
    print(f"  {name}: {seconds:.1f}s ({stages})", flush=True)
    return seconds


def full_vmlinux_build(tree: Path) -> float:
    """``make -j$(nproc) vmlinux`` in a throwaway copy of the prepared tree."""
    with tempfile.TemporaryDirectory(prefix="bench-full-", dir=tree.parent) as tmp:
        copy = Path(tmp) / "tree"
        subprocess.run(["cp", "-a", str(tree), str(copy)], check=True)
        start = time.monotonic()
        subprocess.run(["make", "-C", str(copy), f"-j{os.cpu_count() or 2}", "vmlinux"], check=True,
                       stdout=subprocess.DEVNULL)
        return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-build", action="store_true", help="also time a full vmlinux build (~10 min)")
    args = parser.parse_args()
    art = fetch_kernel(DEFAULT_RELEASE)
    with tempfile.TemporaryDirectory(prefix="bench-build-", dir="/var/tmp") as tmp:
        cache, out = Path(tmp) / "cache", Path(tmp) / "out"
        print(f"kpatch_build fast path, {art.release}, meminfo example, {os.cpu_count()} cores")
        cold = timed_build(art, cache, out, "livepatch-bench-cold")
        warm = timed_build(art, cache, out, "livepatch-bench-warm")
        second = timed_build(art, cache, out, "livepatch-bench-second", second_patch(art, Path(tmp) / "second.patch"))
        print(f"cold {cold:.1f}s, warm {warm:.1f}s, second patch to the same file {second:.1f}s")
        # Children (make, gcc) are not counted: a forked child's peak starts at this process's size.
        print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (the build process), "
              f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB (largest child)")
        if args.full_build:
            full = full_vmlinux_build(cache / "trees" / art.release / "tree")
            print(f"full make -j{os.cpu_count() or 2} vmlinux {full:.0f}s, measured now")
            for what, seconds in (("cold", cold), ("warm", warm), ("second patch", second)):
                ratio = full / seconds
                print(f"  {what}: {ratio:.0f}x faster (goal >= {GOALS[what]}x: "
                      f"{'met' if ratio >= GOALS[what] else 'MISSED'})")
        else:
            print("ratios: run with --full-build (a full make vmlinux of the same tree, ~10 min on 2 cores)")
        shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
