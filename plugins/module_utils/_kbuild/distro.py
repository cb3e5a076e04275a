# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Where each distribution keeps a kernel's source, config, headers and debug vmlinux.

Pure functions of (distro id, distro version, kernel release): they compute
package names, paths and the commands that fetch and unpack the exact source,
and never run anything.  ``distro`` is the ``ID`` of ``/etc/os-release``
(``debian``, ``ubuntu``, ``fedora``, ``rhel``, ``centos`` (Stream), ``rocky``,
``almalinux``, ``ol``), ``version`` its ``VERSION_ID``.

Debian and Ubuntu: the source of a kernel is the ``linux-source-X.Y`` package
(Debian) or the source package of ``linux-image-unsigned-<release>`` (Ubuntu)
at exactly the image's package version — which the release string does not
contain (``6.1.0-50`` is an ABI name; the version is ``6.1.176-1``), so the
plan carries the ``dpkg-query`` command that reads it and pins it when given.
RPM distributions: the kernel SRPM of ``<version>-<release>`` unpacked with
``rpmbuild -bp``; debug info from ``kernel-debuginfo``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError

DEB_FAMILY = ("debian", "ubuntu")
RPM_FAMILY = ("fedora", "rhel", "centos", "rocky", "almalinux", "ol")
SUPPORTED_EL_MAJORS = ("8", "9", "10")
# rpmbuild's _topdir for the unpack, relative to the build work directory.
RPM_TOPDIR = "rpmbuild"

Argv = Tuple[str, ...]


@dataclass(frozen=True)
class DistroPlan:
    """Everything the build needs to locate or fetch for one kernel release on one distribution."""

    distro: str
    version: str
    release: str
    family: str  # "deb" | "rpm"
    source_packages: Tuple[str, ...]
    source_commands: Tuple[Argv, ...]  # run in the build work directory, in order
    source_tree_glob: str  # where the unpacked tree is, relative to the work directory
    config_path: str
    headers_packages: Tuple[str, ...]
    headers_path: str
    debuginfo_packages: Tuple[str, ...]
    debuginfo_commands: Tuple[Argv, ...]
    vmlinux_path: str
    version_query: Optional[Argv] = None  # prints the image package version (deb family)
    modules_path: str = ""  # the release's installed modules, modules.order and modules.builtin
    debug_modules_path: str = ""  # the debuginfo package's modules (compile units of each .ko)


@dataclass(frozen=True)
class RpmRelease:
    """``5.14.0-362.8.1.el9_3.x86_64`` → version 5.14.0, release 362.8.1.el9_3, arch x86_64."""

    version: str
    release: str
    arch: str
    package: str  # kernel, kernel-uek, ...

    @property
    def nvr(self) -> str:
        return f"{self.package}-{self.version}-{self.release}"


# --------------------------------------------------------------------------- parsing


def upstream_series(release: str) -> str:
    """``6.1.0-50-cloud-amd64`` → ``6.1``; ``6.12.107+deb12-cloud-amd64`` → ``6.12``."""
    m = re.match(r"^(\d+)\.(\d+)", release)
    if not m:
        raise KbuildError(f"kernel release {release!r} does not start with MAJOR.MINOR")
    return f"{m.group(1)}.{m.group(2)}"


def upstream_version(release: str) -> str:
    """``5.15.0-91-generic`` → ``5.15.0`` (the part before the first '-', '+' dropped)."""
    m = re.match(r"^(\d+\.\d+(?:\.\d+)?)", release)
    if not m:
        raise KbuildError(f"kernel release {release!r} does not start with a kernel version")
    return m.group(1)


def parse_rpm_release(release: str) -> RpmRelease:
    """Split an RPM kernel's ``uname -r``; the last dot-field is the architecture."""
    m = re.match(r"^(\d+\.\d+\.\d+)-(.+)\.(x86_64|aarch64|ppc64le|s390x)(?:\+\w+)?$", release)
    if not m:
        raise KbuildError(f"{release!r} is not an RPM kernel release like '5.14.0-362.8.1.el9_3.x86_64'")
    package = "kernel-uek" if "uek" in m.group(2) else "kernel"
    return RpmRelease(version=m.group(1), release=m.group(2), arch=m.group(3), package=package)


