"""kpatch_build on an out-of-tree module, on the real Debian 6.1.0-50-cloud-amd64 kernel.

kmods/oot/ is a small composite module of our own (kpatch_oot.ko from two objects), built here
against the release's headers as a vendor driver would be.  The patch changes the show function of
/proc/kpatch_oot, which uses the module's own static counter: only the module's symbol table can
resolve it.  In the booted kernel the patch must take effect with the module loaded before the
patch module and with the module loaded after it, and unload cleanly both times.
"""

import re
import subprocess
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
from tests.testbed.kbuild import build_external_module

pytestmark = pytest.mark.integration

OOT_SOURCES = REPO / "tests" / "integration" / "kmods" / "oot"
PATCH = REPO / "tests" / "integration" / "patches" / "kbuild-6.1" / "oot-show.patch"


@pytest.fixture(scope="module")
def oot_module(env, tmp_path_factory):
    src = tmp_path_factory.mktemp("oot") / "kpatch_oot"
    sources = {p.name: p.read_text() for p in sorted(OOT_SOURCES.glob("*.c"))}
    ko = build_external_module(env["artifacts"], src, sources, "kpatch_oot")
    return ko, src


@pytest.fixture(scope="module")
def oot_run(env, oot_module):
    ko, src = oot_module
    forget_cached_module(env, "livepatch-oot")
    args = {k: v for k, v in env["args"].items() if k != "source_dir"}
    run = build(dict(env, args=args), [PATCH], "livepatch-oot", oot_module=str(ko), oot_module_src=str(src))
    assert not run.failed, run.output
    return run


def test_out_of_tree_object_is_diffed_against_the_module_itself(oot_run, oot_module):
    assert functions_by_object(oot_run) == {"kpatch_oot_show.o": ("kpatch_oot", ["kpatch_oot_show"], [])}
    ko = Path(oot_run.result["module_path"])
    syms = subprocess.run(["readelf", "-sW", str(ko)], capture_output=True, text=True, check=True).stdout
    # the module's static counter: reachable only through a livepatch relocation against kpatch_oot
    assert re.search(r"\.klp\.sym\.kpatch_oot\.kpatch_oot_count,\d+", syms), syms
    log = Path(oot_run.result["log"]).read_text()
    assert "copy-oot-source" in log and "kpatch_oot_show.o: kpatch_oot (out-of-tree module" in log
    # the user's source directory is not written: no patched text, no objects with our flags
    _ko, src = oot_module
    assert "original" in (src / "kpatch_oot_show.c").read_text()


def test_out_of_tree_patch_needs_both_options(env, oot_module):
    ko, _src = oot_module
    run = build(env, [PATCH], "livepatch-oot-half", oot_module=str(ko))
    assert run.failed and "oot_module_src" in run.result["msg"], run.result


def test_out_of_tree_module_patched_before_and_after_it_loads(oot_run, oot_module, env):
    ko, _src = oot_module
    out = vm(env, {"/work/kpatch_oot.ko": ko, "/work/p.ko": Path(oot_run.result["module_path"])}, r"""
insmod /work/kpatch_oot.ko || exit 11
cat /proc/kpatch_oot
insmod /work/p.ko || exit 10
wait_transition livepatch_oot
cat /proc/kpatch_oot
unload livepatch_oot
cat /proc/kpatch_oot
rmmod kpatch_oot || exit 12
insmod /work/p.ko || exit 13
wait_transition livepatch_oot
insmod /work/kpatch_oot.ko || exit 14
cat /proc/kpatch_oot
rmmod kpatch_oot || exit 15
unload livepatch_oot
""")
    assert out.strip().split("\n")[-4:] == ["kpatch_oot original 1", "kpatch_oot patched 2",
                                            "kpatch_oot original 3", "kpatch_oot patched 1"], out
