"""The Debian plans of ``_kbuild/distro.py`` checked against Debian's own archive and packages.

For every testbed release (bookworm 6.1 and 6.12, trixie 6.12, sid 7.2): each package the plan
names, at the pinned version, is one the archive serves (``apt-cache show`` through the testbed's
private sources list for the release's suite), and each path the plan expects on a build host is
one those packages install (their file lists).
"""

import subprocess

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.distro import plan_for
from tests.testbed.kernels import RELEASES, apt_options, fetch_kernel

pytestmark = pytest.mark.integration


def archive_has(suite, pin):
    proc = subprocess.run(["apt-cache", *apt_options(suite), "show", pin], capture_output=True, text=True,
                          check=False)
    name = pin.split("=", 1)[0]
    return proc.returncode == 0 and f"Package: {name}\n" in proc.stdout


def deb_paths(deb):
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    # "drwxr-xr-x root/root 0 2025-.. ./usr/src/x/" or "lrwxrwxrwx ... ./boot/vmlinux-R -> ..."
    return {line.split(None, 5)[5].split(" -> ")[0].lstrip(".").rstrip("/") for line in listing.splitlines()}


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_plan_packages_are_in_the_archive(release):
    spec = RELEASES[release]
    plan = plan_for("debian", "", release, package_version=spec.version)
    pins = [*plan.source_packages, *plan.headers_packages, *plan.debuginfo_packages]
    missing = [pin for pin in pins if not archive_has(spec.suite, pin)]
    assert not missing, f"the archive (suite {spec.suite or 'own'}) has no {', '.join(missing)}"
    # The plan's version query names the package whose version pins the others.
    queried = plan.version_query[-1]
    assert archive_has(spec.suite, f"{queried}={spec.version}"), f"no package {queried}={spec.version}"


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_plan_paths_are_what_the_packages_install(release):
    spec = RELEASES[release]
    plan = plan_for("debian", "", release, package_version=spec.version)
    art = fetch_kernel(release)
    installed = set()
    for deb in art.debs.values():
        installed |= deb_paths(deb)
    # A merged-/usr host has /lib as /usr/lib: either spelling is the same file there.
    spelled = installed | {p[len("/usr"):] for p in installed if p.startswith("/usr/lib/")}
    for what, path in (("config", plan.config_path), ("headers", plan.headers_path),
                       ("vmlinux", plan.vmlinux_path), ("modules", plan.modules_path)):
        assert path in spelled, f"{what}: {path} is installed by none of {sorted(d.name for d in art.debs.values())}"
