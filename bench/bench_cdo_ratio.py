"""Our create-diff-object beside kpatch's C tool, measured in one run: time and peak memory ratios.

Two workloads, each run by both tools with identical command lines (kpatch's argument order):
* kpatch's 55-case x86-64 unit suite (``../shared/kpatch-unit-objs``), as its ``run`` script
  calls the tool: the ORIG object's own ``readelf -s --wide`` as the parent symbol table, the
  suite's struct sizes; summed wall time and the largest peak RSS;
* one-line changes in big real objects of the Debian 6.1 tree (net/core/dev.o, fs/ext4/inode.o,
  kernel/sched/core.o, fs/ext4/super.o; ``tests/integration/engine_pairs.py``), with vmlinux's ``readelf -s --wide`` as the
  parent; best of N wall time and peak RSS per object.
Peak RSS comes from GNU time (``/usr/bin/time -f %M``) around each tool: a child's own
``wait4`` figure would include this Python process's RSS, which Linux carries into the child's
high-water mark across fork and exec.  Our tool runs as installed, its bytecode compiled
(``compileall`` first: this environment may set PYTHONDONTWRITEBYTECODE, which would make every
run compile the collection's modules again).
The reference binary is built from kpatch's own sources by ``../shared/reference/build-kpatch-cdo``
(pass ``--reference PATH`` to reuse one); without it only our absolute figures are printed.
Every figure is measured here, now; the goals (<= 2x time and memory per big object, <= 3x the
suite's time) are printed beside the ratios, never used as constants for kpatch's time.

Run: ``.venv/bin/python bench/bench_cdo_ratio.py [--reference PATH] [--runs N]``
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tools"), str(REPO)]
import _bootstrap  # noqa: E402,F401  pylint: disable=unused-import,wrong-import-position

SHARED = REPO.parent / "shared"
SUITE = SHARED / "kpatch-unit-objs" / "x86_64"
BUILD_REFERENCE = SHARED / "reference" / "build-kpatch-cdo"
OURS = REPO / "tools" / "create-diff-object"
SUITE_SIZES = {"PARA_STRUCT_SIZE": "16", "EX_STRUCT_SIZE": "12", "BUG_STRUCT_SIZE": "12", "ALT_STRUCT_SIZE": "13",
               "JUMP_STRUCT_SIZE": "24", "ORC_STRUCT_SIZE": "6", "STATIC_CALL_STRUCT_SIZE": "8",
               "PRINTK_INDEX_STRUCT_SIZE": "44"}
BIG = ("dev_valid_name", "ext4_inode", "sched_idle_cpu", "ext4_statfs")
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None  # the shell's `time` has no %M


@dataclass
class Run:
    seconds: float
    max_rss_kb: int  # 0: not measured (no GNU time)
    rc: int
    last_error: str = ""


def timed(argv: Sequence[str], env: Dict[str, str], cwd: Path) -> Run:
    """Wall time and peak RSS of one process (RSS through GNU time, see the docstring)."""
    with tempfile.NamedTemporaryFile(prefix="rss-", dir=cwd) as rss:
        wrapped = [GNU_TIME, "-q", "-f", "%M", "-o", rss.name, *argv] if GNU_TIME else list(argv)
        start = time.monotonic()
        proc = subprocess.run(wrapped, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              check=False)
        seconds = time.monotonic() - start
        text = Path(rss.name).read_text().split()
    errors = [line for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
    return Run(seconds, int(text[-1]) if text and text[-1].isdigit() else 0, proc.returncode,
               errors[-1] if errors else "")


def compile_bytecode() -> None:
    """Write our modules' bytecode once, as an installed collection has it."""
    for tree in (REPO / "plugins" / "module_utils", REPO / "tools"):
        compileall.compile_dir(str(tree), quiet=1)


def readelf_symtab(obj: Path, dest: Path) -> Path:
    text = subprocess.run(["readelf", "-s", "--wide", str(obj)], capture_output=True, text=True, check=True).stdout
    dest.write_text(text.replace(" [<localentry>: 8]", ""))
    return dest


def interpreter_flags(script: Path) -> List[str]:
    """The options the script's ``#!`` line gives Python (``#!/usr/bin/env -S python3 -I -S`` -> -I -S):
    our tool runs under this bench's interpreter, with the options it has when run as installed."""
    words = script.read_text().split("\n", 1)[0].split()
    at = next((i for i, word in enumerate(words) if "python" in word.rsplit("/", 1)[-1]), len(words))
    return words[at + 1:]


OURS_FLAGS = interpreter_flags(OURS)


def tool_argv(tool: Path, orig: Path, patched: Path, symtab: Path, out: Path) -> List[str]:
    prefix = [sys.executable, *OURS_FLAGS] if tool == OURS else []
    return prefix + [str(tool), str(orig), str(patched), "vmlinux", str(symtab), "/dev/null", "test_bench", str(out)]


def suite_cases() -> List[Tuple[str, Dict[str, str]]]:
    cases = []
    for orig in sorted(SUITE.glob("*.ORIG.o")):
        name = orig.name[:-len(".ORIG.o")]
        if not (SUITE / f"{name}.PATCHED.o").is_file():
            continue
        extra = {}
        env_file = SUITE / f"{name}.env"
        if env_file.is_file():
            extra = dict(part.split("=", 1) for part in env_file.read_text().split() if "=" in part)
        cases.append((name, extra))
    return cases


