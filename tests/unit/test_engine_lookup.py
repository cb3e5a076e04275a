"""Lookup of the parent's symbols: ELF vs readelf text, file blocks, sympos, Module.symvers."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import List

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import STB_GLOBAL, STB_LOCAL, STT_FUNC
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.lookup import (
    SymbolLookupError,
    ParentSymtab,
    load_parent_symtab,
    module_objname,
    parse_readelf_symbols,
    read_symvers,
    symbols_from_model,
    wanted_by,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf, read_symbols
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.diff import create_diff_object
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.special import SpecialSectionError
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.verify import PatchRejected

from tests.unit.engine_cc import (DEFAULT_EXPORTS, TEST_STRUCT_SIZES, compile_c, decode_klp_relocations, link_parent,
                                  make_case, run_engine, write_symvers)

DUPLICATE = r"""
__attribute__((noinline)) static int twice(int x) { return x * 2 + 1; }
int DRIVER(int x) { return twice(x) + 3; }
"""


@pytest.fixture(scope="module")
def parent_with_duplicates(tmp_path_factory):
    """A parent where three files each define a local ``twice``: x.c in the middle."""
    root = tmp_path_factory.mktemp("dups")
    objs = [compile_c(DUPLICATE.replace("DRIVER", "drive_a"), root / "a", name="a.c"),
            compile_c(DUPLICATE.replace("DRIVER", "drive_x"), root / "x", name="x.c"),
            compile_c(DUPLICATE.replace("DRIVER", "drive_c"), root / "c", name="c.c")]
    return link_parent(objs, root / "parent.o"), root


def test_readelf_text_and_elf_give_the_same_symbols(parent_with_duplicates):
    parent, _root = parent_with_duplicates
    text = subprocess.run(["readelf", "-s", "--wide", str(parent)], capture_output=True, text=True,
                          check=True).stdout
    # (section symbols aside: readelf prints them nameless, the model by their section's name)
    from_text = [(s.name, s.value, s.size, s.bind, s.type, s.defined, s.index)
                 for s in parse_readelf_symbols(text) if s.type != 3]
    from_elf = [(s.name, s.value, s.size, s.bind, s.type, s.defined, s.index)
                for s in symbols_from_model(read_symbols(str(parent))) if s.type != 3]
    assert from_text == from_elf and len(from_elf) >= 10


# The row pattern the parser implemented before it was written with str methods (lookup._readelf_row).
READELF_ROW = re.compile(r"^\s*(\d+):\s+([0-9a-fA-F]+)\s+(\d+|0x[0-9a-fA-F]+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*(.*)$")
ODD_ROWS = (
    "    90: 0000000000000010     0 NOTYPE  LOCAL  DEFAULT  UND",  # no name
    "    91: 0000000000000020  0x1f OBJECT  GLOBAL DEFAULT    3 hex_size",
    "    92: 00000000000000zz    16 FUNC    GLOBAL DEFAULT    1 bad_value",
    "    93: 0000000000000030  0x1g FUNC    GLOBAL DEFAULT    1 bad_hex_size",
    "    94: 0000000000000040  12ab FUNC    GLOBAL DEFAULT    1 bad_size",
    "   x95: 0000000000000050    16 FUNC    GLOBAL DEFAULT    1 bad_number",
    "    96:0000000000000060    16 FUNC    GLOBAL DEFAULT    1 glued_number",
    "    97: 0000000000000070    16 FUNC    GLOBAL DEFAULT    1 two words",
    "    98: 0000000000000080    16 FUNC    GLOBAL DEFAULT    1 versioned@@VER_1   ",
    "    99: 0000000000000090    16 FUNC    GLOBAL",  # cut short
    "   100: 00000000000000a0 \u0663 FUNC    GLOBAL DEFAULT    1 arabic_indic_size",
)


def test_readelf_rows_are_read_as_the_row_pattern_reads_them(parent_with_duplicates):
    """Real rows and odd ones (short, malformed, spaced, versioned): the same symbols as the pattern."""
    parent, _root = parent_with_duplicates
    text = subprocess.run(["readelf", "-s", "--wide", str(parent)], capture_output=True, text=True,
                          check=True).stdout
    text = text.rstrip("\n") + "\n" + "\n".join(ODD_ROWS) + "\n"
    expected = []
    for line in text.splitlines():
        match = READELF_ROW.match(line)
        if match and match.group(1) != "0":
            num, value, size, _typ, _bind, _vis, ndx, name = match.groups()
            expected.append((int(num), name.split("@", 1)[0].strip(), int(value, 16), int(size, 0), ndx != "UND"))
    got = [(s.index, s.name, s.value, s.size, s.defined) for s in parse_readelf_symbols(text)]
    assert got == expected
    assert {90, 91, 97, 98, 100} <= {row[0] for row in got} and not {92, 93, 94, 96, 99} & {row[0] for row in got}


def test_local_sympos_follows_address_order_in_vmlinux(parent_with_duplicates):
    parent, _root = parent_with_duplicates
    symtab = load_parent_symtab(str(parent), "vmlinux")
    found = symtab.find_local("twice", symtab.select_file_block("x.c", ["twice", "drive_x"]))
    assert found is not None and found.sympos == 2 and found.bind == STB_LOCAL and found.type == STT_FUNC
    assert symtab.find_local("twice", symtab.select_file_block("c.c", ["twice"])).sympos == 3


def test_unique_local_has_sympos_zero(parent_with_duplicates):
    parent, _root = parent_with_duplicates
    symtab = load_parent_symtab(str(parent), "vmlinux")
    assert symtab.find_global("drive_x").sympos == 0 and symtab.find_global("drive_x").bind == STB_GLOBAL


def test_engine_emits_sympos_for_duplicate_local(tmp_path, parent_with_duplicates):
    parent, _root = parent_with_duplicates
    src = DUPLICATE.replace("DRIVER", "drive_x")
    case = make_case(tmp_path, src, src.replace("+ 3", "+ 4"))
    case.parent = parent
    run_engine(case)
    twice = [r for r in case.klp_relocations() if r["name"] == "twice"]
    assert twice and twice[0]["sympos"] == 2 and twice[0]["objname"] == "vmlinux"


def test_module_parent_uses_symbol_table_order_and_its_name(tmp_path, parent_with_duplicates):
    parent, _root = parent_with_duplicates
    src = DUPLICATE.replace("DRIVER", "drive_x")
    case = make_case(tmp_path, src, src.replace("+ 3", "+ 4"))
    case.parent = parent
    run_engine(case, parent_name="my_driver")
    twice = [r for r in case.klp_relocations() if r["name"] == "twice"]
    assert twice[0]["objname"] == "my_driver" and twice[0]["sympos"] == 2
    assert case.funcs()[0]["objname"] == "my_driver"


def test_ambiguous_file_block_is_an_error(tmp_path):
    objs = [compile_c("static int solo(int x) { return x; }\nint pub1(int x) { return solo(x); }\n",
                      tmp_path / "one"),
            compile_c("static int solo(int x) { return -x; }\nint pub2(int x) { return solo(x); }\n",
                      tmp_path / "two")]
    symtab = load_parent_symtab(str(link_parent(objs, tmp_path / "parent.o")), "vmlinux")
    with pytest.raises(SymbolLookupError) as info:
        symtab.select_file_block("x.c", ["unrelated_name"])
    assert "2 'x.c' files" in str(info.value)


def test_symvers_parsing_and_errors(tmp_path):
    good = tmp_path / "Module.symvers"
    good.write_text("0x1\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n0x2\tnf_foo\tnet/netfilter/nf-foo\tEXPORT_SYMBOL_GPL\tNS\n")
    exports = read_symvers(str(good))
    assert exports["printk"].module == "vmlinux" and exports["nf_foo"].objname == "nf_foo"
    assert exports["nf_foo"].export_type == "EXPORT_SYMBOL_GPL"
    bad = tmp_path / "bad.symvers"
    bad.write_text("0x1 printk vmlinux\n")
    with pytest.raises(SymbolLookupError) as info:
        read_symvers(str(bad))
    assert "bad.symvers:1" in str(info.value)


def test_module_objname_matches_livepatch_spelling():
    assert module_objname("drivers/net/virtio-net") == "virtio_net"
    assert module_objname("vmlinux") == "vmlinux"


def test_symbol_exported_by_the_parent_module_needs_klp(tmp_path):
    src = "extern int mod_export;\nint use_it(void) { return mod_export + 1; }\n"
    case = make_case(tmp_path, src, src.replace("+ 1", "+ 2"), extra_parent_src="int mod_export = 3;\n")
    case.symvers.write_text("0x0\t__fentry__\tvmlinux\tEXPORT_SYMBOL\t\n0x0\tmod_export\tdrivers/my-mod\tEXPORT_SYMBOL\t\n")
    run_engine(case, parent_name="my_mod")
    entry = [r for r in case.klp_relocations() if r["name"] == "mod_export"]
    assert entry and entry[0]["objname"] == "my_mod"


def test_symbol_exported_by_another_module_is_an_external_klp_relocation(tmp_path):
    """A module patch must load before the module it patches, so it cannot depend on that
    module's dependencies either: their exports are resolved when the patched module loads."""
    src = "extern int other_export;\nint use_it(void) { return other_export + 1; }\n"
    case = make_case(tmp_path, src, src.replace("+ 1", "+ 2"))
    case.symvers.write_text("0x0\t__fentry__\tvmlinux\tEXPORT_SYMBOL\t\n"
                            "0x0\tother_export\tdrivers/other-dep\tEXPORT_SYMBOL\t\n")
    run_engine(case, parent_name="my_mod")
    assert not any(r.sym.name == "other_export" for r in case.relocations(".text.use_it"))
    [entry] = [r for r in case.klp_relocations() if r["name"] == "other_export"]
    assert (entry["objname"], entry["sympos"], entry["external"], entry["rel_objname"]) == \
        ("other_dep", 0, 1, "my_mod")


