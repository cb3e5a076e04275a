"""The cache of unpatched objects: a hit only when tree stamp, flags, compiler and every dependency match.

The tree is a small real one (``kbuild_trees``) with a stamp as ``prepare_tree`` writes it; the
builder compiles with the host gcc and records dependencies the way kbuild's ``.cmd`` files do,
so that the cache reads the same format it reads in a kernel tree.
"""

import json
import subprocess

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild import objcache
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prepared import STAMP_NAME

from tests.unit.kbuild_trees import make_tree

OBJ = "fs/proc/meminfo.o"
FLAGS = "-ffunction-sections"
GCC = "GCC: (Debian 12.2.0-14+deb12u1) 12.2.0"


def kbuild_like_build(tree, objects, extra_cflags, out_dir, jobs=1):
    """Compile each object with gcc and write its ``.<name>.o.cmd`` in kbuild's format."""
    built.extend(objects)
    for rel in objects:
        src, obj = rel[:-2] + ".c", tree.root / rel
        subprocess.run(["gcc", "-c", "-Iinclude", *extra_cflags.split(), "-MD", "-MF", "dep.d", "-o", rel, src],
                       cwd=tree.root, check=True)
        deps = (tree.root / "dep.d").read_text().replace("\\\n", " ").split(":", 1)[1].split()
        (tree.root / "dep.d").unlink()
        lines = [f"cmd_{rel} := gcc -c {src}", "", f"source_{rel} := {src}", "", f"deps_{rel} := \\"]
        lines += [f"  {d} \\" for d in deps if d != src]
        lines += ["  $(wildcard include/config/X) \\", "", f"{rel}: $(deps_{rel})", "", f"$(deps_{rel}):"]
        (obj.parent / f".{obj.name}.cmd").write_text("\n".join(lines) + "\n")
        dest = out_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(obj.read_bytes())


built = []


def setup_tree(tmp_path):
    tree = make_tree(tmp_path)
    main = tree.root / "fs/proc/meminfo.c"
    main.unlink()  # unshare from the pristine copy before the test writes it
    main.write_text('#include "linux/mm.h"\nint meminfo_show(void) { return MM_H; }\n')
    write_stamp(tree, "config-a")
    return tree


def write_stamp(tree, config):
    (tree.root / STAMP_NAME).write_text(json.dumps({"final_config_sha256": config, "release": tree.release}))


def unpatched(tree, tmp_path, name, compiler=GCC, flags=FLAGS):
    built.clear()
    outcome = objcache.build_unpatched(tree, [OBJ], flags, tmp_path / name, 1, compiler, build=kbuild_like_build)
    assert sorted(outcome.reused + outcome.compiled) == [OBJ]
    return outcome


def test_same_inputs_reuse_the_object(tmp_path):
    tree = setup_tree(tmp_path)
    first = unpatched(tree, tmp_path, "a")
    assert first.compiled == [OBJ] and built == [OBJ]
    second = unpatched(tree, tmp_path, "b")
    assert second.reused == [OBJ] and built == []
    assert (tmp_path / "b" / OBJ).read_bytes() == (tmp_path / "a" / OBJ).read_bytes()


def test_changed_source_is_recompiled(tmp_path):
    tree = setup_tree(tmp_path)
    unpatched(tree, tmp_path, "a")
    (tree.root / "fs/proc/meminfo.c").write_text('#include "linux/mm.h"\nint meminfo_show(void) { return 2; }\n')
    assert unpatched(tree, tmp_path, "b").compiled == [OBJ] and built == [OBJ]
    assert (tmp_path / "b" / OBJ).read_bytes() != (tmp_path / "a" / OBJ).read_bytes()
    (tree.root / "fs/proc/meminfo.c").write_text('#include "linux/mm.h"\nint meminfo_show(void) { return MM_H; }\n')
    assert unpatched(tree, tmp_path, "c").reused == [OBJ]  # the first content's entry was kept
    assert (tmp_path / "c" / OBJ).read_bytes() == (tmp_path / "a" / OBJ).read_bytes()


def test_changed_header_is_recompiled(tmp_path):
    tree = setup_tree(tmp_path)
    unpatched(tree, tmp_path, "a")
    header = tree.root / "include/linux/mm.h"
    header.unlink()  # unshare (hard link to the pristine source)
    header.write_text("#define MM_H 7\nstruct page;\n")
    assert unpatched(tree, tmp_path, "b").compiled == [OBJ]
    assert (tmp_path / "b" / OBJ).read_bytes() != (tmp_path / "a" / OBJ).read_bytes()


def test_other_config_is_recompiled(tmp_path):
    tree = setup_tree(tmp_path)
    unpatched(tree, tmp_path, "a")
    write_stamp(tree, "config-b")
    assert unpatched(tree, tmp_path, "b").compiled == [OBJ]
    write_stamp(tree, "config-a")  # back to the first tree's identity: its entry is valid again
    assert unpatched(tree, tmp_path, "c").reused == [OBJ]


def test_other_compiler_or_flags_are_recompiled(tmp_path):
    tree = setup_tree(tmp_path)
    unpatched(tree, tmp_path, "a")
    assert unpatched(tree, tmp_path, "b", compiler="GCC: (Debian 14.2.0-19) 14.2.0").compiled == [OBJ]
    assert unpatched(tree, tmp_path, "c", flags="-fdata-sections").compiled == [OBJ]


def test_no_compiler_or_no_stamp_never_caches(tmp_path):
    tree = setup_tree(tmp_path)
    unpatched(tree, tmp_path, "a", compiler=None)
    assert unpatched(tree, tmp_path, "b", compiler=None).compiled == [OBJ]
    (tree.root / STAMP_NAME).unlink()
    unpatched(tree, tmp_path, "c")
    assert unpatched(tree, tmp_path, "d").compiled == [OBJ]


def test_tampered_entry_is_not_used(tmp_path):
    tree = setup_tree(tmp_path)
    unpatched(tree, tmp_path, "a")
    [key_dir] = (tree.state_dir / objcache.CACHE_DIRNAME).iterdir()
    [entry] = key_dir.iterdir()
    (entry / "object.o").write_bytes(b"\x7fELF garbage")
    assert unpatched(tree, tmp_path, "b").compiled == [OBJ]
    assert (tmp_path / "b" / OBJ).read_bytes() == (tmp_path / "a" / OBJ).read_bytes()


def test_clear_drops_every_entry(tmp_path):
    tree = setup_tree(tmp_path)
    unpatched(tree, tmp_path, "a")
    objcache.clear(tree.state_dir)
    assert unpatched(tree, tmp_path, "b").compiled == [OBJ]
