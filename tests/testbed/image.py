"""Full-VM testbed, part 1: a cached Debian 12 disk image that boots one of the testbed kernels.

``build_debian_image([artifacts, ...])`` debootstraps a minimal bookworm (systemd, udev,
openssh-server, python3, kmod, iproute2, systemd-networkd with DHCP on the virtio NIC),
installs each release's kernel ``.deb`` inside the chroot (initramfs-tools builds an initrd
with the virtio drivers), authorises a generated ed25519 root key, and packs the tree into a
sparse raw ext4 image with ``mkfs.ext4 -d`` -- no loop device, no mount on the host.  The
kernel and initrd of every release are copied out next to the disk so qemu boots them
directly (``-kernel/-initrd``, ``root=/dev/vda``); no bootloader is involved.

Images are cached under ``<testbed cache>/images/<key>`` where the key names the releases and
hashes the recipe (package list, config files, kernel packages), so changing any of them
builds a new image.  A build happens in a temporary directory that is renamed into place at
the end: an interrupted build leaves nothing a later run would trust.  Chroot steps run in a
private mount namespace (``unshare --mount``), so the /proc, /sys and /dev mounts they need
vanish with the process on every exit path, crash included.

VMs never write to the cached image: ``DebianImage.create_overlay()`` makes a per-VM qcow2
overlay backed by it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Union

from tests.testbed.kernels import KernelArtifacts, TestbedError, cache_lock, cache_root, log

# Bump when the build procedure changes in a way the recipe below does not capture.
RECIPE_VERSION = 1
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
HOSTNAME = "kpatch-vm"
DISK_SIZE = "3G"
PACKAGES = (
    "systemd-sysv", "udev", "openssh-server", "openssh-sftp-server", "python3", "kmod",
    "iproute2", "initramfs-tools", "linux-base", "zstd", "procps", "netbase",
)
# Units that only slow a throw-away VM's boot down or wake it up needlessly.  Under TCG the one
# vCPU runs every unit in turn, so each unit dropped is boot time saved.
MASKED_UNITS = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "e2scrub_reap.service",
    "fstrim.timer", "systemd-networkd-wait-online.service", "man-db.timer",
    "getty-static.service", "getty@tty1.service", "systemd-network-generator.service",
    "modprobe@dm_mod.service", "modprobe@fuse.service", "modprobe@loop.service",
    "modprobe@efi_pstore.service", "systemd-pstore.service", "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount", "dev-hugepages.mount", "dev-mqueue.mount",
    "sys-fs-fuse-connections.mount",
)
READY_MARK = "KPATCH-TESTBED-READY"
ENABLED_UNITS = ("systemd-networkd.service", "ssh.service", "kpatch-testbed-ready.service")

# Files written into the root tree (path → content); part of the recipe hash.
CONFIG_FILES: Dict[str, str] = {
    "etc/hostname": f"{HOSTNAME}\n",
    # qemu user networking's DNS forwarder (debootstrap copied the build host's file).
    "etc/resolv.conf": "nameserver 10.0.2.3\n",
    "etc/hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost\n",
    # Pass 0: no fsck at boot (the overlay is thrown away; a journal replay is enough).
    "etc/fstab": "/dev/vda\t/\text4\trw,relatime,errors=remount-ro\t0\t0\n",
    "etc/systemd/network/20-virtio.network": (
        "[Match]\nType=ether\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    ),
    # MODULES=list keeps the initrd small: TCG unpacks every byte of it at boot.
    "etc/initramfs-tools/conf.d/kpatch-testbed.conf": "MODULES=list\nCOMPRESS=zstd\n",
    "etc/initramfs-tools/modules": "virtio_pci\nvirtio_blk\nvirtio_net\next4\n",
    # MaxStartups: Ansible forks and connection retries must not be throttled.
    "etc/ssh/sshd_config.d/kpatch-testbed.conf": (
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\nMaxStartups 100:30:200\n"
    ),
    # Tells the host, on the serial console, that sshd listens: the host waits for this line
    # instead of knocking on the forwarded port (qemu queues such knocks while the guest boots
    # and delivers them all at once, which trips sshd's MaxStartups).
    "etc/systemd/system/kpatch-testbed-ready.service": (
        "[Unit]\nDescription=Announce on ttyS0 that sshd is up (kpatch testbed)\n"
        "After=ssh.service\nWants=ssh.service\n\n"
        "[Service]\nType=oneshot\nExecStart=/usr/local/sbin/kpatch-testbed-ready\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    ),
    # Announces only once DHCP gave an address too (sshd alone is not reachable without it).
    "usr/local/sbin/kpatch-testbed-ready": (
        "#!/bin/sh\n"
        "i=0\n"
        "while ! ip -4 -o addr show scope global | grep -q inet && [ $i -lt 120 ]; do i=$((i+1)); sleep 1; done\n"
        "addr=$(ip -4 -o addr show scope global | awk '{print $2 \"=\" $4}' | tr '\\n' ' ')\n"
        f"echo \"{READY_MARK} boot_id=$(cat /proc/sys/kernel/random/boot_id) addr=$addr\" > /dev/ttyS0\n"
    ),
    # systemd creates a fresh machine-id on first boot of each overlay.
    "etc/machine-id": "",
    # Keep dpkg from starting daemons inside the build chroot.
    "usr/sbin/policy-rc.d": "#!/bin/sh\nexit 101\n",
}
BUILD_ONLY_FILES = ("usr/sbin/policy-rc.d",)
# Private mount and PID namespaces: the mounts a step makes and every process it starts die
# with it, even if it is killed (the namespace's init has PDEATHSIG, and its death kills all).
NAMESPACE = ("unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc")
STEP_TIMEOUT = 1200  # seconds; debootstrap on a loaded host with a cold package cache


class ImageBuildError(TestbedError):
    """A step of the image build failed; the message names the step and quotes its output."""


@dataclass(frozen=True)
class BootFiles:
    """Kernel and initrd of one release, copied out of the image for direct qemu boot."""

    release: str
    vmlinuz: Path
    initrd: Path


@dataclass(frozen=True)
class DebianImage:
    """A built, cached disk image: base disk, root SSH key, and per-release boot files."""

    root: Path
    disk: Path
    disk_format: str
    ssh_key: Path
    kernels: Dict[str, BootFiles] = field(default_factory=dict)
    default_release: str = ""

    def __fspath__(self) -> str:
        return str(self.disk)

    def boot_files(self, release: Optional[str] = None) -> BootFiles:
        """Boot files for ``release`` (default: the first release the image was built with)."""
        rel = release or self.default_release
        if rel not in self.kernels:
            raise TestbedError(f"image {self.root.name} has no kernel {rel!r}; it has: {', '.join(self.kernels)}")
        return self.kernels[rel]

    def create_overlay(self, path: Path) -> Path:
        """A qcow2 overlay backed by the (read-only by convention) base disk; the VM writes here."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.disk), "-F", self.disk_format,
              str(path)], what="qemu-img create overlay")
        return path


