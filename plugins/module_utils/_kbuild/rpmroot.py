# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Toolchain roots for the RPM family: ``dnf --installroot`` of the kernel's own release.

A Fedora or RHEL-family kernel records its compiler in vmlinux's ``.comment`` as Red Hat's gcc,
``GCC: (GCC) 11.4.1 20231218 (Red Hat 11.4.1-3)``: version 11.4.1, package release 3.  The root
for it is an empty directory that dnf fills from the release the kernel belongs to (``fc41`` →
``--releasever 41``, ``el9_4`` → ``9``) with exactly that gcc (``gcc-11.4.1-3.el9*``) and the
tools kbuild runs.  The build host's own repositories serve it, so a Fedora 40 host prepares a
root for a Fedora 41 kernel and a RHEL 9.2 host one for a 9.4 kernel.  What follows (the cache,
the verification of the compiler's identity, running kbuild inside) is ``toolroot.py``'s.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.distro import parse_rpm_release
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.toolroot import RootRecipe

# kbuild's tools under their RPM names (toolroot.BASE_PACKAGES are Debian's): the module link
# needs pahole (dwarves), tree preparation bison/flex/bc and libelf, signing openssl.
RPM_BASE_PACKAGES = ("make", "bison", "flex", "bc", "elfutils-libelf-devel", "openssl-devel", "openssl",
                     "dwarves", "kmod", "cpio", "python3", "patch", "xz", "zstd", "diffutils", "findutils",
                     "gawk", "tar")
_RH_GCC_RE = re.compile(r"^GCC: \(GCC\) (\d+)\.(\d+)\.(\d+) \d+ \(Red Hat (\d+\.\d+\.\d+)-(\d+(?:\.\d+)*)\)$")
_DIST_RE = re.compile(r"\.(fc|el)(\d+)(?=[_.]|uek|$)")


def rpm_dist(release: str) -> Optional[Tuple[str, str]]:
    """(dist tag, releasever) of an RPM kernel release: ``fc41``/``41``, ``el9``/``9``; None otherwise."""
    try:
        rel = parse_rpm_release(release)
    except KbuildError:
        return None
    match = _DIST_RE.search("." + rel.release)
    if match is None:
        return None
    return f"{match.group(1)}{match.group(2)}", match.group(2)


def rpm_gcc_spec(identity: str, tag: str) -> Tuple[str, str]:
    """(dnf package spec, root label) of the Red Hat gcc named by a ``.comment`` identity.

    ``GCC: (GCC) 11.4.1 20231218 (Red Hat 11.4.1-3)`` in el9 → ``gcc-11.4.1-3.el9*`` (the glob
    takes ``.el9`` and the minor releases' ``.el9_4``), labelled ``gcc-11``.
    """
    match = _RH_GCC_RE.match(identity.strip())
    if match is None:
        raise KbuildError(f"no toolchain root for compiler '{identity}': the RPM family's roots know Red Hat's "
                          "gcc, recorded as 'GCC: (GCC) X.Y.Z DATE (Red Hat X.Y.Z-N)'")
    version, package_release = match.group(4), match.group(5)
    return f"gcc-{version}-{package_release}.{tag}*", f"gcc-{match.group(1)}"


def dnf_command(root: Path, releasever: str, packages: List[str]) -> List[str]:
    """dnf filling ``root`` from the host's repositories at ``releasever``, nothing optional."""
    return ["dnf", "-y", "--installroot", str(root), "--releasever", releasever,
            "--setopt=install_weak_deps=False", "--setopt=tsflags=nodocs", "install", *packages]


def rpm_recipe(release: str, identity: str) -> RootRecipe:
    """The root for an RPM-family kernel: its release's userland with exactly its gcc."""
    dist = rpm_dist(release)
    if dist is None:
        raise KbuildError(f"{release!r} carries no .fcN or .elN tag: no toolchain root can be chosen for it")
    tag, releasever = dist
    spec, label = rpm_gcc_spec(identity, tag)
    packages = [spec, *RPM_BASE_PACKAGES]

    def populate(root: Path) -> List[str]:
        return dnf_command(root, releasever, packages)
    return RootRecipe(name=tag, gcc="gcc", label=label, populate=populate)
