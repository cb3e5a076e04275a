"""Computed package names, paths and commands of ``_kbuild/distro.py`` per distribution."""

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.distro import (
    parse_rpm_release,
    plan_for,
    upstream_series,
    upstream_version,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError


def test_debian_6_1_plan_pins_the_image_version():
    plan = plan_for("debian", "12", "6.1.0-50-cloud-amd64", package_version="6.1.176-1")
    assert plan.family == "deb"
    assert plan.source_packages == ("linux-source-6.1=6.1.176-1",)
    assert plan.source_commands[0] == ("apt-get", "download", "linux-source-6.1=6.1.176-1")
    assert "./usr/src/linux-source-6.1.tar.xz" in plan.source_commands[1][2]
    assert plan.source_tree_glob == "linux-source-6.1"
    assert plan.config_path == "/boot/config-6.1.0-50-cloud-amd64"
    assert plan.headers_packages == ("linux-headers-6.1.0-50-cloud-amd64=6.1.176-1",)
    assert plan.headers_path == "/usr/src/linux-headers-6.1.0-50-cloud-amd64"
    assert plan.debuginfo_packages == ("linux-image-6.1.0-50-cloud-amd64-dbg=6.1.176-1",)
    assert plan.vmlinux_path == "/usr/lib/debug/boot/vmlinux-6.1.0-50-cloud-amd64"
    assert plan.version_query == ("dpkg-query", "-W", "-f=${Version}", "linux-image-6.1.0-50-cloud-amd64")


def test_debian_backports_release_without_pin():
    plan = plan_for("Debian", "12", "6.12.107+deb12-cloud-amd64")
    assert plan.source_packages == ("linux-source-6.12",)
    assert plan.debuginfo_packages == ("linux-image-6.12.107+deb12-cloud-amd64-dbg",)
    assert plan.vmlinux_path == "/usr/lib/debug/boot/vmlinux-6.12.107+deb12-cloud-amd64"


def test_ubuntu_uses_the_unsigned_image_source_and_dbgsym():
    plan = plan_for("ubuntu", "22.04", "5.15.0-91-generic", package_version="5.15.0-91.101")
    assert plan.source_commands[0] == ("apt-get", "source", "--download-only",
                                       "linux-image-unsigned-5.15.0-91-generic=5.15.0-91.101")
    assert plan.source_tree_glob == "linux*-5.15.0"
    assert plan.debuginfo_packages == ("linux-image-unsigned-5.15.0-91-generic-dbgsym=5.15.0-91.101",)
    assert plan.vmlinux_path == "/usr/lib/debug/boot/vmlinux-5.15.0-91-generic"
    assert plan.headers_path == "/usr/src/linux-headers-5.15.0-91-generic"


@pytest.mark.parametrize("distro, version, release, fetch", [
    ("rhel", "9.3", "5.14.0-362.8.1.el9_3.x86_64", ("dnf", "download", "--source", "kernel-5.14.0-362.8.1.el9_3")),
    ("rhel", "8.9", "4.18.0-513.5.1.el8_9.x86_64", ("dnf", "download", "--source", "kernel-4.18.0-513.5.1.el8_9")),
    ("centos", "9", "5.14.0-427.el9.x86_64", ("dnf", "download", "--source", "kernel-5.14.0-427.el9")),
    ("rocky", "9.4", "5.14.0-427.13.1.el9_4.x86_64", ("dnf", "download", "--source", "kernel-5.14.0-427.13.1.el9_4")),
    ("almalinux", "8.10", "4.18.0-553.el8_10.x86_64", ("dnf", "download", "--source", "kernel-4.18.0-553.el8_10")),
    ("rhel", "10.0", "6.12.0-55.9.1.el10_0.x86_64", ("dnf", "download", "--source", "kernel-6.12.0-55.9.1.el10_0")),
])
def test_el_family_plans(distro, version, release, fetch):
    plan = plan_for(distro, version, release, workdir="/var/tmp/kb")
    rel = parse_rpm_release(release)
    assert plan.family == "rpm"
    assert plan.source_commands[0] == fetch
    assert plan.source_commands[1] == ("rpm", "-D", "_topdir /var/tmp/kb/rpmbuild", "-ivh", f"{rel.nvr}.src.rpm")
    assert plan.source_commands[2] == ("rpmbuild", "-D", "_topdir /var/tmp/kb/rpmbuild", "-bp", "--nodeps",
                                       "--target=x86_64", "rpmbuild/SPECS/kernel.spec")
    assert plan.source_tree_glob == "rpmbuild/BUILD/kernel-*/linux-*"
    assert plan.vmlinux_path == f"/usr/lib/debug/lib/modules/{release}/vmlinux"
    assert plan.debuginfo_packages == (f"kernel-debuginfo-{rel.version}-{rel.release}.x86_64",)
    assert plan.debuginfo_commands == (("dnf", "debuginfo-install", "-y", f"{rel.nvr}.x86_64"),)
    assert plan.headers_path == f"/usr/src/kernels/{release}"
    assert plan.config_path == f"/boot/config-{release}"


def test_fedora_fetches_from_koji():
    plan = plan_for("fedora", "39", "6.5.6-300.fc39.x86_64", workdir="/w")
    assert plan.source_commands[0] == (
        "curl", "-fsSLo", "kernel-6.5.6-300.fc39.src.rpm",
        "https://kojipkgs.fedoraproject.org/packages/kernel/6.5.6/300.fc39/src/kernel-6.5.6-300.fc39.src.rpm")
    assert plan.debuginfo_packages == ("kernel-debuginfo-6.5.6-300.fc39.x86_64",)


def test_oracle_uek_uses_kernel_uek_packages():
    plan = plan_for("ol", "9", "5.15.0-200.131.27.el9uek.x86_64", workdir="/w")
    assert plan.source_commands[0] == ("dnf", "download", "--source", "kernel-uek-5.15.0-200.131.27.el9uek")
    assert plan.source_commands[2][-1] == "rpmbuild/SPECS/kernel-uek.spec"
    assert plan.debuginfo_packages == ("kernel-uek-debuginfo-5.15.0-200.131.27.el9uek.x86_64",)
    assert plan.headers_packages == ("kernel-uek-devel-5.15.0-200.131.27.el9uek.x86_64",)


@pytest.mark.parametrize("distro, version, release, message", [
    ("rhel", "9.3", "4.18.0-513.el8_9.x86_64", "does not carry the .el9 tag"),
    ("fedora", "40", "6.5.6-300.fc39.x86_64", "does not carry the .fc40 tag"),
    ("rhel", "7.9", "3.10.0-1160.el7.x86_64", "RHEL-family 8, 9, 10"),
    ("arch", "rolling", "6.6.1-arch1-1", "distribution 'arch' is not supported"),
    ("rhel", "9", "6.1.0-50-cloud-amd64", "is not an RPM kernel release"),
    ("debian", "12", "linux", "does not start with MAJOR.MINOR"),
    ("debian", "12", "6.1.0 50", "invalid kernel release"),
])
def test_refusals_name_the_problem(distro, version, release, message):
    with pytest.raises(KbuildError, match=message):
        plan_for(distro, version, release, workdir="/w")


def test_rpm_workdir_must_be_absolute():
    with pytest.raises(KbuildError, match="must be an absolute path"):
        plan_for("rhel", "9", "5.14.0-427.el9.x86_64", workdir="relative")


def test_version_helpers():
    assert upstream_series("6.12.107+deb12-cloud-amd64") == "6.12"
    assert upstream_version("5.15.0-91-generic") == "5.15.0"
    rel = parse_rpm_release("5.14.0-362.8.1.el9_3.x86_64")
    assert (rel.version, rel.release, rel.arch, rel.package) == ("5.14.0", "362.8.1.el9_3", "x86_64", "kernel")


@pytest.mark.parametrize("distro, version, release, message", [
    ("ubuntu", "20.04", "5.4.0-150-generic", "older than Linux 5.8"),
    ("debian", "11", "5.10.0-30-cloud-amd64", None),
    ("debian", "10", "4.19.0-27-cloud-amd64", "older than Linux 5.8"),
    ("rhel", "8.3", "4.18.0-240.22.1.el8_3.x86_64", "older than RHEL 8's 4.18.0-284"),
    ("rhel", "8.4", "4.18.0-305.el8.x86_64", None),
    ("ol", "8", "5.4.17-2136.300.7.el8uek.x86_64", "older than Linux 5.8"),
])
def test_kernels_before_the_early_relocation_model_are_refused(distro, version, release, message):
    # Before 5.8 (RHEL 8: 4.18.0-284) livepatch relocations come after jump labels/alternatives.
    if message is None:
        assert plan_for(distro, version, release, workdir="/w").release == release
    else:
        with pytest.raises(KbuildError, match=message) as info:
            plan_for(distro, version, release, workdir="/w")
        assert "__jump_table" in str(info.value)
