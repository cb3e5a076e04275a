"""``_kbuild/debuginfo.py``: which object links where, from compile units gcc writes at test time.

A small kernel-like tree is compiled with ``-g`` from its root (so the compile units carry
tree-relative names, as Debian's do); a "vmlinux" is linked from some objects (ET_EXEC, DWARF
already resolved) and a "module" is ``ld -r`` of others (ET_REL: its compile units point at their
abbreviations and names only through ``.rela.debug_info``, which the reader must apply).
"""

from __future__ import annotations

import shutil
import subprocess
from functools import partial
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.debuginfo import (
    cached_compile_units,
    compile_unit_sources,
    decide_goal,
    module_list,
    release_debuginfo,
    tree_relative,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.headers import header_candidates
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.includes import scan_includes
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import StepLog

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("ld") is None, reason="needs gcc, ld")

SOURCES = {
    # mm/Makefile lists mmap.o only through a variable: the Makefile reader says "unconfigured".
    "mm/Makefile": "mmu-y := nommu.o\nmmu-$(CONFIG_MMU) := mmap.o\nobj-y += $(mmu-y)\n",
    "mm/mmap.c": "int mmap_region(int x) { return x + 1; }\n",
    "mm/nommu.c": "int nommu_region(int x) { return x; }\n",
    "fs/xfs/Makefile": "obj-$(CONFIG_XFS_FS) += xfs.o\nxfs-y += xfs_super.o libxfs/xfs_alloc.o\n",
    "fs/xfs/xfs_super.c": "int xfs_fill_super(int x) { return x * 2; }\n",
    "fs/xfs/libxfs/xfs_alloc.c": "int xfs_alloc_vextent(int x) { return x - 1; }\n",
    "drivers/input/Makefile": "obj-$(CONFIG_INPUT_JOYDEV) += joydev.o\nobj-$(CONFIG_INPUT_EVDEV) += evdev.o\n",
    "drivers/input/joydev.c": "int joydev_open(int x) { return x; }\n",
    "drivers/input/evdev.c": "int evdev_open(int x) { return x; }\n",
    "kernel/Makefile": "obj-y += sys.o gone.o\n",
    "kernel/sys.c": "int _start(void) { return 0; }\n",
    "kernel/gone.c": "int gone(void) { return 0; }\n",
}
CONFIG = "CONFIG_MODULES=y\nCONFIG_MMU=y\nCONFIG_XFS_FS=m\nCONFIG_INPUT_EVDEV=m\n"
RELEASE = "6.1.0-test"


