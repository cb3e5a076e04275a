"""Kernel-safety rules of docs/engine.md ("Safety"), proven in the booted Debian 6.1 kernel.

Each test builds real patch modules (engine output + ``kmod/`` hook + klp conversion) and runs
them under qemu with ``oops=panic``: a wrong pointer ends the run instead of passing unseen.
"""

from __future__ import annotations

import re

import pytest

from tests.integration.test_engine_vm import build_livepatch, wait_transition
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
