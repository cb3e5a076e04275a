"""Per-call-site data the kernel owns travels as fresh copies with the patched code.

Dynamic-debug descriptors (``__dyndbg``, older kernels ``__verbose``), UBSAN's source
locations (``.data..Lubsan_data*`` / ``.data.rel.local..Lubsan_data*``), clang's anonymous
constants (``.data..L__unnamed_*``) and warn-once flags (``.data.once``, ``.data.unlikely``)
change whenever code moves; they are never paired with the running kernel's copy, so neither a
changed descriptor nor a reference through the section symbol is a refusal.
"""

from __future__ import annotations

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf

from tests.unit.engine_cc import DEFAULT_EXPORTS, make_case, run_engine

UBSAN = r"""
int shifty(int x, int y) { return x << y; }
int other_shift(int x, int y) { return x >> (y + 1); }
"""
UBSAN_EXPORTS = DEFAULT_EXPORTS + ("__ubsan_handle_shift_out_of_bounds",)


def test_ubsan_source_locations_are_copied_not_refused(tmp_path):
    # the lines move: every .Lubsan_data record of the file changes
    patched = "\n\n" + UBSAN.replace("x << y", "(x + 1) << y")
    case = run_engine(make_case(tmp_path, UBSAN, patched, flags=["-fsanitize=shift"], exports=UBSAN_EXPORTS))
    assert case.result.changed_functions == ["shifty"]
    secs = case.sections()
    copies = [name for name in secs if "Lubsan_data" in name and not name.startswith(".rela")]
    assert len(copies) == 1, sorted(secs)
    # the copy is the patched call site's record (struct source_location: file, line, column)
    orig = read_elf(str(case.orig)).section_by_name()[copies[0]]
    line, orig_line = (int.from_bytes(sec.data[8:12], "little") for sec in (secs[copies[0]], orig))
    assert line == orig_line + 2, (line, orig_line)
    users = {r.sym.name for sec in secs.values() if sec.is_rela for r in sec.relocations}
    assert copies[0] in users and "__ubsan_handle_shift_out_of_bounds" in users
    assert not [r for r in case.klp_relocations() if "ubsan" in r["name"].lower()]


@pytest.mark.parametrize("section", ["__dyndbg", "__verbose"])
def test_dynamic_debug_descriptors_are_fresh_copies(tmp_path, section):
    src = r"""
struct ddebug { const char *format; unsigned int line; };
#define pr_dbg(fmt) ({ static struct ddebug descriptor __attribute__((used, section("%s"))) = \
        { fmt, __LINE__ }; _printk(descriptor.format); })
int noisy(int x) { pr_dbg("noisy\n"); return x + 1; }
int quiet(int x) { pr_dbg("quiet\n"); return x + 2; }
""" % section
    patched = "\n" + src.replace("x + 1", "x + 10")
    case = run_engine(make_case(tmp_path, src, patched))
    assert case.result.changed_functions == ["noisy"]
    assert section in case.sections()
    assert not [r for r in case.klp_relocations() if r["name"].startswith("descriptor")]


ONCE = r"""
#define WARN_ONCE_IN(sec, msg) ({ static char warned __attribute__((section(sec))); \
        if (!warned) { warned = 1; _printk(msg); } })
int checks(int x) { WARN_ONCE_IN(".data.once", "once\n"); WARN_ONCE_IN(".data.unlikely", "unlikely\n");
                    return x + 1; }
int others(int x) { WARN_ONCE_IN(".data.once", "o\n"); WARN_ONCE_IN(".data.unlikely", "u\n"); return x; }
"""


def test_warn_once_flags_get_fresh_copies(tmp_path):
    case = run_engine(make_case(tmp_path, ONCE, ONCE.replace("x + 1", "x + 3")))
    assert case.result.changed_functions == ["checks"]
    assert {".data.once", ".data.unlikely"} <= set(case.sections())
    assert not [r for r in case.klp_relocations() if r["name"].startswith("warned")]


# clang names anonymous constants .data..L__unnamed_N; the reference goes through the section symbol.
UNNAMED = r"""
int lookup(int i)
{
    const int *table;
    asm(".pushsection .data..L__unnamed_1,\"aw\"\n.long 3, 5, 8\n.popsection\n"
        "leaq .data..L__unnamed_1(%%rip), %0" : "=r"(table));
    return table[i];
}
"""


def test_clang_unnamed_constants_are_copied_through_their_section_symbol(tmp_path):
    case = run_engine(make_case(tmp_path, UNNAMED, UNNAMED.replace("3, 5, 8", "3, 5, 13")))
    assert case.result.changed_functions == ["lookup"]
    data = case.sections()[".data..L__unnamed_1"].data
    assert data == (3).to_bytes(4, "little") + (5).to_bytes(4, "little") + (13).to_bytes(4, "little")
    assert [r.sym.name for r in case.relocations(".text.lookup") if "unnamed" in r.sym.name] == \
        [".data..L__unnamed_1"]
