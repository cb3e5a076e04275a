"""Full-VM testbed, part 2: boot the cached Debian image under qemu and reach it over SSH.

``DebianVM`` is a context manager around one qemu process: a per-VM qcow2 overlay on the
cached base image, the chosen release's kernel booted directly (``-kernel/-initrd``,
``root=/dev/vda``), user-mode networking with the guest's port 22 forwarded to a free
loopback port, and the serial console logged to a file.  It offers ``ssh()``, ``scp_to()``,
``scp_from()``, ``reboot()`` (guest-initiated; qemu boots the same kernel again),
``restart(append=..., release=...)`` (power off and boot again with another kernel command
line or kernel), and ``inventory()`` for Ansible.

No qemu outlives its owner: qemu runs in its own process group, dies with the Python thread
that started it (``PR_SET_PDEATHSIG``), is killed by a hard-timeout timer, in ``close()``
(``__exit__``), and by the atexit hook of ``tests.testbed.vm``.  Software emulation only
(``-accel tcg``): nested KVM hangs on these machines.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional, Sequence, Union

from tests.testbed.image import READY_MARK, DebianImage
from tests.testbed.kernels import KernelArtifacts, TestbedError, log
from tests.testbed.vm import start_qemu, stop_qemu

BASE_CMDLINE = "root=/dev/vda rw console=ttyS0,115200 quiet fsck.mode=skip"
SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ServerAliveInterval=5",
    "-o", "ServerAliveCountMax=6",
)
_PR_SET_PDEATHSIG = 1
BLIND_PROBE_INTERVAL = 120.0  # fallback only: the serial announcement is the normal signal


class VMError(TestbedError):
    """The VM did not boot, answer, or shut down as asked; the message quotes its serial log."""


def _die_with_parent() -> None:
    """preexec_fn: the kernel SIGKILLs qemu if the Python thread that spawned it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DebianVM:
    """One booted Debian VM reachable as root over SSH on a loopback port.

    The port stays the same across ``reboot()`` and ``restart()`` (unless another process
    took it while qemu was down), so an inventory written once stays valid.
    """

    def __init__(self, image: DebianImage, release: Union[str, KernelArtifacts, None] = None, append: str = "",
                 memory_mb: int = 1024, hard_timeout: float = 1800.0, name: str = "vm",
                 workdir: Optional[Path] = None, boot_timeout: float = 600.0) -> None:
        self.image = image
        # Accept the release name or the KernelArtifacts it came from.
        self.release = image.boot_files(getattr(release, "release", release)).release
        self.append = append
        self.memory_mb = memory_mb
        self.hard_timeout = hard_timeout
        self.boot_timeout = boot_timeout
        self.name = name
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"kpatch-{name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.overlay = self.workdir / "overlay.qcow2"
        self.serial_log = self.workdir / "serial.log"
        self.qemu_log = self.workdir / "qemu.log"
        self.control_path = self.workdir / "ssh-master"
        self.port = 0
        self.boot_seconds: Optional[float] = None
        self._proc: Optional[subprocess.Popen] = None
        self._timer: Optional[threading.Timer] = None
        self._timed_out = False
        self._booted_at = 0.0
        self._serial_offset = 0
        self._last_probe = "no probe yet"
        self.boot_id: Optional[str] = None

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> "DebianVM":
        try:
            self.start()
            self.wait_ssh()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "DebianVM":
        """Create the overlay (first time only) and boot qemu; does not wait for SSH."""
        if self._proc is not None and self._proc.poll() is None:
            raise VMError(f"{self.name}: already running (pid {self._proc.pid})")
        if not self.overlay.exists():
            self.image.create_overlay(self.overlay)
        if self._timer is None:
            self._timer = threading.Timer(self.hard_timeout, self._hard_timeout_expired)
            self._timer.daemon = True
            self._timer.start()
        for attempt in range(3):
            # Keep the port across restarts so inventories written earlier stay valid.
            if attempt or not self.port:
                self.port = free_loopback_port()
            self._launch()
            if not self._lost_port_race():
                return self
        raise VMError(f"{self.name}: qemu could not bind a host forwarding port: {self._qemu_stderr()}")

    def close(self) -> None:
        """Kill qemu and the SSH master; remove the work dir unless KPATCH_KEEP_VM is set."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stop_master()
        if self._proc is not None:
            stop_qemu(self._proc)
            self._proc = None
        if self._own_workdir and not os.environ.get("KPATCH_KEEP_VM"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def pid(self) -> Optional[int]:
        """qemu's process id (also its process group id) while it runs."""
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _qemu_args(self) -> List[str]:
        boot = self.image.boot_files(self.release)
        cmdline = f"{BASE_CMDLINE} {self.append}".strip()
        return [
            "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", str(self.memory_mb), "-smp", "1",
            "-nodefaults", "-display", "none", "-monitor", "none", "-no-user-config",
            # append=on: a restart keeps the earlier boots' console output in the same log.
            "-chardev", f"file,id=serial0,path={self.serial_log},append=on", "-serial", "chardev:serial0",
            "-kernel", str(boot.vmlinuz), "-initrd", str(boot.initrd), "-append", cmdline,
            "-drive", f"file={self.overlay},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.port}-:22",
            "-device", "virtio-net-pci,netdev=net0",
            "-device", "virtio-rng-pci",
        ]

    def _launch(self) -> None:
        log(f"vm {self.name}: booting {self.release} (ssh port {self.port}, append={self.append!r})")
        self._booted_at = time.monotonic()
        self._mark_serial_position()
        with open(self.qemu_log, "w") as err:
            self._proc = start_qemu(self._qemu_args(), stdin=subprocess.DEVNULL, stdout=err,
                                    stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    def _lost_port_race(self) -> bool:
        """qemu exits at once if another process took the port between our probe and its bind."""
        for _tick in range(10):
            if self._proc.poll() is not None:
                text = self._qemu_stderr()
                if "forward" in text.lower():
                    return True
                raise VMError(f"{self.name}: qemu exited with {self._proc.returncode}: {text}")
            time.sleep(0.1)
        return False

    def _hard_timeout_expired(self) -> None:
        log(f"vm {self.name}: hard timeout of {self.hard_timeout:.0f}s reached, killing qemu")
        self._timed_out = True
        if self._proc is not None:
            stop_qemu(self._proc)

    def _qemu_stderr(self) -> str:
        return self.qemu_log.read_text(errors="replace").strip() if self.qemu_log.exists() else ""

    def serial_tail(self, lines: int = 40) -> str:
        if not self.serial_log.exists():
            return "(no serial output)"
        return "\n".join(self.serial_log.read_text(errors="replace").splitlines()[-lines:])

    def _fail(self, what: str) -> VMError:
        if self.running:
            state = "running"
        elif self._timed_out:
            state = f"qemu killed at its hard timeout of {self.hard_timeout:.0f}s"
        else:
            state = f"qemu exited ({self._qemu_stderr() or 'no message'})"
        return VMError(f"{self.name}: {what}; {state}; serial console tail:\n{self.serial_tail()}")

    # ----------------------------------------------------------------- ssh
    def ssh_base(self, multiplex: bool = True, extra: Sequence[str] = ()) -> List[str]:
        """ssh command prefix (without the remote command) for this VM."""
        cmd = ["ssh", "-i", str(self.image.ssh_key), "-p", str(self.port), *SSH_OPTIONS, *extra]
        if multiplex:
            cmd += ["-o", f"ControlPath={self.control_path}", "-o", "ControlMaster=no"]
        return cmd + ["root@127.0.0.1"]

    def _mark_serial_position(self) -> None:
        """Only console output written after this point counts as the next boot's."""
        self._serial_offset = self.serial_log.stat().st_size if self.serial_log.exists() else 0

    def _announced_boot_ids(self) -> List[str]:
        """Boot ids the guest announced on ttyS0 (sshd up) since the marked position."""
        if not self.serial_log.exists():
            return []
        with open(self.serial_log, "rb") as fh:
            fh.seek(self._serial_offset)
            text = fh.read().decode(errors="replace")
        return re.findall(rf"{READY_MARK} boot_id=([0-9a-f-]+)", text)

    def _probe(self) -> Optional[str]:
        """The guest's boot id if root can log in over SSH now, else None (reason kept for errors)."""
        # Generous timeouts: under TCG on a loaded host a handshake can take many seconds, and
        # abandoning it only to retry at once would pile up work for the guest's sshd.
        cmd = self.ssh_base(multiplex=False, extra=("-o", "ConnectTimeout=30")) + ["cat /proc/sys/kernel/random/boot_id"]
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90,
                                  check=False)
        except subprocess.TimeoutExpired:
            self._last_probe = "ssh probe timed out after 90s"
            return None
        self._last_probe = f"ssh exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
        return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None

    def wait_ssh(self, timeout: Optional[float] = None, not_boot_id: Optional[str] = None) -> float:
        """Wait until root can log in over SSH (and, if given, the boot id changed); returns seconds.

        Connects only once the guest announced sshd on the serial console, plus a rare blind
        try in case the announcement was missed.
        """
        limit = time.monotonic() + (timeout or self.boot_timeout)
        last_try = time.monotonic()
        while time.monotonic() < limit:
            if not self.running:
                raise self._fail("qemu is not running while waiting for SSH")
            announced = [b for b in self._announced_boot_ids() if b != not_boot_id]
            if announced or time.monotonic() - last_try > BLIND_PROBE_INTERVAL:
                last_try = time.monotonic()
                boot_id = self._probe()
                if boot_id and boot_id != not_boot_id:
                    self.boot_id = boot_id
                    self.boot_seconds = round(time.monotonic() - self._booted_at, 1)
                    self._start_master()
                    log(f"vm {self.name}: SSH up {self.boot_seconds}s after boot start")
                    return self.boot_seconds
            time.sleep(0.5)
        raise self._fail(f"SSH did not answer within {timeout or self.boot_timeout:.0f}s (boots announced since "
                         f"the wait began: {self._announced_boot_ids() or 'none'}; last probe: {self._last_probe})")

    def _start_master(self) -> None:
        # A persistent master makes each later ssh() a cheap channel instead of a new TCG-slow
        # handshake.  -f daemonises it; its output goes to a file so no pipe is held open.
        self._stop_master()
        with open(self.workdir / "ssh-master.log", "a") as err:
            base = self.ssh_base(multiplex=False, extra=(
                "-o", f"ControlPath={self.control_path}", "-o", "ControlMaster=yes",
                "-o", "ControlPersist=yes", "-o", "ConnectTimeout=30"))
            subprocess.run([base[0], "-f", "-N", *base[1:]],
                           stdin=subprocess.DEVNULL, stdout=err, stderr=err, timeout=60, check=False)

    def _stop_master(self) -> None:
        if self.control_path.exists():
            subprocess.run(["ssh", "-o", f"ControlPath={self.control_path}", "-O", "exit", "root@127.0.0.1"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)
            self.control_path.unlink(missing_ok=True)

    def ssh(self, cmd: Union[str, Sequence[str]], check: bool = False, timeout: float = 300,
            input: Optional[str] = None) -> subprocess.CompletedProcess:
        """Run a shell command as root in the guest; text output captured."""
        if not self.running:
            raise self._fail("ssh() on a VM that is not running")
        command = cmd if isinstance(cmd, str) else shlex.join(cmd)
        proc = subprocess.run(self.ssh_base() + [command], input=input, capture_output=True, text=True,
                              errors="replace", timeout=timeout, check=False,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise VMError(f"{self.name}: `{command}` exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    def _scp(self, sources: List[str], dest: str, recursive: bool) -> None:
        cmd = ["scp", "-q", "-i", str(self.image.ssh_key), "-P", str(self.port), *SSH_OPTIONS,
               "-o", f"ControlPath={self.control_path}", "-o", "ControlMaster=no"]
        cmd += ["-r"] if recursive else []
        proc = subprocess.run(cmd + sources + [dest], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=600, check=False)
        if proc.returncode != 0:
            raise VMError(f"{self.name}: scp {' '.join(sources)} -> {dest} failed: {proc.stderr.strip()}")

    def scp_to(self, local: Union[Path, str], remote: str, recursive: bool = False) -> None:
        """Copy a local file (or directory with recursive=True) to a path in the guest."""
        if not Path(local).exists():
            raise VMError(f"{self.name}: scp_to: no such local file {local}")
        self._scp([str(local)], f"root@127.0.0.1:{remote}", recursive)

    def scp_from(self, remote: str, local: Union[Path, str], recursive: bool = False) -> None:
        self._scp([f"root@127.0.0.1:{remote}"], str(local), recursive)

    # ----------------------------------------------------------------- reboots
    def reboot(self, timeout: Optional[float] = None) -> float:
        """Clean guest reboot (``systemctl reboot``); qemu boots the same kernel and cmdline again."""
        old = self.ssh("cat /proc/sys/kernel/random/boot_id", check=True).stdout.strip()
        self._booted_at = time.monotonic()
        self._mark_serial_position()
        self.ssh("systemctl reboot", timeout=60)
        self._stop_master()
        return self.wait_ssh(timeout, not_boot_id=old)

    def restart(self, append: Optional[str] = None, release: Optional[str] = None,
                timeout: Optional[float] = None) -> float:
        """Power the guest off cleanly and boot it again, optionally with another cmdline or kernel.

        The overlay disk is kept, so everything installed in the guest survives.
        """
        if release is not None:
            self.release = self.image.boot_files(release).release
        if append is not None:
            self.append = append
        self.shutdown()
        self.start()
        return self.wait_ssh(timeout)

    def shutdown(self, timeout: float = 120) -> None:
        """``systemctl poweroff`` and wait for qemu to exit (killed if it does not in time)."""
        if self.running:
            self.ssh("systemctl poweroff", timeout=60)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"vm {self.name}: did not power off within {timeout:.0f}s, killing qemu")
        self._stop_master()
        if self._proc is not None:
            stop_qemu(self._proc)
            self._proc = None

    # ----------------------------------------------------------------- ansible
    def ansible_host_vars(self) -> str:
        common = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes"
        return (f"ansible_host=127.0.0.1 ansible_port={self.port} ansible_user=root "
                f"ansible_ssh_private_key_file={self.image.ssh_key} "
                f"ansible_ssh_common_args='{common}' ansible_python_interpreter=/usr/bin/python3")

    def inventory(self, path: Union[Path, str], group: str = "kpatch_vms") -> Path:
        """Write an INI inventory with this VM as host ``self.name`` in ``group``."""
        return write_inventory([self], path, group)


def write_inventory(vms: Sequence[DebianVM], path: Union[Path, str], group: str = "kpatch_vms") -> Path:
    """INI inventory listing every VM (host name = ``vm.name``) in one group."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"[{group}]"] + [f"{vm.name} {vm.ansible_host_vars()}" for vm in vms]
    path.write_text("\n".join(lines) + "\n")
    return path


def _interactive(argv: Sequence[str]) -> int:
    """``python -m tests.testbed.sshvm [RELEASE...]``: boot a VM, print how to reach it, keep it
    up until Ctrl-C (or its hard timeout of one hour)."""
    from tests.testbed.image import build_debian_image  # pylint: disable=import-outside-toplevel
    from tests.testbed.kernels import DEFAULT_RELEASE, fetch_kernel  # pylint: disable=import-outside-toplevel

    releases = list(argv) or [DEFAULT_RELEASE]
    image = build_debian_image([fetch_kernel(r, with_dbg=False, with_source=False) for r in releases])
    with DebianVM(image, name="manual", hard_timeout=3600) as vm:
        inventory = vm.inventory(vm.workdir / "inventory.ini")
        print(f"ssh:       {shlex.join(vm.ssh_base(multiplex=False))}")
        print(f"inventory: {inventory}")
        print(f"serial:    {vm.serial_log}")
        try:
            while vm.running:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(_interactive(sys.argv[1:]))
