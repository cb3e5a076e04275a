"""Patch parsing, applying and the pristine-tree guarantee of ``_kbuild/patching.py``.

Runs GNU patch on small real trees (see kbuild_trees.py); the signal tests run the
context manager in a child Python process and kill it for real.
"""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.patching import (
    apply_patch,
    changed_files,
    journal_dir,
    patched_tree,
    recover_interrupted_patch,
    reverse_patch,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError
from tests.unit.kbuild_trees import SOURCE_FILES, make_tree, replace_line, unified_diff, write_patch

REPO = Path(__file__).resolve().parents[2]


def assert_pristine(tree):
    """Every source file is byte-identical to the pristine copy, no extra files, no journal."""
    for rel, text in SOURCE_FILES.items():
        assert (tree.root / rel).read_text() == text, rel
    assert (tree.source / "fs/proc/meminfo.c").read_text() == SOURCE_FILES["fs/proc/meminfo.c"]
    assert not journal_dir(tree).exists()
    leftovers = [p for p in tree.root.rglob("*") if p.is_file() and p.relative_to(tree.root).as_posix() not in SOURCE_FILES]
    assert leftovers == []


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path)


def test_changed_files_classifies_modified_created_deleted(tmp_path):
    patch = write_patch(
        tmp_path / "p.patch",
        replace_line("fs/proc/meminfo.c", "line3 = 3", "line3 = 33"),
        replace_line("include/linux/mm.h", "MM_H 1", "MM_H 2"),
        unified_diff("fs/proc/new.c", "", "int x;\n"),
        unified_diff("kernel/sched/core.c", SOURCE_FILES["kernel/sched/core.c"], ""),
        unified_diff("arch/x86/entry/entry_64.S", "nop\n", "nop\nnop\n"),
        unified_diff("fs/proc/Makefile", "obj-y += meminfo.o\n", "obj-y += meminfo.o new.o\n"),
    )
    files = changed_files(patch)
    assert files.sources == ("fs/proc/meminfo.c", "fs/proc/new.c", "kernel/sched/core.c")
    assert files.headers == ("include/linux/mm.h",)
    assert files.assembly == ("arch/x86/entry/entry_64.S",)
    assert files.other == ("fs/proc/Makefile",)
    assert files.created == ("fs/proc/new.c",)
    assert files.deleted == ("kernel/sched/core.c",)


def test_changed_files_reads_git_format_patch(tmp_path):
    body = replace_line("fs/proc/meminfo.c", "line3 = 3", "line3 = 33")
    git = ("From 1234 Mon Sep 17 00:00:00 2001\nSubject: [PATCH] x\n\n---\n fs/proc/meminfo.c | 2 +-\n\n"
           "diff --git a/fs/proc/meminfo.c b/fs/proc/meminfo.c\nindex 1111111..2222222 100644\n" + body + "--\n2.39.2\n")
    patch = tmp_path / "git.patch"
    patch.write_text(git)
    assert changed_files(patch).sources == ("fs/proc/meminfo.c",)


@pytest.mark.parametrize("text, message", [
    ("just some words\n", "changes no files"),
    ("--- a/../etc/passwd\n+++ b/../etc/passwd\n@@ -1 +1 @@\n-x\n+y\n", "outside the kernel tree"),
    ("--- meminfo.c\n+++ meminfo.c\n@@ -1 +1 @@\n-x\n+y\n", "no leading directory"),
])
def test_changed_files_rejects_bad_patches(tmp_path, text, message):
    patch = tmp_path / "bad.patch"
    patch.write_text(text)
    with pytest.raises(KbuildError, match=message):
        changed_files(patch)


def test_changed_files_missing_patch(tmp_path):
    with pytest.raises(KbuildError, match="does not exist"):
        changed_files(tmp_path / "nope.patch")


def test_patched_tree_applies_then_restores(tree, tmp_path):
    patch = write_patch(tmp_path / "ok.patch", replace_line("fs/proc/meminfo.c", "line3 = 3;", "line3 = 333;"))
    target = tree.root / "fs/proc/meminfo.c"
    before_mtime = target.stat().st_mtime_ns
    with patched_tree(tree, [patch]) as applied:
        assert applied[0].files.sources == ("fs/proc/meminfo.c",)
        assert applied[0].adjustments == ()
        assert "line3 = 333;" in target.read_text()
        # the hard link to the pristine source was broken before patching
        assert "line3 = 333;" not in (tree.source / "fs/proc/meminfo.c").read_text()
        assert journal_dir(tree).is_dir()
    assert_pristine(tree)
    # a fresh mtime makes kbuild rebuild objects compiled from the patched text
    assert target.stat().st_mtime_ns > before_mtime
    assert "restore-pristine" in tree.log.path.read_text()


