"""The kernel-build fast path on Debian's real 6.1 source: prepare, build single objects, patch.

One cold ``prepare_tree`` per session (about 30 s on this machine) into a temporary work
directory; the pristine unpacked source from the testbed cache is checked, file by file, to be
untouched at the end.
"""

import difflib
import os
import re
import subprocess

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.patching import journal_dir
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError, StepLog
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.tree import (
    build_objects,
    objects_for_sources,
    patched_tree,
    prepare_tree,
)

pytestmark = pytest.mark.integration

FLAGS = "-ffunction-sections -fdata-sections"


def snapshot(root):
    """(inode, size, mtime) of every file under root."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def pristine(kernel_6_1):
    src = kernel_6_1.source_tree()
    return src, snapshot(src)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("kbuild")


@pytest.fixture(scope="module")
def tree(kernel_6_1, pristine, workdir):
    log = StepLog(workdir / "build.log")
    return prepare_tree(pristine[0], kernel_6_1.config, kernel_6_1.release, workdir, log)


def patch_text(src, rel, old, new):
    text = (src / rel).read_text()
    assert old in text, f"{old!r} not in {rel}"
    return "".join(difflib.unified_diff(text.splitlines(True), text.replace(old, new, 1).splitlines(True),
                                        f"a/{rel}", f"b/{rel}"))


def test_cold_prepare_matches_the_distro_release(kernel_6_1, tree):
    assert not tree.reused
    out = subprocess.run(["make", "-s", "-C", str(tree.root), *tree.make_vars, "kernelrelease"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "6.1.0-50-cloud-amd64"
    # the same UTS_RELEASE (hence vermagic) and LINUX_VERSION_CODE as Debian's own build
    for rel in ("include/generated/utsrelease.h", "include/generated/uapi/linux/version.h"):
        assert (tree.root / rel).read_text() == (kernel_6_1.headers / rel).read_text(), rel
    steps = tree.log.path.read_text()
    for step in ("copy-source", "install-config", "olddefconfig", "modules_prepare", "check-release"):
        assert re.search(rf"^\d\d:\d\d:\d\d {step}\s+ok\s+\d+\.\d\ds", steps, re.M), step
    print(f"cold prepare: {tree.seconds:.1f}s")


def test_warm_prepare_reuses_the_tree(kernel_6_1, pristine, workdir, tree):
    again = prepare_tree(pristine[0], kernel_6_1.config, kernel_6_1.release, workdir, tree.log)
    assert again.reused and again.root == tree.root
    assert again.seconds < 3.0
    print(f"warm prepare: {again.seconds:.3f}s")


def test_wrong_config_is_refused(kernel_6_1, pristine, workdir, tmp_path, tree):
    bad = tmp_path / "config"
    bad.write_text("# CONFIG_MODULES is not set\n")
    with pytest.raises(KbuildError, match="CONFIG_MODULES=y"):
        prepare_tree(pristine[0], bad, kernel_6_1.release, workdir, tree.log)


def test_object_matches_the_distro_vmlinux(kernel_6_1, tree, workdir):
    from elftools.elf.elffile import ELFFile

    built = build_objects(tree, ["fs/proc/meminfo.o"], FLAGS, workdir / "orig")
    assert built[0].path == workdir / "orig" / "fs/proc/meminfo.o"
    with open(built[0].path, "rb") as fh:
        obj = ELFFile(fh)
        text = obj.get_section_by_name(".text.meminfo_proc_show")
        assert text is not None, "-ffunction-sections was not applied"
        size = text.header.sh_size
    with open(kernel_6_1.vmlinux, "rb") as fh:
        sym = ELFFile(fh).get_section_by_name(".symtab").get_symbol_by_name("meminfo_proc_show")[0]
    assert size == sym["st_size"] == 0xA0C


def test_patch_build_restore_cycle(tree, pristine, workdir, tmp_path):
    orig = build_objects(tree, ["fs/proc/meminfo.o"], FLAGS, workdir / "cycle-orig")[0]
    patch = tmp_path / "meminfo.patch"
    patch.write_text(patch_text(pristine[0], "fs/proc/meminfo.c", '"MemTotal:       "', '"MemTotaL:       "'))
    with patched_tree(tree, [patch]):
        patched = build_objects(tree, ["fs/proc/meminfo.o"], FLAGS, workdir / "cycle-patched")[0]
    assert b"MemTotaL:" in patched.path.read_bytes() and b"MemTotaL:" not in orig.path.read_bytes()
    assert (tree.root / "fs/proc/meminfo.c").read_bytes() == (pristine[0] / "fs/proc/meminfo.c").read_bytes()
    # the restored source is newer than the patched object, so kbuild rebuilds the original
    again = build_objects(tree, ["fs/proc/meminfo.o"], FLAGS, workdir / "cycle-again")[0]
    assert again.path.read_bytes() == orig.path.read_bytes()


def test_failing_patch_leaves_the_real_tree_pristine(tree, pristine, tmp_path):
    good = tmp_path / "good.patch"
    good.write_text(patch_text(pristine[0], "fs/proc/meminfo.c", '"MemFree:        "', '"MemFreE:        "'))
    stale = patch_text(pristine[0], "fs/proc/cmdline.c", "seq_putc(m, '\\n');", "seq_putc(m, '!');")
    stale = stale.replace("seq_puts(m, saved_command_line);", "seq_puts(m, boot_command_line);")
    bad = tmp_path / "stale-cmdline.patch"
    bad.write_text(stale)
    with pytest.raises(KbuildError) as info:
        with patched_tree(tree, [good, bad]):
            pytest.fail("must not run")
    assert "stale-cmdline.patch" in str(info.value)
    assert re.search(r"fs/proc/cmdline.c: Hunk #1 FAILED at \d+", str(info.value)), str(info.value)
    for rel in ("fs/proc/meminfo.c", "fs/proc/cmdline.c"):
        assert (tree.root / rel).read_bytes() == (pristine[0] / rel).read_bytes(), rel
    assert not journal_dir(tree).exists()


def test_objects_for_sources_on_the_real_tree(tree, workdir):
    build_objects(tree, ["fs/proc/meminfo.o"], FLAGS, workdir / "map")
    result = objects_for_sources(tree, ["fs/proc/meminfo.c", "net/ipv4/tcp_bbr.c",
                                        "drivers/net/ethernet/intel/e1000e/netdev.c", "fs/xfs/xfs_super.c"])
    assert result.objects["fs/proc/meminfo.c"] == ["fs/proc/meminfo.o"]
    assert result.goals["fs/proc/meminfo.o"].kind == "vmlinux"
    assert (result.goals["net/ipv4/tcp_bbr.o"].kind, result.goals["net/ipv4/tcp_bbr.o"].module) == ("module", "tcp_bbr")
    # xfs_super.o is part of the composite xfs.o module (CONFIG_XFS_FS=m)
    assert result.goals["fs/xfs/xfs_super.o"].module == "xfs"
    assert "not built by this kernel" in result.skipped["drivers/net/ethernet/intel/e1000e/netdev.c"]
    # a header thousands of objects include needs the full build, which the caller may refuse;
    # a partial list from the objects built so far is never the answer
    # (tests/integration/test_kbuild_headers.py maps headers on the shared tree)
    with pytest.raises(KbuildError, match=r"include/linux/vmstat\.h: .*candidate objects"):
        objects_for_sources(tree, ["include/linux/vmstat.h"], full_build_fallback=False)


def test_module_object_is_compiled_as_module_code(tree, workdir):
    built = build_objects(tree, ["net/ipv4/tcp_bbr.o"], FLAGS, workdir / "module")[0]
    cmd = (tree.root / "net/ipv4/.tcp_bbr.o.cmd").read_text()
    assert "-DMODULE" in cmd and "-DKBUILD_MODNAME='\"tcp_bbr\"'" in cmd
    assert b".text.bbr_main" in built.path.read_bytes()


def test_pristine_source_untouched(pristine, tree):
    src, before = pristine
    assert snapshot(src) == before
