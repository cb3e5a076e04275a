"""Kernel-safety rules of docs/engine.md ("Safety"), proven in the booted Debian 6.1 kernel.

Each test builds real patch modules (engine output + ``kmod/`` hook + klp conversion) and runs
them under qemu with ``oops=panic``: a wrong pointer ends the run instead of passing unseen.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.diff import create_diff_object
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.lookup import load_parent_symtab

from tests.integration.engine_pairs import build_pair
from tests.integration.test_engine_vm import (
    KMOD,
    build_livepatch,
    engine_struct_sizes,
    link_livepatch,
    prepare_kmod_dir,
    wait_transition,
)
from tests.testbed.kbuild import build_external_module
from tests.testbed.vm import run_in_initramfs

pytestmark = pytest.mark.integration

KERNEL_TROUBLE = re.compile(r"BUG:|Oops|general protection|WARNING:|Call Trace")


def _uptime_of(out: str, key: str) -> float:
    values = [float(line.split("=")[1]) for line in out.splitlines() if line.startswith(key + "=")]
    assert values, out
    return values[0]


def _dmesg_time(out: str, message: str) -> float:
    """The timestamp of the first kernel log line holding ``message`` (``[  12.345678] ...``)."""
    for line in out.splitlines():
        if message in line:
            match = re.search(r"\[\s*(\d+\.\d+)\]", line)
            if match:
                return float(match.group(1))
    raise AssertionError(f"no kernel log line with {message!r}:\n{out}")


def test_callback_armed_by_a_replaced_patch_runs_after_its_module_is_gone(kernel_6_1, tmp_path):
    """#19 item 2: patched ``vmstat_shepherd`` (build A) arms a heap work item on itself; build B
    replaces A atomically, A is removed, then the work item runs.

    Its function pointer is the running kernel's ``vmstat_shepherd`` (a klp relocation, not A's
    copy), so ftrace sends it to B's replacement: "armed by A ran in B".  Were it A's copy, the
    work would jump into A's freed module text after ``rmmod`` (an oops: the run panics).
    """
    first = build_livepatch(kernel_6_1, "armed_work_a", "lp_armed_a", tmp_path / "a")
    second = build_livepatch(kernel_6_1, "armed_work_b", "lp_armed_b", tmp_path / "b")
    script = f"""
insmod /a.ko || echo INSMOD_A_FAILED
{wait_transition("lp_armed_a")}
for i in $(seq 1 30); do dmesg | grep -q 'lp_armed: armed by A' && break; sleep 1; done
insmod /b.ko || echo INSMOD_B_FAILED
{wait_transition("lp_armed_b")}
for i in $(seq 1 10); do [ -e /sys/kernel/livepatch/lp_armed_a ] || break; sleep 1; done
echo "b_enabled=$(cat /sys/kernel/livepatch/lp_armed_b/enabled)"
rmmod lp_armed_a && echo "RMMOD_A_AT=$(cut -d' ' -f1 /proc/uptime)"
for i in $(seq 1 40); do dmesg | grep -q 'lp_armed: work armed by A ran' && break; sleep 1; done
dmesg | grep -E 'lp_armed|BUG:|Oops|WARNING:|Call Trace'
echo SCRIPT_DONE
"""
    result = run_in_initramfs(kernel_6_1, files={"/a.ko": first, "/b.ko": second}, script=script, timeout=420)
    out = result.output
    assert result.exit_code == 0, result.console[-4000:]
    assert "INSMOD_A_FAILED" not in out and "INSMOD_B_FAILED" not in out, out
    assert "b_enabled=1" in out and "SCRIPT_DONE" in out, out
    assert "lp_armed: armed by A" in out, out
    assert "lp_armed: work armed by A ran in B" in out, out
    # it ran after A's module was gone, and the kernel saw no fault on the way
    assert _dmesg_time(out, "lp_armed: work armed by A ran in B") > _uptime_of(out, "RMMOD_A_AT"), out
    assert not KERNEL_TROUBLE.search(out) and not KERNEL_TROUBLE.search(result.console), result.console[-4000:]


CB_TARGET = "kpatch_cb_target"
CB_TARGET_SOURCE = Path(__file__).resolve().parent / "kmods" / f"{CB_TARGET}.c"
CB_CALLBACK = r"""
#include "kpatch-macros.h"