def test_failing_second_patch_names_patch_and_hunk_and_restores_first(tree, tmp_path):
    good = write_patch(tmp_path / "good.patch", replace_line("fs/proc/meminfo.c", "line3 = 3;", "line3 = 333;"))
    stale = SOURCE_FILES["kernel/sched/core.c"].replace("return 7;", "return 70;")
    bad = write_patch(tmp_path / "stale.patch",
                      unified_diff("kernel/sched/core.c", stale, stale.replace("return 70;", "return 700;")))
    with pytest.raises(KbuildError) as info:
        with patched_tree(tree, [good, bad]):
            pytest.fail("the block must not run when a patch does not apply")
    message = str(info.value)
    assert "stale.patch" in message and "kernel/sched/core.c" in message
    assert "Hunk #1 FAILED" in message
    assert_pristine(tree)


def test_reversed_patch_is_reported(tree, tmp_path):
    old = SOURCE_FILES["fs/proc/meminfo.c"]
    reverse = write_patch(tmp_path / "rev.patch",
                          unified_diff("fs/proc/meminfo.c", old.replace("line3 = 3;", "line3 = 9;"), old))
    with pytest.raises(KbuildError, match="Reversed .or previously applied. patch detected"):
        with patched_tree(tree, [reverse]):
            pass
    assert_pristine(tree)


def test_exception_in_block_restores(tree, tmp_path):
    patch = write_patch(tmp_path / "ok.patch", replace_line("include/linux/mm.h", "MM_H 1", "MM_H 2"),
                        unified_diff("fs/newdir/created.c", "", "int created;\n"))
    with pytest.raises(RuntimeError, match="build broke"):
        with patched_tree(tree, [patch]):
            assert (tree.root / "fs/newdir/created.c").exists()
            raise RuntimeError("build broke")
    assert_pristine(tree)
    assert not (tree.root / "fs/newdir").exists()


def test_keyboard_interrupt_restores(tree, tmp_path):
    patch = write_patch(tmp_path / "ok.patch", replace_line("include/linux/mm.h", "MM_H 1", "MM_H 2"))
    with pytest.raises(KeyboardInterrupt):
        with patched_tree(tree, [patch]):
            raise KeyboardInterrupt
    assert_pristine(tree)


def test_dirty_tree_is_refused(tree, tmp_path):
    target = tree.root / "fs/proc/meminfo.c"
    target.unlink()
    target.write_text("edited by hand\n")
    patch = write_patch(tmp_path / "ok.patch", replace_line("fs/proc/meminfo.c", "line3 = 3;", "line3 = 333;"))
    with pytest.raises(KbuildError, match="differs compared with the pristine source .* the cached tree is dirty"):
        with patched_tree(tree, [patch]):
            pass
    assert target.read_text() == "edited by hand\n"


def test_apply_and_reverse_patch_round_trip(tree, tmp_path):
    patch = write_patch(tmp_path / "ok.patch", replace_line("kernel/sched/core.c", "return 5;", "return 55;"))
    apply_patch(tree, patch)
    assert "return 55;" in (tree.root / "kernel/sched/core.c").read_text()
    assert "return 55;" not in (tree.source / "kernel/sched/core.c").read_text()
    reverse_patch(tree, patch)
    assert (tree.root / "kernel/sched/core.c").read_text() == SOURCE_FILES["kernel/sched/core.c"]


def drifted_patch(path, context_line, drifted_line):
    """A patch changing line3 of meminfo.c, made against a file where one context line read otherwise."""
    drifted = SOURCE_FILES["fs/proc/meminfo.c"].replace(context_line, drifted_line)
    return write_patch(path, unified_diff("fs/proc/meminfo.c", drifted, drifted.replace("line3 = 3;", "line3 = 333;")))


def test_fuzz_is_refused_by_default(tree, tmp_path):
    # context lines that no longer match exactly: applies only with fuzz
    patch = drifted_patch(tmp_path / "fuzzy.patch", "line1 = 1;", "line1 = 100;")
    with pytest.raises(KbuildError, match=r"Hunk #1 FAILED.*\(it applies with fuzz 2: set fuzz to 2"):
        with patched_tree(tree, [patch]):
            pass
    with pytest.raises(KbuildError, match="Hunk #1 FAILED"):
        with patched_tree(tree, [patch], fuzz=1):
            pass
    with patched_tree(tree, [patch], fuzz=2) as applied:
        assert "line3 = 333;" in (tree.root / "fs/proc/meminfo.c").read_text()
    assert_pristine(tree)
    (adjusted,) = applied[0].adjustments
    assert (adjusted.file, adjusted.hunk, adjusted.line, adjusted.fuzz) == ("fs/proc/meminfo.c", 1, 1, 2)
    assert "fuzzy.patch: fs/proc/meminfo.c hunk #1 at line 1 (fuzz 2)" in tree.log.path.read_text()


