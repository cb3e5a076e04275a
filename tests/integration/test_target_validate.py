"""Refusal rules of the loader on real modules: other release, tampered bytes, not a livepatch."""

from __future__ import annotations

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._target.loader import (
    LoaderError, list_installed, reference_vermagic, validate_module)
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.modinfo import (
    read_modinfo, sha256_of)
from tests.integration.kmods.build import cached_test_modules

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mods():
    return cached_test_modules()


def test_good_module_passes_with_debian_reference_vermagic(mods):
    art, built = mods
    reference = reference_vermagic(art.release, modules_root=str(art.modules_dir.parent))
    assert reference is not None and reference.split()[0] == art.release
    info = read_modinfo(str(built.sample))
    validate_module(info, art.release, sha256_of(str(built.sample)), reference)


def test_other_release_is_refused_naming_both(mods):
    art, built = mods
    info = read_modinfo(str(built.other_release))
    with pytest.raises(LoaderError) as err:
        validate_module(info, art.release)
    assert built.other_release_name in str(err.value) and art.release in str(err.value)


def test_tampered_file_is_refused_by_sha256(mods):
    art, built = mods
    expected = sha256_of(str(built.sample))
    info = read_modinfo(str(built.tampered))
    with pytest.raises(LoaderError, match="does not match the expected " + expected):
        validate_module(info, art.release, expected)


def test_non_livepatch_module_is_refused(mods):
    art, built = mods
    with pytest.raises(LoaderError, match="not a livepatch module"):
        validate_module(read_modinfo(str(built.stall_target)), art.release)


def test_vermagic_flags_must_match_reference(mods):
    art, built = mods
    info = read_modinfo(str(built.sample))
    reference = info.vermagic.replace("preempt ", "")
    with pytest.raises(LoaderError, match="differs from the kernel's"):
        validate_module(info, art.release, reference=reference)


def test_list_installed_skips_bookkeeping(tmp_path, mods):
    _art, built = mods
    (tmp_path / ".staging").mkdir()
    (tmp_path / ".staging" / "abc.ko").write_bytes(built.sample.read_bytes())
    rel = tmp_path / "6.1.0-50-cloud-amd64"
    rel.mkdir()
    (rel / "livepatch_sample.ko").write_bytes(built.sample.read_bytes())
    (rel / "notes.txt").write_text("x")
    assert list_installed(str(tmp_path)) == {
        "6.1.0-50-cloud-amd64": {"livepatch_sample": str(rel / "livepatch_sample.ko")}}
