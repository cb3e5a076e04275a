# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Toolchain roots: compile with exactly the kernel's compiler when the build host has another.

A livepatch must be compiled by the compiler that built the running kernel (``compiler.py``
says why).  Debian 13's kernels are built by gcc-14 and sid's by gcc-16, while a Debian 12 build
host has gcc-12.  Instead of installing another distribution's compiler on the host, the build
makes a minimal root of the kernel's own suite (``debootstrap --variant=minbase`` plus that
gcc and the tools kbuild runs), once per (suite, compiler identity), verifies that objects it
compiles carry the kernel's exact ``.comment`` identity, and runs the kbuild steps (``make``:
tree preparation, object compiles, the module link) inside it.  Everything else, the diff
engine included, stays on the host.

The RPM family gets the same kind of root from ``dnf --installroot`` of the kernel's own
release (``rpmroot.py``); a ``RootRecipe`` says how either is made, and everything after that
(the cache, the lock, the verification, ``ToolRoot.wrap``) is shared.

Inside the root, host directories appear at their own paths (bind mounts in a private mount
namespace: nothing is mounted on the host), so commands and paths need no translation.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.compiler import compiler_identity
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.elfcomment import comment_strings
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.cachefile import read_keyed_json, write_keyed_json
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError, StepLog, run_logged

STAMP = ".kpatch-toolroot.json"
FORMAT = 1
# What kbuild needs besides the compiler: modules_prepare, single objects, the module link
# (BTF for modules needs pahole), signing, and the headers' own host programs.
BASE_PACKAGES = ("make", "bison", "flex", "bc", "libelf-dev", "libssl-dev", "dwarves", "kmod", "cpio",
                 "python3", "openssl", "patch", "xz-utils", "zstd")
# The suite that built a Debian kernel, by the "+debN" of its release name.
DEBIAN_SUITES = {"deb11": "bullseye", "deb12": "bookworm", "deb13": "trixie", "deb14": "sid"}
_GCC_RE = re.compile(r"^GCC: \((Debian|Ubuntu)[^)]*\) (\d+)\.\d+")
_SAFE_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


@dataclass(frozen=True)
class RootRecipe:
    """How a root is made: its name (a Debian suite, or an RPM release tag such as ``fc41``), the
    compiler command inside it, and the command that fills an empty directory with that release."""

    name: str
    gcc: str  # the compiler's command in the root: gcc-16 (Debian), gcc (RPM)
    label: str  # the compiler in the root's directory name: gcc-16
    populate: Callable[[Path], List[str]]


@dataclass(frozen=True)
class ToolRoot:
    """A prepared root holding the kernel's compiler; ``wrap`` runs a command inside it."""

    path: Path
    suite: str
    compiler: str  # the .comment identity its gcc stamps, equal to the kernel's

    def wrap(self, argv: Sequence[str], cwd: Path, binds: Sequence[Path]) -> List[str]:
        """``argv`` run in the root, in ``cwd``, with ``binds`` visible at their host paths."""
        mounts = sorted({os.path.realpath(b) for b in [*binds, cwd]})
        script = ('set -e; root=$1; cwd=$2; binds=$3; shift 3; '
                  'mount -t proc proc "$root/proc"; '
                  'IFS=:; for b in $binds; do mkdir -p "$root$b"; mount --rbind "$b" "$root$b"; done; unset IFS; '
                  'exec chroot "$root" /bin/sh -c \'cd "$0" && exec "$@"\' "$cwd" "$@"')
        return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "kpatch-toolroot",
                str(self.path), os.path.realpath(cwd), ":".join(mounts), *argv]


def debian_suite(release: str) -> Optional[str]:
    """The Debian suite whose compiler built ``release`` (``6.12.117+deb13-cloud-amd64`` → trixie)."""
    match = re.search(r"\+(deb\d+)", release)
    if match:
        return DEBIAN_SUITES.get(match.group(1))
    # Releases before the +debN suffix (e.g. 6.1.0-50-cloud-amd64) are Debian 12's.
    return "bookworm" if re.match(r"^\d+\.\d+\.\d+-\d+-", release) else None


def gcc_package(identity: str) -> str:
    """Debian's package of the compiler named by a ``.comment`` identity (``gcc-16``)."""
    match = _GCC_RE.match(identity)
    if match is None:
        raise KbuildError(f"no toolchain root for compiler '{identity}': only Debian's and Ubuntu's gcc are known")
    return f"gcc-{match.group(2)}"


def _line_uri(words: List[str]) -> Optional[str]:
    """The first archive URI of a sources line: deb822 ``URIs: ...`` or one-line ``deb [opts] URI``."""
    if words[:1] == ["URIs:"] and len(words) > 1:
        return words[1]
    if words[:1] == ["deb"]:
        return next((w for w in words[1:] if "://" in w), None)
    return None


