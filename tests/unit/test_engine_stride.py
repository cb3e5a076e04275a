"""Special-section entry strides: the declared size when the relocations agree, else their period.

Tables are emitted with inline asm the way the kernel's headers do, in layouts other kernel
versions use: ``.altinstructions`` of 12-byte entries where 13 is declared, ``__jump_table`` of
16-byte entries where 24 is declared, ``.parainstructions`` whose last entry has no tail padding.
"""

from __future__ import annotations

import struct

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.diff import PatchRejected

from tests.unit.engine_cc import TEST_STRUCT_SIZES, make_case, run_engine

EXPORTS = ("__fentry__", "_printk", "alt_helper", "flag_key")
TABLES = r"""
extern void alt_helper(void);
struct static_key { int enabled; };
extern struct static_key flag_key;
/* 12 bytes: s32 instr, s32 replacement, u16 cpuid, u8 len, u8 replacement len */
#define ALT_ENTRY() asm volatile("661: .byte 0x90,0x90,0x90,0x90,0x90\n662:\n" \
        ".pushsection .altinstructions,\"a\"\n.long 661b - .\n.long 663f - .\n.word 42\n" \
        ".byte 662b-661b\n.byte 664f-663f\n.popsection\n" \
        ".pushsection .altinstr_replacement,\"ax\"\n663: call alt_helper\n664:\n.popsection")
/* 16 bytes: s32 code, s32 target, s64 key */
#define JUMP_ENTRY() asm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\n" \
        ".pushsection __jump_table,\"aw\"\n.balign 8\n.long 1b - .\n.long %l[yes] - .\n" \
        ".quad flag_key - .\n.popsection" : : : : yes)
/* 12 bytes of fields, entries aligned to 8: 16-byte stride, the last entry 12 bytes long */
#define PARA_ENTRY(type) asm volatile("1: .byte 0x90,0x90,0x90,0x90,0x90\n" \
        ".pushsection .parainstructions,\"a\"\n.balign 8\n.quad 1b\n.byte " #type "\n.byte 5\n" \
        ".short 0x7fff\n.popsection")
int first(int x)
{
    ALT_ENTRY();
    PARA_ENTRY(3);
    JUMP_ENTRY();
    return x + 1;
yes:
    return x - 1;
}
int second(int x)
{
    ALT_ENTRY();
    PARA_ENTRY(4);
    JUMP_ENTRY();
    return x + 2;
yes:
    return x - 2;
}
"""
# The sizes a newer kernel declares for older layouts (kpatch's suite defaults).
DECLARED = dict(TEST_STRUCT_SIZES, ALT=13, JUMP=24, PARA=16)


def run(tmp_path, patched, sizes=None):
    case = make_case(tmp_path, TABLES, patched, exports=EXPORTS)
    return run_engine(case, struct_sizes=DECLARED if sizes is None else sizes)


def test_relocations_decide_when_the_declared_size_does_not_fit(tmp_path):
    case = run(tmp_path, TABLES.replace("x + 2;", "x + 200;"))
    assert case.result.changed_functions == ["second"]
    secs = case.sections()
    # the second 12-byte alternative and the second 16-byte jump entry, cut where the relocations say
    assert secs[".altinstructions"].size == 12
    assert sorted((r.offset, r.sym.name) for r in case.relocations(".altinstructions")) == \
        [(0, "second"), (4, ".altinstr_replacement")]
    assert struct.unpack_from("<H", secs[".altinstructions"].data, 8)[0] == 42
    assert secs["__jump_table"].size == 16
    assert [(r.offset, r.sym.name) for r in case.relocations("__jump_table") if r.offset == 8] == [(8, "flag_key")]


def test_short_last_entry_is_kept_padded_to_the_declared_size(tmp_path):
    case = run(tmp_path, TABLES.replace("x + 2;", "x + 200;"))
    para = case.sections()[".parainstructions"]
    assert case.result.special_kept[".parainstructions"] == 1
    assert para.size == 16 and len(para.data) == 16
    assert para.data[8:12] == bytes([4, 5, 0xff, 0x7f]) and para.data[12:] == b"\0" * 4
    assert [r.sym.name for r in case.relocations(".parainstructions")] == ["second"]


def test_declared_size_is_used_when_the_relocations_agree(tmp_path):
    case = run(tmp_path, TABLES.replace("x + 1;", "x + 100;"), sizes=dict(DECLARED, ALT=12, JUMP=16))
    assert case.result.changed_functions == ["first"]
    assert case.sections()[".altinstructions"].size == 12
    assert case.sections()["__jump_table"].size == 16
    assert case.sections()[".parainstructions"].size == 16


RELOCATION_FREE_ENTRY = r"""
int guarded(int x)
{
    asm volatile("1: nop\n.pushsection __ex_table,\"a\"\n.balign 4\n.long 1b - .\n.long 1b - .\n"
                 ".long 0\n.long 0\n.long 0\n.long 0\n.popsection");
    return x + 1;
}
"""


def test_section_neither_size_fits_is_refused_with_both_numbers(tmp_path):
    # a second __ex_table entry without any relocation: no stride explains the table
    case = make_case(tmp_path, RELOCATION_FREE_ENTRY, RELOCATION_FREE_ENTRY.replace("x + 1", "x + 9"))
    with pytest.raises(PatchRejected) as info:
        run_engine(case, struct_sizes=TEST_STRUCT_SIZES)
    msg = str(info.value)
    assert "section __ex_table (24 bytes, 2 relocations)" in msg
    assert "the declared 12 bytes (struct exception_table_entry, EX_STRUCT_SIZE)" in msg
    assert "relocated fields 4 bytes apart" in msg