static void cb_target_post_patch(patch_object *obj)
{
    pr_info("kpatch_cb_target post_patch: magic=%d\n", cb_target_magic);
}
KPATCH_POST_PATCH_CALLBACK(cb_target_post_patch);

static int __init cb_target_init(void)"""


def _with_callback(source: str) -> str:
    patched = source.replace("cb_target original %d", "cb_target patched %d") \
        .replace("static int __init cb_target_init(void)", CB_CALLBACK.lstrip("\n"))
    assert patched.count("KPATCH_POST_PATCH_CALLBACK") == 1 and "cb_target patched" in patched
    return patched


def _cb_target_builds(kernel, root: Path, patch=_with_callback) -> "tuple[Path, Path]":
    """The fixture module as it runs (original) and its patched object (``patch`` of its source),
    with the engine's flags."""
    source = CB_TARGET_SOURCE.read_text()
    patched = patch(source)
    assert patched != source
    trace = CB_TARGET_SOURCE.with_name("kpatch_cb_trace.h").read_text()
    flags = f"ccflags-y += -ffunction-sections -fdata-sections -I$(src) -I{KMOD}\n"
    orig_ko = build_external_module(kernel, root / "orig", {f"{CB_TARGET}.c": source, "kpatch_cb_trace.h": trace},
                                    CB_TARGET, extra_kbuild=flags)
    build_external_module(kernel, root / "patched", {f"{CB_TARGET}.c": patched, "kpatch_cb_trace.h": trace},
                          CB_TARGET, extra_kbuild=flags)
    return orig_ko, root / "patched" / f"{CB_TARGET}.o"


def test_module_callback_runs_when_its_module_loads_not_before(kernel_6_1, tmp_path):
    """#19 item 3: one patch for vmlinux (meminfo) and for the module kpatch_cb_target, whose
    post-patch callback reads the module's static ``cb_target_magic``.

    Loaded while the module is absent, the vmlinux part goes live and the callback does not run
    (its object is not there; attached to vmlinux, it would read through an unapplied relocation:
    an oops).  When the module loads, livepatch patches it and then runs the callback.
    """
    orig_ko, patched_obj = _cb_target_builds(kernel_6_1, tmp_path / "target")
    work = prepare_kmod_dir(tmp_path / "kmod")
    sizes, symvers = engine_struct_sizes(kernel_6_1), str(kernel_6_1.headers / "Module.symvers")
    pair = build_pair("meminfo", kernel_6_1)
    assert create_diff_object(str(pair.orig), str(pair.patched), "vmlinux",
                              load_parent_symtab(str(kernel_6_1.vmlinux), "vmlinux"), symvers, "lp_cb",
                              str(work / "vmlinux_part.o"), sizes).has_changes
    module_part = create_diff_object(str(orig_ko.with_suffix(".o")), str(patched_obj), CB_TARGET,
                                     load_parent_symtab(str(orig_ko), CB_TARGET), symvers, "lp_cb",
                                     str(work / "module_part.o"), sizes)
    assert module_part.changed_functions == ["kpatch_cb_target_show"], module_part
    ko = link_livepatch(kernel_6_1, work, "lp_cb", "vmlinux_part.o module_part.o")
    script = f"""
insmod /lp.ko || echo INSMOD_PATCH_FAILED
{wait_transition("lp_cb")}
grep -c '^VMALLOCCHUNK:' /proc/meminfo | sed 's/^/vmlinux_patched=/'
echo "callbacks_before=$(dmesg | grep -c 'kpatch_cb_target post_patch')"
insmod /target.ko || echo INSMOD_TARGET_FAILED
sleep 1
cat /proc/{CB_TARGET}
echo "callbacks_after=$(dmesg | grep -c 'kpatch_cb_target post_patch')"
dmesg | grep -E 'kpatch_cb_target|BUG:|Oops|WARNING:|Call Trace'
"""
    result = run_in_initramfs(kernel_6_1, files={"/lp.ko": ko, "/target.ko": orig_ko}, script=script, timeout=300)
    out = result.output
    assert result.exit_code == 0, result.console[-4000:]
    assert "INSMOD_PATCH_FAILED" not in out and "INSMOD_TARGET_FAILED" not in out, out
    assert "vmlinux_patched=1" in out and "callbacks_before=0" in out, out
    assert "cb_target patched 4242" in out, out   # the module's part went live when it loaded
    assert "callbacks_after=1" in out and "kpatch_cb_target post_patch: magic=4242" in out, out
    assert not KERNEL_TROUBLE.search(out) and not KERNEL_TROUBLE.search(result.console), result.console[-4000:]


