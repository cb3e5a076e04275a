"""Special-section regeneration: only entries of included functions survive, sizes come from the caller."""

from __future__ import annotations

import struct

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.diff import PatchRejected
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.special import (
    SpecialSectionError,
    struct_sizes_from_env,
)

from tests.unit.engine_cc import TEST_STRUCT_SIZES, make_case, run_engine

TABLES = r"""
extern void alt_helper(void);
#define ALT_ENTRY() asm volatile("661: .byte 0x90,0x90,0x90,0x90,0x90\n662:\n" \
        ".pushsection .altinstructions,\"a\"\n.long 661b - .\n.long 663f - .\n.word 42\n" \
        ".byte 662b-661b\n.byte 664f-663f\n.popsection\n" \
        ".pushsection .altinstr_replacement,\"ax\"\n663: call alt_helper\n664:\n.popsection")
struct static_call_key { void *func; };
struct static_call_key __SCK__my_call;
#define STATIC_CALL_ENTRY() asm volatile("1: .byte 0x0f,0x1f,0x44,0x00,0x00\n" \
        ".pushsection .static_call_sites,\"a\"\n.long 1b - .\n.long __SCK__my_call - .\n.popsection")
int first(int x)
{
    if (x == 13) BUG_ENTRY();
    EX_ENTRY();
    ALT_ENTRY();
    STATIC_CALL_ENTRY();
    return x + 1;
}
int second(int x)
{
    if (x == 17) BUG_ENTRY();
    EX_ENTRY();
    ALT_ENTRY();
    STATIC_CALL_ENTRY();
    return x + 2;
}
"""
PATCHED = TABLES.replace("x + 1;", "x + 100;")


@pytest.fixture(scope="module")
def tables_case(tmp_path_factory):
    case = make_case(tmp_path_factory.mktemp("tables"), TABLES, PATCHED,
                     exports=("__fentry__", "_printk", "alt_helper", "__SCK__my_call"))
    assert b"__bug_table" in case.orig.read_bytes()
    return run_engine(case)


def _targets(case, section):
    return sorted((r.offset, r.sym.name) for r in case.relocations(section))


def test_only_the_changed_function_is_included(tables_case):
    assert tables_case.result.changed_functions == ["first"]


def test_bug_table_keeps_one_entry_with_its_file_name(tables_case):
    secs = tables_case.sections()
    assert secs["__bug_table"].size == TEST_STRUCT_SIZES["BUG"]
    relocs = tables_case.relocations("__bug_table")
    assert [(r.offset, r.sym.name) for r in relocs if r.sym.type == 2] == [(0, "first")]
    file_ref = [r for r in relocs if r.offset == 4][0]
    # ".long %c0 - 2b" sits at 2b+4: S + A - P = S - 2b, so A = 4 (S: a .LC label or the section)
    assert file_ref.sym.section is not None, "the file name string must be in the output"
    start = file_ref.sym.value + file_ref.addend - 4
    data = file_ref.sym.section.data
    assert data[start:data.index(b"\0", start)] == b"x.c"
    line = struct.unpack_from("<H", secs["__bug_table"].data, 8)[0]
    assert line > 0


def test_exception_table_keeps_one_entry(tables_case):
    assert tables_case.sections()["__ex_table"].size == TEST_STRUCT_SIZES["EX"]
    assert {r.sym.name for r in tables_case.relocations("__ex_table")} == {"first"}


def test_alternatives_keep_entry_and_replacement_code(tables_case):
    secs = tables_case.sections()
    assert secs[".altinstructions"].size == TEST_STRUCT_SIZES["ALT"]
    relocs = tables_case.relocations(".altinstructions")
    assert sorted((r.offset, r.sym.name) for r in relocs) == [(0, "first"), (4, ".altinstr_replacement")]
    assert struct.unpack_from("<H", secs[".altinstructions"].data, 8)[0] == 42
    # the replacement code came along, still calling the exported helper normally
    assert ".altinstr_replacement" in secs
    # (the whole replacement section travels, like kpatch: one entry per original site)
    assert {r.sym.name for r in tables_case.relocations(".altinstr_replacement")} == {"alt_helper"}


def test_static_call_sites_keep_entry_and_key(tables_case):
    assert tables_case.sections()[".static_call_sites"].size == TEST_STRUCT_SIZES["STATIC_CALL"]
    assert _targets(tables_case, ".static_call_sites") == [(0, "first"), (4, "__SCK__my_call")]


