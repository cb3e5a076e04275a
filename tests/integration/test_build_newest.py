"""The meminfo patch for sid's 7.2 kernel (gcc-16) and Debian 13's 6.12 (gcc-14), built on this
gcc-12 host without skipping the compiler check: kpatch_build makes (or reuses) a toolchain root
of the kernel's suite with exactly its gcc, runs the kbuild commands in it, and the module loads
in the booted kernel."""

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

# release -> (suite, gcc major)
NEWEST = {"7.2.13+deb14-cloud-amd64": ("sid", 16), "6.12.117+deb13-cloud-amd64": ("trixie", 14)}


@pytest.fixture(scope="module", params=sorted(NEWEST))
def newest_kernel(request):
    return fetch_kernel(request.param)


def meminfo_patch_for(source: Path, dest: Path) -> Path:
    """The example's change (VmallocChunk -> VMALLOCCHUNK), made against this release's own source."""
    old = (source / "fs" / "proc" / "meminfo.c").read_text().splitlines(keepends=True)
    new = [line.replace('"VmallocChunk:   "', '"VMALLOCCHUNK:   "') for line in old]
    assert new != old, f"{source}/fs/proc/meminfo.c has no VmallocChunk line"
    dest.write_text("".join(difflib.unified_diff(old, new, "a/fs/proc/meminfo.c", "b/fs/proc/meminfo.c")))
    return dest


@pytest.fixture(scope="module")
def meminfo_newest(newest_kernel, tmp_path_factory):
    release = newest_kernel.release
    out = tmp_path_factory.mktemp(f"modules-{release}")
    # The 6.1 example needs fuzz 1 on 7.2: the test makes the same change as an exact patch.
    patch = meminfo_patch_for(newest_kernel.source_tree(), out / "meminfo.patch")
    args = {"release": release, "source_dir": str(newest_kernel.source_tree()), "config": str(newest_kernel.config),
            "vmlinux": str(newest_kernel.vmlinux), "headers": str(newest_kernel.headers),
            "modules_dir": str(newest_kernel.modules_dir), "output_dir": str(out),
            "cache_dir": str(cache_root() / "build-tests"),
            "patches": [str(patch)], "name": "livepatch-meminfo-newest"}
    run = run_module("kpatch_build", args, timeout=2400)
    assert not run.failed, run.output[-6000:]
    return run


def test_built_by_the_kernels_compiler_not_the_hosts(newest_kernel, meminfo_newest):
    suite, major = NEWEST[newest_kernel.release]
    kernel = kernel_compiler(newest_kernel.vmlinux)
    assert kernel.startswith(f"GCC: (Debian {major}.") and host_compiler() != kernel
    log = Path(meminfo_newest.result["log"]).read_text()
    assert re.search(rf"check-compiler .*toolchain root .*\({suite}, (made|reused)\)", log), log
    assert "(skipped)" not in log
    assert meminfo_newest.result["vermagic"].split()[0] == newest_kernel.release
    assert [o["changed_functions"] for o in meminfo_newest.result["objects"]] == [["meminfo_proc_show"]]


def test_loads_and_unloads_in_its_kernel(newest_kernel, meminfo_newest):
    script = SH_LIB + r"""
insmod /work/p.ko || exit 10
wait_transition livepatch_meminfo_newest
grep -c '^VMALLOCCHUNK:' /proc/meminfo
unload livepatch_meminfo_newest
grep -c '^VmallocChunk:' /proc/meminfo
"""
    result = run_in_initramfs(newest_kernel, {"/work/p.ko": Path(meminfo_newest.result["module_path"])}, script,
                              timeout=300)
    assert not result.timed_out, result.console[-3000:]
    assert result.exit_code == 0, result.output + result.console[-3000:]
    assert result.output.split() == ["1", "1"], result.output
    for trouble in ("Call Trace", "WARNING:", "BUG:", "Unpatched return thunk"):
        assert trouble not in result.console, result.console[-5000:]