def _check_dist_tag(distro: str, version: str, rel: RpmRelease) -> None:
    """The release's ``.elN``/``.fcN`` tag must belong to the distro version given."""
    major = version.split(".")[0]
    if distro == "fedora":
        tag = f".fc{major}"
        ok = tag in f".{rel.release}"
    else:
        if major not in SUPPORTED_EL_MAJORS:
            raise KbuildError(f"{distro} {version} is not supported: kpatch.livepatch builds for "
                              f"RHEL-family {', '.join(SUPPORTED_EL_MAJORS)}")
        tag = f".el{major}"
        ok = re.search(rf"\.el{major}(?:[_.]|uek|$)", f".{rel.release}") is not None
    if not ok:
        raise KbuildError(f"kernel {rel.nvr} does not carry the {tag} tag of {distro} {version}: "
                          "wrong distribution version for this kernel")


# --------------------------------------------------------------------------- plans


def plan_for(distro: str, version: str, release: str, package_version: Optional[str] = None,
             workdir: str = "/var/tmp/kpatch-livepatch") -> DistroPlan:
    """The plan for ``release`` on ``distro`` ``version``; KbuildError for anything unsupported.

    ``workdir`` is the absolute directory the source commands run in (rpmbuild
    needs an absolute ``_topdir``).
    """
    distro = distro.strip().lower()
    if not release or "/" in release or " " in release:
        raise KbuildError(f"invalid kernel release {release!r}")
    if distro in DEB_FAMILY:
        plan = _debian_plan(distro, version, release, package_version) if distro == "debian" \
            else _ubuntu_plan(version, release, package_version)
        check_relocation_model(release, rpm=False)
        return plan
    if distro in RPM_FAMILY:
        plan = _rpm_plan(distro, version, release, workdir)
        check_relocation_model(release, rpm=True)
        return plan
    raise KbuildError(f"distribution {distro!r} is not supported; supported: {', '.join(DEB_FAMILY + RPM_FAMILY)}")


# Livepatch applies a patch module's vmlinux relocations before its .altinstructions and
# __jump_table are processed only from Linux 5.8 (RHEL 8 backported it in 4.18.0-284).  Older
# kernels would patch in jump labels with a zero key and alternatives copied unrelocated.
MIN_UPSTREAM = (5, 8)
MIN_RHEL8_BUILD = 284


def check_relocation_model(release: str, rpm: bool) -> None:
    """Refuse kernels whose livepatch core resolves relocations too late for the modules we build."""
    m = re.match(r"^(\d+)\.(\d+)\.\d+-(\d+)", release)
    if rpm and m and (int(m.group(1)), int(m.group(2))) == (4, 18) and re.search(r"\.el8(?![0-9])", release):
        if int(m.group(3)) >= MIN_RHEL8_BUILD:
            return
        raise KbuildError(f"kernel {release} is older than RHEL 8's 4.18.0-{MIN_RHEL8_BUILD}: its livepatch core "
                          "applies vmlinux relocations after .altinstructions and __jump_table are processed, so "
                          "a patch module's jump labels and alternatives would run unrelocated (update the kernel)")
    series = tuple(int(x) for x in upstream_series(release).split("."))
    if series < MIN_UPSTREAM:
        raise KbuildError(f"kernel {release} is older than Linux {MIN_UPSTREAM[0]}.{MIN_UPSTREAM[1]}: its livepatch "
                          "core applies vmlinux relocations after .altinstructions and __jump_table are processed, "
                          "so a patch module's jump labels and alternatives would run unrelocated (update the kernel)")


# KSYM_NAME_LEN grew from 128 to 512 in Linux 6.1 (_engine/klp.py checks names against it).
LONG_SYMBOL_NAMES_FROM = (6, 1)


def max_symbol_name(release: str) -> int:
    """The longest symbol name the kernel ``release`` resolves for a livepatch."""
    from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.klp import (
        MAX_SYMNAME,
        MAX_SYMNAME_BEFORE_6_1,
    )
    series = tuple(int(x) for x in upstream_series(release).split("."))
    return MAX_SYMNAME if series >= LONG_SYMBOL_NAMES_FROM else MAX_SYMNAME_BEFORE_6_1


def _pin(package: str, package_version: Optional[str]) -> str:
    return f"{package}={package_version}" if package_version else package


def _image_version_query(image: str) -> Argv:
    return ("dpkg-query", "-W", "-f=${Version}", image)


