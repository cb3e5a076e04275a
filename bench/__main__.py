"""`make bench` / `python -m bench [NAME ...]`: the benchmarks, one after the other, each as its own process.

Default: elf, engine, cdo_ratio and build (the fast ones; each prints figures measured in this run).
`fleet` and `soak` (boot Debian VMs, minutes) run only when named. Extra arguments after `--` go to every
named benchmark, e.g. `python -m bench build -- --full-build`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT = ("elf", "engine", "cdo_ratio", "build")
KNOWN = DEFAULT + ("fleet", "soak")


def main(argv: list) -> int:
    names, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    names = names or list(DEFAULT)
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(KNOWN)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        start = time.monotonic()
        print(f"==> bench_{name}", flush=True)
        rc = subprocess.call([sys.executable, str(HERE / f"bench_{name}.py"), *extra])
        print(f"    bench_{name}: exit {rc} in {time.monotonic() - start:.1f}s", flush=True)
        if rc:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