def test_mcount_loc_lists_only_included_functions(tables_case):
    assert tables_case.sections()["__mcount_loc"].size == 8
    assert _targets(tables_case, "__mcount_loc") == [(0, "first")]


def test_kept_entry_counts_are_reported(tables_case):
    kept = tables_case.result.special_kept
    for name in ("__bug_table", "__ex_table", ".altinstructions", ".static_call_sites", "__mcount_loc"):
        assert kept[name] == 1, name


def test_missing_struct_size_is_rejected_naming_the_variable(tmp_path):
    sizes = dict(TEST_STRUCT_SIZES)
    del sizes["BUG"]
    case = make_case(tmp_path, TABLES, PATCHED, exports=("__fentry__", "alt_helper", "__SCK__my_call"))
    with pytest.raises(PatchRejected) as info:
        run_engine(case, struct_sizes=sizes)
    assert "__bug_table" in str(info.value) and "bug_entry" in str(info.value)
    assert "BUG_STRUCT_SIZE" in str(info.value)


def test_struct_size_the_relocations_contradict_gives_way_to_them(tmp_path):
    # 10 does not divide the 24-byte __ex_table; its relocations repeat every 12 bytes
    sizes = dict(TEST_STRUCT_SIZES, EX=10)
    case = run_engine(make_case(tmp_path, TABLES, PATCHED, exports=("__fentry__", "alt_helper", "__SCK__my_call")),
                      struct_sizes=sizes)
    assert case.sections()["__ex_table"].size == 12
    assert {r.sym.name for r in case.relocations("__ex_table")} == {"first"}


def test_struct_sizes_from_environment():
    env = {"BUG_STRUCT_SIZE": "12", "JUMP_STRUCT_SIZE": "0x10", "UNRELATED": "1"}
    assert struct_sizes_from_env(env) == {"BUG": 12, "JUMP": 16}
    with pytest.raises(SpecialSectionError) as info:
        struct_sizes_from_env({"ORC_STRUCT_SIZE": "six"})
    assert "ORC_STRUCT_SIZE" in str(info.value)


PRINTK_INDEX = r"""
struct pi_entry { const char *fmt; const char *func; const char *file; unsigned int line;
                  const char *level; const char *subsys_fmt_prefix; } __attribute__((packed));
#define INDEXED_PRINTK(fmt, ...) ({ \
    static const struct pi_entry _entry __attribute__((used)) = \
        { fmt, __func__, __FILE__, __LINE__, "\001" "6", 0 }; \
    static const struct pi_entry *_entry_ptr __attribute__((used, section(".printk_index"))) = &_entry; \
    _printk(fmt, ##__VA_ARGS__); })
int loud(int x) { INDEXED_PRINTK("loud %d\n", x); return x + 1; }
int quiet(int x) { INDEXED_PRINTK("quiet %d\n", x); return x + 2; }
"""


def test_printk_index_keeps_the_entries_of_included_functions(tmp_path):
    case = make_case(tmp_path, PRINTK_INDEX, PRINTK_INDEX.replace("x + 1", "x + 10"))
    run_engine(case)
    assert case.result.changed_functions == ["loud"]
    index = case.sections()[".printk_index"]
    assert index.size == 8 and case.result.special_kept[".printk_index"] == 1
    entry = case.relocations(".printk_index")[0].sym
    assert entry.name.startswith("_entry") and entry.section is not None
    assert entry.size == TEST_STRUCT_SIZES["PRINTK_INDEX"]
    # the kept pi_entry's func pointer names loud
    func_reloc = [r for r in entry.section.rela.relocations if r.offset == entry.value + 8][0]
    data = func_reloc.sym.section.data
    start = func_reloc.sym.value + func_reloc.addend
    assert data[start:data.index(b"\0", start)] == b"loud"


def test_printk_index_entry_size_is_checked(tmp_path):
    case = make_case(tmp_path, PRINTK_INDEX, PRINTK_INDEX.replace("x + 1", "x + 10"))
    with pytest.raises(PatchRejected) as info:
        run_engine(case, struct_sizes=dict(TEST_STRUCT_SIZES, PRINTK_INDEX=40))
    assert "struct pi_entry is 40 bytes (PRINTK_INDEX_STRUCT_SIZE)" in str(info.value)