def compile_objects(root: Path, sources):
    for rel in sources:
        subprocess.run(["gcc", "-g", "-O1", "-c", rel, "-o", rel[:-2] + ".o"], cwd=root, check=True)
    return [root / (rel[:-2] + ".o") for rel in sources]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The tree, its vmlinux, modules.order/builtin and the debug modules."""
    root = tmp_path_factory.mktemp("tree")
    for rel, text in SOURCES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / ".config").write_text(CONFIG)
    vmlinux = root / "vmlinux"
    objects = compile_objects(root, ["kernel/sys.c", "mm/mmap.c"])
    subprocess.run(["gcc", "-nostdlib", "-static", "-o", str(vmlinux), *map(str, objects)], check=True)
    modules = root / "lib/modules" / RELEASE
    debug = root / "usr/lib/debug/lib/modules" / RELEASE
    (debug / "kernel/fs/xfs").mkdir(parents=True)
    xfs = compile_objects(root, ["fs/xfs/xfs_super.c", "fs/xfs/libxfs/xfs_alloc.c"])
    subprocess.run(["ld", "-r", "-o", str(debug / "kernel/fs/xfs/xfs.ko"), *map(str, xfs)], check=True)
    modules.mkdir(parents=True)
    # evdev.ko ships, but its debug file is not installed: modules.order alone names it.
    (modules / "modules.order").write_text("kernel/fs/xfs/xfs.ko\nkernel/drivers/input/evdev.ko\n")
    (modules / "modules.builtin").write_text("kernel/mm/mmap.ko\n")
    return root, vmlinux, modules, debug


@pytest.fixture
def info(release, tmp_path):
    root, vmlinux, modules, debug = release
    return release_debuginfo(vmlinux, RELEASE, modules, debug, tmp_path / "cache", StepLog(tmp_path / "log"))


def config():
    return {"CONFIG_MODULES": "y", "CONFIG_MMU": "y", "CONFIG_XFS_FS": "m", "CONFIG_INPUT_EVDEV": "m"}


def test_compile_units_of_an_executable_and_of_a_relocatable_module(release):
    root, vmlinux, _modules, debug = release
    assert compile_unit_sources(vmlinux) == ["kernel/sys.c", "mm/mmap.c"]
    # Unrelocated, every unit of the module would read the first unit's abbreviations and names.
    assert compile_unit_sources(debug / "kernel/fs/xfs/xfs.ko") == ["fs/xfs/libxfs/xfs_alloc.c", "fs/xfs/xfs_super.c"]


def test_compile_units_are_scanned_once_then_read_from_the_cache(release, tmp_path):
    _root, vmlinux, _modules, _debug = release
    cache = tmp_path / "vmlinux.json"
    first, seconds = cached_compile_units(vmlinux, cache)
    again, cached_seconds = cached_compile_units(vmlinux, cache)
    assert first == again == ["kernel/sys.c", "mm/mmap.c"]
    assert seconds is not None and cached_seconds is None
    # a different vmlinux (size/mtime) is scanned again, not answered from the old cache
    other = tmp_path / "vmlinux-other"
    shutil.copyfile(vmlinux, other)
    assert cached_compile_units(other, cache)[1] is not None


@pytest.mark.parametrize("obj, kind, module, decided_by", [
    # the Makefile reader gets mm/mmap.o wrong (it is listed through mmu-y); DWARF does not
    ("mm/mmap.o", "vmlinux", None, "vmlinux DWARF"),
    ("fs/xfs/libxfs/xfs_alloc.o", "module", "xfs", "xfs.ko DWARF"),
    ("fs/xfs/xfs_super.o", "module", "xfs", "xfs.ko DWARF"),
    ("drivers/input/evdev.o", "module", "evdev", "modules.order"),
    ("drivers/input/joydev.o", "unconfigured", None, "Makefile and vmlinux DWARF"),
    # listed for vmlinux by its Makefile but in no compile unit: refused, never skipped
    ("kernel/gone.o", "undecided", None, "vmlinux DWARF"),
])
def test_decide_goal_from_debuginfo_first(release, info, obj, kind, module, decided_by):
    root = release[0]
    goal = decide_goal(info, root, obj, config())
    assert (goal.kind, goal.module, goal.decided_by) == (kind, module, decided_by), goal.reason


def test_makefile_reader_alone_is_the_fallback(release):
    root = release[0]
    goal = decide_goal(None, root, "mm/mmap.o", config())
    assert (goal.kind, goal.decided_by) == ("unconfigured", "Makefile")


def test_module_compile_units_are_cached_per_release(release, info, tmp_path):
    decide_goal(info, release[0], "fs/xfs/xfs_super.o", config())
    cache = tmp_path / "cache" / RELEASE / "modules" / "xfs.json"
    assert cache.is_file() and "fs/xfs/xfs_super.c" in cache.read_text()
    log = (tmp_path / "log").read_text()
    assert "vmlinux-compile-units" in log and "xfs: 2 compile units (scanned in" in log


def test_module_list_reads_installed_and_tree_formats(tmp_path):
    (tmp_path / "installed").write_text("kernel/fs/xfs/xfs.ko\nkernel/arch/x86/events/intel/intel-uncore.ko\n")
    (tmp_path / "tree").write_text("fs/xfs/xfs.o\n")
    assert module_list(tmp_path / "installed") == {"xfs": "fs/xfs/xfs.ko",
                                                   "intel-uncore": "arch/x86/events/intel/intel-uncore.ko"}
    assert module_list(tmp_path / "tree") == {"xfs": "fs/xfs/xfs.ko"}
    assert module_list(tmp_path / "absent") == {}


@pytest.mark.parametrize("name, comp_dir, expected", [
    ("mm/mmap.c", "debian/build/build_amd64_none_cloud-amd64", "mm/mmap.c"),
    ("/build/linux-6.1.176/arch/x86/kernel/head_64.S", "/build/linux-6.1.176/debian/build/x",
     "arch/x86/kernel/head_64.S"),
    ("../../../mm/mmap.c", "/x/debian/build", "mm/mmap.c"),
    ("/elsewhere/x.S", "relative/dir", None),
])
def test_tree_relative_names(name, comp_dir, expected):
    assert tree_relative(name, comp_dir) == expected


def test_header_candidates_take_the_same_decider(release, info):
    """A header mm/mmap.c includes: its object is a candidate only when debuginfo decides."""
    root = release[0]
    (root / "mm/mmap_internal.h").write_text("#define MMAP_INTERNAL 1\n")
    (root / "mm/mmap.c").write_text('#include "mmap_internal.h"\n' + SOURCES["mm/mmap.c"])
    try:
        graph = scan_includes(root)
        by_makefile = header_candidates(root, graph, "mm/mmap_internal.h", config())
        by_debuginfo = header_candidates(root, graph, "mm/mmap_internal.h", config(), partial(decide_goal, info))
    finally:
        (root / "mm/mmap.c").write_text(SOURCES["mm/mmap.c"])
        (root / "mm/mmap_internal.h").unlink()
    assert "mm/mmap.c" in by_makefile.skipped and by_makefile.objects == []
    assert by_debuginfo.objects == ["mm/mmap.o"]
