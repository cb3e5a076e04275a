"""kpatch_build acceptance on the real Debian 6.1.0-50-cloud-amd64 kernel.

Each module is built through Ansible (``ansible localhost -m kpatch.livepatch.kpatch_build``) from
the exact Debian source, then loaded in that kernel booted under qemu, where its effect is checked
before, during and after the patch.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.testbed.ansible_run import REPO, run_module
from tests.testbed.kernels import cache_root
from tests.testbed.vm import run_in_initramfs

pytestmark = pytest.mark.integration

EXAMPLES = REPO / "examples" / "patches"
PATCHES = REPO / "tests" / "integration" / "patches" / "6.1.0-50-cloud-amd64"

# Shell helpers for the VM scripts: wait for a patch's transition, disable and remove it.
SH_LIB = r"""
wait_transition() {  # $1 = patch name in sysfs (gone once a disabled patch is freed: then done too)
  i=0
  while t=$(cat /sys/kernel/livepatch/$1/transition 2>/dev/null) && [ "$t" != 0 ]; do
    i=$((i+1)); [ $i -gt 600 ] && { echo "transition of $1 stuck"; exit 21; }; sleep 0.1
  done
}
unload() {  # $1 = patch name
  if [ -e /sys/kernel/livepatch/$1/enabled ]; then echo 0 > /sys/kernel/livepatch/$1/enabled; wait_transition $1; fi
  i=0; while ! rmmod $1 2>/dev/null; do i=$((i+1)); [ $i -gt 100 ] && { echo "rmmod $1 failed"; exit 22; }; sleep 0.1; done
}
"""


@pytest.fixture(scope="module")
def env(kernel_6_1, tmp_path_factory):
    """Module arguments shared by every build, with a persistent cache (warm trees across runs)."""
    out = tmp_path_factory.mktemp("modules")
    return {
        "artifacts": kernel_6_1,
        "out": out,
        "cache": cache_root() / "build-tests",
        "args": {
            "release": kernel_6_1.release, "source_dir": str(kernel_6_1.source_tree()),
            "config": str(kernel_6_1.config), "vmlinux": str(kernel_6_1.vmlinux),
            "headers": str(kernel_6_1.headers), "modules_dir": str(kernel_6_1.modules_dir),
            "output_dir": str(out), "cache_dir": str(cache_root() / "build-tests"),
        },
    }


def build(env, patches, name, check=False, run_env=None, **overrides):
    """Run kpatch_build through Ansible; ``run_env`` is added to the module's environment."""
    args = dict(env["args"], patches=[str(p) for p in patches], name=name, **overrides)
    return run_module("kpatch_build", args, check=check, env=run_env)


def vm(env, files, script):
    result = run_in_initramfs(env["artifacts"], files, SH_LIB + script, timeout=300)
    assert not result.timed_out, result.console[-3000:]
    assert "Call Trace" not in result.console, result.console[-5000:]
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.console[-3000:]}"
    return result.output


def functions_by_object(run):
    return {o["object"]: (o["parent"], o["changed_functions"], o["new_functions"]) for o in run.result["objects"]}


def forget_cached_module(env, name):
    """Drop earlier runs' cached builds of ``name`` so that this run really builds it."""
    for entry in (env["cache"] / "modules").glob("*/result.json"):
        if json.loads(entry.read_text()).get("module_name") == name:
            shutil.rmtree(entry.parent)


@pytest.fixture(scope="module")
def meminfo(env):
    forget_cached_module(env, "livepatch-meminfo")
    run = build(env, [EXAMPLES / "meminfo-string.patch"], "livepatch-meminfo")
    assert not run.failed, run.output
    return run


def test_meminfo_reports_exactly_meminfo_proc_show(meminfo, env):
    assert functions_by_object(meminfo) == {"fs/proc/meminfo.o": ("vmlinux", ["meminfo_proc_show"], [])}
    assert meminfo.result["vermagic"].split()[0] == env["artifacts"].release
    assert meminfo.result["changed"] is True
    ko = Path(meminfo.result["module_path"])
    assert ko.parent == env["out"] and ko.name == "livepatch-meminfo.ko"
    log = Path(meminfo.result["log"]).read_text()
    for step in ("prepare-tree", "build-objects", "diff-object", "build-patch-module", "create-klp-module"):
        assert step in log


