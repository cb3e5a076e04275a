"""The hook sources come from one place, kmod/: on disk for the library, sent by the action plugin for a task."""

from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.action.kpatch_build import KMOD_DIR, kmod_files
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild import kmod
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError

REPO = Path(__file__).resolve().parents[2]


def test_the_action_plugin_sends_exactly_the_files_the_build_reads():
    assert Path(KMOD_DIR).resolve() == (REPO / "kmod").resolve()
    assert [name for name, _path in kmod_files()] == sorted(kmod.KMOD_FILES)


def test_the_library_reads_the_collection_kmod_directory():
    assert kmod.resolve_kmod_dir() == (REPO / "kmod").resolve()
    assert kmod.kmod_sources()["kpatch-macros.h"] == (REPO / "kmod" / "kpatch-macros.h").read_bytes()


def test_without_kmod_on_the_host_the_error_says_how_to_get_it(monkeypatch):
    # What a module payload sees: module_utils only, no kmod/ beside them.
    monkeypatch.setattr(kmod, "default_kmod_dir", lambda: None)
    with pytest.raises(KbuildError, match="action plugin sends them.*kmod_dir"):
        kmod.kmod_sources()


def test_an_incomplete_kmod_dir_is_refused_by_name(tmp_path):
    (tmp_path / "Kbuild").write_text("obj-m := x.o\n")
    with pytest.raises(KbuildError, match="lacks Makefile, kpatch.lds"):
        kmod.kmod_sources(tmp_path)
    with pytest.raises(KbuildError, match="not a directory"):
        kmod.kmod_sources(tmp_path / "Kbuild")
