"""kpatch_build with patches as people bring them, on the real Debian 6.1.0-50-cloud-amd64 kernel.

Patches of our own in patches/kbuild-6.1, each for one cause a kpatch user moving over hit:
an object its Makefile lists through a variable (mm/mmap.c via mmu-y), a fix that also touches a
driver this kernel's config leaves out, and a patch that applies only with fuzz 1.  Each module is
built through Ansible and loaded in the booted kernel; one VM boot checks all of them.
"""

import re
from pathlib import Path

import pytest

from tests.integration.test_build_kpatch_build import (  # noqa: F401  pylint: disable=unused-import
    build,
    env,
    forget_cached_module,
    functions_by_object,
    vm,
)
from tests.testbed.ansible_run import REPO

pytestmark = pytest.mark.integration

PATCHES = REPO / "tests" / "integration" / "patches" / "kbuild-6.1"


def built(env, patch, name, **overrides):
    forget_cached_module(env, name)
    run = build(env, [PATCHES / patch], name, **overrides)
    assert not run.failed, run.output
    return run


@pytest.fixture(scope="module")
def mmap_run(env):
    return built(env, "mmap-vdso-name.patch", "livepatch-mmap-vdso")


@pytest.fixture(scope="module")
def skip_run(env):
    return built(env, "joydev-and-cmdline.patch", "livepatch-joydev-cmdline")


@pytest.fixture(scope="module")
def fuzz_run(env):
    return built(env, "loadavg-fuzz1.patch", "livepatch-loadavg-fuzz", fuzz=1)


def test_object_listed_through_a_makefile_variable_is_decided_by_vmlinux_dwarf(mmap_run):
    assert functions_by_object(mmap_run) == {"mm/mmap.o": ("vmlinux", ["special_mapping_name"], [])}
    log = Path(mmap_run.result["log"]).read_text()
    assert re.search(r"object-goal .*mm/mmap\.o: vmlinux \(decided by vmlinux DWARF\)", log), log
    assert re.search(r"vmlinux-compile-units .*\d+ compile units", log), log
    assert mmap_run.result["skipped_files"] == [] and mmap_run.result["hunk_adjustments"] == []


def test_file_the_config_leaves_out_is_skipped_and_the_rest_built(skip_run):
    assert functions_by_object(skip_run) == {"fs/proc/cmdline.o": ("vmlinux", ["cmdline_proc_show"], [])}
    (skipped,) = skip_run.result["skipped_files"]
    assert skipped["file"] == "drivers/input/joydev.c"
    assert "joydev.o is not enabled by this config in drivers/input/Makefile" in skipped["reason"]
    assert "no compile unit of vmlinux-6.1.0-50-cloud-amd64 is built from drivers/input/joydev.c" in skipped["reason"]
    log = Path(skip_run.result["log"]).read_text()
    assert "skip-file" in log and "drivers/input/joydev.c" in log


def test_patch_touching_only_files_the_kernel_does_not_build_is_refused(env):
    run = build(env, [PATCHES / "joydev-only.patch"], "livepatch-joydev-only")
    assert run.failed
    assert "nothing to live patch: this kernel builds no object from the files the patches change" in run.result["msg"]
    assert "drivers/input/joydev.c" in run.result["msg"]


def test_patch_needing_fuzz_is_refused_exactly_and_says_which_fuzz_applies(env):
    run = build(env, [PATCHES / "loadavg-fuzz1.patch"], "livepatch-loadavg-exact")
    assert run.failed
    msg = run.result["msg"]
    assert "fs/proc/loadavg.c: Hunk #1 FAILED at 17" in msg and "it applies with fuzz 1" in msg, msg


def test_patch_applied_with_fuzz_1_reports_the_hunk(fuzz_run, env):
    assert functions_by_object(fuzz_run) == {"fs/proc/loadavg.o": ("vmlinux", ["loadavg_proc_show"], [])}
    (adjusted,) = fuzz_run.result["hunk_adjustments"]
    assert (adjusted["file"], adjusted["hunk"], adjusted["line"], adjusted["fuzz"], adjusted["offset"]) == (
        "fs/proc/loadavg.c", 1, 17, 1, 0)
    tree_file = next((env["cache"] / "trees").glob("*/tree/fs/proc/loadavg.c"))
    pristine = Path(env["args"]["source_dir"]) / "fs/proc/loadavg.c"
    assert tree_file.read_bytes() == pristine.read_bytes()  # pristine again after the build
    assert "hunk-adjusted" in Path(fuzz_run.result["log"]).read_text()


def test_modules_patch_and_unpatch_the_booted_kernel(mmap_run, skip_run, fuzz_run, env):
    files = {f"/work/{name}.ko": Path(run.result["module_path"])
             for name, run in (("mmap", mmap_run), ("cmdline", skip_run), ("loadavg", fuzz_run))}
    out = vm(env, files, r"""
check() {  # $1 = module file, $2 = sysfs name, $3 = file, $4 = marker
  before=$(grep -c "$4" $3 || true)
  insmod /work/$1.ko || exit 10
  wait_transition $2
  during=$(grep -c "$4" $3 || true)
  unload $2
  after=$(grep -c "$4" $3 || true)
  echo "$1 $before $during $after"
}
check mmap livepatch_mmap_vdso /proc/self/maps vdso_kpatch
check cmdline livepatch_joydev_cmdline /proc/cmdline kpatch_skip
check loadavg livepatch_loadavg_fuzz /proc/loadavg kpatch_fuzz
""")
    assert out.strip().split("\n")[-3:] == ["mmap 0 1 0", "cmdline 0 1 0", "loadavg 0 1 0"], out
