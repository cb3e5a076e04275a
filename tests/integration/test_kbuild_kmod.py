"""The kmod/ hook and macros against Debian's real 6.1 headers, and the patch module in a VM.

The engine's output object is stood in for by kbuild_hook/handmade.c: a replacement of
cmdline_proc_show listed in .kpatch.funcs with the engine's layout, and one callback of each
kind.  The module built from it and the hook must patch /proc/cmdline in the booted Debian
kernel, run the callbacks in order and unpatch cleanly.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kmod import (
    build_patch_module,
    kmod_sources,
    module_name,
    start_hook_object,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError, StepLog
from tests.testbed.kbuild import modinfo_field
from tests.testbed.vm import run_in_initramfs

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent / "kbuild_hook"
KMOD = Path(__file__).resolve().parents[2] / "kmod"


def compile_with_headers(headers: Path, workdir: Path, names):
    """Compile stand-in engine objects with the kernel's flags (kbuild single targets, M=)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(HERE / name, workdir / name)
    (workdir / "Kbuild").write_text(f"ccflags-y += -I{KMOD}\n")
    objs = [n[:-2] + ".o" for n in names]
    proc = subprocess.run(["make", "-C", str(headers), f"M={workdir}", *objs], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [workdir / o for o in objs]


def symbols(path: Path):
    out = subprocess.run(["nm", str(path)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1]: line.split()[0] for line in out.splitlines() if len(line.split()) == 3}


@pytest.fixture(scope="module")
def hook_ko(kernel_6_1, tmp_path_factory):
    work = tmp_path_factory.mktemp("hook")
    (handmade,) = compile_with_headers(kernel_6_1.headers, work / "engine", ["handmade.c"])
    output = work / "output.o"
    shutil.copyfile(handmade, output)
    return build_patch_module(kernel_6_1.headers, [output], "livepatch-hooktest", work / "modules",
                              StepLog(work / "build.log"))


def test_macros_compile_into_the_sections_the_engine_reads(kernel_6_1, tmp_path):
    (obj,) = compile_with_headers(kernel_6_1.headers, tmp_path, ["macros.c"])
    sections = subprocess.run(["readelf", "-SW", str(obj)], capture_output=True, text=True, check=True).stdout
    for name in (".kpatch.ignore.functions", ".kpatch.ignore.sections", ".kpatch.force",
                 "__syscalls_metadata", "_ftrace_events"):
        assert re.search(rf"\] {re.escape(name)}\s", sections), name
    syms = symbols(obj)
    # the syscall body got the kpatch name, the x86-64 entry stub exists
    assert "__x64_sys_kpatch_macros_test" in syms
    assert "__do_sys_kpatch_macros_test" not in syms


def test_module_links_hook_and_engine_object(kernel_6_1, hook_ko):
    assert modinfo_field(hook_ko, "vermagic").split()[0] == kernel_6_1.release
    assert modinfo_field(hook_ko, "livepatch") == "Y"
    assert modinfo_field(hook_ko, "license") == "GPL"
    assert "replace" in (modinfo_field(hook_ko, "parm") or "")
    syms = symbols(hook_ko)
    # one 56-byte function record between the linker-script bounds
    assert int(syms["__kpatch_funcs_end"], 16) - int(syms["__kpatch_funcs"], 16) == 56
    for kind in ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch"):
        start, end = syms[f"__kpatch_callbacks_{kind}"], syms[f"__kpatch_callbacks_{kind}_end"]
        assert int(end, 16) - int(start, 16) == 16, kind
    assert syms["__kpatch_force_funcs"] == syms["__kpatch_force_funcs_end"]


def test_hook_compiled_ahead_gives_the_same_module_and_is_not_compiled_again(kernel_6_1, hook_ko, tmp_path):
    """The hook's early compile (kbuild's own single target) leaves kbuild nothing to redo for it:
    the module is byte for byte the one built in one go in the same directory."""
    output = hook_ko.parents[2] / "output.o"
    sources = kmod_sources()
    log = StepLog(tmp_path / "build.log")
    in_one_go = build_patch_module(kernel_6_1.headers, [output], "livepatch-ahead", tmp_path, log).read_bytes()
    hook = start_hook_object(kernel_6_1.headers, "livepatch-ahead", tmp_path, log, True, sources)
    hook.wait()
    assert hook.error is None and (hook.build_dir / "livepatch-patch-hook.o").is_file()
    link_output_starts = log.output_path.stat().st_size
    ahead = build_patch_module(kernel_6_1.headers, [output], "livepatch-ahead", tmp_path, log, sources=sources,
                               hook=hook)
    assert ahead.read_bytes() == in_one_go
    link_output = log.output_path.read_text()[link_output_starts:]
    assert "livepatch-ahead.mod.o" in link_output and "livepatch-patch-hook.o" not in link_output
    other = start_hook_object(kernel_6_1.headers, "livepatch-other", tmp_path, log, True, sources)
    with pytest.raises(KbuildError, match="not for livepatch-ahead.ko"):
        build_patch_module(kernel_6_1.headers, [output], "livepatch-ahead", tmp_path, log, sources=sources,
                           hook=other)


def test_failed_early_hook_compile_is_done_again_by_the_link(kernel_6_1, hook_ko, tmp_path):
    output = hook_ko.parents[2] / "output.o"
    sources = kmod_sources()
    broken = dict(sources, **{"livepatch-patch-hook.c": sources["livepatch-patch-hook.c"] + b"\n#error ahead\n"})
    log = StepLog(tmp_path / "build.log")
    hook = start_hook_object(kernel_6_1.headers, "livepatch-retry", tmp_path, log, True, broken)
    hook.wait()
    assert isinstance(hook.error, KbuildError) and "compiling the patch hook" in str(hook.error)
    # (the staged files are the build's own: mend the one the test broke, as a fixed hook would be)
    (hook.build_dir / "livepatch-patch-hook.c").write_bytes(sources["livepatch-patch-hook.c"])
    hook.sources = sources
    ko = build_patch_module(kernel_6_1.headers, [output], "livepatch-retry", tmp_path, log, sources=sources, hook=hook)
    assert modinfo_field(ko, "livepatch") == "Y"
    assert "compiled ahead failed" in log.path.read_text()


def test_build_patch_module_refusals(kernel_6_1, tmp_path):
    log = StepLog(tmp_path / "log")
    text = tmp_path / "notelf.o"
    text.write_text("definitely not an object file")
    with pytest.raises(KbuildError, match="not a relocatable ELF object"):
        build_patch_module(kernel_6_1.headers, [text], "x", tmp_path, log)
    with pytest.raises(KbuildError, match="not a kernel headers/build directory"):
        build_patch_module(tmp_path, [text], "x", tmp_path, log)
    with pytest.raises(KbuildError, match="no engine output objects"):
        build_patch_module(kernel_6_1.headers, [], "x", tmp_path, log)
    assert module_name("kpatch fix/CVE-2024.1") == "kpatch-fix-CVE-2024-1"
    assert len(module_name("x" * 80)) == 48


VM_SCRIPT = r"""
set -u
sysfs=/sys/kernel/livepatch/livepatch_hooktest
wait_idle() {
  i=0
  while [ -d $sysfs ] && [ "$(cat $sysfs/transition)" != 0 ]; do
    i=$((i+1)); [ $i -gt 300 ] && { echo "transition stuck"; exit 11; }; sleep 0.1
  done
}
echo "before=$(cat /proc/cmdline)"
insmod /work/livepatch-hooktest.ko || exit 10
wait_idle
echo "patched=$(cat /proc/cmdline)"
echo "enabled=$(cat $sysfs/enabled)"
echo "replace_param=$(cat /sys/module/livepatch_hooktest/parameters/replace)"
echo 0 > $sysfs/enabled
wait_idle
rmmod livepatch_hooktest || exit 13
echo "after=$(cat /proc/cmdline)"
insmod /work/livepatch-hooktest.ko replace=0 || exit 14
wait_idle
echo "replace_param2=$(cat /sys/module/livepatch_hooktest/parameters/replace)"
echo 0 > $sysfs/enabled
wait_idle
rmmod livepatch_hooktest || exit 15
dmesg | grep -E "livepatch_hooktest|handmade" | sed 's/^\[[^]]*\] //; s/^/dmesg: /'
"""


def test_patch_module_patches_and_unpatches_in_vm(kernel_6_1, hook_ko):
    result = run_in_initramfs(kernel_6_1, {"/work/livepatch-hooktest.ko": hook_ko}, VM_SCRIPT, timeout=240,
                              append="loglevel=7")
    assert not result.timed_out, result.console[-2000:]
    assert result.exit_code == 0, result.output + result.console[-3000:]
    values = dict(line.split("=", 1) for line in result.output.splitlines()
                  if "=" in line and not line.startswith("dmesg:"))
    assert values["patched"] == "kpatch-livepatch hook test"
    assert values["before"] != values["patched"] and values["after"] == values["before"]
    assert values["enabled"] == "1"
    assert (values["replace_param"], values["replace_param2"]) == ("Y", "N")
    dmesg = [line[len("dmesg: "):] for line in result.output.splitlines() if line.startswith("dmesg: ")]
    calls = [line.split("handmade ", 1)[1] for line in dmesg if "handmade " in line]
    assert calls[:4] == ["pre_patch vmlinux", "post_patch", "pre_unpatch", "post_unpatch"]
    assert any("1 functions in 1 objects, 4 callbacks, replace=1" in line for line in dmesg), dmesg
    assert any("replace=0" in line for line in dmesg), dmesg
    assert "Call Trace" not in result.console


# A use of each patch-author header, compiled with that header as the file's first include: a patch
# may include any one of them alone (kpatch's syscall patch includes only kpatch-syscall.h).
HEADER_USES = {
    "kpatch-macros.h": "static int kpatch_hdr_fn(void) { return 0; }\nKPATCH_IGNORE_FUNCTION(kpatch_hdr_fn);\n",
    "kpatch-patch.h": "struct kpatch_patch_func kpatch_hdr_func = { .name = \"x\" };\n",
    "kpatch-syscall.h": "KPATCH_SYSCALL_DEFINE1(kpatch_hdrtest, int, value)\n{\n\treturn value;\n}\n",
}


def test_every_kmod_header_compiles_alone_included_first(kernel_6_1, tmp_path):
    headers = sorted(p.name for p in KMOD.glob("*.h"))
    assert sorted(HEADER_USES) == headers, "a header in kmod/ has no use in HEADER_USES"
    (tmp_path / "Kbuild").write_text(f"ccflags-y += -I{KMOD}\n")
    failures = {}
    for header in headers:
        stem = "alone_" + header[:-2].replace("-", "_")
        (tmp_path / f"{stem}.c").write_text(f'#include "{header}"\n\n{HEADER_USES[header]}')
        proc = subprocess.run(["make", "-C", str(kernel_6_1.headers), f"M={tmp_path}", f"{stem}.o"],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not (tmp_path / f"{stem}.o").is_file():
            output = proc.stdout + proc.stderr
            failures[header] = [line for line in output.splitlines() if "error:" in line][:5] or output[-1500:]
    assert not failures, failures
