"""End to end on the real Debian 6.1 kernel: engine output → kmod hook module → klp conversion →
loaded into the booted kernel under qemu, where the patched behaviour must show and go away again.

This is the proof that the engine's output (code, special sections, ``.kpatch.*`` records) is
what the livepatch core needs; the module build uses ``kmod/`` and the conversion ``_engine/klp.py``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.diff import create_diff_object
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.klp import create_klp_module
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.lookup import load_parent_symtab
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kconfig import KernelConfig
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.modcheck import check_objtool_sites
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.structsizes import special_struct_sizes

from tests.integration.engine_pairs import build_pair
from tests.testbed.kernels import cache_root
from tests.testbed.vm import run_in_initramfs

pytestmark = pytest.mark.integration
KMOD = Path(__file__).resolve().parents[2] / "kmod"


def engine_struct_sizes(kernel) -> dict:
    return special_struct_sizes(kernel.vmlinux, kernel.release, cache_root() / "struct-sizes", kernel.config)


def prepare_kmod_dir(workdir: Path) -> Path:
    """A fresh directory holding kmod/ (the hook and its Kbuild), for engine outputs to join."""
    workdir.mkdir(parents=True)
    for item in KMOD.iterdir():
        if item.is_file():
            shutil.copy(item, workdir / item.name)
    return workdir


def link_livepatch(kernel, workdir: Path, module: str, objects: str) -> Path:
    """kbuild links the hook with the engine outputs ``objects`` (in ``workdir``); klp conversion."""
    proc = subprocess.run(["make", "-C", str(workdir), f"KDIR={kernel.headers}", f"KPATCH_NAME={module}",
                           f"KPATCH_OBJECTS={objects}"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    final = workdir / f"{module}-klp.ko"
    create_klp_module(str(workdir / f"{module}.ko"), str(final))
    return final


def build_livepatch(kernel, pair_name: str, module: str, workdir: Path) -> Path:
    """Engine → kbuild module with the hook → livepatch ELF; returns the final .ko."""
    pair = build_pair(pair_name, kernel)
    symtab = load_parent_symtab(str(kernel.vmlinux), "vmlinux")
    prepare_kmod_dir(workdir)
    result = create_diff_object(str(pair.orig), str(pair.patched), "vmlinux", symtab,
                                str(kernel.headers / "Module.symvers"), module, str(workdir / "patch.o"),
                                engine_struct_sizes(kernel))
    assert result.has_changes
    return link_livepatch(kernel, workdir, module, "patch.o")


def wait_transition(module: str) -> str:
    return (f"for i in $(seq 1 20); do t=$(cat /sys/kernel/livepatch/{module}/transition 2>/dev/null); "
            f"[ \"$t\" = 1 ] || break; sleep 1; done\n")


def test_meminfo_livepatch_applies_and_reverts_in_the_running_kernel(kernel_6_1, tmp_path):
    module = "lp_meminfo"
    ko = build_livepatch(kernel_6_1, "meminfo", module, tmp_path / "kmod")
    script = f"""
grep -c '^VmallocChunk:' /proc/meminfo
insmod /lp.ko || echo INSMOD_FAILED
{wait_transition(module)}
echo "enabled=$(cat /sys/kernel/livepatch/{module}/enabled)"
grep '^VMALLOCCHUNK:' /proc/meminfo || echo NOT_PATCHED
echo 0 > /sys/kernel/livepatch/{module}/enabled
{wait_transition(module)}
sleep 1
grep '^VmallocChunk:' /proc/meminfo || echo NOT_REVERTED
rmmod {module} && echo RMMOD_OK
"""
    result = run_in_initramfs(kernel_6_1, files={"/lp.ko": ko}, script=script, timeout=240)
    out = result.output
    assert result.exit_code == 0, result.console[-3000:]
    assert "INSMOD_FAILED" not in out and "enabled=1" in out, out
    assert "VMALLOCCHUNK:" in out and "NOT_PATCHED" not in out, out
    assert "NOT_REVERTED" not in out and "RMMOD_OK" in out, out


def test_dev_valid_name_livepatch_changes_rename_behaviour(kernel_6_1, tmp_path):
    module = "lp_devname"
    ko = build_livepatch(kernel_6_1, "dev_valid_name", module, tmp_path / "kmod")
    script = f"""
