"""The meminfo patch for sid's 7.2 kernel (gcc-16), built on this gcc-12 host without skipping the
compiler check: kpatch_build makes (or reuses) a toolchain root of sid with exactly the kernel's
gcc-16, runs every kbuild command in it, and the module loads in the booted 7.2 kernel."""

import difflib
import re
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.compiler import host_compiler, kernel_compiler
from tests.integration.test_build_kpatch_build import SH_LIB
from tests.testbed.ansible_run import run_module
from tests.testbed.kernels import cache_root, fetch_kernel
from tests.testbed.vm import run_in_initramfs

pytestmark = pytest.mark.integration

RELEASE = "7.2.13+deb14-cloud-amd64"


@pytest.fixture(scope="module")
def kernel_7_2():
    return fetch_kernel(RELEASE)


def meminfo_patch_for(source: Path, dest: Path) -> Path:
    """The example's change (VmallocChunk -> VMALLOCCHUNK), made against this release's own source."""
    old = (source / "fs" / "proc" / "meminfo.c").read_text().splitlines(keepends=True)
    new = [line.replace('"VmallocChunk:   "', '"VMALLOCCHUNK:   "') for line in old]
    assert new != old, "fs/proc/meminfo.c of 7.2 has no VmallocChunk line"
    dest.write_text("".join(difflib.unified_diff(old, new, "a/fs/proc/meminfo.c", "b/fs/proc/meminfo.c")))
    return dest


@pytest.fixture(scope="module")
def meminfo_7_2(kernel_7_2, tmp_path_factory):
    out = tmp_path_factory.mktemp("modules-7.2")
    # The 6.1 example needs fuzz 1 on 7.2: the test brings the same change as an exact patch.
    patch = meminfo_patch_for(kernel_7_2.source_tree(), out.parent / "meminfo-7.2.patch")
    args = {"release": RELEASE, "source_dir": str(kernel_7_2.source_tree()), "config": str(kernel_7_2.config),
            "vmlinux": str(kernel_7_2.vmlinux), "headers": str(kernel_7_2.headers),
            "modules_dir": str(kernel_7_2.modules_dir), "output_dir": str(out),
            "cache_dir": str(cache_root() / "build-tests"),
            "patches": [str(patch)], "name": "livepatch-meminfo-72"}
    run = run_module("kpatch_build", args, timeout=2400)
    assert not run.failed, run.output[-6000:]
    return run


def test_built_by_the_kernels_compiler_not_the_hosts(kernel_7_2, meminfo_7_2):
    kernel = kernel_compiler(kernel_7_2.vmlinux)
    assert kernel.startswith("GCC: (Debian 16.") and host_compiler() != kernel
    log = Path(meminfo_7_2.result["log"]).read_text()
    assert re.search(r"check-compiler .*toolchain root .*\(sid, (made|reused)\)", log), log
    assert "(skipped)" not in log
    assert meminfo_7_2.result["vermagic"].split()[0] == RELEASE
    assert [o["changed_functions"] for o in meminfo_7_2.result["objects"]] == [["meminfo_proc_show"]]


def test_loads_and_unloads_in_the_7_2_kernel(kernel_7_2, meminfo_7_2):
    script = SH_LIB + r"""
insmod /work/p.ko || exit 10
wait_transition livepatch_meminfo_72
grep -c '^VMALLOCCHUNK:' /proc/meminfo
unload livepatch_meminfo_72
grep -c '^VmallocChunk:' /proc/meminfo
"""
    result = run_in_initramfs(kernel_7_2, {"/work/p.ko": Path(meminfo_7_2.result["module_path"])}, script,
                              timeout=300)
    assert not result.timed_out, result.console[-3000:]
    assert result.exit_code == 0, result.output + result.console[-3000:]
    assert result.output.split() == ["1", "1"], result.output
    for trouble in ("Call Trace", "WARNING:", "BUG:", "Unpatched return thunk"):
        assert trouble not in result.console, result.console[-5000:]
