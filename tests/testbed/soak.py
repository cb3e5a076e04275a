"""Host side of the livepatch soak: copy the runtime, the module and the guest script, run, parse.

``run_soak(vm, module, name, cycles)`` returns a ``SoakReport``; the suite runs 20 cycles
(tests/integration/test_target_faults.py) and ``bench/bench_soak.py`` 100.  The cycles go
through the collection's own loader in the guest (tests/testbed/soak_guest.py), so a cycle is
exactly what the kpatch module does to load and unload, without Ansible's per-task cost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

from tests.testbed.sshvm import DebianVM

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / "plugins" / "module_utils" / "_target"
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
    vm.scp_to(RUNTIME, f"{GUEST_DIR}/kpatch_target", recursive=True)
    vm.scp_to(GUEST_SCRIPT, f"{GUEST_DIR}/soak_guest.py")
    vm.scp_to(module, f"{GUEST_DIR}/{module.name}")
    quoted = patched_text.replace("'", "'\\''")
    proc = vm.ssh(f"cd {GUEST_DIR} && python3 -B soak_guest.py {GUEST_DIR}/{module.name} {name} {cycles}"
                  f" {proc_file} '{quoted}'", check=True, timeout=120 + 60 * cycles)
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    vm.ssh(f"rm -rf {GUEST_DIR}")
    return SoakReport(cycles=data["cycles"], seconds=data["seconds"], stalls=data["stalls"],
                      failures=data["failures"], warnings=data["warnings"], new_taint=data["new_taint"],
                      warn_taint=data["warn_taint"])