def test_fuzz_1_ignores_only_the_outermost_context_line(tree, tmp_path):
    patch = drifted_patch(tmp_path / "fuzz1.patch", "line0 = 0;", "line0 = 100;")
    with pytest.raises(KbuildError, match=r"\(it applies with fuzz 1: set fuzz to 1"):
        with patched_tree(tree, [patch]):
            pass
    with patched_tree(tree, [patch], fuzz=1) as applied:
        assert "line3 = 333;" in (tree.root / "fs/proc/meminfo.c").read_text()
    assert_pristine(tree)
    assert [(a.hunk, a.fuzz) for a in applied[0].adjustments] == [(1, 1)]


def test_hunk_placed_at_an_offset_is_reported_at_fuzz_0(tree, tmp_path):
    # The patch was made against a file with two more lines on top: exact context, other place.
    old = SOURCE_FILES["fs/proc/meminfo.c"]
    shifted = "/* a */\n/* b */\n" + old
    patch = write_patch(tmp_path / "shifted.patch", unified_diff(
        "fs/proc/meminfo.c", shifted, shifted.replace("line20 = 20;", "line20 = 2020;")))
    with patched_tree(tree, [patch]) as applied:
        assert "line20 = 2020;" in (tree.root / "fs/proc/meminfo.c").read_text()
    assert_pristine(tree)
    (adjusted,) = applied[0].adjustments
    assert (adjusted.offset, adjusted.fuzz) == (-2, 0)
    assert "offset -2" in adjusted.describe()


@pytest.mark.parametrize("fuzz", [-1, 3, "1", True])
def test_fuzz_outside_0_to_2_is_refused_before_patching(tree, tmp_path, fuzz):
    patch = write_patch(tmp_path / "ok.patch", replace_line("fs/proc/meminfo.c", "line3 = 3;", "line3 = 333;"))
    with pytest.raises(KbuildError, match="fuzz must be 0, 1 or 2"):
        with patched_tree(tree, [patch], fuzz=fuzz):
            pass
    assert_pristine(tree)


CHILD = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {repo!r} + "/tools"); import _bootstrap
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.patching import patched_tree
    from tests.unit.kbuild_trees import make_tree
    from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prepared import PreparedTree
    from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import StepLog
    base = Path(sys.argv[1])
    tree = PreparedTree(root=base / "work/6.1.0-test/tree", source=base / "src", release="6.1.0-test",
                        make_vars=(), config_sha256="", source_identity="", reused=False, seconds=0.0,
                        log=StepLog(base / "child.log"))
    with patched_tree(tree, [Path(sys.argv[2])]):
        print("patched", flush=True)
        os.kill(os.getpid(), getattr(signal, sys.argv[3]))
        time.sleep(30)
""")


def run_child(tmp_path, patch, signame):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO)))
    return subprocess.run([sys.executable, str(script), str(tmp_path), str(patch), signame],
                          capture_output=True, text=True, timeout=60, check=False)


def test_sigterm_while_patched_restores(tree, tmp_path):
    patch = write_patch(tmp_path / "ok.patch", replace_line("fs/proc/meminfo.c", "line3 = 3;", "line3 = 333;"))
    proc = run_child(tmp_path, patch, "SIGTERM")
    assert "patched" in proc.stdout
    assert proc.returncode != 0
    assert "interrupted by signal SIGTERM" in proc.stderr
    assert_pristine(tree)


def test_sigkill_leaves_journal_that_next_use_replays(tree, tmp_path):
    patch = write_patch(tmp_path / "ok.patch", replace_line("fs/proc/meminfo.c", "line3 = 3;", "line3 = 333;"))
    proc = run_child(tmp_path, patch, "SIGKILL")
    assert proc.returncode == -signal.SIGKILL
    assert "line3 = 333;" in (tree.root / "fs/proc/meminfo.c").read_text()
    assert journal_dir(tree).is_dir()
    recover_interrupted_patch(tree)
    assert_pristine(tree)
    assert "recover-interrupted" in tree.log.path.read_text()


def test_pristine_source_never_written(tree, tmp_path):
    src_file = tree.source / "fs/proc/meminfo.c"
    inode, mtime = src_file.stat().st_ino, src_file.stat().st_mtime_ns
    patch = write_patch(tmp_path / "ok.patch", replace_line("fs/proc/meminfo.c", "line3 = 3;", "line3 = 333;"))
    with patched_tree(tree, [patch]):
        pass
    assert (src_file.stat().st_ino, src_file.stat().st_mtime_ns) == (inode, mtime)
    assert src_file.read_text() == SOURCE_FILES["fs/proc/meminfo.c"]
    assert os.stat(tree.root / "fs/proc/meminfo.c").st_ino != inode
