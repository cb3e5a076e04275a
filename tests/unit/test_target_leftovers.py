"""Install leftovers of a killed run: named as the installer names them, removed, nothing else touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ansible_collections.kpatch.livepatch.plugins.module_utils._target.leftovers import (
    aside_path, is_leftover, remove_leftovers, temp_path)
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.loader import list_installed

RELEASE = "6.1.0-50-cloud-amd64"


def test_installer_names_are_leftovers_and_modules_are_not(tmp_path: Path):
    dest = str(tmp_path / RELEASE / "livepatch_sample.ko")
    assert is_leftover(os.path.basename(temp_path(dest)))
    assert is_leftover(os.path.basename(aside_path(dest)))
    for entry in ("livepatch_sample.ko", "livepatch_sample.ko.tmp", "a b.ko.tmp.12", "x.ko.tmp.12a", "notes.txt"):
        assert not is_leftover(entry), entry


def test_remove_leftovers_keeps_modules_and_bookkeeping(tmp_path: Path):
    rdir = tmp_path / RELEASE
    (tmp_path / ".staging").mkdir()
    rdir.mkdir()
    keep = [rdir / "livepatch_sample.ko", tmp_path / ".staging" / "ab.ko.tmp.1", rdir / "readme.txt"]
    gone = [rdir / "livepatch_sample.ko.tmp.4242", rdir / "livepatch_sample.ko.prev.17"]
    for path in keep + gone:
        path.write_bytes(b"\x7fELF partial")
    assert remove_leftovers(str(tmp_path)) == sorted(str(p) for p in gone)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)
    assert remove_leftovers(str(tmp_path)) == []
    assert remove_leftovers(str(tmp_path / "missing")) == []


def test_a_copy_killed_mid_way_leaves_only_a_leftover(tmp_path: Path):
    """A child killed (SIGKILL) after writing half of the temp file: no .ko appears, the sweep clears it."""
    rdir = tmp_path / RELEASE
    rdir.mkdir()
    child = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "sys.path[:0] = os.environ['PYROOT'].split(os.pathsep)\n"
        "from ansible_collections.kpatch.livepatch.plugins.module_utils._target.leftovers import temp_path\n"
        f"tmp = temp_path({str(rdir / 'livepatch_sample.ko')!r})\n"
        "with open(tmp, 'wb') as h:\n"
        "    h.write(b'\\x7fELF' + b'x' * 4096); h.flush()\n"
        "    print('half', flush=True); time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYROOT=os.pathsep.join(sys.path)))
    try:
        assert child.stdout.readline().strip() == "half"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        child.kill()
    assert list_installed(str(tmp_path)) == {}
    assert [os.path.basename(p) for p in remove_leftovers(str(tmp_path))] == [f"livepatch_sample.ko.tmp.{child.pid}"]
    assert list(rdir.iterdir()) == []