def debian_archive_uri(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian archive the build host's own apt sources use (deb822 or one-line format)."""
    files = sorted((sources_dir / "sources.list.d").glob("*.sources")) + [sources_dir / "sources.list"]
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            uri = _line_uri(line.split())
            if uri and uri.rstrip("/").endswith("/debian"):
                return uri
    raise KbuildError(f"no Debian archive in {sources_dir}/sources.list(.d): give toolroot_mirror")


def debian_recipe(suite: str, identity: str, mirror: Optional[str] = None) -> RootRecipe:
    """``debootstrap --variant=minbase`` of ``suite`` with the kernel's gcc and kbuild's tools; the
    archive defaults to the build host's own, looked up only when a root is actually made."""
    gcc = gcc_package(identity)
    include = ",".join((gcc, *BASE_PACKAGES))

    def populate(root: Path) -> List[str]:
        return ["debootstrap", "--variant=minbase", f"--include={include}", suite, str(root),
                mirror or debian_archive_uri()]
    return RootRecipe(name=suite, gcc=gcc, label=gcc, populate=populate)


def root_key(name: str, identity: str, label: str) -> str:
    """Directory name of the root for (distribution release, compiler identity)."""
    if not _SAFE_RE.match(name):
        raise KbuildError(f"suite name {name!r} is not a Debian suite name or an RPM release tag")
    digest = hashlib.sha256(f"{FORMAT}\0{name}\0{identity}".encode()).hexdigest()[:12]
    return f"{name}-{label}-{digest}"


def probe_identity(root: Path, gcc: str) -> str:
    """The ``.comment`` identity of ``gcc`` inside ``root``, from an object it compiles there."""
    work = Path(tempfile.mkdtemp(prefix="probe-", dir=root / "tmp"))
    try:
        (work / "probe.c").write_text("int kpatch_probe(void) { return 0; }\n", encoding="ascii")
        inner = "/" + str(work.relative_to(root))
        proc = subprocess.run(["chroot", str(root), gcc, "-c", "-o", f"{inner}/probe.o", f"{inner}/probe.c"],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise KbuildError(f"{gcc} in the toolchain root {root} cannot compile: {proc.stderr.strip()}")
        found = compiler_identity(comment_strings(work / "probe.o"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if found is None:
        raise KbuildError(f"objects compiled by {gcc} in {root} carry no compiler identification")
    return found


def verify_root(root: Path, recipe: RootRecipe, identity: str) -> None:
    """Refuse a root whose compiler does not stamp exactly the kernel's ``.comment`` identity."""
    got = probe_identity(root, recipe.gcc)
    if got != identity:
        raise KbuildError(f"{recipe.name}'s {recipe.gcc} stamps '{got}', but the kernel was built by '{identity}': "
                          "the archive no longer has the kernel's exact compiler (toolchain_root=never with "
                          "skip_compiler_check=true builds with the host's compiler anyway, at the risk of a "
                          "patch that does not match the running code)")


def _populate(tmp: Path, recipe: RootRecipe, log: StepLog) -> None:
    """Fill ``tmp`` with the recipe's release and compiler; plain ``gcc``/``cc`` become that compiler."""
    run_logged(log, recipe.populate(tmp),
               what=f"making the toolchain root for {recipe.name} ({recipe.gcc}; or toolchain_root=never)")
    if recipe.gcc == "gcc":
        return
    local_bin = tmp / "usr" / "local" / "bin"
    local_bin.mkdir(parents=True, exist_ok=True)
    # kbuild calls plain gcc/cc unless told otherwise: in the root they are the kernel's compiler.
    for name in ("gcc", "cc"):
        link = local_bin / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(f"/usr/bin/{recipe.gcc}")


def ensure_toolroot(cache_dir: Path, recipe: RootRecipe, identity: str, log: StepLog) -> Tuple[ToolRoot, bool]:
    """The root for (recipe's release, identity), made once and cached; (root, reused).

    A new root is built in a temporary directory and renamed into place only after its compiler
    proved to stamp exactly ``identity``; a failed or mismatching build leaves nothing behind.
    """
    final = Path(cache_dir) / "toolroots" / root_key(recipe.name, identity, recipe.label)
    final.parent.mkdir(parents=True, exist_ok=True)
    # One builder per root at a time; a second waits and then reuses the first one's root.
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _ensure_locked(final, recipe, identity, log)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ensure_locked(final: Path, recipe: RootRecipe, identity: str, log: StepLog) -> Tuple[ToolRoot, bool]:
    key = {"format": FORMAT, "compiler": identity}
    if read_keyed_json(final / STAMP, key) is not None:
        return ToolRoot(final, recipe.name, identity), True
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    start = time.monotonic()
    try:
        _populate(tmp, recipe, log)
        verify_root(tmp, recipe, identity)
        write_keyed_json(tmp / STAMP, key, {"suite": recipe.name, "package": recipe.gcc,
                                            "seconds": round(time.monotonic() - start, 1)})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ToolRoot(final, recipe.name, identity), False
