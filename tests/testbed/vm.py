"""Fast VM runner: boot a cached Debian kernel under qemu with a busybox initramfs.

The initramfs carries busybox, the files a test names and a shell script; ``/init`` runs the
script with its output on a second serial port (so kernel messages on the console do not
interleave with it), reports the exit status, and powers off.  qemu runs under software
emulation (``-accel tcg``: nested KVM hangs on these machines) in its own process group with a
hard timeout, and is killed on every exit path.
"""

from __future__ import annotations

import atexit
import io
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set, Union

from tests.testbed.kernels import KernelArtifacts, TestbedError, log

BUSYBOX = Path("/bin/busybox")
EXIT_MARK = "KPATCH-TESTBED-EXIT="

_LIVE: Set[subprocess.Popen] = set()


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    _LIVE.discard(proc)


@atexit.register
def _kill_all() -> None:
    """No qemu survives the test process, whatever ended it."""
    for proc in list(_LIVE):
        _kill_group(proc)


def start_qemu(args: List[str], **popen_kw) -> subprocess.Popen:
    """Start qemu in a new process group, tracked so that it is killed at exit."""
    if shutil.which(args[0]) is None:
        raise TestbedError(f"missing {args[0]} (apt-get install qemu-system-x86)")
    proc = subprocess.Popen(args, start_new_session=True, **popen_kw)
    _LIVE.add(proc)
    return proc


def stop_qemu(proc: subprocess.Popen) -> None:
    _kill_group(proc)


class CpioWriter:
    """Minimal newc-format cpio archive writer (what the kernel's initramfs unpacker reads)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1
        self.seen: Set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        name = name.lstrip("/")
        if name in self.seen:
            return
        self.seen.add(name)
        namez = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(namez), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.buf.write(hdr + namez)
        self.buf.write(b"\0" * (-(len(hdr) + len(namez)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def add_dir(self, name: str) -> None:
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self._entry("/".join(parts[:i]), stat.S_IFDIR | 0o755)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        parent = os.path.dirname(name.strip("/"))
        if parent:
            self.add_dir(parent)
        self._entry(name, stat.S_IFREG | mode, data)

    def add_symlink(self, name: str, target: str) -> None:
        parent = os.path.dirname(name.strip("/"))
        if parent:
            self.add_dir(parent)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        data = self.buf.getvalue()
        return data + b"\0" * (-len(data) % 512)


INIT_SCRIPT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /run
mount -t tmpfs tmpfs /tmp
cd /work
sh /work/test.sh > /dev/ttyS1 2>&1
echo "%s$?" > /dev/ttyS1
sync
poweroff -f
""" % EXIT_MARK


@dataclass
class VmResult:
    """What the script printed, its exit status, and the kernel console."""

    output: str
    exit_code: Optional[int]
    console: str
    seconds: float
    timed_out: bool


def build_initramfs(files: Dict[str, Union[Path, bytes, str]], script: str) -> bytes:
    cpio = CpioWriter()
    for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "run", "work", "etc"):
        cpio.add_dir(d)
    cpio.add_file("/bin/busybox", BUSYBOX.read_bytes(), 0o755)
    cpio.add_symlink("/bin/sh", "busybox")
    cpio.add_file("/init", INIT_SCRIPT.encode(), 0o755)
    cpio.add_file("/work/test.sh", script.encode(), 0o755)
    for dest, src in files.items():
        if isinstance(src, Path):
            data = src.read_bytes()
            mode = 0o755 if os.access(src, os.X_OK) else 0o644
        else:
            data = src.encode() if isinstance(src, str) else src
            mode = 0o644
        cpio.add_file(dest, data, mode)
    return cpio.finish()


def run_in_initramfs(artifacts: KernelArtifacts, files: Optional[Dict[str, Union[Path, bytes, str]]] = None,
                     script: str = "true", timeout: float = 180, memory_mb: int = 512,
                     append: str = "") -> VmResult:
    """Boot ``artifacts.vmlinuz`` with a busybox initramfs and run ``script`` in it."""
    if not BUSYBOX.exists():
        raise TestbedError("missing /bin/busybox (apt-get install busybox-static)")
    if not artifacts.vmlinuz.exists():
        raise TestbedError(f"kernel image {artifacts.vmlinuz} not found: fetch_kernel() first")
    with tempfile.TemporaryDirectory(prefix="kpatch-vm-") as tmp:
        tmpd = Path(tmp)
        initrd = tmpd / "initrd.cpio"
        initrd.write_bytes(build_initramfs(files or {}, script))
        console, out = tmpd / "console.log", tmpd / "out.log"
        args = [
            "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", str(memory_mb), "-smp", "1",
            "-kernel", str(artifacts.vmlinuz), "-initrd", str(initrd),
            "-append", f"console=ttyS0 panic=-1 oops=panic quiet loglevel=4 {append}".strip(),
            "-display", "none", "-monitor", "none", "-no-reboot",
            "-serial", f"file:{console}", "-serial", f"file:{out}",
        ]
        start = time.monotonic()
        proc = start_qemu(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            stop_qemu(proc)
        seconds = time.monotonic() - start
        output = out.read_text(errors="replace") if out.exists() else ""
        console_text = console.read_text(errors="replace") if console.exists() else ""
    match = re.search(re.escape(EXIT_MARK) + r"(\d+)", output)
    exit_code = int(match.group(1)) if match else None
    if match:
        output = output[:match.start()]
    output = output.replace("\r\n", "\n")
    log(f"VM run of {artifacts.release}: exit={exit_code} in {seconds:.1f}s{' (timed out)' if timed_out else ''}")
    return VmResult(output=output, exit_code=exit_code, console=console_text, seconds=seconds,
                    timed_out=timed_out)
