"""create-klp-module on a real kbuild module, applied by the real livepatch core of Debian 6.1.

The module replaces ``cmdline_proc_show`` (/proc/cmdline).  Its replacement reads
``saved_command_line`` (a vmlinux global that is not exported) and takes the address of
the second of three static ``c_start`` functions -- references only a livepatch
relocation can resolve.  The object is compiled by kbuild against the Debian headers;
those two references are then moved into ``.kpatch.*`` records by the engine's own
``emit_intermediate_sections``, kbuild links the module, ``create_klp_module`` converts
it, and the VM (booted with ``nokaslr`` so addresses are the link-time ones) loads it:
/proc/cmdline must print the command line and the right ``c_start``.
"""

from __future__ import annotations

import os
import sys
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf, read_symbols
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.writer import write_elf
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.intermediate import (
    KlpRelocation,
    KlpSymbol,
    emit_intermediate_sections,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.klp import create_klp_module
from tests.testbed.readelf import parse_symbols, readelf
from tests.testbed.vm import run_in_initramfs

pytestmark = pytest.mark.integration

MAIN_C = r"""
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

int klpt_cmdline_proc_show(struct seq_file *m, void *v);

static struct klp_func funcs[] = {
    { .old_name = "cmdline_proc_show", .new_func = klpt_cmdline_proc_show, },
    { }
};
static struct klp_object objs[] = {
    { .funcs = funcs, },  /* NULL name: vmlinux */
    { }
};
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

static int klpt_init(void) { return klp_enable_patch(&patch); }
static void klpt_exit(void) { }
module_init(klpt_init);
module_exit(klpt_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
"""

FUNC_C = r"""
#include <linux/seq_file.h>

extern char *saved_command_line;   /* not exported */
extern int c_start(void);          /* static in three vmlinux files */

int klpt_cmdline_proc_show(struct seq_file *m, void *v)
{
    seq_printf(m, "klp-converted saved=%s c_start=%px\n", saved_command_line, (void *)c_start);
    return 0;
}
"""
LOCAL_NAME, LOCAL_SYMPOS = "c_start", 2


def kbuild(headers: Path, workdir: Path, *targets: str) -> None:
    proc = subprocess.run(["make", "-C", str(headers), f"M={workdir}", "-j2", *targets],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"kbuild {' '.join(targets)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


def vmlinux_targets(vmlinux: Path) -> Tuple[Dict[str, KlpSymbol], int]:
    """The records the engine's lookup would make, from the real vmlinux symbol table,
    and the link address of the chosen ``c_start``.  sympos counts same-named symbols in
    kallsyms order, which is address order."""
    symbols = read_symbols(str(vmlinux))
    saved = [s for s in symbols if s.name == "saved_command_line"]
    assert len(saved) == 1 and saved[0].bind == 1, "saved_command_line should be one vmlinux global"
    locals_ = sorted((s for s in symbols if s.name == LOCAL_NAME and s.type == 2), key=lambda s: s.value)
    assert len(locals_) == 3 and all(s.bind == 0 for s in locals_), [hex(s.value) for s in locals_]
    chosen = locals_[LOCAL_SYMPOS - 1]
    return {
        "saved_command_line": KlpSymbol("saved_command_line", "vmlinux", 0, saved[0].bind, saved[0].type),
        LOCAL_NAME: KlpSymbol(LOCAL_NAME, "vmlinux", LOCAL_SYMPOS, chosen.bind, chosen.type),
    }, chosen.value


def move_to_records(obj_path: Path, targets: Dict[str, KlpSymbol]) -> List[KlpRelocation]:
    """What the engine's output pass does for unexported targets, on kbuild's object."""
    obj = read_elf(str(obj_path))
    moved: List[KlpRelocation] = []
    for sec in obj.sections:
        if sec.rela is None or not sec.is_text:
            continue
        keep = []
        for rel in sec.rela.relocations:
            if rel.sym.name in targets:
                moved.append(KlpRelocation(sec, rel.offset, rel.type, rel.addend, targets[rel.sym.name], False))
            else:
                keep.append(rel)
        sec.rela.relocations = keep
    obj.symbols = [s for s in obj.symbols if s.name not in targets]
    emit_intermediate_sections(obj, [], moved)
    write_elf(obj, str(obj_path))
    later = time.time() + 2  # newer than its source and .cmd: kbuild links it as it is
    os.utime(obj_path, (later, later))
    return moved


@pytest.fixture(scope="module")
def klp_module(kernel_6_1, tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, int, List[KlpRelocation]]:
    work = tmp_path_factory.mktemp("klpt")
    (work / "livepatch_main.c").write_text(MAIN_C)
    (work / "klpt_func.c").write_text(FUNC_C)
    # The engine's objects are compiled with function sections, like kpatch's.
    (work / "Kbuild").write_text("obj-m := klpt.o\nklpt-y := livepatch_main.o klpt_func.o\n"
                                 "CFLAGS_klpt_func.o := -ffunction-sections -fdata-sections\n")
    kbuild(kernel_6_1.headers, work, "klpt_func.o")
    targets, local_addr = vmlinux_targets(kernel_6_1.vmlinux)
    moved = move_to_records(work / "klpt_func.o", targets)
    kbuild(kernel_6_1.headers, work, "modules")  # no undefined symbols left: modpost is content
    out = work / "klpt-klp.ko"
    result = create_klp_module(str(work / "klpt.ko"), str(out))
    assert result.relocations == len(moved) == 2 and result.symbols == 2
    return out, local_addr, moved


def test_converted_module_layout(klp_module) -> None:
    ko, _addr, _moved = klp_module
    readelf(ko, "-a")
    names = {row[7]: row for row in parse_symbols(readelf(ko, "-s"))}
    assert names[".klp.sym.vmlinux.saved_command_line,0"][6] == "OS [0xff20]"
    assert names[f".klp.sym.vmlinux.{LOCAL_NAME},{LOCAL_SYMPOS}"][6] == "OS [0xff20]"
    sections = readelf(ko, "-S")
    assert ".klp.rela.vmlinux..text.klpt_cmdline_proc_show" in sections and ".kpatch.relocations" not in sections
    modinfo = subprocess.run(["modinfo", "-F", "livepatch", str(ko)], capture_output=True, text=True, check=False)
    assert modinfo.stdout.strip() == "Y"


def test_livepatch_core_applies_the_relocations(kernel_6_1, klp_module) -> None:
    ko, local_addr, _moved = klp_module
    script = "\n".join([
        "cat /proc/cmdline",
        "insmod /m/klpt.ko || exit 3",
        "i=0; while [ \"$(cat /sys/kernel/livepatch/klpt/transition)\" != 0 ] && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done",
        "echo transition=$(cat /sys/kernel/livepatch/klpt/transition) enabled=$(cat /sys/kernel/livepatch/klpt/enabled)",
        "cat /proc/cmdline",
    ])
    result = run_in_initramfs(kernel_6_1, files={"/m/klpt.ko": ko}, script=script, timeout=240, append="nokaslr")
    assert result.exit_code == 0, f"{result.output}\n--- console ---\n{result.console[-3000:]}"
    lines = result.output.strip().splitlines()
    original = lines[0]
    assert "nokaslr" in original and "transition=0 enabled=1" in result.output, result.output
    assert lines[-1] == f"klp-converted saved={original} c_start={local_addr:016x}", result.output


# Struct sizes of the 6.1 kernel (pahole on its DWARF), as create-diff-object wants them.
STRUCT_SIZES = {"ALT_STRUCT_SIZE": "12", "BUG_STRUCT_SIZE": "12", "EX_STRUCT_SIZE": "12", "JUMP_STRUCT_SIZE": "16",
                "ORC_STRUCT_SIZE": "6", "PARA_STRUCT_SIZE": "16", "STATIC_CALL_STRUCT_SIZE": "8",
                "PRINTK_INDEX_STRUCT_SIZE": "16"}


def test_engine_patch_module_goes_live(kernel_6_1, tmp_path: Path) -> None:
    """The whole kpatch flow on kpatch's own sample change (meminfo "VmallocChunk" renamed):
    create-diff-object → kmod hook + kbuild → create-klp-module → live in the kernel."""
    from tests.integration.engine_pairs import build_pair

    repo = Path(__file__).resolve().parents[2]
    pair = build_pair("meminfo", kernel_6_1)
    out = tmp_path / "output.o"
    proc = subprocess.run([sys.executable, str(repo / "tools" / "create-diff-object"), str(pair.orig),
                           str(pair.patched), "vmlinux", str(kernel_6_1.vmlinux),
                           str(kernel_6_1.headers / "Module.symvers"), "livepatch_meminfo", str(out)],
                          capture_output=True, text=True, check=False, env={**os.environ, **STRUCT_SIZES})
    assert proc.returncode == 0, proc.stderr
    for src in (repo / "kmod").iterdir():
        (tmp_path / src.name).write_bytes(src.read_bytes())
    proc = subprocess.run(["make", "-C", str(tmp_path), f"KDIR={kernel_6_1.headers}", "KPATCH_NAME=livepatch_meminfo",
                           "KPATCH_OBJECTS=output.o"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ko = tmp_path / "livepatch_meminfo-klp.ko"
    result = create_klp_module(str(tmp_path / "livepatch_meminfo.ko"), str(ko))
    assert result.relocations > 0 and result.sections == [".klp.rela.vmlinux..text.meminfo_proc_show"]
    script = "\n".join([
        "insmod /m/lp.ko || exit 3",
        "i=0; while [ \"$(cat /sys/kernel/livepatch/livepatch_meminfo/transition)\" != 0 ] && [ $i -lt 60 ]; "
        "do sleep 1; i=$((i+1)); done",
        "grep -i '^vmallocchunk' /proc/meminfo",
        "grep '^MemTotal' /proc/meminfo",
    ])
    vm = run_in_initramfs(kernel_6_1, files={"/m/lp.ko": ko}, script=script, timeout=240)
    assert vm.exit_code == 0, f"{vm.output}\n--- console ---\n{vm.console[-3000:]}"
    lines = vm.output.strip().splitlines()
    assert lines[-2].startswith("VMALLOCCHUNK:"), vm.output
    # MemTotal comes through si_meminfo/totalram_pages: a wrong klp relocation would garble it.
    assert lines[-1].startswith("MemTotal:") and 400000 < int(lines[-1].split()[1]) < 600000, vm.output