def test_module_export_seen_from_vmlinux_stays_ordinary(tmp_path):
    src = "extern int other_export;\nint use_it(void) { return other_export + 1; }\n"
    case = make_case(tmp_path, src, src.replace("+ 1", "+ 2"))
    case.symvers.write_text("0x0\t__fentry__\tvmlinux\tEXPORT_SYMBOL\t\n"
                            "0x0\tother_export\tdrivers/other\tEXPORT_SYMBOL\t\n")
    run_engine(case)
    assert any(r.sym.name == "other_export" for r in case.relocations(".text.use_it"))
    assert not case.klp_relocations()


def test_parent_symtab_built_directly():
    from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.lookup import ParentSymbol
    syms = [ParentSymbol("f.c", 0, 0, STB_LOCAL, 4, False, 1), ParentSymbol("g", 0x10, 4, STB_LOCAL, 2, True, 2)]
    table = ParentSymtab(syms, "vmlinux")
    with pytest.raises(SymbolLookupError):
        table.select_file_block("nope.c", [])


# A global ``shared_name`` (in other.c) and a local of the same name (in x.c): the kernel's
# klp_find_object_symbol counts both, in kallsyms (address) order.
GLOBAL_TWIN = "__attribute__((noinline)) int shared_name(int x) { return x - 7; }\n"
LOCAL_TWIN = r"""
__attribute__((noinline)) static int shared_name(int x) { return x * 5 + 1; }
int use_local(int x) { return shared_name(x) + 3; }
"""
GLOBAL_USER = r"""
extern int shared_name(int x);
int use_global(int x) { return shared_name(x) + 3; }
"""