def run_suite(tool: Path, work: Path) -> Tuple[float, int, int]:
    """(total seconds, largest peak RSS in KiB, cases that exited 0) over the unit suite."""
    total, peak, ok = 0.0, 0, 0
    for name, extra in suite_cases():
        symtab = readelf_symtab(SUITE / f"{name}.ORIG.o", work / f"{name}.symtab")
        env = {**os.environ, **SUITE_SIZES, **extra}
        run = timed(tool_argv(tool, SUITE / f"{name}.ORIG.o", SUITE / f"{name}.PATCHED.o", symtab,
                              work / f"{name}.out.o"), env, work)
        total, peak, ok = total + run.seconds, max(peak, run.max_rss_kb), ok + (run.rc == 0)
    return total, peak, ok


def kernel_struct_sizes() -> Dict[str, str]:
    """The 6.1 kernel's special-section struct sizes from its DWARF, as kpatch's variables."""
    from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.structsizes import (  # noqa: E501 pylint: disable=import-outside-toplevel
        special_struct_sizes)
    from tests.testbed.kernels import cache_root, fetch_kernel  # pylint: disable=import-outside-toplevel

    art = fetch_kernel()
    sizes = special_struct_sizes(art.vmlinux, art.release, cache_root() / "structsizes", config=art.config)
    return {f"{key}_STRUCT_SIZE": str(value) for key, value in sizes.items()}


def run_big(tool: Path, name: str, symtab: Path, work: Path, runs: int) -> Run:
    from tests.integration.engine_pairs import build_pair  # pylint: disable=import-outside-toplevel

    pair = build_pair(name)
    env = {**os.environ, **kernel_struct_sizes()}
    best: Optional[Run] = None
    for _attempt in range(runs):
        run = timed(tool_argv(tool, pair.orig, pair.patched, symtab, work / f"{name}.out.o"), env, work)
        if run.rc not in (0, 3):
            return run  # refused: reported as such, no ratio
        best = run if best is None or run.seconds < best.seconds else best
    assert best is not None
    return best


def reference_binary(path: Optional[str]) -> Optional[Path]:
    if path:
        return Path(path)
    if not BUILD_REFERENCE.is_file() or shutil.which("gcc") is None:
        return None
    out = Path(tempfile.gettempdir()) / "kpatch-cdo"
    proc = subprocess.run([str(BUILD_REFERENCE), str(out)], capture_output=True, text=True, check=False)
    return Path(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None


def ratio(ours: float, ref: Optional[float]) -> str:
    return f"{ours / ref:.2f}x" if ref else "-"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="kpatch's create-diff-object (default: built by build-kpatch-cdo)")
    parser.add_argument("--runs", type=int, default=3, help="best of N for the big objects")
    args = parser.parse_args(argv)
    ref = reference_binary(args.reference)
    print(f"reference: {ref or 'none (absolute figures only)'}")
    print(f"peak RSS: {GNU_TIME or 'not measured (no /usr/bin/time)'}")
    compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="kpatch-bench-cdo-") as tmp:
        work = Path(tmp)
        ours_s, ours_rss, ours_ok = run_suite(OURS, work)
        ref_s, ref_rss, ref_ok = run_suite(ref, work) if ref else (None, None, None)
        print(f"unit suite ({len(suite_cases())} cases): ours {ours_s:.2f} s, peak {ours_rss // 1024} MiB, "
              f"{ours_ok} exit 0 | kpatch {ref_s and f'{ref_s:.2f} s'}, peak {ref_rss and ref_rss // 1024} MiB, "
              f"{ref_ok} exit 0 | time {ratio(ours_s, ref_s)} (goal <= 3x)")
        from tests.testbed.kernels import fetch_kernel  # pylint: disable=import-outside-toplevel

        symtab = readelf_symtab(fetch_kernel().vmlinux, work / "vmlinux.symtab")
        for name in BIG:
            ours = run_big(OURS, name, symtab, work, args.runs)
            theirs = run_big(ref, name, symtab, work, args.runs) if ref else None
            for who, run in (("ours", ours), ("kpatch", theirs)):
                if run is not None and run.rc not in (0, 3):
                    reason = run.last_error.rsplit(".o: ", 1)[-1]  # the message, without the object's path
                    print(f"{name}: {who} refused the pair (exit {run.rc}: {reason}): no ratio")
            if ours.rc not in (0, 3) or (theirs is not None and theirs.rc not in (0, 3)):
                if ours.rc in (0, 3):
                    print(f"{name}: ours {ours.seconds:.2f} s / {ours.max_rss_kb // 1024} MiB")
                continue
            print(f"{name}: ours {ours.seconds:.2f} s / {ours.max_rss_kb // 1024} MiB | kpatch "
                  f"{theirs and f'{theirs.seconds:.2f} s / {theirs.max_rss_kb // 1024} MiB'} | time "
                  f"{ratio(ours.seconds, theirs and theirs.seconds)}, memory "
                  f"{ratio(ours.max_rss_kb, theirs and theirs.max_rss_kb)} (goal <= 2x each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
