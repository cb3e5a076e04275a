"""kbuild's recorded command run without make: parsed as kbuild writes it, moved out of the tree,
trusted only once it reproduced kbuild's object, and the verdict kept per cache key."""

import json
import shlex
import subprocess

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.recorded import (
    VERDICT_NAME,
    build_recorded,
    prove,
    recorded_command,
    retarget,
)
from tests.unit.kbuild_trees import make_tree

OBJ = "fs/proc/meminfo.o"
# What kbuild runs for an object (6.1 layout), here with the host's gcc on the tree's tiny source.
COMMAND = ("gcc -Wp,-MMD,fs/proc/.meminfo.o.d -O2 -DKBUILD_MODNAME='\"proc\"' -c -o fs/proc/meminfo.o "
           "fs/proc/meminfo.c   ; objcopy --add-section .note.tag=fs/proc/meminfo.c fs/proc/meminfo.o")


def record(tree, command=COMMAND, prefix="cmd_"):
    """Compile the object as kbuild would and write its ``.cmd`` record (make's escaping of ``$``)."""
    subprocess.run(["sh", "-c", command], cwd=tree.root, check=True)
    (tree.root / "fs/proc/.meminfo.o.cmd").write_text(
        f"{prefix}{OBJ} := {command.replace('$', '$$')}\n\nsource_{OBJ} := fs/proc/meminfo.c\n")
    return tree.root / OBJ


def test_the_record_is_read_as_the_shell_runs_it(tmp_path):
    tree = make_tree(tmp_path)
    record(tree, COMMAND.replace("-O2", "-O2 -DPRICE='\"$5\"'"), prefix="savedcmd_")
    assert recorded_command(tree, OBJ) == COMMAND.replace("-O2", "-O2 -DPRICE='\"$5\"'")
    (tree.root / "fs/proc/.meminfo.o.cmd").write_text(f"cmd_{OBJ} := gcc $(CFLAGS) -c -o {OBJ} x.c\n")
    assert recorded_command(tree, OBJ) is None  # a make expansion: not run outside make
    assert recorded_command(tree, "fs/proc/other.o") is None


def test_retarget_moves_the_object_and_its_dependency_file(tmp_path):
    dest = tmp_path / "out dir" / OBJ
    moved = retarget(COMMAND, OBJ, dest)
    words = shlex.split(moved)
    assert words.count(str(dest)) == 2 and OBJ not in words  # gcc's -o and objcopy's operand
    assert f"-Wp,-MMD,{dest.parent}/.meminfo.o.d" in words and "fs/proc/meminfo.c" in words
    assert retarget(COMMAND.replace(f"-o {OBJ}", "-o elsewhere.o"), OBJ, dest) is None


def test_proof_runs_once_per_key_and_the_patched_side_compiles_outside_the_tree(tmp_path):
    tree = make_tree(tmp_path)
    reference = tmp_path / "kbuild.o"
    reference.write_bytes(record(tree).read_bytes())
    entries = tmp_path / "entries"
    assert prove(tree, entries, OBJ, reference, tmp_path / "proof") == COMMAND
    assert json.loads((entries / VERDICT_NAME).read_text())["reproduces"] is True
    steps = [line for line in tree.log.lines if "prove-recorded-command" in line]
    assert prove(tree, entries, OBJ, reference, tmp_path / "proof") == COMMAND
    assert [line for line in tree.log.lines if "prove-recorded-command" in line] == steps  # kept, not run again
    (tree.root / "fs/proc/meminfo.c").write_text("int patched(void) { return 7; }\n")
    assert build_recorded(tree, {OBJ: COMMAND}, tmp_path / "patched", tmp_path / "proof") == []
    patched = (tmp_path / "patched" / OBJ).read_bytes()
    assert b"patched" in patched and (tree.root / OBJ).read_bytes() == reference.read_bytes()
    assert not list((tmp_path / "patched" / "fs/proc").glob(".*.d"))


def test_a_command_that_does_not_give_kbuilds_bytes_is_refused_and_remembered(tmp_path):
    tree = make_tree(tmp_path)
    record(tree)
    reference = tmp_path / "kbuild.o"
    # kbuild's rule changed the object after the recorded command (as record_mcount did)
    subprocess.run(["objcopy", "--add-section", f".extra={tree.root / 'Makefile'}", str(tree.root / OBJ),
                    str(reference)], check=True)
    entries = tmp_path / "entries"
    assert prove(tree, entries, OBJ, reference, tmp_path / "proof") is None
    assert json.loads((entries / VERDICT_NAME).read_text())["reproduces"] is False
    assert prove(tree, entries, OBJ, reference, tmp_path / "proof") is None
    assert sum("prove-recorded-command" in line for line in tree.log.lines) == 1
    # another recorded command (other flags) is proven afresh
    record(tree, COMMAND.replace("-O2", "-O1"))
    reference.write_bytes((tree.root / OBJ).read_bytes())
    assert prove(tree, entries, OBJ, reference, tmp_path / "proof") == COMMAND.replace("-O2", "-O1")


def test_an_object_that_starts_exporting_is_left_to_make(tmp_path):
    tree = make_tree(tmp_path)
    record(tree)
    (tmp_path / "unpatched" / "fs/proc").mkdir(parents=True)
    (tmp_path / "unpatched" / OBJ).write_bytes((tree.root / OBJ).read_bytes())
    (tree.root / "fs/proc/meminfo.c").write_text(
        'int shared(void) { return 1; }\n'
        'static const char __ksymtab_shared[] __attribute__((section("__ksymtab_strings"), used)) = "shared";\n')
    assert build_recorded(tree, {OBJ: COMMAND}, tmp_path / "patched", tmp_path / "unpatched") == [OBJ]
    assert not (tmp_path / "patched" / OBJ).exists()
