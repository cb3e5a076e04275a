"""Kernel fetcher for the testbed: real Debian kernels, fetched with apt and unpacked into a cache.

For a named release it downloads (``apt-get download``, nothing is installed) the image, the
headers (+ common, kbuild), the ``-dbg`` vmlinux and the exact matching ``linux-source``, and
unpacks what the tests need.  Everything lives under a cache outside the repo (env
``KPATCH_TESTBED_CACHE``, default ``/var/cache/kpatch-livepatch``) and is reused across runs;
every unpack goes to a temporary directory first and is renamed into place, so an interrupted
run never leaves a half-unpacked tree that a later run would trust.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.toolroot import debian_archive_uri

DEFAULT_RELEASE = "6.1.0-50-cloud-amd64"
# Bumped when the unpacked sysroot's layout changes, so that caches are unpacked again.
SYSROOT_STAMP = ".kpatch-testbed-sysroot"
SYSROOT_FORMAT = 2


@dataclass(frozen=True)
class ReleaseSpec:
    """Debian package names and versions that make up one kernel release."""

    release: str
    version: str  # package version of image, headers, -dbg and kbuild
    series: str  # "6.1" → linux-source-6.1, linux-kbuild-6.1
    source_version: str
    common: str  # linux-headers-<common>
    kbuild: str  # the linux-kbuild package's real name (6.12 names it after the ABI)
    # Another suite of the machine's own Debian archive (reached through a private sources list,
    # never by changing the machine's apt setup); None: the machine's own suites.
    suite: Optional[str] = None
    # The packages holding kernel image, config and modules: "-unsigned" until Debian split them
    # (7.x: linux-binary-R, linux-base-R, linux-modules-R, everything under /usr/lib/modules/R).
    image: Tuple[str, ...] = ("linux-image-{release}-unsigned",)
    # vmlinux inside the -dbg package (7.x keeps it under lib/modules, /boot's name is a link).
    dbg_vmlinux: str = "./usr/lib/debug/boot/vmlinux-{release}"

    def image_roles(self) -> Tuple[str, ...]:
        return tuple("image" if i == 0 else f"image{i}" for i in range(len(self.image)))

    def packages(self) -> Dict[str, str]:
        """Role → ``name=version`` for apt-get download."""
        images = {role: f"{name.format(release=self.release)}={self.version}"
                  for role, name in zip(self.image_roles(), self.image)}
        return {
            **images,
            "headers": f"linux-headers-{self.release}={self.version}",
            "headers_common": f"linux-headers-{self.common}={self.version}",
            "kbuild": f"{self.kbuild}={self.version}",
            "dbg": f"linux-image-{self.release}-dbg={self.version}",
            "source": f"linux-source-{self.series}={self.source_version}",
        }


RELEASES: Dict[str, ReleaseSpec] = {
    "6.1.0-50-cloud-amd64": ReleaseSpec(
        "6.1.0-50-cloud-amd64", "6.1.176-1", "6.1", "6.1.176-1", "6.1.0-50-common",
        "linux-kbuild-6.1"),
    "6.12.107+deb12-cloud-amd64": ReleaseSpec(
        "6.12.107+deb12-cloud-amd64", "6.12.107-1~deb12u1", "6.12", "6.12.107-1~deb12u1",
        "6.12.107+deb12-common", "linux-kbuild-6.12.107+deb12"),
    # Debian 13 (trixie), built with gcc-14.
    "6.12.117+deb13-cloud-amd64": ReleaseSpec(
        "6.12.117+deb13-cloud-amd64", "6.12.117-1", "6.12", "6.12.117-1", "6.12.117+deb13-common",
        "linux-kbuild-6.12.117+deb13", suite="trixie"),
    # Debian sid, built with gcc-16: past kpatch's last supported kernel (6.19).
    "7.2.13+deb14-cloud-amd64": ReleaseSpec(
        "7.2.13+deb14-cloud-amd64", "7.2.13-1", "7.2", "7.2.13-1", "7.2.13+deb14-common",
        "linux-kbuild-7.2.13+deb14", suite="sid",
        image=("linux-binary-{release}", "linux-base-{release}", "linux-modules-{release}"),
        dbg_vmlinux="./usr/lib/debug/lib/modules/{release}/vmlinux"),
}


class TestbedError(RuntimeError):
    """The testbed cannot be set up; the message says what is missing."""


def log(msg: str) -> None:
    """One progress line per step, on stderr so pytest -s and make show it as it happens."""
    sys.stderr.write(f"[testbed {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def cache_root() -> Path:
    return Path(os.environ.get("KPATCH_TESTBED_CACHE", "/var/cache/kpatch-livepatch"))


@contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Serialise fetch/unpack of one item across concurrent test processes."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def check_environment(need_qemu: bool = False, min_free_gb: float = 6.0) -> None:
    """Fail early, naming what is missing, before any download or build starts."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (apt-get download, debootstrap and image building need it)")
    for tool in ("apt-get", "dpkg-deb", "tar", "xz", "make", "gcc"):
        if shutil.which(tool) is None:
            problems.append(f"missing command '{tool}'")
    if need_qemu and shutil.which("qemu-system-x86_64") is None:
        problems.append("missing qemu-system-x86_64 (apt-get install qemu-system-x86)")
    root = cache_root()
    probe = root if root.exists() else root.parent
    while not probe.exists():
        probe = probe.parent
    free_gb = shutil.disk_usage(probe).free / 2**30
    if free_gb < min_free_gb:
        problems.append(f"only {free_gb:.1f} GiB free under {probe}; need {min_free_gb:.0f} GiB for the kernel cache")
    if problems:
        raise TestbedError("testbed cannot start: " + "; ".join(problems))


