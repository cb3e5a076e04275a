# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Acquire the exact kernel source of a release into the build cache, when no ``source_dir`` is given.

The commands come from ``distro.plan_for`` (the debuginfo role runs the same plan): this module
only decides *which* version to fetch and makes the result trustworthy.

* The distribution is the build host's (``ID``/``VERSION_ID`` of ``/etc/os-release``).
* The package version is pinned: the ``package_version`` parameter, else the version of the
  release's image package installed on the build host (the plan's ``version_query``).  Without
  either the build fails; apt's newest version is never taken silently.
* The plan's source commands run in a fresh temporary directory under ``<cache_dir>/sources/``;
  the unpacked tree (``source_tree_glob``) must have a top ``Makefile`` of the expected version
  (Debian: the package's upstream version, ``6.1.176`` for ``6.1.176-1``; elsewhere the release's
  own, ``5.14.0`` for ``5.14.0-362.8.1.el9_3.x86_64``).  Only then is it renamed, atomically, to
  ``<cache_dir>/sources/<release>-<package_version>``, where later builds find and reuse it.
  On any failure the temporary directory is removed: nothing half-written is ever trusted.
* A lock per target directory keeps two concurrent builds from fetching the same source twice.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.distro import (
    DistroPlan,
    parse_rpm_release,
    plan_for,
    upstream_series,
    upstream_version,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prepared import tree_lock
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import (
    KbuildError,
    StepLog,
    run_logged,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.tree import makefile_version

SOURCES_DIR = "sources"
# Debian/RPM version strings: digits first, then the characters dpkg and rpm allow.
_PACKAGE_VERSION_RE = re.compile(r"^[0-9][A-Za-z0-9.+~_-]*$")


@dataclass(frozen=True)
class SourceAcquisition:
    """Which source to fetch for one release, and where it lands in the cache."""

    distro: str
    distro_version: str
    release: str
    package_version: str
    expected_version: str  # VERSION.PATCHLEVEL.SUBLEVEL the tree's Makefile must carry
    cache_dir: Path

    @property
    def sources_dir(self) -> Path:
        return Path(self.cache_dir) / SOURCES_DIR

    @property
    def final_dir(self) -> Path:
        return self.sources_dir / f"{self.release}-{self.package_version}"

    @property
    def lock_dir(self) -> Path:
        return self.sources_dir / ".locks" / self.final_dir.name

    def plan(self, workdir: Optional[Path] = None) -> DistroPlan:
        """The distro plan, its commands set to run in ``workdir`` (an absolute path)."""
        return plan_for(self.distro, self.distro_version, self.release, self.package_version,
                        workdir=str(workdir or self.sources_dir))

    @property
    def identity(self) -> str:
        """What the source is, for the build's cache key: the pinned packages of this distribution."""
        return f"{self.distro} {self.distro_version}: {' '.join(self.plan().source_packages)}"

    def is_present(self) -> bool:
        """True when an earlier acquisition completed (the directory only ever appears by rename)."""
        return (self.final_dir / "Makefile").is_file()

    def describe(self) -> Dict[str, object]:
        """What an acquisition would do (check mode)."""
        plan = self.plan()
        return {"source_dir": str(self.final_dir), "package_version": self.package_version,
                "packages": list(plan.source_packages), "present": self.is_present(),
                "commands": [" ".join(argv) for argv in plan.source_commands]}


# --------------------------------------------------------------------------- the build host


def parse_os_release(text: str) -> Dict[str, str]:
    """``KEY=value`` lines of an os-release file; quotes removed, comments and junk ignored."""
    fields: Dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if not m:
            continue
        value = m.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        fields[m.group(1)] = value
    return fields


def detect_distro(root: Path = Path("/")) -> Tuple[str, str]:
    """``(ID, VERSION_ID)`` of the host at ``root`` (``/etc/os-release``, else ``/usr/lib/os-release``)."""
    for rel in ("etc/os-release", "usr/lib/os-release"):
        path = Path(root) / rel
        if path.is_file():
            fields = parse_os_release(path.read_text(errors="replace"))
            if not fields.get("ID"):
                raise KbuildError(f"{path} has no ID= line: cannot tell which distribution's source to fetch")
            return fields["ID"].lower(), fields.get("VERSION_ID", "")
    raise KbuildError(f"no os-release file under {root} (etc/os-release): cannot tell which distribution's "
                      "source to fetch; pass source_dir")


def installed_version(query: Tuple[str, ...]) -> Optional[str]:
    """The output of the plan's version query (``dpkg-query -W -f=${Version} <image>``), None if not installed."""
    try:
        proc = subprocess.run(list(query), capture_output=True, text=True, check=False,
                              env=dict(os.environ, LC_ALL="C"))
    except FileNotFoundError:
        return None
    version = proc.stdout.strip()
    return version if proc.returncode == 0 and version else None


def expected_makefile_version(distro: str, release: str, package_version: str) -> str:
    """The version the source's top Makefile must carry.

    Debian names releases after an ABI (``6.1.0-50``) and overrides the release string at build
    time, so its Makefile carries the package's upstream version (``6.1.176``); Ubuntu and the RPM
    distributions derive the release from the Makefile (``5.15.0-91-generic`` from ``5.15.0``).
    """
    if distro != "debian":
        return upstream_version(release)
    pv = upstream_version(package_version.split(":", 1)[-1])
    if upstream_series(pv) != upstream_series(release):
        raise KbuildError(f"package_version {package_version!r} is not of the {upstream_series(release)} series of "
                          f"kernel {release}")
    return pv


def pin_version(plan: DistroPlan, package_version: Optional[str]) -> str:
    """The package version to fetch: the one given, else the installed image's; never "the newest"."""
    if package_version:
        if not _PACKAGE_VERSION_RE.match(package_version.split(":", 1)[-1]) or "/" in package_version:
            raise KbuildError(f"invalid package_version {package_version!r}: expected a package version "
                              "like '6.1.176-1'")
        return package_version
    if plan.family == "rpm":
        rel = parse_rpm_release(plan.release)
        return f"{rel.version}-{rel.release}"
    query = plan.version_query
    found = installed_version(query) if query else None
    if not found:
        image = query[-1] if query else f"the image of {plan.release}"
        raise KbuildError(f"cannot tell which source version kernel {plan.release} was built from: {image} is not "
                          "installed on the build host. Pass package_version (on the target: "
                          f"dpkg-query -W {image}) or source_dir")
    return found


def source_request(release: str, cache_dir: Path, package_version: Optional[str] = None,
                   root: Path = Path("/")) -> SourceAcquisition:
    """Decide what to fetch for ``release`` on the host at ``root``; runs no download."""
    distro, version = detect_distro(root)
    plan = plan_for(distro, version, release, package_version, workdir=str(Path(cache_dir).absolute()))
    pinned = pin_version(plan, package_version)
    return SourceAcquisition(distro=distro, distro_version=version, release=release, package_version=pinned,
                             expected_version=expected_makefile_version(distro, release, pinned),
                             cache_dir=Path(cache_dir).absolute())


# --------------------------------------------------------------------------- the tree


def version_triplet(version: str) -> Tuple[int, int, int]:
    """``6.1.176-rc1`` → (6, 1, 176); ``6.1`` → (6, 1, 0)."""
    m = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", version)
    if not m:
        raise KbuildError(f"{version!r} is not a kernel version")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def check_source_version(tree: Path, expected: str) -> str:
    """The tree's top Makefile must carry VERSION.PATCHLEVEL.SUBLEVEL == ``expected``; returns it."""
    found = makefile_version(Path(tree))
    if version_triplet(found) != version_triplet(expected):
        raise KbuildError(f"the source unpacked in {tree} is kernel {found} (its Makefile), not {expected}: "
                          "wrong source package for this release")
    return found


def find_tree(workdir: Path, pattern: str) -> Path:
    """The one directory the plan's ``source_tree_glob`` matches under ``workdir``."""
    found: List[str] = sorted(p for p in glob.glob(str(Path(workdir) / pattern)) if os.path.isdir(p))
    if len(found) != 1:
        raise KbuildError(f"expected one source tree matching {pattern} in {workdir} after unpacking, found "
                          f"{len(found)}: {', '.join(os.path.basename(p) for p in found) or 'none'}")
    return Path(found[0])


def run_plan(plan: DistroPlan, workdir: Path, log: StepLog) -> Path:
    """Run the plan's source commands in ``workdir``, one logged step each; return the unpacked tree."""
    for index, argv in enumerate(plan.source_commands, 1):
        with log.step(f"acquire-source-{index}/{len(plan.source_commands)}", " ".join(argv)[:160]):
            try:
                run_logged(log, argv, cwd=workdir, what=f"fetching the source of {plan.release}")
            except KbuildError as exc:
                hint = (f" (apt-cache policy {plan.source_packages[0].split('=')[0]} lists the versions apt knows)"
                        if plan.family == "deb" else "")
                raise KbuildError(f"cannot acquire the source of kernel {plan.release} "
                                  f"({' '.join(plan.source_packages)}): pass source_dir, or check package_version"
                                  f"{hint}. {exc}") from exc
    return find_tree(workdir, plan.source_tree_glob)


def _remove_leftovers(acq: SourceAcquisition) -> None:
    """Temporary directories of an acquisition killed before its cleanup (the lock is held)."""
    for stale in acq.sources_dir.glob(f".{acq.final_dir.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)


def acquire_source(acq: SourceAcquisition, log: StepLog) -> Path:
    """The source tree of ``acq``, fetched and unpacked once into the cache, then reused."""
    final = acq.final_dir
    if acq.is_present():
        log.note("acquire-source", f"reusing {final}")
        return final
    with tree_lock(acq.lock_dir):
        if acq.is_present():  # another build fetched it while we waited
            log.note("acquire-source", f"reusing {final} (fetched by a concurrent build)")
            return final
        _remove_leftovers(acq)
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=acq.sources_dir))
        try:
            os.chmod(work, 0o755)  # apt-get download runs as _apt when it can write there
            tree = run_plan(acq.plan(work), work, log)
            with log.step("check-source-version") as res:
                res.detail = f"{check_source_version(tree, acq.expected_version)} in {tree.name}"
            os.rename(tree, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log.note("acquire-source", f"{final} ready ({acq.package_version})")
    return final