def test_meminfo_loads_and_unloads_in_the_kernel(meminfo, env):
    out = vm(env, {"/work/p.ko": Path(meminfo.result["module_path"])}, r"""
grep -c '^VmallocChunk:' /proc/meminfo
insmod /work/p.ko || exit 10
wait_transition livepatch_meminfo
echo "enabled=$(cat /sys/kernel/livepatch/livepatch_meminfo/enabled)"
grep -c '^VMALLOCCHUNK:' /proc/meminfo
grep -c '^VmallocChunk:' /proc/meminfo || true
unload livepatch_meminfo
grep -c '^VmallocChunk:' /proc/meminfo
grep -c '^VMALLOCCHUNK:' /proc/meminfo || true
""")
    assert out.split() == ["1", "enabled=1", "1", "0", "1", "0"]


def test_same_inputs_again_return_the_cached_module(meminfo, env):
    again = build(env, [EXAMPLES / "meminfo-string.patch"], "livepatch-meminfo")
    assert not again.failed, again.output
    assert again.result["changed"] is False and again.result["cached"] is True
    assert again.result["sha256"] == meminfo.result["sha256"]


def test_check_mode_builds_nothing(env):
    run = build(env, [EXAMPLES / "meminfo-string.patch"], "livepatch-check-only", check=True)
    assert not run.failed, run.output
    assert run.result["changed"] is True and run.result["cached"] is False
    assert not (env["out"] / "livepatch-check-only.ko").exists()


def test_call_to_file_local_vmlinux_function_goes_through_klp_relocation(env):
    run = build(env, [EXAMPLES / "stat-local-call.patch"], "livepatch-stat")
    assert not run.failed, run.output
    assert functions_by_object(run) == {"fs/proc/stat.o": ("vmlinux", ["show_stat"], [])}
    ko = Path(run.result["module_path"])
    syms = subprocess.run(["readelf", "-sW", str(ko)], capture_output=True, text=True, check=True).stdout
    # get_iowait_time is static in fs/proc/stat.c: only a livepatch relocation can reach it.
    assert re.search(r"\.klp\.sym\.vmlinux\.get_iowait_time,\d+", syms), syms
    sections = subprocess.run(["readelf", "-SW", str(ko)], capture_output=True, text=True, check=True).stdout
    assert ".klp.rela.vmlinux..text.show_stat" in sections
    out = vm(env, {"/work/p.ko": ko}, r"""
grep -c kpatch_iowait0 /proc/stat || true
insmod /work/p.ko || exit 10
wait_transition livepatch_stat
grep kpatch_iowait0 /proc/stat
unload livepatch_stat
grep -c kpatch_iowait0 /proc/stat || true
""")
    lines = out.split("\n")
    assert lines[0] == "0"
    assert re.fullmatch(r"kpatch_iowait0 \d+", lines[1]), out
    assert lines[2] == "0"


def test_patch_to_loadable_module_before_and_after_it_loads(env):
    run = build(env, [EXAMPLES / "binfmt-misc-status.patch"], "livepatch-binfmt")
    assert not run.failed, run.output
    assert functions_by_object(run) == {"fs/binfmt_misc.o": ("binfmt_misc", ["bm_status_read"], [])}
    mod = env["artifacts"].modules_dir / "kernel" / "fs" / "binfmt_misc.ko"
    files = {"/work/p.ko": Path(run.result["module_path"]), "/work/binfmt_misc.ko": mod}
    out = vm(env, files, r"""
mnt() { mkdir -p /tmp/bm; mount -t binfmt_misc none /tmp/bm; }
# 1. the target module is loaded before the patch module
insmod /work/binfmt_misc.ko || exit 10
mnt; cat /tmp/bm/status
insmod /work/p.ko || exit 11
wait_transition livepatch_binfmt
cat /tmp/bm/status
unload livepatch_binfmt
cat /tmp/bm/status
umount /tmp/bm; rmmod binfmt_misc || exit 12
# 2. the patch module is loaded first; the target module is patched as it loads
insmod /work/p.ko || exit 13
wait_transition livepatch_binfmt
insmod /work/binfmt_misc.ko || exit 14
mnt; cat /tmp/bm/status
umount /tmp/bm; rmmod binfmt_misc || exit 15
unload livepatch_binfmt
""")
    assert out.splitlines() == ["enabled", "enabled (livepatched)", "enabled", "enabled (livepatched)"]


