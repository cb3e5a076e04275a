"""The stdlib .modinfo reader against real modules: built at test time and from Debian's image.

Every expectation comes from kmod's modinfo(8) run on the same file, not from constants.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._target.modinfo import (
    ModinfoError, module_name_from_filename, read_modinfo, sha256_of)
from tests.integration.kmods.build import cached_test_modules

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mods():
    return cached_test_modules()


def kmod_field(path: Path, field: str) -> list:
    proc = subprocess.run(["modinfo", "-F", field, str(path)], capture_output=True, text=True,
                          check=True)
    return proc.stdout.splitlines()


def kmod_fields(path: Path) -> dict:
    proc = subprocess.run(["modinfo", str(path)], capture_output=True, text=True, check=True)
    keys = {line.split(":", 1)[0] for line in proc.stdout.splitlines() if ":" in line}
    # filename is the path; parm is reformatted; sig*/signer describe the appended signature,
    # which is not part of .modinfo.
    skip = {"filename", "parm", "sig_id", "signer", "sig_key", "sig_hashalgo", "signature"}
    return {k: kmod_field(path, k) for k in keys - skip}


def assert_matches_kmod(path: Path) -> None:
    info = read_modinfo(str(path))
    for key, values in kmod_fields(path).items():
        ours = info.fields.get(key, [])
        # modinfo(8) strips trailing whitespace (vermagic ends in a space in the file).
        assert [v.strip() for v in ours] == [v.strip() for v in values], key
    assert info.vermagic.strip() == kmod_field(path, "vermagic")[0].strip()


def test_built_livepatch_sample_matches_kmod(mods):
    art, built = mods
    assert_matches_kmod(built.sample)
    info = read_modinfo(str(built.sample))
    assert info.name == "livepatch_sample"
    assert info.livepatch is True
    assert info.release == art.release


def test_non_livepatch_module_is_flagged(mods):
    _art, built = mods
    info = read_modinfo(str(built.stall_target))
    assert info.livepatch is False
    assert_matches_kmod(built.stall_target)


def test_debian_in_tree_modules_match_kmod(mods):
    art, _built = mods
    kos = sorted(art.modules_dir.glob("kernel/**/*.ko"))[:25]
    assert kos, f"no .ko under {art.modules_dir}"
    for ko in kos:
        assert_matches_kmod(ko)
        assert read_modinfo(str(ko)).release == art.release


def test_rewritten_vermagic_is_what_kmod_reads(mods):
    _art, built = mods
    info = read_modinfo(str(built.other_release))
    assert info.release == built.other_release_name
    assert kmod_field(built.other_release, "vermagic")[0].split()[0] == built.other_release_name


@pytest.mark.parametrize("suffix,compress", [(".ko.xz", lambda b: lzma.compress(b, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)),
                                             (".ko.gz", gzip.compress)])
def test_compressed_modules_read_like_plain(mods, tmp_path, suffix, compress):
    _art, built = mods
    packed = tmp_path / ("livepatch-sample" + suffix)
    packed.write_bytes(compress(built.sample.read_bytes()))
    assert read_modinfo(str(packed)).fields == read_modinfo(str(built.sample)).fields


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd command not installed")
def test_zstd_module_read_like_plain(mods, tmp_path):
    _art, built = mods
    packed = tmp_path / "livepatch-sample.ko.zst"
    subprocess.run(["zstd", "-q", "-o", str(packed), str(built.sample)], check=True)
    assert read_modinfo(str(packed)).fields == read_modinfo(str(built.sample)).fields


def test_object_without_modinfo_is_refused(tmp_path):
    src = tmp_path / "plain.c"
    src.write_text("int plain(int x) { return x + 1; }\n")
    obj = tmp_path / "plain.o"
    subprocess.run(["gcc", "-c", "-o", str(obj), str(src)], check=True)
    with pytest.raises(ModinfoError, match="no .modinfo section"):
        read_modinfo(str(obj))


def test_non_elf_and_truncated_files_are_refused(mods, tmp_path):
    _art, built = mods
    text = tmp_path / "notes.ko"
    text.write_text("not a module\n")
    with pytest.raises(ModinfoError, match="not an ELF file"):
        read_modinfo(str(text))
    cut = tmp_path / "cut.ko"
    cut.write_bytes(built.sample.read_bytes()[:200])
    with pytest.raises(ModinfoError, match="beyond the end|no section header|past the end"):
        read_modinfo(str(cut))
    with pytest.raises(ModinfoError, match="cannot read"):
        read_modinfo(str(tmp_path / "missing.ko"))


def test_sha256_matches_sha256sum(mods):
    _art, built = mods
    out = subprocess.run(["sha256sum", str(built.sample)], capture_output=True, text=True,
                         check=True).stdout.split()[0]
    assert sha256_of(str(built.sample)) == out


def test_module_name_from_filename():
    assert module_name_from_filename("/x/livepatch-sample.ko") == "livepatch_sample"
    assert module_name_from_filename("kpatch-fix-1.ko.xz") == "kpatch_fix_1"
