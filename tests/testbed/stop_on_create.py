"""Runs inside the guest: SIGSTOP the process that creates an install's temp file, at that moment.

``python3 stop_on_create.py <dir>`` watches ``<dir>`` with inotify (through ctypes: the guest
has only the standard library), prints ``ready``, and when a ``<name>.ko.tmp.<pid>`` file is
created stops ``<pid>`` (the installer names its temp file after its own pid) and prints the
pid.  The test then finds the install frozen between its copy and its rename, and kills it.
"""

import ctypes
import os
import signal
import struct
import sys

IN_CREATE = 0x100
EVENT = struct.Struct("iIII")


def main(directory):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init()
    if fd < 0 or libc.inotify_add_watch(fd, directory.encode(), IN_CREATE) < 0:
        raise OSError(ctypes.get_errno(), f"inotify on {directory}")
    print("ready", flush=True)
    while True:
        buf = os.read(fd, 4096)
        offset = 0
        while offset < len(buf):
            _wd, _mask, _cookie, length = EVENT.unpack_from(buf, offset)
            name = buf[offset + EVENT.size:offset + EVENT.size + length].rstrip(b"\0").decode()
            offset += EVENT.size + length
            stem, sep, pid = name.rpartition(".tmp.")
            if sep and stem.endswith(".ko") and pid.isdigit():
                os.kill(int(pid), signal.SIGSTOP)
                print(pid, flush=True)
                return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
