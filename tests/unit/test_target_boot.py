"""Boot loader decisions that need no kernel: the kpatch.enable= switch and the host lock."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._target.boot import (
    disabled_on_cmdline)
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.loader import (
    HostLock, LoaderError)


@pytest.mark.parametrize("cmdline,disabled", [
    ("BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro kpatch.enable=0 quiet", True),
    ("root=/dev/vda1 kpatch.enable=1", False),
    ("root=/dev/vda1", False),
    ("kpatch.enable=off", True),
    ("kpatch.enable=0 kpatch.enable=1", False),  # the last one wins, as for kernel params
    ("xkpatch.enable=0", False),
    ("kpatch.enable", False),
])
def test_kpatch_enable_switch(cmdline, disabled):
    assert disabled_on_cmdline(cmdline) is disabled


def _hold(path: str, ready, seconds: float) -> None:
    with HostLock(timeout=5, paths=(path,)):
        ready.set()
        time.sleep(seconds)


def test_lock_serialises_processes(tmp_path):
    path = str(tmp_path / "kpatch.lock")
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(path, ready, 1.5))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(LoaderError, match="another kpatch run holds"):
            with HostLock(timeout=0.3, paths=(path,)):
                pass
        start = time.monotonic()
        with HostLock(timeout=10, paths=(path,)):
            waited = time.monotonic() - start
        assert 0.5 < waited < 5
    finally:
        holder.join(10)