def _debug_text_changed(source: str) -> str:
    return source.replace('seq_puts(m, "cb_debug original\\n");', 'seq_puts(m, "cb_debug patched\\n");')


def test_module_function_with_tracepoint_and_pr_debug_is_patched_and_runs(kernel_6_1, tmp_path):
    """#19 item 4: a module function firing the module's own tracepoint and holding a pr_debug()
    builds (the tracepoint's jump label and static call, keyed in the module, are dropped and
    reported), loads and runs: the tracepoint stays inert while patched and fires again after.

    The pr_debug()'s descriptor travels into the patch module with the function (its key is the
    patch module's own), so that site is kept and even prints once enabled.
    """
    orig_ko, patched_obj = _cb_target_builds(kernel_6_1, tmp_path / "target", _debug_text_changed)
    work = prepare_kmod_dir(tmp_path / "kmod")
    result = create_diff_object(str(orig_ko.with_suffix(".o")), str(patched_obj), CB_TARGET,
                                load_parent_symtab(str(orig_ko), CB_TARGET),
                                str(kernel_6_1.headers / "Module.symvers"), "lp_dbg",
                                str(work / "module_part.o"), engine_struct_sizes(kernel_6_1))
    assert result.changed_functions == ["kpatch_cb_debug_show"], result
    assert sorted(result.inert_sites) == [
        "tracepoint __tracepoint_kpatch_cb_read in kpatch_cb_debug_show (key in module kpatch_cb_target)",
        "tracepoint static call __SCK__tp_func_kpatch_cb_read in kpatch_cb_debug_show "
        "(key in module kpatch_cb_target)"], result.inert_sites
    ko = link_livepatch(kernel_6_1, work, "lp_dbg", "module_part.o")
    script = f"""
insmod /target.ko || echo INSMOD_TARGET_FAILED
T=/sys/kernel/tracing; mount -t tracefs none $T
echo 1 > $T/events/kpatch_cb/kpatch_cb_read/enable
cat /proc/kpatch_cb_debug
echo "events_before=$(grep -c 'kpatch_cb_read: pid=' $T/trace)"
insmod /lp.ko || echo INSMOD_PATCH_FAILED
{wait_transition("lp_dbg")}
echo "enabled=$(cat /sys/kernel/livepatch/lp_dbg/enabled)"
cat /proc/kpatch_cb_debug
echo "events_patched=$(grep -c 'kpatch_cb_read: pid=' $T/trace)"
echo 'func kpatch_cb_debug_show +p' > /proc/dynamic_debug/control && echo DDEBUG_ON
cat /proc/kpatch_cb_debug
echo "printed=$(dmesg | grep -c 'kpatch_cb_debug_show read by')"
echo 0 > /sys/kernel/livepatch/lp_dbg/enabled
{wait_transition("lp_dbg")}
sleep 1
rmmod lp_dbg && echo RMMOD_OK
cat /proc/kpatch_cb_debug
echo "events_after=$(grep -c 'kpatch_cb_read: pid=' $T/trace)"
dmesg | grep -E 'BUG:|Oops|WARNING:|Call Trace'
echo SCRIPT_DONE
"""
    vm = run_in_initramfs(kernel_6_1, files={"/lp.ko": ko, "/target.ko": orig_ko}, script=script, timeout=300)
    out = vm.output
    assert vm.exit_code == 0, vm.console[-4000:]
    assert "INSMOD_TARGET_FAILED" not in out and "INSMOD_PATCH_FAILED" not in out and "enabled=1" in out, out
    assert out.count("cb_debug patched") == 2 and out.count("cb_debug original") == 2, out
    # inert while patched (two reads, no event), live again once the patch is gone
    assert "events_before=1" in out and "events_patched=1" in out and "events_after=2" in out, out
    assert "DDEBUG_ON" in out and "printed=1" in out, out
    assert "RMMOD_OK" in out and "SCRIPT_DONE" in out, out
    assert not KERNEL_TROUBLE.search(out) and not KERNEL_TROUBLE.search(vm.console), vm.console[-4000:]
