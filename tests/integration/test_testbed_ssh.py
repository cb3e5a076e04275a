"""The full-VM testbed works end to end: the Debian image boots under qemu, Ansible reaches it
over SSH, files go in and out, reboots and cmdline changes take effect, the base image stays
clean, and no qemu outlives its owner."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.testbed.image import DebianImage, build_debian_image
from tests.testbed.kernels import DEFAULT_RELEASE, fetch_kernel
from tests.testbed.sshvm import DebianVM

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = Path(sys.executable).parent / "ansible"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"


def _wait_gone(pid: int, seconds: float) -> bool:
    limit = time.monotonic() + seconds
    while time.monotonic() < limit:
        if not _pid_alive(pid):
            return True
        time.sleep(0.2)
    return False


# The two lifecycle tests run qemu only for seconds; they come first so that they do not
# overlap with the session VM.
def test_hard_timeout_kills_qemu(debian_image: DebianImage, tmp_path: Path) -> None:
    vm = DebianVM(debian_image, name="short-lived", workdir=tmp_path, hard_timeout=3)
    try:
        vm.start()
        pid = vm.pid
        assert pid is not None and _pid_alive(pid)
        assert _wait_gone(pid, 20), "qemu survived its hard timeout"
        assert not vm.running
    finally:
        vm.close()


def test_qemu_dies_with_the_python_process_that_started_it(debian_image: DebianImage, tmp_path: Path) -> None:
    child = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from tests.testbed.image import load_cached_image
        from tests.testbed.sshvm import DebianVM
        vm = DebianVM(load_cached_image({str(debian_image.root)!r}), workdir={str(tmp_path)!r}, hard_timeout=600)
        vm.start()
        print(vm.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no atexit: only the kernel can clean up
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    pid = int(proc.stdout.strip())
    assert _wait_gone(pid, 20), f"qemu {pid} outlived the killed Python process"


def test_one_image_boots_either_release(debian_vm_factory) -> None:
    """An image built with two kernels boots the one asked for, and restart() switches kernels."""
    older, newer = "6.1.0-50-cloud-amd64", "6.12.107+deb12-cloud-amd64"
    arts = [fetch_kernel(rel, with_dbg=False, with_source=False) for rel in (older, newer)]
    image = build_debian_image(arts)
    assert set(image.kernels) == {older, newer} and image.default_release == older
    vm = debian_vm_factory(name="two-kernels", image=image, release=newer, hard_timeout=900)
    assert vm.ssh("uname -r", check=True).stdout.strip() == newer
    assert vm.ssh(f"test -d /lib/modules/{older} && test -d /lib/modules/{newer}").returncode == 0
    vm.restart(release=older)
    assert vm.ssh("uname -r", check=True).stdout.strip() == older


def _ansible_setup(inventory: Path, host: str, tmp_path: Path) -> dict:
    """Facts of ``host`` from ``ansible -m setup -o`` (one line per host: ``name | SUCCESS => {json}``)."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               ANSIBLE_SSH_CONTROL_PATH_DIR=str(tmp_path / "cp"))
    proc = subprocess.run([str(ANSIBLE), "all", "-i", str(inventory), "-m", "setup", "-o"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"{host} | "))
    status, _sep, payload = line[len(host) + 3:].partition(" => ")
    assert status == "SUCCESS", line[:3000]
    return json.loads(payload)["ansible_facts"]


def test_ansible_setup_reports_the_booted_debian_kernel(debian_vm: DebianVM, tmp_path: Path) -> None:
    inventory = debian_vm.inventory(tmp_path / "inventory.ini")
    start = time.monotonic()
    facts = _ansible_setup(inventory, debian_vm.name, tmp_path)
    elapsed = time.monotonic() - start
    assert facts["ansible_kernel"] == DEFAULT_RELEASE
    assert facts["ansible_distribution"] == "Debian"
    assert facts["ansible_distribution_major_version"] == "12"
    assert facts["ansible_hostname"] == "kpatch-vm"
    assert facts["ansible_user_id"] == "root"
    print(f"ansible setup took {elapsed:.1f}s; VM booted to SSH in {debian_vm.boot_seconds}s")


def test_files_copy_in_and_out_over_scp(debian_vm: DebianVM, tmp_path: Path) -> None:
    payload = os.urandom(256 * 1024)
    src = tmp_path / "payload.bin"
    src.write_bytes(payload)
    debian_vm.scp_to(src, "/tmp/payload.bin")
    remote_sum = debian_vm.ssh("sha256sum /tmp/payload.bin", check=True).stdout.split()[0]
    assert remote_sum == hashlib.sha256(payload).hexdigest()
    debian_vm.ssh("tac /tmp/payload.bin > /tmp/reversed.bin", check=True)
    back = tmp_path / "reversed.bin"
    debian_vm.scp_from("/tmp/reversed.bin", back)
    assert back.read_bytes() == subprocess.run(["tac", str(src)], capture_output=True, check=True).stdout


def test_failed_remote_command_reports_its_status(debian_vm: DebianVM) -> None:
    proc = debian_vm.ssh("echo out; echo err >&2; exit 7")
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "out\n", "err\n")


def _base_has_file(image: DebianImage, path: str) -> bool:
    proc = subprocess.run(["debugfs", "-R", f"stat {path}", str(image.disk)], capture_output=True, text=True, check=False)
    return "File not found" not in proc.stderr


def test_restart_with_new_cmdline_then_reboot_keeps_the_overlay(debian_vm: DebianVM,
                                                                debian_image: DebianImage) -> None:
    marker = "/root/kpatch-testbed-marker"
    base_mtime = debian_image.disk.stat().st_mtime_ns
    debian_vm.ssh(f"echo kept > {marker} && sync", check=True)
    first_boot = debian_vm.ssh("cat /proc/sys/kernel/random/boot_id", check=True).stdout.strip()
    try:
        secs = debian_vm.restart(append="kpatch_testbed.marker=1")
        cmdline = debian_vm.ssh("cat /proc/cmdline", check=True).stdout
        assert "kpatch_testbed.marker=1" in cmdline.split()
        assert debian_vm.ssh(f"cat {marker}", check=True).stdout == "kept\n"
        second_boot = debian_vm.boot_id
        assert second_boot != first_boot
        print(f"restart with new cmdline: SSH back after {secs}s")

        secs = debian_vm.reboot()
        assert debian_vm.boot_id not in (first_boot, second_boot)
        assert "kpatch_testbed.marker=1" in debian_vm.ssh("cat /proc/cmdline", check=True).stdout.split()
        assert debian_vm.ssh("uname -r", check=True).stdout.strip() == DEFAULT_RELEASE
        print(f"guest reboot: SSH back after {secs}s")
    finally:
        debian_vm.restart(append="")
    assert "kpatch_testbed.marker=1" not in debian_vm.ssh("cat /proc/cmdline", check=True).stdout
    # Everything the VM wrote went to its overlay: the cached base image is untouched.
    assert debian_image.disk.stat().st_mtime_ns == base_mtime
    assert not _base_has_file(debian_image, marker)
    assert _base_has_file(debian_image, "/root/.ssh/authorized_keys")
