"""Host side of the livepatch soak: copy the runtime, the module and the guest script, run, parse.

``run_soak(vm, module, name, cycles)`` returns a ``SoakReport``; the suite runs 20 cycles
(tests/integration/test_target_faults.py) and ``bench/bench_soak.py`` 100.  The cycles go
through the collection's own loader in the guest (tests/testbed/soak_guest.py), so a cycle is
exactly what the kpatch module does to load and unload, without Ansible's per-task cost.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

from ansible_collections.kpatch.livepatch.plugins.lookup.target_runtime import archive_bytes, runtime_sources
from tests.testbed.sshvm import DebianVM

REPO = Path(__file__).resolve().parents[2]
GUEST_SCRIPT = Path(__file__).resolve().parent / "soak_guest.py"
GUEST_DIR = "/root/kpatch-soak"


@dataclass
class SoakReport:
    """What the guest saw over the whole soak."""

    cycles: int
    seconds: float
    stalls: int
    failures: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    new_taint: int = 0
    warn_taint: bool = False

    @property
    def clean(self) -> bool:
        return not self.failures and not self.stalls and not self.warnings and not self.warn_taint


def run_soak(vm: DebianVM, module: Path, name: str, cycles: int, proc_file: str = "/proc/cmdline",
             patched_text: str = "this has been live patched") -> SoakReport:
    """Enable/disable ``module`` ``cycles`` times in ``vm`` while a loop reads ``proc_file``."""
    vm.ssh(f"rm -rf {GUEST_DIR}; mkdir -p {GUEST_DIR}", check=True)
    # The runtime exactly as the target role installs it: the one archive (package kpatch_target).
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "kpatch_target.zip"
        archive.write_bytes(archive_bytes(runtime_sources()))
        vm.scp_to(archive, f"{GUEST_DIR}/kpatch_target.zip")
    vm.scp_to(GUEST_SCRIPT, f"{GUEST_DIR}/soak_guest.py")
    vm.scp_to(module, f"{GUEST_DIR}/{module.name}")
    quoted = patched_text.replace("'", "'\\''")
    proc = vm.ssh(f"cd {GUEST_DIR} && PYTHONPATH={GUEST_DIR}/kpatch_target.zip python3 -B soak_guest.py"
                  f" {GUEST_DIR}/{module.name} {name} {cycles}"
                  f" {proc_file} '{quoted}'", check=True, timeout=120 + 60 * cycles)
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    vm.ssh(f"rm -rf {GUEST_DIR}")
    return SoakReport(cycles=data["cycles"], seconds=data["seconds"], stalls=data["stalls"],
                      failures=data["failures"], warnings=data["warnings"], new_taint=data["new_taint"],
                      warn_taint=data["warn_taint"])
