"""Benchmark of kpatch_build's fast path on a Debian kernel (default 6.1 cloud; the meminfo example).

Prints, measured in this one run:
* cold: a fresh cache (the source tree is copied, configured and ``modules_prepare``d, then the
  two objects are compiled, diffed and the module built and converted);
* warm: the prepared tree cached, a new module name so that nothing but the tree (and the release's
  cached vmlinux reads and unpatched object) is reused;
* second patch: another change to the same file, so only its patched side is compiled;
* the peak memory (maximum resident set) of this process;
* the load average before and after, and each build's CPU time (this process and its children):
  wall times taken on a busy machine are not the idle ones;
* with ``--full-build``: a full ``make -j$(nproc) vmlinux`` of the same tree with the fast path's
  code-generation flags (what the reference tool's cold cache costs, ~10.5 min on 2 cores for
  6.1) and the ratios against it.

``--release`` picks another cached kernel (e.g. ``7.2.13+deb14-cloud-amd64``): its meminfo change is
made against its own source, and when its compiler is not the host's the kbuild steps, the full
build included, run in its toolchain root.  The root (one debootstrap per suite and compiler,
~1 min) is taken from the shared test cache, so "cold" is a fresh tree and build as for 6.1.

Run: ``.venv/bin/python bench/bench_build.py [--release R] [--full-build]`` from the repository root.
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
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.pipeline import FUNCTION_SECTIONS  # noqa: E402
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import (  # noqa: E402
    StepLog,
    commands_through,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.toolchain import choose_toolchain  # noqa: E402
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.tree import prepare_tree  # noqa: E402
from tests.testbed.kernels import DEFAULT_RELEASE, cache_root, fetch_kernel  # noqa: E402

PATCH = REPO / "examples" / "patches" / "meminfo-string.patch"
# Goals as ratios against a full ``make vmlinux`` of the same tree measured in the same run.
GOALS = {"cold": 40, "warm": 150, "second patch": 200}


def meminfo_patch(art, dest: Path, old: str, new: str) -> Path:
    """A one-line change to the release's own fs/proc/meminfo.c (``old`` replaced by ``new``)."""
    rel = "fs/proc/meminfo.c"
    text = (Path(art.source_tree()) / rel).read_text()
    changed = text.replace(old, new, 1)
    if changed == text:
        raise SystemExit(f"{rel} of {art.release} no longer contains {old!r}: update the benchmark's patches")
    dest.write_text("".join(difflib.unified_diff(text.splitlines(True), changed.splitlines(True),
                                                 f"a/{rel}", f"b/{rel}")))
    return dest


def first_patch(art, dest: Path) -> Path:
    """The example patch on its own kernel; the same change made against another release's source."""
    if art.release == DEFAULT_RELEASE:
        return PATCH
    return meminfo_patch(art, dest, '"VmallocChunk:   "', '"VMALLOCCHUNK:   "')


def second_patch(art, dest: Path) -> Path:
    """Another change to fs/proc/meminfo.c than the example's (a different string)."""
    return meminfo_patch(art, dest, 'show_val_kb(m, "Percpu:         ", pcpu_nr_pages());',
                         'show_val_kb(m, "PERCPU:         ", pcpu_nr_pages());')


def share_toolroots(cache: Path) -> None:
    """The fresh cache reuses the test cache's toolchain roots (made once per suite and compiler)."""
    shared = cache_root() / "build-tests" / "toolroots"
    if shared.is_dir():
        (cache / "toolroots").mkdir(parents=True, exist_ok=True)
        for root in shared.iterdir():
            if root.is_dir() and not root.name.startswith("."):
                (cache / "toolroots" / root.name).symlink_to(root)


def request(art, cache: Path, out: Path, name: str, patch: Path) -> BuildRequest:
    return BuildRequest(patches=[patch], release=art.release, source_dir=art.source_tree(), config=art.config,
                        vmlinux=art.vmlinux, headers=art.headers, cache_dir=cache, output_dir=out, name=name,
                        modules_dir=art.modules_dir, jobs=os.cpu_count() or 2)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children: a figure a busy machine inflates far less."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed_build(art, cache: Path, out: Path, name: str, patch: Path) -> float:
    start, cpu = time.monotonic(), cpu_seconds()
    result = build_livepatch(request(art, cache, out, name, patch))
    seconds = time.monotonic() - start
    stages = " ".join(f"{k}={v:.1f}s" for k, v in result.timings.items())
    print(f"  {name}: {seconds:.1f}s, {cpu_seconds() - cpu:.1f}s CPU ({stages})", flush=True)
    return seconds


def full_vmlinux_build(art, cache: Path, out: Path, patch: Path) -> float:
    """``make -j$(nproc) vmlinux`` with the fast path's KCFLAGS in a throwaway copy of the prepared tree.

    It runs where the fast path's kbuild steps run: on the host, or in the release's toolchain root.
    """
    req = request(art, cache, out, "livepatch-bench-full", patch)
    log = StepLog(cache / "logs" / "bench-full-build.log")
    work = Path(tempfile.mkdtemp(prefix="bench-full-", dir=cache))
    toolchain = choose_toolchain(req, log, work)
    with commands_through(toolchain.wrapper):
        # The cold build's tree, reused: the same compiler identity keys it.
        tree = prepare_tree(Path(art.source_tree()), Path(art.config), art.release, cache / "trees", log,
                            compiler=toolchain.identity)
    copy = work / "tree"
    subprocess.run(["cp", "-a", str(tree.root), str(copy)], check=True)
    argv = ["make", "-C", str(copy), f"-j{os.cpu_count() or 2}", *tree.make_vars, f"KCFLAGS={FUNCTION_SECTIONS}",
            "vmlinux"]
    argv = toolchain.wrapper(argv, copy) if toolchain.wrapper else argv
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - start
    shutil.rmtree(work, ignore_errors=True)
    return seconds


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-build", action="store_true", help="also time a full vmlinux build (~10 min)")
    parser.add_argument("--release", default=DEFAULT_RELEASE, help=f"cached kernel release (default {DEFAULT_RELEASE})")
    args = parser.parse_args()
    art = fetch_kernel(args.release)
    with tempfile.TemporaryDirectory(prefix="bench-build-", dir="/var/tmp") as tmp:
        cache, out = Path(tmp) / "cache", Path(tmp) / "out"
        share_toolroots(cache)
        patch = first_patch(art, Path(tmp) / "first.patch")
        print(f"kpatch_build fast path, {art.release}, meminfo example, {os.cpu_count()} cores, {load_average()}")
        cold = timed_build(art, cache, out, "livepatch-bench-cold", patch)
        warm = timed_build(art, cache, out, "livepatch-bench-warm", patch)
        second = timed_build(art, cache, out, "livepatch-bench-second", second_patch(art, Path(tmp) / "second.patch"))
        print(f"cold {cold:.1f}s, warm {warm:.1f}s, second patch to the same file {second:.1f}s ({load_average()})")
        # Children (make, gcc) are not counted: a forked child's peak starts at this process's size.
        print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (the build process), "
              f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB (largest child)")
        if args.full_build:
            full = full_vmlinux_build(art, cache, out, patch)
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