def images_dir(cache_dir: Optional[Path] = None) -> Path:
    """Where images are cached: ``cache_dir`` if given, else ``<testbed cache>/images``."""
    return Path(cache_dir) if cache_dir is not None else cache_root() / "images"


def _deb_identity(deb: Path) -> Dict[str, object]:
    # The file name carries package and version; the size catches a re-downloaded different file.
    return {"name": deb.name, "size": deb.stat().st_size}


def recipe(artifacts_list: Sequence[KernelArtifacts]) -> Dict[str, object]:
    """Everything that determines the image's content; its hash is part of the cache key."""
    return {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "mirror": MIRROR,
        "packages": list(PACKAGES),
        "masked": list(MASKED_UNITS),
        "enabled": list(ENABLED_UNITS),
        "files": CONFIG_FILES,
        "disk_size": DISK_SIZE,
        "kernels": [{"release": a.release, **_deb_identity(a.debs["image"])} for a in artifacts_list],
    }


def image_key(artifacts_list: Sequence[KernelArtifacts]) -> str:
    digest = hashlib.sha256(json.dumps(recipe(artifacts_list), sort_keys=True).encode()).hexdigest()
    return f"{SUITE}-{'+'.join(a.release for a in artifacts_list)}-{digest[:12]}"


def _run(cmd: List[str], what: str, logfile: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Run a build command; on failure raise naming the step, with the tail of its output."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", check=False,
                              timeout=STEP_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise ImageBuildError(f"{what} did not finish within {STEP_TIMEOUT}s") from exc
    if logfile is not None:
        with open(logfile, "a") as fh:
            fh.write(f"$ {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}[exit {proc.returncode}]\n")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc


@contextmanager
def _step(name: str, timings: Dict[str, float]) -> Iterator[None]:
    """Log a build step's start and duration, and record the duration in ``timings``."""
    start = time.monotonic()
    log(f"image: {name} ...")
    yield
    timings[name] = round(time.monotonic() - start, 1)
    log(f"image: {name} done in {timings[name]:.1f}s")


def _in_namespace(script: str, rootfs: Path, what: str, logfile: Path) -> str:
    """Run a shell script as root in a private mount namespace with proc/sys/dev bound in rootfs.

    The mounts live only in that namespace, so they disappear when the script ends, however
    it ends; nothing under rootfs stays mounted on the host.
    """
    root = shlex.quote(str(rootfs))
    mounts = f"mount -t proc proc {root}/proc && mount -t sysfs sysfs {root}/sys && mount --rbind /dev {root}/dev"
    return _run([*NAMESPACE, "--", "sh", "-ec", f"{mounts}\n{script}"], what=what, logfile=logfile).stdout


def _chroot(rootfs: Path, cmd: str, what: str, logfile: Path) -> str:
    env = "env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8"
    return _in_namespace(f"{env} chroot {shlex.quote(str(rootfs))} sh -ec {shlex.quote(cmd)}", rootfs, what, logfile)


def _assert_nothing_mounted_under(path: Path) -> None:
    """Refuse to delete a tree that has anything mounted in it (a bound /dev would be wiped)."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as fh:
        busy = [line.split()[1] for line in fh if line.split()[1].startswith(prefix)]
    if busy:
        raise ImageBuildError(f"refusing to remove {path}: still mounted: {', '.join(busy)}")


def _remove_tree(path: Path) -> None:
    if path.exists():
        _assert_nothing_mounted_under(path)
        shutil.rmtree(path)


def _debootstrap(rootfs: Path, logfile: Path, base: Path) -> None:
    debcache = base / "debootstrap-debs"
    debcache.mkdir(parents=True, exist_ok=True)
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
           f"--cache-dir={debcache}", SUITE, str(rootfs), MIRROR]
    # debootstrap mounts proc/sys in the target itself; the namespace guarantees they go away.
    _run([*NAMESPACE, "--", *cmd], what="debootstrap", logfile=logfile)


def base_rootfs_key() -> str:
    """Key of the plain debootstrap result, shared by every image whatever its kernels and config."""
    spec = {"version": RECIPE_VERSION, "suite": SUITE, "mirror": MIRROR, "packages": list(PACKAGES)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _base_rootfs(rootfs: Path, logfile: Path, base: Path) -> None:
    """Fill ``rootfs`` with the debootstrapped base: unpacked from its cached tarball, or
    debootstrapped (and the tarball saved) on first use."""
    tarball = base / f"rootfs-{SUITE}-{base_rootfs_key()}.tar.zst"
    tar_opts = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--zstd"]
    with cache_lock(f"rootfs-{tarball.name}"):
        if tarball.is_file():
            rootfs.mkdir(parents=True)
            _run(["tar", "-x", "-p", "-f", str(tarball), "-C", str(rootfs), *tar_opts],
                 what=f"unpack {tarball.name}", logfile=logfile)
            return
        _debootstrap(rootfs, logfile, base)
        tmp = tarball.with_name(f".{tarball.name}.{os.getpid()}")
        try:
            _run(["tar", "-c", "-f", str(tmp), "-C", str(rootfs), *tar_opts, "."],
                 what="save the debootstrapped base", logfile=logfile)
            os.replace(tmp, tarball)
        finally:
            tmp.unlink(missing_ok=True)


def _write_config(rootfs: Path, pubkey: str) -> None:
    for rel, content in CONFIG_FILES.items():
        dest = rootfs / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(content)
    for script in ("usr/sbin/policy-rc.d", "usr/local/sbin/kpatch-testbed-ready"):
        (rootfs / script).chmod(0o755)
    ssh_dir = rootfs / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(pubkey)
    (ssh_dir / "authorized_keys").chmod(0o600)


def _install_kernels(rootfs: Path, artifacts_list: Sequence[KernelArtifacts], logfile: Path) -> None:
    staging = rootfs / "tmp" / "kernel-debs"
    staging.mkdir(parents=True, exist_ok=True)
    names = []
    for art in artifacts_list:
        deb = art.debs["image"]
        shutil.copy2(deb, staging / deb.name)
        names.append(f"/tmp/kernel-debs/{deb.name}")
    _chroot(rootfs, f"dpkg -i {' '.join(names)}", what="dpkg -i kernel packages", logfile=logfile)
    shutil.rmtree(staging)


def _configure_units(rootfs: Path, logfile: Path) -> None:
    script = f"systemctl enable {' '.join(ENABLED_UNITS)}\nsystemctl mask {' '.join(MASKED_UNITS)}"
    _chroot(rootfs, script, what="systemctl enable/mask", logfile=logfile)


def _strip_build_leftovers(rootfs: Path) -> None:
    for rel in BUILD_ONLY_FILES:
        (rootfs / rel).unlink(missing_ok=True)
    for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def _copy_boot_files(rootfs: Path, out: Path, release: str) -> BootFiles:
    dest = out / "boot" / release
    dest.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind, name in (("vmlinuz", f"vmlinuz-{release}"), ("initrd", f"initrd.img-{release}")):
        src = rootfs / "boot" / name
        if not src.is_file():
            raise ImageBuildError(f"kernel package for {release} left no /boot/{name} in the image")
        shutil.copy2(src, dest / name)
        files[kind] = dest / name
    return BootFiles(release, files["vmlinuz"], files["initrd"])


def _check_initrd(rootfs: Path, release: str, logfile: Path) -> None:
    """The VM cannot find its root disk without virtio in the initrd (or kernel): fail at build time."""
    builtin = (rootfs / "lib" / "modules" / release / "modules.builtin").read_text()
    listing = _chroot(rootfs, f"lsinitramfs /boot/initrd.img-{release}", what="lsinitramfs", logfile=logfile)
    for mod in ("virtio_blk.ko", "virtio_pci.ko", "virtio_net.ko"):
        if f"/{mod}" not in builtin and f"/{mod}" not in listing:
            raise ImageBuildError(f"initrd for {release} lacks {mod} (and the kernel does not build it in); "
                                  f"see {logfile}")


def _make_ssh_key(out: Path) -> Path:
    key = out / "id_ed25519"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kpatch-testbed", "-f", str(key)],
         what="ssh-keygen")
    return key


def load_cached_image(root: Union[Path, str]) -> DebianImage:
    """The DebianImage described by a built image directory's manifest."""
    root = Path(root)
    manifest = json.loads((root / "manifest.json").read_text())
    kernels = {rel: BootFiles(rel, root / p["vmlinuz"], root / p["initrd"])
               for rel, p in manifest["kernels"].items()}
    return DebianImage(root=root, disk=root / manifest["disk"], disk_format=manifest["disk_format"],
                       ssh_key=root / manifest["ssh_key"], kernels=kernels,
                       default_release=manifest["default_release"])


def _write_manifest(out: Path, artifacts_list: Sequence[KernelArtifacts], kernels: Dict[str, BootFiles],
                    timings: Dict[str, float]) -> None:
    manifest = {
        "disk": "disk.raw",
        "disk_format": "raw",
        "ssh_key": "id_ed25519",
        "default_release": artifacts_list[0].release,
        "kernels": {rel: {"vmlinuz": str(b.vmlinuz.relative_to(out)), "initrd": str(b.initrd.relative_to(out))}
                    for rel, b in kernels.items()},
        "recipe": recipe(artifacts_list),
        "build_seconds": timings,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _check_build_host() -> None:
    tools = ("debootstrap", "unshare", "mkfs.ext4", "qemu-img", "ssh-keygen")
    problems = [f"missing command '{t}'" for t in tools if shutil.which(t) is None]
    if os.geteuid() != 0:
        problems.append("must run as root (debootstrap and chroot need it)")
    if problems:
        raise ImageBuildError("cannot build the Debian test image: " + "; ".join(problems))


def _remove_stale_builds(final: Path) -> None:
    """Temp dirs of this key's builds that were killed mid-way (we hold the key's lock now)."""
    for stale in final.parent.glob(f".build-{final.name}-*"):
        log(f"image: removing leftover {stale.name} of an interrupted build")
        _remove_tree(stale)


def _build(artifacts_list: Sequence[KernelArtifacts], final: Path) -> None:
    """Build into a temp dir beside ``final`` and rename it into place at the very end."""
    base = final.parent
    base.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(dir=base, prefix=f".build-{final.name}-"))
    rootfs = out / "rootfs"
    logfile = out / "build.log"
    timings: Dict[str, float] = {}
    try:
        key = _make_ssh_key(out)
        with _step("base system (debootstrap, or its cached tarball)", timings):
            _base_rootfs(rootfs, logfile, base)
        with _step("configure", timings):
            _write_config(rootfs, (out / "id_ed25519.pub").read_text())
            _configure_units(rootfs, logfile)
        with _step("install kernels", timings):
            _install_kernels(rootfs, artifacts_list, logfile)
        kernels = {}
        for art in artifacts_list:
            kernels[art.release] = _copy_boot_files(rootfs, out, art.release)
            _check_initrd(rootfs, art.release, logfile)
        _strip_build_leftovers(rootfs)
        with _step("mkfs.ext4 -d", timings):
            _run(["mkfs.ext4", "-q", "-F", "-L", "kpatch-root", "-d", str(rootfs), str(out / "disk.raw"),
                  DISK_SIZE], what="mkfs.ext4 -d", logfile=logfile)
        _remove_tree(rootfs)
        key.chmod(0o600)
        out.chmod(0o755)  # mkdtemp made it private; the image is for every test process
        _write_manifest(out, artifacts_list, kernels, timings)
        os.replace(out, final)
    except BaseException:
        _remove_tree(out)
        raise


def build_debian_image(artifacts: Union[KernelArtifacts, Sequence[KernelArtifacts]],
                       cache_dir: Optional[Path] = None) -> DebianImage:
    """The cached Debian image carrying the kernel(s) of ``artifacts``; built on first use.

    Pass several releases' artifacts to get one image whose VMs can boot any of them
    (``DebianImage.boot_files(release)``); the first one is the default.
    """
    artifacts_list = [artifacts] if isinstance(artifacts, KernelArtifacts) else list(artifacts)
    if not artifacts_list:
        raise TestbedError("build_debian_image needs at least one release's KernelArtifacts")
    for art in artifacts_list:
        if "image" not in art.debs or not Path(art.debs["image"]).is_file():
            raise TestbedError(f"KernelArtifacts for {art.release} has no downloaded image .deb")
    key = image_key(artifacts_list)
    final = images_dir(cache_dir) / key
    with cache_lock(f"image-{key}"):
        if (final / "manifest.json").is_file():
            log(f"image: using cached {final}")
            return load_cached_image(final)
        _check_build_host()
        _remove_stale_builds(final)
        start = time.monotonic()
        log(f"image: building {key} (cold)")
        _build(artifacts_list, final)
        log(f"image: built {final} in {time.monotonic() - start:.1f}s")
        return load_cached_image(final)