def _case_with_parent(tmp_path, src, patched, parent_sources):
    """An engine case whose parent links ``parent_sources`` (name → source; "x.c" is the original)."""
    case = make_case(tmp_path, src, patched)
    objs = [case.orig if name == "x.c" else compile_c(text, tmp_path / name[:-2], name=name)
            for name, text in parent_sources]
    case.parent = link_parent(objs, tmp_path / "parent-ordered.o")
    return run_engine(case)


def test_local_sympos_counts_a_same_named_global_at_a_lower_address(tmp_path):
    case = _case_with_parent(tmp_path, LOCAL_TWIN, LOCAL_TWIN.replace("+ 3", "+ 4"),
                             [("g.c", GLOBAL_TWIN), ("x.c", LOCAL_TWIN)])
    refs = [r for r in case.klp_relocations() if r["name"] == "shared_name"]
    # the global comes first in kallsyms: the local is the second symbol of that name
    assert refs and {r["sympos"] for r in refs} == {2}


def test_global_with_a_same_named_local_gets_its_position(tmp_path):
    case = _case_with_parent(tmp_path, GLOBAL_USER, GLOBAL_USER.replace("+ 3", "+ 4"),
                             [("l.c", LOCAL_TWIN.replace("use_local", "use_other")), ("x.c", GLOBAL_USER),
                              ("g.c", GLOBAL_TWIN)])
    refs = [r for r in case.klp_relocations() if r["name"] == "shared_name"]
    # sympos 0 would make the kernel refuse the patch ("unresolvable ambiguity"): it is the 2nd
    assert refs and {(r["sympos"], r["objname"]) for r in refs} == {(2, "vmlinux")}


def test_module_symbol_whose_position_depends_on_init_symbols_is_refused(tmp_path):
    init_twin = ("__attribute__((noinline, section(\".init.text\"))) static int shared_name(int x) "
                 "{ return x - 9; }\nint init_user(int x) { return shared_name(x); }\n")
    case = make_case(tmp_path, LOCAL_TWIN, LOCAL_TWIN.replace("+ 3", "+ 4"))
    case.parent = link_parent([compile_c(init_twin, tmp_path / "i", name="i.c"), case.orig],
                              tmp_path / "parent-init.o")
    with pytest.raises(SymbolLookupError, match="shared_name of my_driver .*init"):
        symtab = load_parent_symtab(str(case.parent), "my_driver")
        symtab.find_local("shared_name", symtab.select_file_block("x.c", ["shared_name", "use_local"]))
    # vmlinux keeps its init symbols in kallsyms: counted, no refusal
    symtab = load_parent_symtab(str(case.parent), "vmlinux")
    assert symtab.find_local("shared_name", symtab.select_file_block("x.c", ["shared_name", "use_local"])).sympos == 2


