"""Patch modules for IBT kernels get objtool's data: return/retpoline sites and ORC tables.

Debian's 6.12 kernel (X86_KERNEL_IBT, RETHUNK, call depth tracking) runs objtool once on the
linked patch module.  The engine's livepatch-relocated calls keep a named placeholder target
until the klp conversion, so objtool can read them; before that change objtool stopped at the
first ``call .+0`` and the module loaded with its returns unpatched ("Unpatched return thunk in
use") and without ORC data.  The check in ``_kbuild/modcheck.py`` must refuse such a module.
"""

import re
import subprocess
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kconfig import KernelConfig
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.modcheck import (
    ModuleCheckError,
    check_objtool_sites,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.pipeline import BuildRequest, build_livepatch
from tests.testbed.ansible_run import REPO
from tests.testbed.kernels import cache_root
from tests.testbed.vm import run_in_initramfs

pytestmark = pytest.mark.integration

PATCH = REPO / "examples" / "patches" / "meminfo-string.patch"


@pytest.fixture(scope="module")
def built(kernel_6_12, tmp_path_factory):
    out = tmp_path_factory.mktemp("objtool-sites")
    req = BuildRequest(patches=[PATCH], release=kernel_6_12.release, source_dir=kernel_6_12.source_tree(),
                       config=kernel_6_12.config, vmlinux=kernel_6_12.vmlinux, headers=kernel_6_12.headers,
                       cache_dir=cache_root() / "build-tests", output_dir=out, name="livepatch-objtool-sites",
                       modules_dir=kernel_6_12.modules_dir)
    result = build_livepatch(req)
    log_out = Path(result.log + ".out")
    return result, log_out.read_text() if log_out.is_file() else ""


def test_objtool_reads_the_whole_patch_module(built):
    result, build_output = built
    if not result.cached:
        assert "warning: objtool" not in build_output, build_output[-3000:]
    obj = read_elf(result.module_path)
    names = {s.name for s in obj.sections}
    assert {".return_sites", ".call_sites", ".orc_unwind", ".orc_unwind_ip"} <= names
    # No placeholder is left: every .klp.sym symbol is a livepatch one, every reference is in a .klp.rela section.
    assert not [s.name for s in obj.symbols if s.name.startswith(".klp.sym.") and s.shndx != 0xFF20]
    for sec in obj.sections:
        if sec.is_rela and not sec.name.startswith(".klp.rela."):
            assert not [r for r in sec.relocations if r.sym.name.startswith(".klp.sym.")], sec.name


def _without(ko, tmp_path, *sections):
    stripped = tmp_path / f"stripped-{'-'.join(s.strip('.') for s in sections)}.ko"
    args = ["objcopy"] + [f"--remove-section={s}" for s in sections] + [str(ko), str(stripped)]
    subprocess.run(args, check=True)
    return stripped


def test_the_check_refuses_a_module_without_return_sites_or_orc(built, kernel_6_12, tmp_path):
    result = built[0]
    config = KernelConfig.read(kernel_6_12.config)
    sites = check_objtool_sites(Path(result.module_path), config)
    assert sites.returns >= 1 and sites.orc_entries >= 1
    with pytest.raises(ModuleCheckError, match=r"return through __x86_return_thunk not listed in \.return_sites"):
        check_objtool_sites(_without(result.module_path, tmp_path, ".return_sites", ".rela.return_sites"), config)
    with pytest.raises(ModuleCheckError, match=r"no ORC unwind tables"):
        check_objtool_sites(_without(result.module_path, tmp_path, ".orc_unwind", ".orc_unwind_ip",
                                     ".rela.orc_unwind_ip"), config)


def test_module_loads_without_unpatched_thunk_warning(built, kernel_6_12):
    result = built[0]
    ko = Path(result.module_path)
    name = ko.stem.replace("-", "_")
    script = f"""
insmod /{ko.name} || exit 11
i=0; while [ "$(cat /sys/kernel/livepatch/{name}/transition)" != 0 ]; do i=$((i+1)); [ $i -gt 600 ] && exit 12; sleep 0.1; done
grep -c '^VMALLOCCHUNK:' /proc/meminfo
echo 0 > /sys/kernel/livepatch/{name}/enabled
i=0
while [ -e /sys/kernel/livepatch/{name} ] && [ "$(cat /sys/kernel/livepatch/{name}/transition)" != 0 ]; do
  i=$((i+1)); [ $i -gt 600 ] && exit 13; sleep 0.1
done
rmmod {name} || exit 14
grep -c '^VmallocChunk:' /proc/meminfo
"""
    run = run_in_initramfs(kernel_6_12, {ko.name: ko}, script, timeout=300)
    assert not run.timed_out and run.exit_code == 0, run.console[-3000:]
    assert run.output.split() == ["1", "1"], run.output
    assert "Unpatched return thunk" not in run.console and "Call Trace" not in run.console, run.console[-5000:]


def _klp_calls(obj) -> "set[tuple[str, int]]":
    """(section, offset of the call instruction) of every call a livepatch relocation completes."""
    calls = set()
    for sec in obj.sections:
        if sec.name.startswith(".klp.rela.") and sec.base is not None and sec.base.is_text:
            for rel in sec.relocations:
                if sec.base.data[rel.offset - 1] == 0xE8:
                    calls.add((sec.base.name, rel.offset - 1))
    return calls


def _call_sites(obj) -> "set[tuple[str, int]]":
    sites = obj.find_section(".call_sites")
    return {(r.sym.section.name, r.sym.value + r.addend) for r in sites.rela.relocations}


def test_calls_vmlinux_relocations_complete_stay_call_sites(built):
    """vmlinux klp relocations are applied while the patch module loads (apply_relocations), before
    module_finalize reads .call_sites: those calls are complete then and keep their entries (#19
    item 9; only a module object's relocations, applied when that module loads, come too late)."""
    result = built[0]
    obj = read_elf(result.module_path)
    klp_calls = _klp_calls(obj)
    assert klp_calls, "meminfo_proc_show calls static helpers of vmlinux through livepatch relocations"
    assert klp_calls & _call_sites(obj), "objtool listed those calls at compile time: they must stay listed"
    log = Path(result.log).read_text()
    assert re.search(r"[1-9]\d* placeholders removed, 0 call sites dropped", log), log


def test_module_patch_lists_the_hook_code_too(kernel_6_12, tmp_path):
    """loop.o went through objtool when compiled (a single-object module): its lists must not make
    objtool skip the linked patch module, or the hook's returns stay unlisted."""
    patch = REPO / "tests" / "integration" / "patches" / kernel_6_12.release / "12-module-loop.patch"
    req = BuildRequest(patches=[patch], release=kernel_6_12.release, source_dir=kernel_6_12.source_tree(),
                       config=kernel_6_12.config, vmlinux=kernel_6_12.vmlinux, headers=kernel_6_12.headers,
                       cache_dir=cache_root() / "build-tests", output_dir=tmp_path, name="livepatch-objtool-loop",
                       modules_dir=kernel_6_12.modules_dir)
    result = build_livepatch(req)
    log = Path(result.log).read_text()
    assert re.search(r"strip-objtool-output +ok .*output-0-loop\.o:\.return_sites", log), log
    out = Path(result.log + ".out")
    if not result.cached and out.is_file():
        assert "already has" not in out.read_text() and "!ENDBR" not in out.read_text()
    sites = check_objtool_sites(Path(result.module_path), KernelConfig.read(kernel_6_12.config))
    assert sites.returns >= 4 and sites.orc_entries > 0


def test_kernels_whose_loader_applies_no_site_lists_are_not_held_to_them(built, kernel_6_12, tmp_path):
    """CONFIG_RETPOLINE/RETHUNK alone do not mean the loader reads the lists (RHEL 8's 4.18 has no
    .retpoline_sites): the kernel source's own declarations decide."""
    result = built[0]
    config = KernelConfig.read(kernel_6_12.config)
    stripped = _without(result.module_path, tmp_path, ".return_sites", ".rela.return_sites")
    asm = tmp_path / "old-tree" / "arch" / "x86" / "include" / "asm"
    asm.mkdir(parents=True)
    (asm / "alternative.h").write_text("extern void apply_alternatives(struct alt_instr *start, struct alt_instr *end);\n")
    assert check_objtool_sites(stripped, config, tmp_path / "old-tree").returns == 0
    with pytest.raises(ModuleCheckError, match="not listed in .return_sites"):
        check_objtool_sites(stripped, config, kernel_6_12.source_tree())
