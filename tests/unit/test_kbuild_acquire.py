"""Source acquisition decisions of ``_kbuild/acquire.py`` on small trees under tmp_path (no download).

The os-release files, kernel Makefiles and plans are real files and real commands; the one
network step (``apt-get download``) is covered by tests/integration/test_kbuild_acquire.py.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.acquire import (
    acquire_source,
    check_source_version,
    detect_distro,
    expected_makefile_version,
    find_tree,
    parse_os_release,
    pin_version,
    run_plan,
    source_request,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.distro import plan_for
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.pipeline import BuildRequest, cache_key, check_inputs
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.request import default_config
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError, StepLog

DEBIAN_12 = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'
RELEASE = "6.1.0-50-cloud-amd64"


def host(tmp_path: Path, text: str = DEBIAN_12, where: str = "etc/os-release") -> Path:
    root = tmp_path / "root"
    (root / where).parent.mkdir(parents=True, exist_ok=True)
    (root / where).write_text(text)
    return root


def kernel_tree(path: Path, version: str = "6", patchlevel: str = "1", sublevel: str = "176",
                extra: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "Makefile").write_text(f"# SPDX-License-Identifier: GPL-2.0\nVERSION = {version}\n"
                                   f"PATCHLEVEL = {patchlevel}\nSUBLEVEL = {sublevel}\nEXTRAVERSION ={extra}\n"
                                   "NAME = Curry Ramen\n")
    return path


# --------------------------------------------------------------------------- os-release


def test_os_release_quotes_comments_and_junk():
    fields = parse_os_release('# comment\n\nID="ubuntu"\nVERSION_ID=\'22.04\'\nNAME=Ubuntu Linux\n'
                              'PRETTY_NAME="say \\"hi\\""\nnot a line\nlower=x\n')
    assert fields == {"ID": "ubuntu", "VERSION_ID": "22.04", "NAME": "Ubuntu Linux", "PRETTY_NAME": 'say "hi"'}


def test_detect_distro_reads_etc_then_usr_lib(tmp_path):
    assert detect_distro(host(tmp_path)) == ("debian", "12")
    other = host(tmp_path / "b", 'ID="Rocky"\nVERSION_ID="9.3"\n', where="usr/lib/os-release")
    assert detect_distro(other) == ("rocky", "9.3")


def test_detect_distro_without_id_or_file_fails_clearly(tmp_path):
    with pytest.raises(KbuildError, match="no ID= line"):
        detect_distro(host(tmp_path, 'NAME="Something"\n'))
    with pytest.raises(KbuildError, match="no os-release file.*pass source_dir"):
        detect_distro(tmp_path / "empty")


# --------------------------------------------------------------------------- version pinning


def test_a_given_package_version_is_used_as_is():
    plan = plan_for("debian", "12", RELEASE, "6.1.176-1")
    assert pin_version(plan, "6.1.176-1") == "6.1.176-1"
    assert pin_version(plan, "6.12.107-1~deb12u1") == "6.12.107-1~deb12u1"


@pytest.mark.parametrize("bad", ["latest", "6.1/../x", "-1", "6.1 176"])
def test_malformed_package_versions_are_refused(bad):
    with pytest.raises(KbuildError, match="invalid package_version"):
        pin_version(plan_for("debian", "12", RELEASE), bad)


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs dpkg-query")
def test_without_an_installed_image_the_version_is_asked_for_never_guessed():
    plan = plan_for("debian", "12", "6.1.0-0-kpatch-test-absent-amd64")
    with pytest.raises(KbuildError) as err:
        pin_version(plan, None)
    msg = str(err.value)
    assert "linux-image-6.1.0-0-kpatch-test-absent-amd64 is not installed" in msg
    assert "package_version" in msg and "source_dir" in msg


def test_rpm_releases_carry_their_version():
    plan = plan_for("rocky", "9", "5.14.0-362.8.1.el9_3.x86_64", workdir="/tmp/x")
    assert pin_version(plan, None) == "5.14.0-362.8.1.el9_3"


def test_expected_makefile_version_per_distribution():
    assert expected_makefile_version("debian", RELEASE, "6.1.176-1") == "6.1.176"
    assert expected_makefile_version("debian", "6.12.107+deb12-cloud-amd64", "6.12.107-1~deb12u1") == "6.12.107"
    assert expected_makefile_version("ubuntu", "5.15.0-91-generic", "5.15.0-91.101") == "5.15.0"
    assert expected_makefile_version("rocky", "5.14.0-362.8.1.el9_3.x86_64", "5.14.0-362.8.1.el9_3") == "5.14.0"
    with pytest.raises(KbuildError, match="not of the 6.1 series"):
        expected_makefile_version("debian", RELEASE, "6.12.107-1~deb12u1")


def test_source_request_pins_and_places_the_tree_in_the_cache(tmp_path):
    acq = source_request(RELEASE, tmp_path / "cache", "6.1.176-1", root=host(tmp_path))
    assert acq.final_dir == tmp_path / "cache" / "sources" / f"{RELEASE}-6.1.176-1"
    assert acq.expected_version == "6.1.176"
    assert acq.identity == "debian 12: linux-source-6.1=6.1.176-1"
    described = acq.describe()
    assert described["present"] is False and described["packages"] == ["linux-source-6.1=6.1.176-1"]
    assert described["commands"][0] == "apt-get download linux-source-6.1=6.1.176-1"
    assert not (tmp_path / "cache").exists()  # deciding writes nothing


# --------------------------------------------------------------------------- the tree


def test_makefile_version_check(tmp_path):
    assert check_source_version(kernel_tree(tmp_path / "a"), "6.1.176") == "6.1.176"
    assert check_source_version(kernel_tree(tmp_path / "b", sublevel="0", extra=" -rc1"), "6.1") == "6.1.0-rc1"
    with pytest.raises(KbuildError, match=r"is kernel 6\.1\.170 \(its Makefile\), not 6\.1\.176"):
        check_source_version(kernel_tree(tmp_path / "c", sublevel="170"), "6.1.176")
    with pytest.raises(KbuildError, match="not a kernel source tree"):
        check_source_version(tmp_path / "none", "6.1.176")


def test_find_tree_wants_exactly_one_match(tmp_path):
    with pytest.raises(KbuildError, match="found 0: none"):
        find_tree(tmp_path, "linux-source-6.1")
    (tmp_path / "linux-6.1.1").mkdir()
    (tmp_path / "linux-6.1.2").mkdir()
    with pytest.raises(KbuildError, match="found 2: linux-6.1.1, linux-6.1.2"):
        find_tree(tmp_path, "linux*-6.1*")
    assert find_tree(tmp_path, "linux*-6.1.1") == tmp_path / "linux-6.1.1"


def test_run_plan_logs_each_command_and_names_the_packages_on_failure(tmp_path):
    log = StepLog(tmp_path / "log")
    plan = replace(plan_for("debian", "12", RELEASE, "6.1.176-1"),
                   source_commands=(("sh", "-c", "mkdir linux-source-6.1 && echo VERSION = 6 > linux-source-6.1/Makefile"),))
    (tmp_path / "w").mkdir()
    assert run_plan(plan, tmp_path / "w", log) == tmp_path / "w" / "linux-source-6.1"
    assert "acquire-source-1/1" in log.lines[-1] and " ok " in log.lines[-1]
    failing = replace(plan, source_commands=(("sh", "-c", "echo 'E: Version not found'; exit 100"),))
    with pytest.raises(KbuildError) as err:
        run_plan(failing, tmp_path / "w", log)
    msg = str(err.value)
    assert "linux-source-6.1=6.1.176-1" in msg and "apt-cache policy linux-source-6.1" in msg
    assert "E: Version not found" in msg and "FAILED" in log.lines[-1]


def test_a_present_tree_is_reused_without_running_anything(tmp_path):
    acq = source_request(RELEASE, tmp_path / "cache", "6.1.176-1", root=host(tmp_path))
    kernel_tree(acq.final_dir)
    log = StepLog(tmp_path / "log")
    assert acquire_source(acq, log) == acq.final_dir
    assert len(log.lines) == 1 and "reusing" in log.lines[0]


# --------------------------------------------------------------------------- the build request


def test_config_falls_back_to_the_headers_config(tmp_path):
    boot, headers = tmp_path / "config-x", tmp_path / "headers"
    assert default_config(boot, headers) == boot  # neither: the /boot path is what the error names
    headers.mkdir()
    (headers / ".config").write_text("CONFIG_MODULES=y\n")
    assert default_config(boot, headers) == headers / ".config"
    boot.write_text("CONFIG_MODULES=y\n")
    assert default_config(boot, headers) == boot


def _request(tmp_path: Path, acq=None, source=None) -> BuildRequest:
    # Written once: the cache key includes vmlinux's mtime, and a rewrite in the next second would change it.
    if not (tmp_path / "vmlinux").exists():
        (tmp_path / "headers").mkdir(exist_ok=True)
        (tmp_path / "headers" / "Makefile").write_text("")
        (tmp_path / "config").write_text("CONFIG_MODULES=y\nCONFIG_LIVEPATCH=y\n")
        (tmp_path / "vmlinux").write_bytes(b"")
        (tmp_path / "p.patch").write_text("--- a/x.c\n+++ b/x.c\n")
    return BuildRequest(patches=[tmp_path / "p.patch"], release=RELEASE,
                        source_dir=acq.final_dir if acq else source, acquire=acq, config=tmp_path / "config",
                        vmlinux=tmp_path / "vmlinux", headers=tmp_path / "headers", cache_dir=tmp_path / "cache",
                        output_dir=tmp_path / "out", name="livepatch-x")


def test_cache_key_identifies_the_source(tmp_path):
    root = host(tmp_path)
    a = source_request(RELEASE, tmp_path / "cache", "6.1.176-1", root=root)
    b = source_request(RELEASE, tmp_path / "cache", "6.1.170-3", root=root)
    req_a, req_b = _request(tmp_path, a), _request(tmp_path, b)
    check_inputs(req_a)  # the tree is fetched later: not required yet
    assert cache_key(req_a) != cache_key(req_b)
    assert cache_key(req_a) == cache_key(_request(tmp_path, a))
    one, two = kernel_tree(tmp_path / "src1"), kernel_tree(tmp_path / "src2", sublevel="170")
    assert cache_key(_request(tmp_path, source=one)) != cache_key(_request(tmp_path, source=two))
    with pytest.raises(KbuildError, match="missing kernel source tree"):
        check_inputs(_request(tmp_path, source=tmp_path / "nowhere"))
