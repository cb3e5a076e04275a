"""The initramfs writer produces archives that GNU cpio (the reference reader) unpacks exactly."""

import shutil
import subprocess

import pytest

from tests.testbed.vm import CpioWriter, build_initramfs


def _unpack(data: bytes, dest):
    proc = subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=data,
                          cwd=dest, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed (make deps installs it)")
def test_cpio_roundtrip_files_dirs_links(tmp_path):
    writer = CpioWriter()
    writer.add_file("/a/b/c.txt", b"hello\n")
    writer.add_file("/odd", b"x" * 5, 0o755)  # lengths not multiple of 4 exercise padding
    writer.add_symlink("/a/link", "b/c.txt")
    data = writer.finish()
    assert len(data) % 512 == 0
    _unpack(data, tmp_path)
    assert (tmp_path / "a/b/c.txt").read_bytes() == b"hello\n"
    assert (tmp_path / "odd").read_bytes() == b"xxxxx"
    assert (tmp_path / "odd").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "a/link").is_symlink()
    assert (tmp_path / "a/link").read_text() == "hello\n"


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed (make deps installs it)")
def test_initramfs_has_init_busybox_and_payload(tmp_path):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(bytes(range(256)) * 3)
    out = tmp_path / "root"
    out.mkdir()
    _unpack(build_initramfs({"/work/data/payload.bin": payload}, "echo hi"), out)
    assert (out / "init").stat().st_mode & 0o111
    assert (out / "bin/busybox").stat().st_size > 100000
    assert (out / "work/test.sh").read_text() == "echo hi"
    assert (out / "work/data/payload.bin").read_bytes() == payload.read_bytes()
