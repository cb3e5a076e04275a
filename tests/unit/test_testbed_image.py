"""Fast checks of the full-VM testbed's bookkeeping: the image cache key follows the recipe and
the kernel packages, bad input is refused by name, and the Ansible inventory a VM writes is
what ansible-inventory reads back.  Nothing here boots a VM."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.testbed import image as image_mod
from tests.testbed.image import BootFiles, DebianImage, build_debian_image, image_key
from tests.testbed import kernels
from tests.testbed.sshvm import DebianVM, free_loopback_port, write_inventory


def _artifacts(tmp_path: Path, release: str, deb_bytes: bytes) -> kernels.KernelArtifacts:
    deb = tmp_path / release / f"linux-image-{release}-unsigned_1_amd64.deb"
    deb.parent.mkdir(parents=True, exist_ok=True)
    deb.write_bytes(deb_bytes)
    return kernels.KernelArtifacts(release=release, spec=kernels.RELEASES[release], root=tmp_path / release,
                                   debs={"image": deb})


def _image(tmp_path: Path, releases: list) -> DebianImage:
    boot = {r: BootFiles(r, tmp_path / f"vmlinuz-{r}", tmp_path / f"initrd-{r}") for r in releases}
    return DebianImage(root=tmp_path, disk=tmp_path / "disk.raw", disk_format="raw",
                       ssh_key=tmp_path / "id_ed25519", kernels=boot, default_release=releases[0])


def test_image_key_names_the_releases_and_follows_the_kernel_packages(tmp_path: Path) -> None:
    a = _artifacts(tmp_path / "a", "6.1.0-50-cloud-amd64", b"x" * 10)
    b = _artifacts(tmp_path / "b", "6.12.107+deb12-cloud-amd64", b"y" * 10)
    key_a = image_key([a])
    assert key_a.startswith("bookworm-6.1.0-50-cloud-amd64-")
    assert image_key([a]) == key_a
    assert image_key([a, b]).startswith("bookworm-6.1.0-50-cloud-amd64+6.12.107+deb12-cloud-amd64-")
    a.debs["image"].write_bytes(b"x" * 11)  # a different download of the "same" package
    assert image_key([a]) != key_a


def test_image_key_follows_the_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _artifacts(tmp_path, "6.1.0-50-cloud-amd64", b"x")
    before = image_key([a])
    monkeypatch.setitem(image_mod.CONFIG_FILES, "etc/hostname", "other\n")
    assert image_key([a]) != before


def test_build_refuses_missing_kernel_package(tmp_path: Path) -> None:
    release = "6.1.0-50-cloud-amd64"
    art = kernels.KernelArtifacts(release=release, spec=kernels.RELEASES[release], root=tmp_path,
                                  debs={"image": tmp_path / "absent.deb"})
    with pytest.raises(kernels.TestbedError, match="no downloaded image .deb"):
        build_debian_image(art, cache_dir=tmp_path)
    with pytest.raises(kernels.TestbedError, match="at least one release"):
        build_debian_image([], cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == [], "a refused build must leave nothing behind"


def test_boot_files_name_the_available_kernels_when_asked_for_another(tmp_path: Path) -> None:
    img = _image(tmp_path, ["6.1.0-50-cloud-amd64"])
    assert img.boot_files().release == "6.1.0-50-cloud-amd64"
    with pytest.raises(kernels.TestbedError, match=r"no kernel '9\.9'.*6\.1\.0-50-cloud-amd64"):
        img.boot_files("9.9")


def test_free_loopback_port_is_bindable() -> None:
    port = free_loopback_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_inventory_is_read_back_by_ansible_inventory(tmp_path: Path) -> None:
    img = _image(tmp_path, ["6.1.0-50-cloud-amd64"])
    vms = [DebianVM(img, name=f"vm{i}", workdir=tmp_path / f"vm{i}") for i in (1, 2)]
    for i, vm in enumerate(vms):
        vm.port = 40000 + i
    inv = write_inventory(vms, tmp_path / "hosts.ini", group="kpatch_targets")
    tool = Path(sys.executable).parent / "ansible-inventory"
    out = subprocess.run([str(tool), "-i", str(inv), "--list"], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    data = json.loads(out)
    assert data["kpatch_targets"]["hosts"] == ["vm1", "vm2"]
    hv = data["_meta"]["hostvars"]["vm2"]
    assert (hv["ansible_host"], hv["ansible_port"], hv["ansible_user"]) == ("127.0.0.1", 40001, "root")
    assert hv["ansible_ssh_private_key_file"] == str(tmp_path / "id_ed25519")
    assert "UserKnownHostsFile=/dev/null" in hv["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=no" in hv["ansible_ssh_common_args"]