def test_cumulative_module_replaces_an_earlier_one(env):
    first = build(env, [EXAMPLES / "stat-local-call.patch"], "livepatch-a")
    both = build(env, [EXAMPLES / "meminfo-string.patch", EXAMPLES / "stat-local-call.patch"], "livepatch-b")
    assert not first.failed and not both.failed, first.output + both.output
    assert both.result["replace"] is True
    assert functions_by_object(both) == {"fs/proc/meminfo.o": ("vmlinux", ["meminfo_proc_show"], []),
                                         "fs/proc/stat.o": ("vmlinux", ["show_stat"], [])}
    files = {"/work/a.ko": Path(first.result["module_path"]), "/work/b.ko": Path(both.result["module_path"])}
    out = vm(env, files, r"""
insmod /work/a.ko || exit 10
wait_transition livepatch_a
grep -c kpatch_iowait0 /proc/stat
grep -c '^VMALLOCCHUNK:' /proc/meminfo || true
insmod /work/b.ko || exit 11
wait_transition livepatch_b
ls /sys/kernel/livepatch
grep -c kpatch_iowait0 /proc/stat
grep -c '^VMALLOCCHUNK:' /proc/meminfo
rmmod livepatch_a || exit 12
grep -c kpatch_iowait0 /proc/stat
unload livepatch_b
grep -c kpatch_iowait0 /proc/stat || true
grep -c '^VMALLOCCHUNK:' /proc/meminfo || true
""")
    # After B loads, A is retired (gone from sysfs, removable) and B carries both changes.
    assert out.split() == ["1", "0", "livepatch_b", "1", "1", "1", "0", "0"]


# --------------------------------------------------------------------------- errors


def _pristine_text(env, rel):
    return (env["artifacts"].source_tree() / rel).read_text()


def _write_patch(tmp_path, name, rel, old_text, new_text):
    """A -p1 unified diff of ``rel`` made with diff(1) from two versions of the file."""
    a, b = tmp_path / "a" / rel, tmp_path / "b" / rel
    a.parent.mkdir(parents=True, exist_ok=True)
    b.parent.mkdir(parents=True, exist_ok=True)
    a.write_text(old_text)
    b.write_text(new_text)
    diff = subprocess.run(["diff", "-u", f"a/{rel}", f"b/{rel}"], cwd=tmp_path, capture_output=True, text=True,
                          check=False).stdout
    patch = tmp_path / name
    patch.write_text(diff)
    return patch


def _bad_context_patch(env, tmp_path):
    text = _pristine_text(env, "fs/proc/meminfo.c")
    # The diff is made against a file that differs from the tree, so its context does not match it.
    skewed = text.replace("VmallocUsed:    ", "VmallocUsedXX: ")
    return _write_patch(tmp_path, "skewed.patch", "fs/proc/meminfo.c", skewed,
                        skewed.replace('"VmallocChunk:   "', '"VMALLOCCHUNK:   "'))


def _comment_only_patch(env, tmp_path):
    text = _pristine_text(env, "fs/proc/meminfo.c")
    return _write_patch(tmp_path, "comment.patch", "fs/proc/meminfo.c", text,
                        text.replace("static int meminfo_proc_show(", "/* just a comment */\nstatic int meminfo_proc_show(", 1))


def _no_livepatch_config(env, tmp_path):
    config = tmp_path / "config-no-livepatch"
    config.write_text(env["artifacts"].config.read_text().replace("CONFIG_LIVEPATCH=y", "# CONFIG_LIVEPATCH is not set"))
    return config


ERRORS = {
    "does-not-apply": (lambda env, tmp: ([_bad_context_patch(env, tmp)], {}),
                       r"does not apply cleanly.*fs/proc/meminfo\.c"),
    "no-functional-change": (lambda env, tmp: ([_comment_only_patch(env, tmp)], {}),
                             r"changes no function in fs/proc/meminfo\.o"),
    "engine-rejects-init": (lambda env, tmp: ([PATCHES / "reject-init-change.patch"], {}),
                            r"engine rejected the patch: function proc_meminfo_init in \.init\.text changed"),
    "missing-debuginfo": (lambda env, tmp: ([EXAMPLES / "meminfo-string.patch"], {"vmlinux": str(tmp / "vmlinux")}),
                          r"missing vmlinux with debug symbols .*install the kernel's debuginfo"),
    "missing-source": (lambda env, tmp: ([EXAMPLES / "meminfo-string.patch"], {"source_dir": str(tmp / "src")}),
                       r"missing kernel source tree"),
    "no-livepatch-config": (lambda env, tmp: ([EXAMPLES / "meminfo-string.patch"],
                                              {"config": str(_no_livepatch_config(env, tmp))}),
                            r"has no CONFIG_LIVEPATCH=y"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_are_clear_and_leave_nothing(env, tmp_path, case):
    make, pattern = ERRORS[case]
    patches, overrides = make(env, tmp_path)
    run = build(env, patches, f"livepatch-err-{case}", **overrides)
    assert run.failed, run.output
    assert re.search(pattern, run.msg, re.S), run.msg
    assert not (env["out"] / f"livepatch-err-{case}.ko").exists()
    tree = env["cache"] / "trees" / env["artifacts"].release / "tree"
    if tree.exists():
        assert (tree / "fs/proc/meminfo.c").read_text() == _pristine_text(env, "fs/proc/meminfo.c")