@dataclass
class KernelArtifacts:
    """Paths of one unpacked release in the cache."""

    release: str
    spec: ReleaseSpec
    root: Path
    debs: Dict[str, Path] = field(default_factory=dict)

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    def _boot_file(self, name: str) -> Path:
        """``/boot/<name>-R``, or where Debian 7.x puts it: ``/usr/lib/modules/R/<name>``."""
        classic = self.sysroot / "boot" / f"{name}-{self.release}"
        merged = self.sysroot / "usr" / "lib" / "modules" / self.release / name
        return merged if not classic.exists() and merged.exists() else classic

    @property
    def vmlinuz(self) -> Path:
        return self._boot_file("vmlinuz")

    @property
    def config(self) -> Path:
        return self._boot_file("config")

    @property
    def system_map(self) -> Path:
        return self._boot_file("System.map")

    @property
    def modules_dir(self) -> Path:
        classic = self.sysroot / "lib" / "modules" / self.release
        merged = self.sysroot / "usr" / "lib" / "modules" / self.release
        return merged if not classic.exists() and merged.exists() else classic

    @property
    def headers(self) -> Path:
        return self.sysroot / "usr" / "src" / f"linux-headers-{self.release}"

    @property
    def vmlinux(self) -> Path:
        return self.root / "dbg" / f"vmlinux-{self.release}"

    @property
    def source_tarball(self) -> Path:
        return self.root / "source" / f"linux-source-{self.spec.series}.tar.xz"

    def source_tree(self) -> Path:
        """The pristine unpacked source (read-only by convention: copy it before building)."""
        tree = self.root / "src" / f"linux-source-{self.spec.series}"
        with cache_lock(f"src-{self.release}"):
            if not (tree / "Makefile").exists():
                _unpack_source(self.source_tarball, tree)
        return tree


