"""A patch freed while its sysfs attributes are read: ENODEV means gone, like ENOENT (found by the soak)."""

from __future__ import annotations

import builtins
import errno
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._target import sysfs


def make_patch(root: Path, name: str = "livepatch_sample") -> Path:
    base = root / name
    (base / "vmlinux" / "cmdline_proc_show,1").mkdir(parents=True)
    for attr, value in (("enabled", "0"), ("transition", "1"), ("replace", "0")):
        (base / attr).write_text(value + "\n")
    (base / "vmlinux" / "patched").write_text("1\n")
    return base


def failing_open(monkeypatch, target: str, code: int) -> None:
    real_open = builtins.open

    def fake(path, *args, **kwargs):
        if str(path).endswith(target):
            raise OSError(code, errno.errorcode[code], str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", fake)


def test_patch_being_freed_reads_as_gone(tmp_path: Path, monkeypatch) -> None:
    make_patch(tmp_path)
    assert sysfs.read_patch("livepatch_sample", str(tmp_path)).transition is True
    failing_open(monkeypatch, "/enabled", errno.ENODEV)
    assert sysfs.read_patch("livepatch_sample", str(tmp_path)) is None
    assert sysfs.list_patches(str(tmp_path)) == []


def test_other_read_errors_are_not_hidden(tmp_path: Path, monkeypatch) -> None:
    make_patch(tmp_path)
    failing_open(monkeypatch, "/enabled", errno.EIO)
    with pytest.raises(OSError):
        sysfs.read_patch("livepatch_sample", str(tmp_path))
