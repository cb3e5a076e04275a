"""Toolchain roots for the RPM family: the release and compiler read from real kernels' names and
``.comment`` identities, the dnf command computed from them, and a build host without dnf refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.rpmroot import (
    RPM_BASE_PACKAGES, rpm_dist, rpm_gcc_spec, rpm_recipe)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError, StepLog
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.toolroot import ensure_toolroot

# vmlinux .comment identities of Fedora 41's 6.11.4-301.fc41 and RHEL 9.4's 5.14.0-427.13.1.el9_4.
FEDORA_GCC = "GCC: (GCC) 14.2.1 20240912 (Red Hat 14.2.1-3)"
RHEL_GCC = "GCC: (GCC) 11.4.1 20231218 (Red Hat 11.4.1-3)"


@pytest.mark.parametrize("release,dist", [
    ("6.11.4-301.fc41.x86_64", ("fc41", "41")),
    ("5.14.0-427.13.1.el9_4.x86_64", ("el9", "9")),
    ("4.18.0-553.el8_10.x86_64", ("el8", "8")),
    ("5.15.0-200.131.27.el9uek.x86_64", ("el9", "9")),
    ("6.1.0-50-cloud-amd64", None),
    ("7.2.13+deb14-cloud-amd64", None),
])
def test_dist_tag_and_releasever_of_a_kernel(release: str, dist) -> None:
    assert rpm_dist(release) == dist


def test_gcc_spec_names_the_exact_red_hat_build() -> None:
    assert rpm_gcc_spec(RHEL_GCC, "el9") == ("gcc-11.4.1-3.el9*", "gcc-11")
    assert rpm_gcc_spec(FEDORA_GCC, "fc41") == ("gcc-14.2.1-3.fc41*", "gcc-14")
    with pytest.raises(KbuildError, match="Red Hat's gcc"):
        rpm_gcc_spec("GCC: (Debian 16.2.0-4) 16.2.0", "el9")


def test_recipe_is_dnf_installroot_of_the_kernels_release(tmp_path: Path) -> None:
    recipe = rpm_recipe("5.14.0-427.13.1.el9_4.x86_64", RHEL_GCC)
    assert (recipe.name, recipe.gcc, recipe.label) == ("el9", "gcc", "gcc-11")
    argv = recipe.populate(tmp_path / "root")
    assert argv[:6] == ["dnf", "-y", "--installroot", str(tmp_path / "root"), "--releasever", "9"]
    assert "--setopt=install_weak_deps=False" in argv
    install = argv.index("install")
    assert argv[install + 1:] == ["gcc-11.4.1-3.el9*", *RPM_BASE_PACKAGES]


def test_a_release_without_a_dist_tag_gets_no_recipe() -> None:
    with pytest.raises(KbuildError, match="no .fcN or .elN tag"):
        rpm_recipe("6.8.0-1.x86_64", FEDORA_GCC)


def test_a_host_without_dnf_is_refused_by_name_and_keeps_nothing(tmp_path: Path, monkeypatch) -> None:
    # The real command, run: with no dnf on PATH (as on this Debian host) the build stops with an
    # error that names it, and neither a root nor a temporary directory stays in the cache.
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    recipe = rpm_recipe("6.11.4-301.fc41.x86_64", FEDORA_GCC)
    with pytest.raises(KbuildError, match=r"toolchain root for fc41 \(gcc; .*command not found: dnf"):
        ensure_toolroot(tmp_path / "cache", recipe, FEDORA_GCC, StepLog(tmp_path / "log"))
    left = [p.name for p in (tmp_path / "cache" / "toolroots").iterdir() if not p.name.endswith(".lock")]
    assert left == []
