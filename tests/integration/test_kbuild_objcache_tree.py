"""The unpatched-object cache in Debian's real 6.1 tree, with kbuild's own ``.cmd`` files.

One tree is prepared for the module (and prepared again, once, with another config).  Each test
checks a miss by the cache's outcome *and* by the object's bytes where the change alters them.
"""

import difflib

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.objcache import build_unpatched
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.compiler import host_compiler
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.recorded import build_recorded
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import StepLog
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.tree import (
    build_objects,
    patched_tree,
    prepare_tree,
)

pytestmark = pytest.mark.integration

OBJ = "fs/proc/meminfo.o"
FLAGS = "-ffunction-sections -fdata-sections"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("objcache")


@pytest.fixture(scope="module")
def compiler():
    return host_compiler()


def prepare(kernel, workdir, config):
    return prepare_tree(kernel.source_tree(), config, kernel.release, workdir / "trees", StepLog(workdir / "log"))


def unpatched(tree, out, compiler):
    return build_unpatched(tree, [OBJ], FLAGS, out, 2, compiler, build=build_objects)


def patch_file(tmp_path, tree, rel, old, new):
    text = (tree.root / rel).read_text()
    assert old in text, f"{old!r} not in {rel}"
    path = tmp_path / "change.patch"
    path.write_text("".join(difflib.unified_diff(text.splitlines(True), text.replace(old, new, 1).splitlines(True),
                                                 f"a/{rel}", f"b/{rel}")))
    return path


def test_hit_then_source_and_header_changes_miss(kernel_6_1, workdir, compiler, tmp_path):
    tree = prepare(kernel_6_1, workdir, kernel_6_1.config)
    assert unpatched(tree, tmp_path / "a", compiler).compiled == [OBJ]
    assert unpatched(tree, tmp_path / "b", compiler).reused == [OBJ]
    original = (tmp_path / "a" / OBJ).read_bytes()
    assert (tmp_path / "b" / OBJ).read_bytes() == original
    source = patch_file(tmp_path, tree, "fs/proc/meminfo.c", '"Percpu:         "', '"PERCPU:         "')
    with patched_tree(tree, [source]):
        assert unpatched(tree, tmp_path / "c", compiler).compiled == [OBJ]
    assert (tmp_path / "c" / OBJ).read_bytes() != original
    header = patch_file(tmp_path, tree, "include/linux/hugetlb.h", "#include <linux/mm_types.h>",
                        "#include <linux/mm_types.h>\n/* a changed dependency */")
    with patched_tree(tree, [header]):
        assert unpatched(tree, tmp_path / "d", compiler).compiled == [OBJ]
    # Restored: every dependency has its old content again, so the first entry is valid.
    assert unpatched(tree, tmp_path / "e", compiler).reused == [OBJ]
    assert (tmp_path / "e" / OBJ).read_bytes() == original


def test_other_compiler_misses(kernel_6_1, workdir, compiler, tmp_path):
    tree = prepare(kernel_6_1, workdir, kernel_6_1.config)
    unpatched(tree, tmp_path / "a", compiler)
    assert unpatched(tree, tmp_path / "b", compiler + " (another build)").compiled == [OBJ]


def test_other_config_prepares_again_and_misses(kernel_6_1, workdir, compiler, tmp_path):
    tree = prepare(kernel_6_1, workdir, kernel_6_1.config)
    unpatched(tree, tmp_path / "a", compiler)
    assert unpatched(tree, tmp_path / "b", compiler).reused == [OBJ]
    config = tmp_path / "config"
    text = kernel_6_1.config.read_text()
    assert "CONFIG_PROC_CHILDREN=y\n" in text
    config.write_text(text.replace("CONFIG_PROC_CHILDREN=y\n", "# CONFIG_PROC_CHILDREN is not set\n"))
    other = prepare(kernel_6_1, workdir, config)
    assert not other.reused
    assert unpatched(other, tmp_path / "c", compiler).compiled == [OBJ]


def test_recorded_command_gives_kbuilds_patched_object(kernel_6_1, workdir, compiler, tmp_path):
    """In Debian's 6.1 tree (gcc, then objtool on the object): the recorded command is proven on
    the unpatched source and gives the patched object byte for byte as make does."""
    tree = prepare(kernel_6_1, workdir, kernel_6_1.config)
    outcome = build_unpatched(tree, [OBJ], FLAGS, tmp_path / "a", 2, compiler, build=build_objects,
                              prove_commands=True)
    assert list(outcome.commands) == [OBJ] and "objtool" in outcome.commands[OBJ]
    source = patch_file(tmp_path, tree, "fs/proc/meminfo.c", '"Percpu:         "', '"PERCPU:         "')
    with patched_tree(tree, [source]):
        assert build_recorded(tree, outcome.commands, tmp_path / "direct", tmp_path / "a") == []
        build_objects(tree, [OBJ], FLAGS, tmp_path / "make")
    direct = (tmp_path / "direct" / OBJ).read_bytes()
    assert direct == (tmp_path / "make" / OBJ).read_bytes() != (tmp_path / "a" / OBJ).read_bytes()
    # the verdict is kept: a second build proves nothing again
    again = build_unpatched(tree, [OBJ], FLAGS, tmp_path / "b", 2, compiler, build=build_objects,
                            prove_commands=True)
    assert again.commands == outcome.commands
    assert sum("prove-recorded-command" in line for line in tree.log.lines) == 1
