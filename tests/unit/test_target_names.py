"""Names at the boundary: nothing that is not a module or release name ever becomes a path."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._target.loader import (
    LoaderError, check_release, installed_path, list_installed)
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.modinfo import (
    ModinfoError, normalize_module_name)

BAD_NAMES = ["../x", "a b", "x;reboot", "", "a/b", ".", "x" * 56, "name\n", "é"]
BAD_RELEASES = ["../etc", "6.1/../..", ".hidden", "", "a b", "6.1;x", "x" * 65, "6.1..0"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_not_a_module_name_is_refused(name: str) -> None:
    with pytest.raises(ModinfoError, match="is not a kernel module name"):
        normalize_module_name(name)
    with pytest.raises(LoaderError, match="is not a kernel module name"):
        installed_path(name, "6.1.0-50-cloud-amd64", "/var/lib/kpatch")


def test_module_names_normalise_as_the_kernel_does() -> None:
    assert normalize_module_name("livepatch-meminfo") == "livepatch_meminfo"
    assert normalize_module_name("x" * 55) == "x" * 55


@pytest.mark.parametrize("release", BAD_RELEASES)
def test_not_a_release_is_refused(release: str) -> None:
    with pytest.raises(LoaderError, match="is not a kernel release name"):
        check_release(release)
    with pytest.raises(LoaderError):
        installed_path("livepatch_x", release, "/var/lib/kpatch")


@pytest.mark.parametrize("release", ["6.1.0-50-cloud-amd64", "6.12.107+deb12-cloud-amd64", "7.2.13+deb14-cloud-amd64",
                                     "5.14.0-427.13.1.el9_4.x86_64", "6.8.0-1~rc1"])
def test_real_releases_pass(release: str) -> None:
    assert installed_path("livepatch_x", release, "/var/lib/kpatch") == f"/var/lib/kpatch/{release}/livepatch_x.ko"


def test_listing_skips_files_no_name_could_have_made(tmp_path: Path) -> None:
    rel = tmp_path / "6.1.0-50-cloud-amd64"
    rel.mkdir()
    for fname in ("livepatch_ok.ko", "a b.ko", ".tmp.ko", "x;y.ko", "notes.txt"):
        (rel / fname).write_bytes(b"")
    (tmp_path / ".staging").mkdir()
    (tmp_path / ".staging" / "abc.ko").write_bytes(b"")
    (tmp_path / "bad release").mkdir()
    (tmp_path / "bad release" / "livepatch_ok.ko").write_bytes(b"")
    assert list_installed(str(tmp_path)) == {"6.1.0-50-cloud-amd64": {"livepatch_ok": str(rel / "livepatch_ok.ko")}}
