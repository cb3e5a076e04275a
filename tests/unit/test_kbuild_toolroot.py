"""Toolchain roots: suite and compiler naming, the archive URI, and the wrapper run for real.

The wrapper test builds a tiny root from the static busybox and runs commands in it through
``ToolRoot.wrap``: a private mount namespace, host directories bound at their own paths, the
command in its working directory, and nothing left mounted on the host.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.toolchain import header_binds, needs_toolchain
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.toolroot import (
    ToolRoot, debian_archive_uri, debian_recipe, debian_suite, gcc_package, root_key)

BUSYBOX = Path("/bin/busybox")


@pytest.mark.parametrize("release,suite", [
    ("6.1.0-50-cloud-amd64", "bookworm"), ("6.12.107+deb12-cloud-amd64", "bookworm"),
    ("6.12.117+deb13-cloud-amd64", "trixie"), ("7.2.13+deb14-cloud-amd64", "sid"),
    ("5.14.0-427.el9.x86_64", None)])
def test_suite_of_a_debian_release(release: str, suite) -> None:
    assert debian_suite(release) == suite


def test_compiler_package_from_the_identity() -> None:
    assert gcc_package("GCC: (Debian 16.2.0-4) 16.2.0") == "gcc-16"
    assert gcc_package("GCC: (Debian 14.2.0-19) 14.2.0") == "gcc-14"
    with pytest.raises(KbuildError, match="only Debian's and Ubuntu's gcc"):
        gcc_package("clang version 19.1.7")


def test_root_key_names_suite_and_compiler_and_refuses_odd_suites() -> None:
    key = root_key("sid", "GCC: (Debian 16.2.0-4) 16.2.0", "gcc-16")
    assert key.startswith("sid-gcc-16-")
    assert key != root_key("sid", "GCC: (Debian 16.2.0-5) 16.2.0", "gcc-16")
    for bad in ("../etc", "sid main", "Sid"):
        with pytest.raises(KbuildError, match="not a Debian suite name"):
            root_key(bad, "GCC: (Debian 16.2.0-4) 16.2.0", "gcc-16")


def test_debian_recipe_debootstraps_the_suite_with_the_kernels_gcc(tmp_path: Path) -> None:
    recipe = debian_recipe("sid", "GCC: (Debian 16.2.0-4) 16.2.0", mirror="http://mirror.invalid/debian")
    assert (recipe.name, recipe.gcc, recipe.label) == ("sid", "gcc-16", "gcc-16")
    argv = recipe.populate(tmp_path)
    assert argv[:2] == ["debootstrap", "--variant=minbase"]
    assert argv[2].startswith("--include=gcc-16,make,") and ",dwarves," in argv[2]
    assert argv[3:] == ["sid", str(tmp_path), "http://mirror.invalid/debian"]


def test_archive_uri_from_either_sources_format(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://mirror.invalid/debian bookworm main\n")
    assert debian_archive_uri(tmp_path) == "http://mirror.invalid/debian"
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://other.invalid/debian\nSuites: bookworm\n")
    assert debian_archive_uri(tmp_path) == "http://other.invalid/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("deb http://security.invalid/debian-security bookworm-security main\n")
    with pytest.raises(KbuildError, match="no Debian archive"):
        debian_archive_uri(tmp_path)


@pytest.fixture
def busybox_root(tmp_path: Path) -> Path:
    if not BUSYBOX.exists():
        pytest.fail("/bin/busybox missing (apt-get install busybox-static)")
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "proc").mkdir()
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "cat", "pwd", "touch", "ls", "grep"):
        (root / "bin" / applet).symlink_to("busybox")
    return root


def test_wrap_runs_inside_with_host_paths_bound(busybox_root: Path, tmp_path: Path) -> None:
    host_dir = tmp_path / "host" / "tree"
    host_dir.mkdir(parents=True)
    (host_dir / "input").write_text("from the host\n")
    tr = ToolRoot(busybox_root, "sid", "GCC: (Debian 16.2.0-4) 16.2.0")
    script = "pwd; cat input; touch output; ls /bin/busybox; grep -c proc /proc/mounts"
    proc = subprocess.run(tr.wrap(["/bin/sh", "-c", script], cwd=host_dir, binds=[host_dir]),
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(host_dir.resolve())
    assert lines[1] == "from the host"
    assert lines[2] == "/bin/busybox"
    # Written inside, visible on the host at the same path.
    assert (host_dir / "output").exists()
    # Nothing stays mounted on the host: the namespace was private.
    mounts = Path("/proc/self/mounts").read_text()
    assert str(busybox_root) not in mounts


def test_wrap_fails_when_the_command_fails(busybox_root: Path, tmp_path: Path) -> None:
    tr = ToolRoot(busybox_root, "sid", "GCC: (Debian 16.2.0-4) 16.2.0")
    proc = subprocess.run(tr.wrap(["/bin/sh", "-c", "exit 7"], cwd=tmp_path, binds=[]),
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 7


def test_only_toolchain_commands_go_into_the_root(tmp_path: Path) -> None:
    kbuild = tmp_path / "usr" / "lib" / "linux-kbuild-7.2"
    (kbuild / "scripts").mkdir(parents=True)
    (kbuild / "scripts" / "sign-file").write_text("")
    common = tmp_path / "usr" / "src" / "linux-headers-7.2.13+deb14-common"
    common.mkdir(parents=True)
    headers = tmp_path / "usr" / "src" / "linux-headers-7.2.13+deb14-cloud-amd64"
    headers.mkdir(parents=True)
    (headers / "scripts").symlink_to(kbuild / "scripts")
    (headers / "Makefile").write_text(f"include {common}/Makefile\n")
    assert set(header_binds(headers)) == {headers.resolve(), kbuild / "scripts", common}
    dirs = [headers, *header_binds(headers)]
    assert needs_toolchain(["make", "-C", "/x", "modules_prepare"], dirs)
    assert needs_toolchain([str(headers / "scripts" / "sign-file"), "sha256"], dirs)
    assert needs_toolchain(["sh", "-c", "gcc -c -o fs/x.o fs/x.c ; ./tools/objtool/objtool fs/x.o"], dirs)
    for host_side in (["cp", "-al", "/a", "/b"], ["patch", "-p1"], ["apt-get", "download", "x"], ["/bin/cp"]):
        assert not needs_toolchain(host_side, dirs)
