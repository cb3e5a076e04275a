"""Build out-of-tree kernel modules against a release's unpacked Debian headers (kbuild ``M=``)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, Optional

from tests.testbed.kernels import KernelArtifacts, TestbedError, log


def build_external_module(artifacts: KernelArtifacts, workdir: Path, sources: Dict[str, str],
                          module: str, jobs: int = 2, extra_kbuild: str = "") -> Path:
    """Write ``sources`` (file name → text) into ``workdir``, build ``module.ko`` with kbuild.

    ``sources`` holds every .c of the module; a single-source module is named after its file.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    for name, text in sources.items():
        (workdir / name).write_text(text)
    objs = [n[:-2] + ".o" for n in sources if n.endswith(".c")]
    if objs == [f"{module}.o"]:
        kbuild = f"obj-m := {module}.o\n"
    else:
        kbuild = f"obj-m := {module}.o\n{module}-y := {' '.join(objs)}\n"
    (workdir / "Kbuild").write_text(kbuild + extra_kbuild)
    start = time.monotonic()
    proc = subprocess.run(["make", "-C", str(artifacts.headers), f"M={workdir}", f"-j{jobs}", "modules"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise TestbedError(f"kbuild of {module} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    ko = workdir / f"{module}.ko"
    if not ko.exists():
        raise TestbedError(f"kbuild of {module} produced no {ko.name}")
    log(f"built {ko.name} against {artifacts.release} headers in {time.monotonic() - start:.1f}s")
    return ko


def copy_sample(artifacts: KernelArtifacts, relpath: str) -> str:
    """Text of a file from the release's pristine source tree (e.g. samples/livepatch/…)."""
    src = artifacts.source_tree() / relpath
    if not src.exists():
        raise TestbedError(f"{relpath} not found in {artifacts.source_tree()}")
    return src.read_text()


def modinfo_field(ko: Path, field: str) -> Optional[str]:
    """A field of a module's .modinfo, via modinfo(8) from kmod."""
    if shutil.which("modinfo") is None:
        raise TestbedError("missing modinfo (apt-get install kmod)")
    proc = subprocess.run(["modinfo", "-F", field, str(ko)], capture_output=True, text=True, check=False)
    return proc.stdout.strip() or None if proc.returncode == 0 else None
