"""Which object links where, from Debian's own 6.1.0-50-cloud-amd64 debuginfo.

The -dbg vmlinux (163 MB of .debug_info) is scanned cold into a fresh cache, then read back from it;
the debug xfs.ko (a composite module of 100-odd objects, a relocatable file) is taken from the -dbg
package.  The decisions are checked against what the kernel really contains, including the case the
Makefile reader gets wrong (mm/mmap.o, listed in mm/Makefile through mmu-y).
"""

import subprocess
import time

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild import debuginfo
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.debuginfo import (
    cached_compile_units,
    decide_goal,
    release_debuginfo,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kconfig import parse_config
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.objects import object_goal
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import StepLog
from tests.testbed.kernels import cache_lock

pytestmark = pytest.mark.integration

XFS = "kernel/fs/xfs/xfs.ko"


@pytest.fixture(scope="module")
def debug_modules(kernel_6_1):
    """A debug-modules directory holding xfs.ko from the -dbg package (extracted once, kept in the cache)."""
    root = kernel_6_1.root / "dbg-modules"
    target = root / XFS
    with cache_lock(f"dbg-modules-{kernel_6_1.release}"):
        if not target.is_file():
            member = f"./usr/lib/debug/lib/modules/{kernel_6_1.release}/{XFS}"
            tmp = root / ".extract"
            tmp.mkdir(parents=True, exist_ok=True)
            tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(kernel_6_1.debs["dbg"])], stdout=subprocess.PIPE)
            subprocess.run(["tar", "-x", "-C", str(tmp), member], stdin=tar.stdout, check=True)
            tar.stdout.close()
            assert tar.wait() == 0
            target.parent.mkdir(parents=True, exist_ok=True)
            (tmp / member).rename(target)
    return root


def test_vmlinux_compile_units_scanned_once_then_cached(kernel_6_1, tmp_path):
    cache = tmp_path / "vmlinux.json"
    start = time.monotonic()
    sources, scan_seconds = cached_compile_units(kernel_6_1.vmlinux, cache)
    cold = time.monotonic() - start
    start = time.monotonic()
    again, cached_seconds = cached_compile_units(kernel_6_1.vmlinux, cache)
    warm = time.monotonic() - start
    print(f"vmlinux compile units: {len(sources)}; cold scan {cold:.1f}s, cached read {warm:.3f}s")
    assert scan_seconds is not None and cached_seconds is None and again == sources
    assert warm < cold  # the stdlib reader scans in under a second; the cached read is cheaper still
    assert len(sources) > 2000
    for built in ("mm/mmap.c", "fs/proc/meminfo.c", "kernel/sys.c", "arch/x86/kernel/head_64.S"):
        assert built in sources, built
    # a driver the cloud config leaves out, and one it builds as a module
    assert "drivers/input/joydev.c" not in sources and "drivers/block/loop.c" not in sources


def test_stdlib_reader_matches_pyelftools_on_vmlinux(kernel_6_1):
    """Every compile unit of the real vmlinux, name and directory, as pyelftools reads them (13 s)."""
    names = debuginfo.compile_unit_names(kernel_6_1.vmlinux)
    assert len(names) > 2000
    assert names == debuginfo._unit_names_with_pyelftools(kernel_6_1.vmlinux)


@pytest.mark.parametrize("obj, kind, module, decided_by", [
    ("mm/mmap.o", "vmlinux", None, "vmlinux DWARF"),
    ("fs/proc/meminfo.o", "vmlinux", None, "vmlinux DWARF"),
    ("fs/xfs/libxfs/xfs_alloc.o", "module", "xfs", "xfs.ko DWARF"),
    ("fs/xfs/xfs_super.o", "module", "xfs", "xfs.ko DWARF"),
    ("drivers/block/loop.o", "module", "loop", "modules.order"),
    ("net/ipv4/tcp_bbr.o", "module", "tcp_bbr", "modules.order"),
    ("drivers/input/joydev.o", "unconfigured", None, "Makefile and vmlinux DWARF"),
])
def test_decisions_on_the_real_release(kernel_6_1, debug_modules, tmp_path_factory, obj, kind, module, decided_by):
    cache = tmp_path_factory.getbasetemp() / "debuginfo-cache"
    info = release_debuginfo(kernel_6_1.vmlinux, kernel_6_1.release, kernel_6_1.modules_dir, debug_modules,
                             cache, StepLog(cache / "steps.log"))
    goal = decide_goal(info, kernel_6_1.source_tree(), obj, parse_config(kernel_6_1.config.read_text()))
    assert (goal.kind, goal.module, goal.decided_by) == (kind, module, decided_by), goal.reason


def test_makefile_reader_alone_gets_mmap_wrong(kernel_6_1):
    """Why debuginfo decides first: mm/Makefile lists mmap.o only through mmu-y."""
    goal = object_goal(kernel_6_1.source_tree(), "mm/mmap.o", parse_config(kernel_6_1.config.read_text()))
    assert goal.kind == "unconfigured"
