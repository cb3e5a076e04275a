"""The build finds a patched module's own ``.ko`` as the distro ships it, compressed or not.

Debian's 6.12 packages ship ``.ko.xz``; the 6.1 ones plain ``.ko``.  The symbol table read from
the unpacked copy must be the module's (the engine resolves the patch's references against it).
"""

import lzma
import shutil
import subprocess

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.lookup import load_parent_symtab
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.diffing import find_module_ko
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError

pytestmark = pytest.mark.integration


def _nm_defined(path):
    out = subprocess.run(["nm", "--defined-only", str(path)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_xz_module_of_6_12_is_unpacked_and_its_symbols_read(kernel_6_12, tmp_path):
    packed = sorted(kernel_6_12.modules_dir.rglob("binfmt_misc.ko.xz"))
    assert packed, "Debian 6.12 ships binfmt_misc as .ko.xz"
    found = find_module_ko(kernel_6_12.modules_dir, "binfmt_misc", tmp_path / "parents")
    assert found.parent == tmp_path / "parents" and found.name == "binfmt_misc.ko"
    assert found.read_bytes() == lzma.decompress(packed[0].read_bytes())
    table = load_parent_symtab(str(found), "binfmt_misc")
    names = set(table.globals) | set(table.locals_by_name)
    assert {"load_misc_binary", "bm_status_write"} <= names
    assert _nm_defined(found) <= names


def test_plain_module_of_6_1_is_used_in_place(kernel_6_1, tmp_path):
    found = find_module_ko(kernel_6_1.modules_dir, "binfmt_misc", tmp_path / "parents")
    assert found.is_relative_to(kernel_6_1.modules_dir) and found.name == "binfmt_misc.ko"
    assert not (tmp_path / "parents").exists()


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is installed by make deps")
def test_zstd_module_and_dashed_name(kernel_6_1, tmp_path):
    plain = next(kernel_6_1.modules_dir.rglob("binfmt_misc.ko"))
    mods = tmp_path / "lib" / "kernel"
    mods.mkdir(parents=True)
    subprocess.run(["zstd", "-q", "-o", str(mods / "binfmt-misc.ko.zst"), str(plain)], check=True)
    found = find_module_ko(tmp_path / "lib", "binfmt_misc", tmp_path / "parents")
    assert found.read_bytes() == plain.read_bytes()


def test_missing_and_corrupt_modules_are_named(tmp_path):
    mods = tmp_path / "mods"
    mods.mkdir()
    with pytest.raises(KbuildError, match=r"module nosuch\.ko \(plain, \.xz, \.gz or \.zst\) not found"):
        find_module_ko(mods, "nosuch", tmp_path / "parents")
    (mods / "broken.ko.xz").write_bytes(b"\xfd7zXZ\x00garbage")
    with pytest.raises(KbuildError, match=r"broken\.ko\.xz: corrupt compressed module"):
        find_module_ko(mods, "broken", tmp_path / "parents")
