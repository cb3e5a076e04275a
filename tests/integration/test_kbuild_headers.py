"""Patched headers on Debian's real 6.1 tree: exactly the objects that include them, or a refusal.

The tests share the build tests' prepared tree (``cache_root() / "build-tests"``), warm after the
first run; the include graph is cached beside it.  The truth for fs/proc/internal.h is computed
independently of the code under test: the compile units of Debian's own vmlinux (its DWARF) whose
source text includes the header.  No test here runs the full kernel build.
"""

import difflib
import os
import re
import time
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.pipeline import (
    FUNCTION_SECTIONS,
    BuildRequest,
    build_livepatch,
    patch_include_dir,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError, StepLog
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.tree import (
    build_objects,
    objects_for_sources,
    prepare_tree,
)
from tests.testbed.kernels import cache_root

pytestmark = pytest.mark.integration

HEADER = "fs/proc/internal.h"


@pytest.fixture(scope="module")
def cache():
    return cache_root() / "build-tests"


@pytest.fixture(scope="module")
def tree(kernel_6_1, cache, tmp_path_factory):
    log = StepLog(tmp_path_factory.mktemp("headers") / "build.log")
    return prepare_tree(kernel_6_1.source_tree(), kernel_6_1.config, kernel_6_1.release, cache / "trees", log)


@pytest.fixture(scope="module")
def vmlinux_sources(kernel_6_1):
    """Source file of every compile unit in Debian's vmlinux: what its build really linked."""
    from elftools.elf.elffile import ELFFile

    names = set()
    with open(kernel_6_1.vmlinux, "rb") as fh:
        for cu in ELFFile(fh).get_dwarf_info(relocate_dwarf_sections=False).iter_CUs():
            name = cu.get_top_DIE().attributes.get("DW_AT_name")
            if name:
                names.add(name.value.decode())
    return names


def flags(cache):
    return f"{FUNCTION_SECTIONS} -I{patch_include_dir(cache)}"


def recorded_users(root, header, under):
    """Objects under ``under`` whose kbuild record (``.<obj>.cmd``, parsed here) lists ``header``."""
    found = set()
    for dirpath, _dirs, files in os.walk(root / under):
        for name in files:
            if name.startswith(".") and name.endswith(".o.cmd"):
                deps = (Path(dirpath) / name).read_text(errors="replace").partition("\ndeps_")[2]
                if re.search(rf"^\s*{re.escape(header)} \\$", deps, re.M):
                    found.add(os.path.relpath(os.path.join(dirpath, name[1:-4]), root))
    return found


def includes_proc_internal(root, src):
    """``src`` has an #include line that names fs/proc/internal.h from where it is."""
    if not src.endswith(".c") or not src.startswith("fs/") or src.count("/") > 2:
        return False
    name = "internal.h" if src.startswith("fs/proc/") else "proc/internal.h"
    return re.search(rf'^\s*#\s*include\s*"{re.escape(name)}"', (root / src).read_text(errors="replace"), re.M)


def objects_and_records(root):
    return {os.path.join(d, f) for d, _dirs, files in os.walk(root) for f in files if f.endswith((".o", ".o.cmd"))}


def test_local_header_maps_to_exactly_its_includers(tree, cache, vmlinux_sources):
    # two unrelated fs/proc objects, built before: their records exist and do not name the header
    build_objects(tree, ["fs/proc/stat.o", "fs/proc/cmdline.o"], flags(cache), tree.state_dir / "unrelated")
    start = time.monotonic()
    result = objects_for_sources(tree, [HEADER], extra_cflags=flags(cache), full_build_fallback=False)
    seconds = time.monotonic() - start
    got = result.objects[HEADER]
    # independent truth: the fs/proc sources (and fs/*.c) Debian linked into vmlinux whose text includes it
    truth = {src[:-2] + ".o" for src in vmlinux_sources if includes_proc_internal(tree.root, src)}
    assert len(truth) >= 20 and "fs/proc/meminfo.o" in truth
    assert set(got) == truth, (sorted(set(got) - truth), sorted(truth - set(got)))
    # and the records kbuild wrote, read here, agree: every fs/ object that lists it is in the list
    assert recorded_users(tree.root, HEADER, "fs") == truth
    for unrelated in ("fs/proc/stat.o", "fs/proc/cmdline.o"):
        assert (tree.root / unrelated).is_file() and unrelated not in got
    assert {result.goals[o].kind for o in got} == {"vmlinux"}
    assert "compiled candidates" in result.header_basis[HEADER]
    log = tree.log.path.read_text()
    for step in ("include-graph", "header-candidates", "compile-candidates", "header-users"):
        assert re.search(rf"^\d\d:\d\d:\d\d {step}\s+ok\s+\d+\.\d\ds", log, re.M), step
    print(f"{HEADER}: {len(got)} objects in {seconds:.1f}s")


def test_widely_included_header_is_refused_without_building(tree, cache):
    before = objects_and_records(tree.root)
    start = time.monotonic()
    with pytest.raises(KbuildError) as info:
        objects_for_sources(tree, ["include/linux/mm.h"], extra_cflags=flags(cache), full_build_fallback=False)
    seconds = time.monotonic() - start
    message = str(info.value)
    assert "include/linux/mm.h" in message and "full_build_fallback is off" in message
    assert re.search(r"at least \d+ candidate objects may include it", message), message
    assert objects_and_records(tree.root) == before  # nothing compiled
    assert "compile" not in tree.log.path.read_text().split("include/linux/mm.h", 1)[1]
    assert seconds < 60, seconds
    print(f"refused in {seconds:.1f}s: {message}")


def test_header_patch_builds_a_livepatch_for_each_user(kernel_6_1, cache, tmp_path):
    """is_empty_pde() is a static inline in fs/proc/internal.h; generic.c and inode.c call it."""
    text = (kernel_6_1.source_tree() / HEADER).read_text()
    old = "return S_ISDIR(pde->mode) && !pde->proc_iops;"
    assert old in text
    new_text = text.replace(old, "return S_ISDIR(pde->mode) && !pde->proc_iops && !(pde->flags & 0x80);")
    patch = tmp_path / "empty-pde.patch"
    patch.write_text("".join(difflib.unified_diff(text.splitlines(True), new_text.splitlines(True),
                                                  f"a/{HEADER}", f"b/{HEADER}")))
    req = BuildRequest(patches=[patch], release=kernel_6_1.release, source_dir=kernel_6_1.source_tree(),
                       config=kernel_6_1.config, vmlinux=kernel_6_1.vmlinux, headers=kernel_6_1.headers,
                       cache_dir=cache, output_dir=tmp_path / "out", name="livepatch-empty-pde",
                       modules_dir=kernel_6_1.modules_dir, full_build_fallback=False)
    start = time.monotonic()
    result = build_livepatch(req)
    seconds = time.monotonic() - start
    changed = {o.object: sorted(o.changed_functions) for o in result.objects}
    assert set(changed) == {"fs/proc/generic.o", "fs/proc/inode.o"}, changed
    assert any("proc_create" in f for f in changed["fs/proc/generic.o"]), changed
    assert "proc_get_inode" in changed["fs/proc/inode.o"], changed
    assert all(o.parent == "vmlinux" for o in result.objects)
    log = Path(result.log).read_text()
    line = next(l for l in log.splitlines() if re.search(r" header-objects\s+info ", l))
    assert f"{HEADER}: fs/proc/array.o " in line and "fs/proc/meminfo.o" in line and "(dependency records" in line
    print(f"header livepatch in {seconds:.1f}s ({'cached' if result.cached else 'built'}): {changed}")


def test_unity_built_source_maps_to_the_including_object(tree):
    """kernel/sched/psi.c is compiled only inside build_utility.c: its code is patched in that object."""
    result = objects_for_sources(tree, ["kernel/sched/psi.c", "kernel/sched/core.c"])
    assert result.objects == {"kernel/sched/psi.c": ["kernel/sched/build_utility.o"],
                              "kernel/sched/core.c": ["kernel/sched/core.o"]}
    assert result.goals["kernel/sched/build_utility.o"].kind == "vmlinux" and not result.undecided