# Two files of one kernel, each with its own static ``helper``: a.c's comes first (sympos 1).
HELPER = ("__attribute__((noinline)) static int helper(int x) { return x + K; }\n"
          "int USER(int x) { return helper(x) * 2; }\n")


def _helper_source(name: str, k: int) -> str:
    return HELPER.replace("K;", "%d;" % k).replace("USER", "use_" + name)


def _without_file_symbol(obj: Path, name: str) -> Path:
    stripped = obj.with_name(obj.stem + "-nofile.o")
    subprocess.run(["objcopy", "--strip-symbol=" + name, str(obj), str(stripped)], check=True)
    assert "FILE" not in subprocess.run(["readelf", "-s", "--wide", str(stripped)], capture_output=True,
                                        text=True, check=True).stdout
    return stripped


def _diff(symtab: ParentSymtab, orig: Path, patched: Path, out: Path, symvers: Path) -> List[dict]:
    create_diff_object(str(orig), str(patched), "vmlinux", symtab, str(symvers), "test_patch", str(out),
                       TEST_STRUCT_SIZES)
    return [r for r in decode_klp_relocations(read_elf(str(out))) if r["name"] == "helper"]


def test_object_without_file_symbol_does_not_reuse_the_previous_objects_block(tmp_path):
    """A build shares one parent table across its objects.  The first object (a.c) chooses its
    block of locals; the second has no STT_FILE symbol, so no block can be chosen for it, and its
    reference to a local ``helper`` is refused -- before, it silently took a.c's block and would
    have patched b.c's code to call a.c's helper (sympos 1).  With its STT_FILE symbol the same
    object resolves b.c's own helper (sympos 2) from the same shared table."""
    a_orig = compile_c(_helper_source("a", 1), tmp_path / "a0", name="a.c")
    b_orig = compile_c(_helper_source("b", 2), tmp_path / "b0", name="b.c")
    symtab = load_parent_symtab(str(link_parent([a_orig, b_orig], tmp_path / "vmlinux.o")), "vmlinux")
    symvers = write_symvers(tmp_path / "Module.symvers", DEFAULT_EXPORTS)
    a_patched = compile_c(_helper_source("a", 1).replace("* 2", "* 3"), tmp_path / "a1", name="a.c")
    b_patched = compile_c(_helper_source("b", 2).replace("* 2", "* 3"), tmp_path / "b1", name="b.c")

    refs = _diff(symtab, a_orig, a_patched, tmp_path / "a.out.o", symvers)
    assert refs and {r["sympos"] for r in refs} == {1}
    with pytest.raises(PatchRejected, match="local symbol helper: the object has no STT_FILE symbol"):
        _diff(symtab, _without_file_symbol(b_orig, "b.c"), _without_file_symbol(b_patched, "b.c"),
              tmp_path / "b.out.o", symvers)
    refs = _diff(symtab, b_orig, b_patched, tmp_path / "b.out.o", symvers)
    assert refs and {r["sympos"] for r in refs} == {2}


def test_lookup_and_special_section_errors_are_patch_rejections():
    assert issubclass(SymbolLookupError, PatchRejected) and issubclass(SpecialSectionError, PatchRejected)


def test_table_read_for_one_object_answers_as_the_whole_table(parent_with_duplicates, tmp_path):
    """The readelf table read only for what x.o can ask (its names, their .N-less bases, its file's
    block) gives the same answers as the whole table, and refuses a name it was not read for."""
    parent, root = parent_with_duplicates
    text = tmp_path / "parent.symtab"
    text.write_text(subprocess.run(["readelf", "-s", "--wide", str(parent)], capture_output=True, text=True,
                                   check=True).stdout)
    obj = read_elf(str(root / "x" / "x.o"))
    full = load_parent_symtab(str(text), "vmlinux")
    narrow = load_parent_symtab(str(text), "vmlinux", wanted_by(obj))
    assert len(narrow.named) < len(full.named)  # drive_a and drive_c were not read
    for name in wanted_by(obj).names:
        assert narrow.find_global(name) == full.find_global(name)
    blocks = (full.select_object_blocks(obj), narrow.select_object_blocks(obj))
    assert [s.name for s in blocks[0].first.locals] == [s.name for s in blocks[1].first.locals]
    assert full.find_local("twice", blocks[0].first) == narrow.find_local("twice", blocks[1].first)
    assert narrow.find_local("twice", blocks[1].first).sympos == 2
    with pytest.raises(SymbolLookupError, match="drive_a was not among the names announced"):
        narrow.find_global("drive_a")
