"""Benchmark of the diff engine on one-line changes in big real kernel files.

For each pair (net/core/dev.c, kernel/sched/core.c, fs/ext4/inode.c — built from the Debian 6.1
tree by ``tests/integration/engine_pairs.py``, cached) it runs ``create_diff_object`` against the
6.1 vmlinux symbol table and prints the best-of-N wall time, the per-pass split, the object sizes
and the output size.  The vmlinux symbol table is loaded once and shared, as a build of several
objects would; its load time is printed separately.  kpatch's create-diff-object takes about
0.1-0.3 s on such objects; the goal is to stay within 3x of that.

Run: ``.venv/bin/python bench/bench_engine.py [--runs N]`` from the repository root.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tools"), str(REPO)]
import _bootstrap  # noqa: E402,F401  pylint: disable=unused-import,wrong-import-position

from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.diff import create_diff_object  # noqa: E402
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.lookup import load_parent_symtab  # noqa: E402
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.structsizes import (  # noqa: E402
    special_struct_sizes,
)
from tests.integration.engine_pairs import build_pair  # noqa: E402
from tests.testbed.kernels import cache_root, fetch_kernel  # noqa: E402

PAIRS = ("dev_valid_name", "sched_core", "ext4_inode")
GOAL_SECONDS = 3 * 0.3


def run_pair(name: str, kernel, symtab, sizes: Dict[str, int], runs: int, out_dir: Path) -> Dict[str, object]:
    pair = build_pair(name, kernel)
    best, best_result = None, None
    for _run in range(runs):
        start = time.perf_counter()
        result = create_diff_object(str(pair.orig), str(pair.patched), "vmlinux", symtab,
                                    str(kernel.headers / "Module.symvers"), "bench", str(out_dir / f"{name}.o"),
                                    sizes)
        took = time.perf_counter() - start
        if best is None or took < best:
            best, best_result = took, result
    return {"name": name, "object": pair.relobj, "seconds": best, "result": best_result,
            "input_bytes": pair.orig.stat().st_size}


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    kernel = fetch_kernel()
    start = time.perf_counter()
    symtab = load_parent_symtab(str(kernel.vmlinux), "vmlinux")
    symtab_seconds = time.perf_counter() - start
    sizes = special_struct_sizes(kernel.vmlinux, kernel.release, cache_root() / "struct-sizes", kernel.config)
    print(f"vmlinux symbol table ({len(symtab.globals)} globals, {sum(map(len, symtab.locals_by_name.values()))} "
          f"locals): loaded once in {symtab_seconds:.2f}s")
    print(f"{'object':24} {'changed':22} {'in KiB':>8} {'out KiB':>8} {'engine s':>9} {'goal':>6}  passes")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name in PAIRS:
            row = run_pair(name, kernel, symtab, sizes, args.runs, Path(tmp))
            res = row["result"]
            worst = max(worst, row["seconds"])
            passes = " ".join(f"{k}={v * 1000:.0f}ms" for k, v in res.timings.items() if v >= 0.001)
            ok = "ok" if row["seconds"] <= GOAL_SECONDS else "SLOW"
            print(f"{row['object']:24} {','.join(res.changed_functions)[:22]:22} {row['input_bytes'] / 1024:8.0f} "
                  f"{res.output_size / 1024:8.1f} {row['seconds']:9.3f} {ok:>6}  {passes}")
    print(f"worst engine time {worst:.3f}s vs goal {GOAL_SECONDS:.1f}s (3x kpatch's 0.3s)")
    return 0 if worst <= GOAL_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
