"""A tree prepared with the headers' objtool compiles the same objects as one that built its own.

Two cold ``prepare_tree`` runs of Debian's real 6.1 source: one given the release's headers (objtool
copied from them, objtool and resolve_btfids not built), one without (kbuild builds both, as
before).  The same object compiled in both must have identical code and data (debug info names
the tree's own path, so it is stripped before comparing).
"""

import subprocess

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import StepLog
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.tree import build_objects, prepare_tree

pytestmark = pytest.mark.integration

FLAGS = "-ffunction-sections -fdata-sections"
OBJECTS = ["fs/proc/meminfo.o", "kernel/sched/core.o"]


@pytest.fixture(scope="module")
def trees(kernel_6_1, tmp_path_factory):
    base = tmp_path_factory.mktemp("prebuilt")
    log = StepLog(base / "build.log")
    with_headers = prepare_tree(kernel_6_1.source_tree(), kernel_6_1.config, kernel_6_1.release, base / "with",
                                log, headers=kernel_6_1.headers)
    without = prepare_tree(kernel_6_1.source_tree(), kernel_6_1.config, kernel_6_1.release, base / "without", log)
    return base, with_headers, without, log


def stripped(path, dest):
    subprocess.run(["objcopy", "--strip-debug", str(path), str(dest)], check=True)
    return dest.read_bytes()


def test_headers_objtool_is_used_and_btf_tools_are_not_built(trees, kernel_6_1):
    _base, with_headers, without, log = trees
    assert with_headers.prebuilt_tools and not without.prebuilt_tools
    ours = with_headers.root / "tools/objtool/objtool"
    assert ours.read_bytes() == (kernel_6_1.headers / "tools/objtool/objtool").read_bytes()
    assert not (with_headers.root / "tools/objtool/objtool-in.o").exists(), "objtool was compiled anyway"
    assert not (with_headers.root / "tools/bpf/resolve_btfids/resolve_btfids").exists()
    assert (without.root / "tools/bpf/resolve_btfids/resolve_btfids").is_file()
    assert "objtool from" in log.path.read_text()


def test_objects_are_identical_either_way(trees):
    base, with_headers, without, _log = trees
    a = build_objects(with_headers, OBJECTS, FLAGS, base / "out-with")
    b = build_objects(without, OBJECTS, FLAGS, base / "out-without")
    assert not (with_headers.root / "tools/objtool/objtool-in.o").exists(), "an object build rebuilt objtool"
    for left, right in zip(a, b):
        assert stripped(left.path, base / "l.o") == stripped(right.path, base / "r.o"), left.relpath


def test_stamp_keeps_the_two_apart(trees, kernel_6_1):
    base, with_headers, _without, log = trees
    again = prepare_tree(kernel_6_1.source_tree(), kernel_6_1.config, kernel_6_1.release, base / "with",
                         log, headers=kernel_6_1.headers)
    assert again.reused and again.prebuilt_tools
    # The same cached tree asked for without headers: prepared again, building its own tools.
    rebuilt = prepare_tree(kernel_6_1.source_tree(), kernel_6_1.config, kernel_6_1.release, base / "with", log)
    assert not rebuilt.reused and not rebuilt.prebuilt_tools
    assert (rebuilt.root / "tools/objtool/objtool-in.o").exists()
