"""InstallJournal: installs of a failed task are undone, a replaced file comes back byte for byte."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._target.loader import InstallJournal, LoaderError


def test_rollback_removes_a_new_file_and_restores_a_replaced_one(tmp_path: Path) -> None:
    src_a, src_b = tmp_path / "a.ko", tmp_path / "b.ko"
    src_a.write_bytes(b"new a")
    src_b.write_bytes(b"new b")
    rel = tmp_path / "lib" / "6.1.0-50-cloud-amd64"
    rel.mkdir(parents=True)
    old_b = rel / "livepatch_b.ko"
    old_b.write_bytes(b"old b")
    journal = InstallJournal()
    journal.install(str(src_a), str(rel / "livepatch_a.ko"))
    journal.install(str(src_b), str(old_b))
    assert old_b.read_bytes() == b"new b"
    undone = journal.rollback()
    assert undone == [str(old_b), str(rel / "livepatch_a.ko")]
    assert sorted(os.listdir(rel)) == ["livepatch_b.ko"]
    assert old_b.read_bytes() == b"old b"


def test_commit_keeps_the_new_files_and_drops_the_backups(tmp_path: Path) -> None:
    src = tmp_path / "x.ko"
    src.write_bytes(b"new")
    dest = tmp_path / "livepatch_x.ko"
    dest.write_bytes(b"old")
    journal = InstallJournal()
    journal.install(str(src), str(dest))
    journal.commit()
    assert dest.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["livepatch_x.ko", "x.ko"]
    assert journal.rollback() == []


def test_a_failed_install_names_the_directory_and_leaves_the_old_file(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "x.ko"
    src.write_bytes(b"new")
    dest = tmp_path / "lib" / "livepatch_x.ko"
    dest.parent.mkdir()
    dest.write_bytes(b"old")

    def full(_src, dst):
        Path(dst).write_bytes(b"ne")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full)
    journal = InstallJournal()
    with pytest.raises(LoaderError, match="no space left in .*lib"):
        journal.install(str(src), str(dest))
    assert dest.read_bytes() == b"old"
    assert sorted(os.listdir(dest.parent)) == ["livepatch_x.ko"]
