"""The parent symbol table cache: same table as the engine's loader, re-read when the file changes."""

import marshal
import os
import subprocess
import sys

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf import reader
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.lookup import (
    SymbolLookupError,
    load_parent_symtab,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.parentrows import SymbolRows
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.parentsyms import parent_symtab


def build(tmp_path, value):
    (tmp_path / "a.c").write_text(f"static int counter = {value};\nstatic int bump(void) {{ return ++counter; }}\n"
                                  "int entry(void) { return bump(); }\n"
                                  "__attribute__((section(\".init.text\"))) int setup(void) { return bump(); }\n")
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
    again = parent_symtab(parent, "vmlinux", cache)
    assert shape(again) == shape(first)
    # the .init flag survives the cache: a module's sympos check refuses ranks that depend on it
    assert again.globals["setup"].init and not again.globals["entry"].init


def test_cached_module_table_refuses_an_init_symbol(tmp_path):
    parent, cache = build(tmp_path, 1), tmp_path / "cache"
    parent_symtab(parent, "mymod", cache)
    table = parent_symtab(parent, "mymod", cache)
    assert table.find_global("entry").sympos == 0
    with pytest.raises(SymbolLookupError, match="setup of mymod .* .init section"):
        table.find_global("setup")


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


@pytest.mark.parametrize("damage", ["layout", "truncated column", "names"])
def test_cache_of_another_layout_or_inconsistent_is_read_again(tmp_path, damage):
    parent, cache = build(tmp_path, 1), tmp_path / "cache"
    parent_symtab(parent, "vmlinux", cache)
    [entry] = cache.iterdir()
    fmt, key, payload = marshal.loads(entry.read_bytes())
    if damage == "layout":
        payload["layout"] = ("big" if sys.byteorder == "little" else "little",) + tuple(payload["layout"][1:])
    elif damage == "truncated column":
        payload["values"] = payload["values"][:-8]
    else:
        payload["count"] += 1
    entry.write_bytes(marshal.dumps((fmt, key, payload)))
    table = parent_symtab(parent, "vmlinux", cache)
    assert shape(table) == shape(load_parent_symtab(str(parent), "vmlinux"))
    # ... and the entry was written again, whole
    assert len(SymbolRows.from_payload(marshal.loads(entry.read_bytes())[2])) == len(table.rows)
