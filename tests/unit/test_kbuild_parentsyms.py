"""The parent symbol table cache: same table as the engine's loader, re-read when the file changes."""

import os
import subprocess

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf import reader
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.lookup import load_parent_symtab
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.parentsyms import parent_symtab


def build(tmp_path, value):
    (tmp_path / "a.c").write_text(f"static int counter = {value};\nstatic int bump(void) {{ return ++counter; }}\n"
                                  "int entry(void) { return bump(); }\n")
    (tmp_path / "b.c").write_text("static int bump(void) { return 2; }\nint other(void) { return bump(); }\n")
    out = tmp_path / "parent.o"
    subprocess.run(["ld", "-r", "-o", str(out), *map(str, compile_all(tmp_path))], check=True)
    return out


def compile_all(tmp_path):
    objs = []
    for name in ("a", "b"):
        subprocess.run(["gcc", "-O0", "-c", "-o", str(tmp_path / f"{name}.o"), str(tmp_path / f"{name}.c")], check=True)
        objs.append(tmp_path / f"{name}.o")
    return objs


def shape(table):
    return ({k: vars(v) for k, v in table.globals.items()},
            {k: [vars(s) for s in v] for k, v in table.locals_by_name.items()},
            [(b.name, [vars(s) for s in b.locals]) for b in table.blocks])


def test_cached_table_equals_the_engine_loader(tmp_path, monkeypatch):
    parent = build(tmp_path, 1)
    cache = tmp_path / "cache"
    first = parent_symtab(parent, "vmlinux", cache)
    assert shape(first) == shape(load_parent_symtab(str(parent), "vmlinux"))
    assert len(first.locals_by_name["bump"]) == 2 and "entry" in first.globals
    monkeypatch.setattr(reader, "read_symbols", lambda path: pytest.fail("ELF read again"))
    assert shape(parent_symtab(parent, "vmlinux", cache)) == shape(first)


def test_changed_file_is_read_again(tmp_path):
    cache = tmp_path / "cache"
    before = parent_symtab(build(tmp_path, 1), "vmlinux", cache)
    parent = tmp_path / "parent.o"
    (tmp_path / "a.c").write_text("int renamed(void) { return 1; }\n")
    subprocess.run(["gcc", "-c", "-o", str(parent), str(tmp_path / "a.c")], check=True)
    os.utime(parent, ns=(1, 1))  # another mtime and size: the key differs
    after = parent_symtab(parent, "vmlinux", cache)
    assert "entry" in before.globals and "renamed" in after.globals and "entry" not in after.globals


def test_corrupt_cache_is_read_again(tmp_path):
    parent, cache = build(tmp_path, 1), tmp_path / "cache"
    parent_symtab(parent, "vmlinux", cache)
    [entry] = cache.iterdir()
    entry.write_bytes(b"not marshal data")
    assert "entry" in parent_symtab(parent, "vmlinux", cache).globals
