"""`make demo`: the main job, run as far as the collection goes, against a local VM.

Stages, each announced with its timing:
  1. fetch the Debian 6.1 cloud kernel (image, headers, -dbg, source) into the cache;
  2. build (or reuse) the Debian 12 disk image and boot it under qemu, reachable over SSH;
  3. run ``ansible-playbook playbooks/apply-livepatch.yml`` with the bundled meminfo patch;
  4. show ``grep -i chunk /proc/meminfo`` from the VM.
A stage whose parts do not exist yet is reported as missing, by name; nothing is faked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.testbed.kernels import DEFAULT_RELEASE, TestbedError, cache_root, fetch_kernel

REPO = Path(__file__).resolve().parents[2]
PATCH = REPO / "examples" / "patches" / "meminfo-string.patch"
NEEDED = [
    "plugins/modules/kpatch_build.py",
    "plugins/modules/kpatch.py",
    "playbooks/apply-livepatch.yml",
    "tests/testbed/sshvm.py",
]


def stage(msg: str) -> float:
    print(f"==> {msg}", flush=True)
    return time.monotonic()


def done(start: float) -> None:
    print(f"    done in {time.monotonic() - start:.1f}s", flush=True)


def missing_parts() -> list:
    return [p for p in NEEDED if not (REPO / p).exists()]


def run_playbook(vm, artifacts, workdir: Path) -> int:
    inventory = workdir / "inventory.ini"
    vm.inventory(inventory, group="kpatch_targets")
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    # The build host is this machine, with the kernel's source and -dbg vmlinux already
    # unpacked by the fetch stage (a real build host would get them from the debuginfo role).
    build_kernels = {artifacts.release: {
        "source_dir": str(artifacts.source_tree()), "config": str(artifacts.config),
        "vmlinux": str(artifacts.vmlinux), "headers": str(artifacts.headers),
        "modules_dir": str(artifacts.modules_dir)}}
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
           str(REPO / "playbooks" / "apply-livepatch.yml"),
           "-e", json.dumps({"kpatch_patch_files": [str(PATCH)], "kpatch_build_kernels": build_kernels}),
           "-e", "kpatch_target_group=kpatch_targets",
           "-e", f"kpatch_summary_path={workdir / 'summary.json'}",
           "-e", f"kpatch_artifacts_dir={workdir / 'artifacts'}",
           # The builder's cache lives in the testbed cache too, so an empty KPATCH_TESTBED_CACHE
           # really is a first run (the playbook's own default is /var/cache/kpatch-build).
           "-e", f"kpatch_build_cache_dir={cache_root() / 'demo-build'}"]
    print("    $ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=REPO, env=env)


def main() -> int:
    t = stage(f"fetching Debian kernel {DEFAULT_RELEASE} (cached under {cache_root()})")
    try:
        artifacts = fetch_kernel(DEFAULT_RELEASE)
    except TestbedError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    done(t)
    absent = missing_parts()
    if "tests/testbed/sshvm.py" in absent:
        print("demo: stops here — the full-VM testbed (tests/testbed/sshvm.py) is not there yet.")
        return 0
    from tests.testbed.image import build_debian_image  # pylint: disable=import-outside-toplevel
    from tests.testbed.sshvm import DebianVM  # pylint: disable=import-outside-toplevel

    t = stage("building or reusing the Debian 12 VM image")
    image = build_debian_image(artifacts)
    done(t)
    with tempfile.TemporaryDirectory(prefix="kpatch-demo-") as tmp, DebianVM(image, artifacts) as vm:
        t = stage("booting the VM (qemu, software emulation)")
        vm.wait_ssh()
        done(t)
        before = vm.ssh("grep -i chunk /proc/meminfo").stdout.strip()
        print(f"    before: {before}")
        if absent:
            print("demo: stops before the playbook — not there yet: " + ", ".join(absent))
            return 0
        t = stage("ansible-playbook playbooks/apply-livepatch.yml (meminfo example patch)")
        rc = run_playbook(vm, artifacts, Path(tmp))
        done(t)
        print("==> grep -i chunk /proc/meminfo (in the VM)")
        print(vm.ssh("grep -i chunk /proc/meminfo").stdout.rstrip())
        return rc


if __name__ == "__main__":
    sys.exit(main())