ip link set dev lo name 'a@b' && echo BEFORE_OK
ip link set dev 'a@b' name lo
insmod /lp.ko || echo INSMOD_FAILED
{wait_transition(module)}
ip link set dev lo name 'c@d' 2>&1 && echo AFTER_ACCEPTED || echo AFTER_REJECTED
ip link set dev lo name 'plain' && echo PLAIN_OK
"""
    result = run_in_initramfs(kernel_6_1, files={"/lp.ko": ko}, script=script, timeout=240)
    out = result.output
    assert result.exit_code == 0, result.console[-3000:]
    assert "BEFORE_OK" in out and "INSMOD_FAILED" not in out, out
    assert "AFTER_REJECTED" in out and "AFTER_ACCEPTED" not in out, out
    assert "PLAIN_OK" in out, out


def run_patched(kernel, ko: Path, module: str, while_enabled: str, setup: str = "") -> str:
    """Boot, load ``ko``, run ``while_enabled`` once the transition is done, disable and unload.

    Returns the output after asserting the module loaded, enabled, and unloaded cleanly.
    """
    script = f"""
{setup}
insmod /lp.ko || echo INSMOD_FAILED
{wait_transition(module)}
echo "enabled=$(cat /sys/kernel/livepatch/{module}/enabled) transition=$(cat /sys/kernel/livepatch/{module}/transition)"
{while_enabled}
echo 0 > /sys/kernel/livepatch/{module}/enabled
{wait_transition(module)}
sleep 1
rmmod {module} && echo RMMOD_OK
"""
    result = run_in_initramfs(kernel, files={"/lp.ko": ko}, script=script, timeout=240)
    out = result.output
    assert result.exit_code == 0, result.console[-3000:]
    assert "INSMOD_FAILED" not in out and "enabled=1 transition=0" in out, out
    assert "RMMOD_OK" in out, out
    return out


def _counted(out: str, key: str) -> int:
    values = [int(line.split("=")[1]) for line in out.splitlines() if line.startswith(key + "=")]
    assert values, out
    return values[0]


def test_cold_child_livepatch_loads_and_unloads(kernel_6_1, tmp_path):
    """__dev_remove_pack changed only in its .cold part: the module carries both and loads."""
    module = "lp_cold"
    ko = build_livepatch(kernel_6_1, "dev_remove_pack", module, tmp_path / "kmod")
    out = run_patched(kernel_6_1, ko, module, "echo \"colds=$(grep -c '__dev_remove_pack.cold' /proc/kallsyms)\"")
    # the kernel's own .cold part plus the module's copy
    assert _counted(out, "colds") == 2, out


def test_changed_parent_with_unchanged_cold_child_runs(kernel_6_1, tmp_path):
    """__dev_remove_pack changed in its hot path: its copied .cold part comes along (docs/engine.md).

    Every AF_PACKET socket busybox's udhcpc opens is unhooked through __dev_remove_pack when it
    closes, so the new parent runs while the patch is enabled (ftrace, filtered to the module's
    copy, counts it; oops=panic: a crash fails the run).
    """
    module = "lp_cold_parent"
    ko = build_livepatch(kernel_6_1, "dev_remove_pack_parent", module, tmp_path / "kmod")
    out = run_patched(kernel_6_1, ko, module, f"""
T=/sys/kernel/tracing; mount -t tracefs none $T
echo '__dev_remove_pack:mod:{module}' > $T/set_ftrace_filter && echo function > $T/current_tracer
for i in 1 2 3; do udhcpc -i lo -n -q -t 1 -T 1 >/dev/null 2>&1; done
echo "calls=$(grep -c '__dev_remove_pack <-' $T/trace)"
echo nop > $T/current_tracer
""", setup="ip link set lo up")
    assert _counted(out, "calls") >= 1, out  # the module's copy did run


def test_inlined_helper_patch_keeps_its_retpoline_sites_and_runs(kernel_6_1, tmp_path):
    """A printk in sysctl_head_grab (inlined into 7 proc_sys_* callers, some with retpoline calls).

    objtool ran at compile time on 6.1: the callers' .retpoline_sites/.return_sites entries travel
    with them, and the site check (which reads a "cs call" as starting at its CS prefix, where
    objtool lists it) accepts the module.  Reading /proc/sys then runs the patched callers.
    """
    module = "lp_sysctl"
    ko = build_livepatch(kernel_6_1, "sysctl_head_grab", module, tmp_path / "kmod")
    sites = check_objtool_sites(ko, KernelConfig.read(kernel_6_1.config), kernel_6_1.source_tree())
    assert sites.retpolines >= 1 and sites.returns >= 1
    out = run_patched(kernel_6_1, ko, module, """
cat /proc/sys/kernel/ostype
ls /proc/sys/kernel > /dev/null
echo "printed=$(dmesg | grep -c 'sysctl_head_grab ')"
""")
    assert "Linux" in out and _counted(out, "printed") >= 1, out
