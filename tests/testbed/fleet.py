"""A fleet of full Debian VMs for the fleet playbooks (tests/integration/test_fleet.py, bench/).

``Fleet`` boots several ``DebianVM`` from one image carrying every release the fleet runs,
writes one inventory (group ``kpatch_targets``), and runs the collection's playbooks against
it with the build host being the controller itself: the testbed's unpacked Debian kernel
artifacts are passed as ``kpatch_build_kernels``, exactly like a user who already has the
sources and debug vmlinux on the build host.  ``PlaybookRun`` parses ``PLAY RECAP`` so a test
can assert ``changed=0`` per host.

The VMs start together (qemu is single-threaded under TCG; the guests boot in parallel on
the shared cores) and are killed on every exit path by ``close()``, by their hard-timeout
timers, and with their parent process.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tests.testbed.ansible_run import REPO, run_playbook
from tests.testbed.image import DebianImage, build_debian_image
from tests.testbed.kernels import KernelArtifacts, cache_root, fetch_kernel, log
from tests.testbed.sshvm import DebianVM, write_inventory

R61 = "6.1.0-50-cloud-amd64"
R612 = "6.12.107+deb12-cloud-amd64"
# name → release; two hosts share a release, so one module serves both.
DEFAULT_HOSTS: Tuple[Tuple[str, str], ...] = (("vm61a", R61), ("vm61b", R61), ("vm612", R612))
TARGET_GROUP = "kpatch_targets"
PLAYBOOKS = REPO / "playbooks"
RECAP_LINE = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$")


@dataclass
class PlaybookRun:
    """One ansible-playbook run: exit status, output, per-host recap and wall time."""

    rc: int
    output: str
    seconds: float
    recap: Dict[str, Dict[str, int]] = field(default_factory=dict)

    def changed(self, host: str) -> int:
        return self.recap.get(host, {}).get("changed", -1)

    def tail(self, lines: int = 120) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def parse_recap(output: str) -> Dict[str, Dict[str, int]]:
    """``PLAY RECAP`` lines → {host: {"ok": n, "changed": n, "failed": n, ...}}."""
    recap: Dict[str, Dict[str, int]] = {}
    seen = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            seen = True
            continue
        m = RECAP_LINE.match(line.strip()) if seen else None
        if m:
            recap[m.group(1)] = {k: int(v) for k, v in (kv.split("=") for kv in m.group(2).split())}
    return recap


def kernel_inputs(artifacts: KernelArtifacts) -> Dict[str, str]:
    """kpatch_build arguments for one release, from the testbed cache."""
    return {"source_dir": str(artifacts.source_tree()), "config": str(artifacts.config),
            "vmlinux": str(artifacts.vmlinux), "headers": str(artifacts.headers),
            "modules_dir": str(artifacts.modules_dir)}


class Fleet:
    """Booted VMs plus everything needed to run the fleet playbooks against them."""

    def __init__(self, workdir: Path, hosts: Sequence[Tuple[str, str]] = DEFAULT_HOSTS,
                 memory_mb: int = 640, hard_timeout: float = 5400.0) -> None:
        self.workdir = Path(workdir)
        self.hosts = list(hosts)
        self.memory_mb = memory_mb
        self.hard_timeout = hard_timeout
        self.releases = sorted({rel for _name, rel in self.hosts})
        self.kernels: Dict[str, KernelArtifacts] = {}
        self.image: Optional[DebianImage] = None
        self.vms: Dict[str, DebianVM] = {}
        self.inventory = self.workdir / "inventory.ini"
        self.summary = self.workdir / "summary.json"
        self.artifacts = self.workdir / "artifacts"

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> "Fleet":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def prepare(self) -> None:
        """Fetch every release (with -dbg and source, for the build) and the shared image."""
        for rel in self.releases:
            self.kernels[rel] = fetch_kernel(rel)
        # One image for every fleet size: it carries both testbed kernels (the order is part of
        # its cache key), so a 1-VM bench reuses the 3-VM test's image.
        image_releases = [R61, R612] + [r for r in self.releases if r not in (R61, R612)]
        self.image = build_debian_image([self.kernels.get(r) or fetch_kernel(r, with_dbg=False, with_source=False)
                                         for r in image_releases])

    def start(self) -> None:
        if self.image is None:
            self.prepare()
        for name, rel in self.hosts:
            self.vms[name] = DebianVM(self.image, rel, name=name, memory_mb=self.memory_mb,
                                      hard_timeout=self.hard_timeout, workdir=self.workdir / name)
        start = time.monotonic()
        for vm in self.vms.values():
            vm.start()
        for vm in self.vms.values():
            vm.wait_ssh()
        log(f"fleet: {len(self.vms)} VMs up in {time.monotonic() - start:.1f}s")
        write_inventory(list(self.vms.values()), self.inventory, TARGET_GROUP)

    def close(self) -> None:
        for vm in self.vms.values():
            vm.close()

    # ----------------------------------------------------------------- playbooks
    def base_vars(self) -> Dict[str, object]:
        """Variables every fleet playbook run gets: where to build, what to keep where."""
        return {
            "kpatch_target_group": TARGET_GROUP,
            "kpatch_build_kernels": {rel: kernel_inputs(art) for rel, art in self.kernels.items()},
            "kpatch_build_cache_dir": str(cache_root() / "fleet-build"),
            "kpatch_build_output_dir": str(self.workdir / "build-output"),
            "kpatch_build_work_dir": str(self.workdir / "build-work"),
            "kpatch_artifacts_dir": str(self.artifacts),
            "kpatch_summary_path": str(self.summary),
            "kpatch_status_path": str(self.workdir / "status.json"),
        }

    def play(self, playbook: str, extra: Optional[Dict[str, object]] = None,
             args: Sequence[str] = (), timeout: float = 2400,
             env: Optional[Dict[str, str]] = None) -> PlaybookRun:
        """Run ``playbook`` against the fleet; ``env`` is added to Ansible's environment."""
        variables = dict(self.base_vars(), **(extra or {}))
        start = time.monotonic()
        proc = run_playbook(PLAYBOOKS / playbook, self.inventory, variables, args=args, timeout=timeout, env=env)
        seconds = time.monotonic() - start
        output = proc.stdout + proc.stderr
        (self.workdir / "logs").mkdir(exist_ok=True)
        log_file = self.workdir / "logs" / f"{int(time.time() * 1000)}-{playbook}.log"
        log_file.write_text(output)
        log(f"fleet: {playbook} rc={proc.returncode} in {seconds:.1f}s (log {log_file})")
        return PlaybookRun(proc.returncode, output, round(seconds, 1), parse_recap(output))

    def load_summary(self, path: Optional[Path] = None) -> Dict[str, object]:
        return json.loads(Path(path or self.summary).read_text())

    def ssh(self, host: str, cmd: str, check: bool = True) -> str:
        return self.vms[host].ssh(cmd, check=check).stdout

    def meminfo_lines(self, host: str, pattern: str) -> List[str]:
        """Lines of the guest's /proc/meminfo that match ``pattern`` (grep -E)."""
        proc: subprocess.CompletedProcess = self.vms[host].ssh(f"grep -E '{pattern}' /proc/meminfo || true")
        return [line.split(":")[0] for line in proc.stdout.splitlines() if line.strip()]