# objtool's annotations as include/linux/objtool.h and instrumentation.h spell them (6.1-6.12).
ANNOTATED = r"""
#define UNWIND_HINT_HERE() asm volatile("987:\n\t.pushsection .discard.unwind_hints\n\t.long 987b - .\n\t" \
        ".short 8\n\t.byte 4\n\t.byte 1\n\t.byte 0\n\t.balign 4\n\t.popsection")
#define REACHABLE_HERE() asm volatile("998:\n\t.pushsection .discard.reachable\n\t.long 998b\n\t.popsection")
#define INSTR_BEGIN() asm volatile("1: nop\n\t.pushsection .discard.instr_begin\n\t.long 1b - .\n\t.popsection")
/* 6.1 spells these two lists with pointers, 6.12 with 32-bit addresses */
#define RETPOLINE_SAFE_6_1() asm volatile("999:\n\t.pushsection .discard.retpoline_safe\n\t.quad 999b\n\t.popsection")
#define NOENDBR_6_12() asm volatile("986:\n\t.pushsection .discard.noendbr\n\t.long 986b\n\t.popsection")
void hinted(int *p) { UNWIND_HINT_HERE(); *p += 1; REACHABLE_HERE(); RETPOLINE_SAFE_6_1(); }
void other_hinted(int *p) { UNWIND_HINT_HERE(); INSTR_BEGIN(); RETPOLINE_SAFE_6_1(); *p -= 1; }
void odd_frame(int *p) { NOENDBR_6_12(); *p = 0; }
static void __attribute__((used, section(".discard.func_stack_frame_non_standard")))
    *__func_stack_frame_non_standard_odd_frame = odd_frame;
"""


def test_objtool_annotations_travel_with_their_functions(tmp_path):
    """#19 item 9: objtool re-reads the linked patch module on IBT kernels; each annotation of an
    included function goes along (one unwind hint of two, the reachable mark), none of the others."""
    patched = ANNOTATED.replace("*p += 1", "*p += 2").replace("*p = 0", "*p = 1")
    case = run_engine(make_case(tmp_path, ANNOTATED, patched))
    assert sorted(case.result.changed_functions) == ["hinted", "odd_frame"]
    secs = case.sections()
    hints = secs[".discard.unwind_hints"]
    assert hints.size == 12 and hints.data[4:9] == b"\x08\x00\x04\x01\x00"
    assert [r.sym.name for r in case.relocations(".discard.unwind_hints")] == ["hinted"]
    assert [r.sym.name for r in case.relocations(".discard.reachable")] == ["hinted"]
    assert [r.sym.name for r in case.relocations(".discard.func_stack_frame_non_standard")] == ["odd_frame"]
    assert ".discard.instr_begin" not in secs   # other_hinted is not in the patch
    # an address list's entry is as wide as its relocation: one of two pointers, one 32-bit address
    assert secs[".discard.retpoline_safe"].size == 8 and secs[".discard.noendbr"].size == 4
    assert [r.sym.name for r in case.relocations(".discard.retpoline_safe")] == ["hinted"]
    assert case.result.special_kept[".discard.unwind_hints"] == 1


# Linux 7.x x86-64 WARN(): the code loads its own __bug_table entry's address (lea 2f(%rip)) and
# passes it to __WARN_trap; the entry's bug_addr is the instruction after the lea.
WARN_ENTRY = r"""
extern void warn_trap(void *bug);
#define WARN_ENTRY() ({ void *bug; asm volatile("lea (2f)(%%rip), %0\n1:\n" \
        ".pushsection __bug_table,\"aw\"\n2: .long 1b - 2b\n.long %c1 - 2b\n.word %c2\n.word 0\n" \
        ".org 2b+12\n.popsection" : "=r"(bug) : "i"(__FILE__), "i"(__LINE__)); bug; })
int first(int x)
{
    if (x == 13)
        warn_trap(WARN_ENTRY());
    return x + 1;
}
int second(int x)
{
    if (x == 17)
        warn_trap(WARN_ENTRY());
    return x + 2;
}
"""