def apt_options(suite: Optional[str]) -> list:
    """apt-get options that read a private sources list for ``suite`` (none for the machine's own).

    The lists live in the cache (``apt/<suite>/``) and are refreshed at most every 6 hours; the
    machine's own apt configuration and lists are never touched.
    """
    if suite is None:
        return []
    root = cache_root() / "apt" / suite
    sources, lists = root / "sources.list", root / "lists"
    opts = [f"-o Dir::Etc::sourcelist={sources}", "-o Dir::Etc::sourceparts=-", f"-o Dir::State::Lists={lists}",
            f"-o Dir::Cache={root / 'cache'}"]
    opts = [part for opt in opts for part in opt.split(" ", 1)]
    with cache_lock(f"apt-{suite}"):
        stamp = root / ".updated"
        if stamp.exists() and time.time() - stamp.stat().st_mtime < 6 * 3600:
            return opts
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        (root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
        sources.write_text(f"deb [signed-by={keyring}] {debian_archive_uri()} {suite} main\n", encoding="utf-8")
        log(f"apt-get update of suite {suite} (private sources list {sources})")
        proc = subprocess.run(["apt-get", *opts, "update", "-q"], capture_output=True, text=True, check=False)
        if proc.returncode != 0 or "Err:" in proc.stdout:
            raise TestbedError(f"apt-get update of suite {suite} failed: {(proc.stdout + proc.stderr).strip()[-800:]}")
        stamp.touch()
    return opts


def _download(spec: ReleaseSpec, role: str, pkg: str) -> Path:
    """apt-get download one package into the shared deb cache (kept across runs)."""
    debs = cache_root() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    name, version = pkg.split("=", 1)
    # Debian file names encode ':' of epochs as %3a; none of ours has an epoch.
    for cand in debs.glob(f"{name}_{version}_*.deb"):
        return cand
    log(f"downloading {pkg}")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=debs) as tmp:
        os.chmod(tmp, 0o755)
        proc = subprocess.run(["apt-get", *apt_options(spec.suite), "download", "-q", pkg], cwd=tmp,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            hint = " (run 'apt-get update' first?)" if "Unable to locate" in proc.stderr or "Can't find" in proc.stderr else ""
            raise TestbedError(f"apt-get download {pkg} failed{hint}: {proc.stderr.strip()}")
        got = list(Path(tmp).glob("*.deb"))
        if len(got) != 1:
            raise TestbedError(f"apt-get download {pkg} produced {len(got)} files")
        final = debs / got[0].name
        os.replace(got[0], final)
    log(f"downloaded {final.name} in {time.monotonic() - start:.1f}s")
    return final


def _extract(deb: Path, dest: Path, members: Optional[list] = None) -> None:
    """Unpack a .deb's data (or only some members) into dest."""
    if members is None:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
        return
    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    try:
        subprocess.run(["tar", "-x", "-C", str(dest), *members], stdin=tar.stdout, check=True)
    finally:
        tar.stdout.close()
        tar.wait()


def _unpack_sysroot(art: KernelArtifacts) -> None:
    """Image, headers, common and kbuild into one sysroot, headers Makefile pointed at it."""
    target = art.sysroot
    tmp = Path(tempfile.mkdtemp(dir=art.root, prefix=".sysroot-"))
    try:
        for role in (*art.spec.image_roles(), "headers", "headers_common", "kbuild"):
            _extract(art.debs[role], tmp)
        # The headers Makefile names the common tree (and, from 7.x, KBUILD_OUTPUT) by absolute
        # path under /usr/src; point those into the cache so kbuild works without installing anything.
        hdr = tmp / "usr" / "src" / f"linux-headers-{art.release}"
        original = (hdr / "Makefile").read_text()
        (hdr / "Makefile").write_text(original.replace("/usr/src/", f"{target}/usr/src/"))
        (tmp / SYSROOT_STAMP).write_text(f"{SYSROOT_FORMAT}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _extract_one(art: KernelArtifacts, role: str, member: str, out: Path) -> None:
    """One file of a downloaded .deb into ``out``, via a temporary directory and a rename."""
    tmp = Path(tempfile.mkdtemp(dir=art.root, prefix=f".{role}-"))
    try:
        _extract(art.debs[role], tmp, [member])
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / member, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unpack_dbg(art: KernelArtifacts) -> None:
    """Only vmlinux from the -dbg package (the module debug files are GBs)."""
    _extract_one(art, "dbg", art.spec.dbg_vmlinux.format(release=art.release), art.vmlinux)


def _unpack_source_tarball(art: KernelArtifacts) -> None:
    _extract_one(art, "source", f"./usr/src/linux-source-{art.spec.series}.tar.xz", art.source_tarball)


def _unpack_source(tarball: Path, tree: Path) -> None:
    log(f"unpacking {tarball.name}")
    start = time.monotonic()
    tree.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=tree.parent, prefix=".unpack-"))
    try:
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(tmp)], check=True)
        inner = tmp / tree.name
        if not (inner / "Makefile").exists():
            raise TestbedError(f"{tarball} does not contain {tree.name}/Makefile")
        if tree.exists():
            shutil.rmtree(tree)
        os.replace(inner, tree)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"unpacked source in {time.monotonic() - start:.1f}s")


def fetch_kernel(release: str = DEFAULT_RELEASE, with_dbg: bool = True,
                 with_source: bool = True) -> KernelArtifacts:
    """Download (once) and unpack (once) everything the tests need for ``release``."""
    spec = RELEASES.get(release)
    if spec is None:
        raise TestbedError(f"unknown testbed release {release!r}; known: {', '.join(RELEASES)}")
    check_environment()
    art = KernelArtifacts(release=release, spec=spec, root=cache_root() / release)
    art.root.mkdir(parents=True, exist_ok=True)
    wanted = [*spec.image_roles(), "headers", "headers_common", "kbuild"]
    wanted += ["dbg"] if with_dbg else []
    wanted += ["source"] if with_source else []
    with cache_lock(f"fetch-{release}"):
        pkgs = spec.packages()
        for role in wanted:
            art.debs[role] = _download(spec, role, pkgs[role])
        stamp = art.sysroot / SYSROOT_STAMP
        current = stamp.is_file() and stamp.read_text().strip() == str(SYSROOT_FORMAT)
        if not current or not (art.headers / "Makefile").exists() or not art.vmlinuz.exists():
            log(f"unpacking image and headers for {release}")
            _unpack_sysroot(art)
        if with_dbg and not art.vmlinux.exists():
            log(f"extracting vmlinux from {art.debs['dbg'].name}")
            _unpack_dbg(art)
        if with_source and not art.source_tarball.exists():
            _unpack_source_tarball(art)
    return art


if __name__ == "__main__":
    # `python -m tests.testbed.kernels [RELEASE]` pre-fetches a release (used by `make demo`).
    rel = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_RELEASE
    artifacts = fetch_kernel(rel)
    print(f"{artifacts.release}: vmlinuz={artifacts.vmlinuz} headers={artifacts.headers} vmlinux={artifacts.vmlinux}")
