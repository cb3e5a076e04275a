"""The ELF writer's output used by the real kernel tool chain and loaded by the real kernel.

* Kernel objects compiled from the Debian 6.1 tree (kpatch flags) round-trip to equivalent
  objects that ``ld -r`` links.
* kbuild links an out-of-tree module from an object our writer produced (it is not
  recompiled: the bytes kbuild linked are ours), and the module runs in the booted
  Debian 6.1 kernel.
* Real Debian modules, rewritten by the writer, load in that kernel and work.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.writer import write_elf
from tests.integration.engine_pairs import build_pair
from tests.testbed.kbuild import build_external_module
from tests.testbed.readelf import elf_view, readelf, view_diff
from tests.testbed.vm import run_in_initramfs

pytestmark = pytest.mark.integration

MODULE_MAIN = r"""
#include <linux/module.h>
#include <linux/init.h>
int elfrt_compute(int x);
extern const char *elfrt_tag;
static int __init elfrt_init(void)
{
    pr_info("elfrt: %s value=%d\n", elfrt_tag, elfrt_compute(6));
    return 0;
}
static void __exit elfrt_exit(void) { }
module_init(elfrt_init);
module_exit(elfrt_exit);
MODULE_LICENSE("GPL");
"""

MODULE_PART = r"""
#include <linux/kernel.h>
#include <linux/string.h>
static int table[] = { 3, 5, 7, 11 };
const char *elfrt_tag = "rewritten-by-kpatch-livepatch";
noinline int elfrt_compute(int x)
{
    return x * table[x & 3] + (int)strlen(elfrt_tag);
}
"""
EXPECTED_VALUE = 6 * 7 + len("rewritten-by-kpatch-livepatch")

# Debian modules loaded after the round trip, with a check that they work.
LOADED_MODULES = ["fs/binfmt_misc.ko", "net/xfrm/xfrm_algo.ko", "net/key/af_key.ko"]


def roundtrip(src: Path, dest: Path) -> Path:
    write_elf(read_elf(str(src)), str(dest))
    return dest


@pytest.mark.parametrize("pair", ["meminfo", "dev_valid_name"])
def test_kernel_object_roundtrip(kernel_6_1, pair: str, tmp_path: Path) -> None:
    """fs/proc/meminfo.o and net/core/dev.o (with DWARF, ~100k relocations) from the Debian tree."""
    src = build_pair(pair, kernel_6_1).orig
    out = roundtrip(src, tmp_path / src.name)
    readelf(out, "-a")
    diff = view_diff(elf_view(src), elf_view(out))
    assert diff == "", diff
    proc = subprocess.run(["ld", "-r", str(out), "-o", str(tmp_path / "linked.o")], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def rewritten_module(kernel_6_1, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """elfrt.ko linked by kbuild from main.o and *our* rewrite of part.o."""
    work = tmp_path_factory.mktemp("elfrt")
    build_external_module(kernel_6_1, work, {"main.c": MODULE_MAIN, "part.c": MODULE_PART}, "elfrt")
    part = work / "part.o"
    original = part.read_bytes()
    roundtrip(part, part)
    ours = part.read_bytes()
    assert ours != original, "the writer's layout differs from gcc's, so the bytes must differ"
    later = time.time() + 2  # newer than part.c and its .cmd: kbuild must not recompile it
    os.utime(part, (later, later))
    for stale in ("elfrt.ko", "elfrt.o", "elfrt.mod.o"):
        (work / stale).unlink(missing_ok=True)
    ko = build_external_module(kernel_6_1, work, {"main.c": MODULE_MAIN, "part.c": MODULE_PART}, "elfrt")
    assert part.read_bytes() == ours, "kbuild recompiled part.o instead of linking our object"
    return ko


def test_rewritten_objects_load_and_run(kernel_6_1, rewritten_module: Path, tmp_path: Path) -> None:
    files = {"/m/elfrt.ko": rewritten_module}
    for module in LOADED_MODULES:
        name = Path(module).name
        files[f"/m/{name}"] = roundtrip(kernel_6_1.modules_dir / "kernel" / module, tmp_path / name)
    script = "\n".join([
        "set -e",
        "insmod /m/elfrt.ko",
        "dmesg | grep 'elfrt:'",
        "insmod /m/binfmt_misc.ko",
        "mount -t binfmt_misc none /proc/sys/fs/binfmt_misc",
        "echo binfmt=$(cat /proc/sys/fs/binfmt_misc/status)",
        "insmod /m/xfrm_algo.ko",
        "insmod /m/af_key.ko",
        "test -e /proc/net/pfkey && echo pfkey=present",
        "cut -d' ' -f1 /proc/modules | sort | tr '\\n' ' '; echo",
        "rmmod elfrt && echo unloaded",
    ])
    result = run_in_initramfs(kernel_6_1, files=files, script=script, timeout=240)
    assert result.exit_code == 0, f"{result.output}\n--- console ---\n{result.console[-3000:]}"
    assert f"elfrt: rewritten-by-kpatch-livepatch value={EXPECTED_VALUE}" in result.output
    assert "binfmt=enabled" in result.output and "pfkey=present" in result.output
    assert "af_key binfmt_misc elfrt xfrm_algo" in result.output
    assert "unloaded" in result.output