def _debian_plan(distro: str, version: str, release: str, package_version: Optional[str]) -> DistroPlan:
    series = upstream_series(release)
    source_pkg = f"linux-source-{series}"
    # Debian's 7.x images (linux-base-<release>) install config, System.map and vmlinuz under
    # /usr/lib/modules/<release>; earlier ones under /boot (checked against the archive's packages).
    split_layout = tuple(int(x) for x in series.split(".")) >= (7, 0)
    return DistroPlan(
        distro=distro, version=version, release=release, family="deb",
        source_packages=(_pin(source_pkg, package_version),),
        source_commands=(
            ("apt-get", "download", _pin(source_pkg, package_version)),
            ("sh", "-c", f"dpkg-deb --fsys-tarfile {source_pkg}_*.deb | "
                         f"tar -xO ./usr/src/linux-source-{series}.tar.xz | tar -xJ"),
        ),
        source_tree_glob=f"linux-source-{series}",
        config_path=f"/usr/lib/modules/{release}/config" if split_layout else f"/boot/config-{release}",
        headers_packages=(_pin(f"linux-headers-{release}", package_version),),
        headers_path=f"/usr/src/linux-headers-{release}",
        debuginfo_packages=(_pin(f"linux-image-{release}-dbg", package_version),),
        debuginfo_commands=(("apt-get", "install", "-y", _pin(f"linux-image-{release}-dbg", package_version)),),
        vmlinux_path=f"/usr/lib/debug/boot/vmlinux-{release}",
        version_query=_image_version_query(f"linux-image-{release}"),
        modules_path=f"/lib/modules/{release}", debug_modules_path=f"/usr/lib/debug/lib/modules/{release}",
    )


def _ubuntu_plan(version: str, release: str, package_version: Optional[str]) -> DistroPlan:
    # Flavoured kernels (aws, azure, hwe ...) come from differently named source
    # packages; asking apt for the source of the unsigned image finds the right one.
    image = f"linux-image-unsigned-{release}"
    kver = upstream_version(release)
    return DistroPlan(
        distro="ubuntu", version=version, release=release, family="deb",
        source_packages=(_pin(image, package_version),),
        source_commands=(("apt-get", "source", "--download-only", _pin(image, package_version)),
                         ("sh", "-c", "dpkg-source -x linux*.dsc")),
        source_tree_glob=f"linux*-{kver}",
        config_path=f"/boot/config-{release}",
        headers_packages=(_pin(f"linux-headers-{release}", package_version),),
        headers_path=f"/usr/src/linux-headers-{release}",
        debuginfo_packages=(_pin(f"linux-image-unsigned-{release}-dbgsym", package_version),),
        debuginfo_commands=(("apt-get", "install", "-y", _pin(f"linux-image-unsigned-{release}-dbgsym",
                                                              package_version)),),
        vmlinux_path=f"/usr/lib/debug/boot/vmlinux-{release}",
        version_query=_image_version_query(image),
        modules_path=f"/lib/modules/{release}", debug_modules_path=f"/usr/lib/debug/lib/modules/{release}",
    )


def _rpm_plan(distro: str, version: str, release: str, workdir: str) -> DistroPlan:
    rel = parse_rpm_release(release)
    _check_dist_tag(distro, version, rel)
    srpm = f"{rel.nvr}.src.rpm"
    if not workdir.startswith("/"):
        raise KbuildError(f"workdir {workdir!r} must be an absolute path (rpmbuild's _topdir)")
    topdir = f"{workdir.rstrip('/')}/{RPM_TOPDIR}"
    spec = f"{RPM_TOPDIR}/SPECS/{rel.package}.spec"
    if distro == "fedora":
        fetch: Argv = ("curl", "-fsSLo", srpm, "https://kojipkgs.fedoraproject.org/packages/kernel/"
                       f"{rel.version}/{rel.release}/src/{srpm}")
    else:
        fetch = ("dnf", "download", "--source", rel.nvr)
    return DistroPlan(
        distro=distro, version=version, release=release, family="rpm",
        source_packages=(srpm,),
        source_commands=(
            fetch,
            ("rpm", "-D", f"_topdir {topdir}", "-ivh", srpm),
            ("rpmbuild", "-D", f"_topdir {topdir}", "-bp", "--nodeps", f"--target={rel.arch}", spec),
        ),
        source_tree_glob=f"{RPM_TOPDIR}/BUILD/{rel.package}-*/linux-*",
        config_path=f"/boot/config-{release}",
        headers_packages=(f"{rel.package}-devel-{rel.version}-{rel.release}.{rel.arch}",),
        headers_path=f"/usr/src/kernels/{release}",
        debuginfo_packages=(f"{rel.package}-debuginfo-{rel.version}-{rel.release}.{rel.arch}",),
        debuginfo_commands=(("dnf", "debuginfo-install", "-y", f"{rel.nvr}.{rel.arch}"),),
        vmlinux_path=f"/usr/lib/debug/lib/modules/{release}/vmlinux",
        # kernel-debuginfo: <module>.ko.debug files beside vmlinux
        modules_path=f"/lib/modules/{release}", debug_modules_path=f"/usr/lib/debug/lib/modules/{release}",
    )