def test_code_that_loads_its_bug_entry_follows_the_entry_to_its_new_place(tmp_path):
    case = make_case(tmp_path, WARN_ENTRY, WARN_ENTRY.replace("x + 2;", "x + 200;"),
                     exports=("__fentry__", "warn_trap"))
    orig_refs = [r for r in case_relocations(case.orig, ".text.second") if r.sym.name == "__bug_table"]
    assert [r.addend + 4 for r in orig_refs] == [12], "second's entry is the table's second in the original"
    run_engine(case)
    assert case.result.changed_functions == ["second"]
    assert case.sections()["__bug_table"].size == 12
    refs = [r for r in case.relocations(".text.second") if r.sym.type == 3 and r.sym.section is not None
            and r.sym.section.name == "__bug_table"]
    assert [r.addend + 4 for r in refs] == [0], "the lea must point at the one kept entry"
    # ... and that entry describes second (its bug_addr relocation)
    assert [(r.offset, r.sym.name) for r in case.relocations("__bug_table") if r.sym.type == 2] == [(0, "second")]


def case_relocations(path, section):
    sec = read_elf(str(path)).section_by_name()[section]
    return sec.rela.relocations if sec.rela is not None else []


# The same with the format string in the entry, as 7.x's WARN(cond, fmt, ...) keeps it.
WARN_FORMAT = r"""
extern void warn_trap(void *bug);
#define WARN_FMT(fmt) ({ void *bug; asm volatile("lea (2f)(%%rip), %0\n1:\n" \
        ".pushsection __bug_table,\"aw\"\n2: .long 1b - 2b\n.long %c1 - 2b\n.word 7\n.word 0\n" \
        ".org 2b+12\n.popsection" : "=r"(bug) : "i"(fmt)); bug; })
int first(int x)
{
    if (x == 13)
        warn_trap(WARN_FMT("first %d"));
    return x + 1;
}
int second(int x)
{
    if (x == 17)
        warn_trap(WARN_FMT("second %d"));
    return x + 2;
}
"""


def test_a_changed_format_string_in_the_bug_entry_changes_the_function(tmp_path):
    case = make_case(tmp_path, WARN_FORMAT, WARN_FORMAT.replace('"second %d"', '"SECOND %d"'),
                     exports=("__fentry__", "warn_trap"))
    run_engine(case)
    assert case.result.changed_functions == ["second"]


def test_a_bug_entry_that_only_moved_is_no_change(tmp_path):
    # first gains a second WARN: second's code and entry are the same, at another table offset.
    extra = WARN_FORMAT.replace("    return x + 1;", "    if (x == 14)\n        warn_trap(WARN_FMT(\"again %d\"));\n"
                                "    return x + 1;")
    case = make_case(tmp_path, WARN_FORMAT, extra, exports=("__fentry__", "warn_trap"))
    moved = [r.addend for r in case_relocations(case.patched, ".text.second") if r.sym.name == "__bug_table"]
    assert moved == [24 - 4], "second's entry must have moved to the third place"
    run_engine(case)
    assert case.result.changed_functions == ["first"]


# UBSAN (Debian's 7.2 config: CONFIG_UBSAN_BOUNDS) numbers its per-check data .Lubsan_dataN in
# the order of the object; a check added to an earlier function renumbers the later ones.
UBSAN = r"""
int table[8];
int first(int i)
{
    return table[i] + 1;
}
int second(int i)
{
    return table[i] + 2;
}
"""


def test_renumbered_ubsan_data_is_no_change(tmp_path):
    patched = UBSAN.replace("return table[i] + 1;", "return table[i] + table[i + 1] + 1;")
    case = make_case(tmp_path, UBSAN, patched, flags=("-fsanitize=bounds",),
                     exports=("__fentry__", "__ubsan_handle_out_of_bounds"))
    names = [r.sym.name for r in case_relocations(case.patched, ".text.second")]
    assert not set(names) & {r.sym.name for r in case_relocations(case.orig, ".text.second")
                             if "Lubsan_data" in r.sym.name}, "second's UBSAN data must be renumbered"
    run_engine(case)
    assert case.result.changed_functions == ["first"]


def test_a_changed_ubsan_check_changes_the_function(tmp_path):
    patched = UBSAN.replace("int table[8];", "int table[8];\nint other[4];").replace(
        "return table[i] + 2;", "return other[i] + 2;")
    case = make_case(tmp_path, UBSAN, patched, flags=("-fsanitize=bounds",),
                     exports=("__fentry__", "__ubsan_handle_out_of_bounds"))
    run_engine(case)
    assert "second" in case.result.changed_functions
