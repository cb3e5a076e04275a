"""Every rejection of the diff engine, each on a gcc-compiled pair, checking its message."""

from __future__ import annotations

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.diff import PatchRejected

from tests.unit.engine_cc import make_case, run_engine

JUMP_LABEL = r"""
struct static_key { int enabled; };
static __attribute__((always_inline)) inline int key_on(struct static_key *key)
{
    asm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\n\t"
             ".pushsection __jump_table, \"aw\"\n\t.balign 8\n\t"
             ".long 1b - .\n\t.long %l[l_yes] - .\n\t.quad %c0 - .\n\t.popsection"
             : : "i" (key) : : l_yes);
    return 0;
l_yes:
    return 1;
}
static struct static_key fast_path;
int keyed(int x) { if (key_on(&fast_path)) return x * 2; return x + 1; }
int keyed_too(int x) { if (key_on(&fast_path)) return x * 5; return x - 1; }
"""


def rejection(tmp_path, orig, patched, **kw) -> str:
    parent_name = kw.pop("parent_name", "vmlinux")
    case = make_case(tmp_path, orig, patched, **kw)
    with pytest.raises(PatchRejected) as info:
        run_engine(case, parent_name=parent_name)
    assert not case.out.exists(), "a rejected patch must leave no output"
    return str(info.value)


def test_changed_init_function_is_rejected(tmp_path):
    src = r"""
__attribute__((section(".init.text"))) int setup_thing(int x) { return x + 40; }
int runtime(int x) { return x; }
"""
    msg = rejection(tmp_path, src, src.replace("x + 40", "x + 41"))
    assert "setup_thing" in msg and ".init.text" in msg and "__init" in msg


def test_changed_initial_value_of_existing_variable_is_rejected(tmp_path):
    src = "int tunable = 5;\nint read_tunable(void) { return tunable; }\n"
    msg = rejection(tmp_path, src, src.replace("= 5", "= 6"))
    assert "data section .data.tunable changed" in msg and "variable tunable" in msg


def test_new_variable_in_existing_data_section_is_rejected(tmp_path):
    src = "int first_var = 5;\nint read_it(void) { return first_var; }\n"
    patched = "int first_var = 5;\nint second_var = 9;\nint read_it(void) { return first_var + second_var; }\n"
    msg = rejection(tmp_path, src, patched, flags=["-fno-data-sections"])
    assert "new variable second_var" in msg and "existing data section .data" in msg


def test_changed_function_without_fentry_is_rejected(tmp_path):
    src = "__attribute__((no_instrument_function)) int quiet(int x) { return x * 3; }\n"
    msg = rejection(tmp_path, src, src.replace("x * 3", "x * 4"))
    assert "quiet" in msg and "__fentry__" in msg


GROUPED = r"""
asm(".section .text.grouped_fn,\"axG\",@progbits,grouped_sig,comdat\n"
    ".globl grouped_fn\n.type grouped_fn,@function\ngrouped_fn:\n"
    "call __fentry__\nmovl $1, %eax\nret\n.size grouped_fn, .-grouped_fn\n.previous\n");
int plain(int x) { return x; }
"""


def test_changed_grouped_section_is_rejected(tmp_path):
    msg = rejection(tmp_path, GROUPED, GROUPED.replace("movl $1", "movl $2"))
    assert "section .text.grouped_fn changed but is part of a section group" in msg


def test_changed_group_membership_is_rejected(tmp_path):
    patched = GROUPED.replace(
        'asm(".section .text.grouped_fn',
        'asm(".section .data.grouped_extra,\\"awG\\",@progbits,grouped_sig,comdat\\n.long 7\\n.previous\\n"\n'
        '    ".section .text.grouped_fn')
    msg = rejection(tmp_path, GROUPED, patched)
    assert "section group .group (signature grouped_sig) changed" in msg and ".data.grouped_extra" in msg


def test_removed_static_local_reference_is_rejected(tmp_path):
    src = r"""
int counted(int x)
{
    static int hits;
    hits++;
    return x + hits;
}
"""
    patched = "int counted(int x)\n{\n    return x + 1;\n}\n"
    msg = rejection(tmp_path, src, patched)
    assert "counted no longer references static local variable(s) hits" in msg


def test_out_of_range_relocation_is_rejected(tmp_path):
    src = r"""
static const char table[16] = "abcdefghijklmno";
const char *far_ref(void) { const char *p; asm("leaq table+%c1(%%rip), %0" : "=r"(p) : "i"(64), "m"(table)); return p; }
"""
    msg = rejection(tmp_path, src, src.replace("%c1", "%c1+4096"))
    assert "far_ref" in msg or ".text.far_ref" in msg
    assert "points to table+0x103c, outside that symbol (16 bytes)" in msg


def test_mismatched_elf_headers_are_rejected(tmp_path):
    src = "int plain(int x) { return x + 1; }\n"
    # an ifunc makes gas mark the object ELFOSABI_GNU
    patched = src + ("static int impl(int x) { return x; }\n"
                     "static void *resolve(void) { return (void *)impl; }\n"
                     "int chosen(int x) __attribute__((ifunc(\"resolve\")));\n")
    msg = rejection(tmp_path, src, patched)
    assert "ELF headers differ" in msg and "ei_osabi" in msg


def test_jump_label_with_key_in_module_is_rejected(tmp_path):
    msg = rejection(tmp_path, JUMP_LABEL, JUMP_LABEL.replace("x * 2", "x * 3"), parent_name="mymod")
    assert "jump label in function keyed uses key fast_path defined in module mymod" in msg


def test_jump_label_with_key_in_vmlinux_is_accepted(tmp_path):
    case = run_engine(make_case(tmp_path, JUMP_LABEL, JUMP_LABEL.replace("x * 2", "x * 3")))
    assert case.result.changed_functions == ["keyed"]
    assert case.sections()["__jump_table"].size == 16
    keys = [r for r in case.klp_relocations() if r["section"] == "__jump_table"]
    assert [(k["name"], k["offset"]) for k in keys] == [("fast_path", 8)]


def test_changed_function_missing_from_parent_is_rejected(tmp_path):
    src = "int present(int x) { return x + 1; }\n"
    case = make_case(tmp_path, src, src.replace("x + 1", "x + 2"))
    # a parent built from another file: the function is not in the running kernel
    from tests.unit.engine_cc import compile_c, link_parent
    other = compile_c("int present_elsewhere(int x) { return x; }\n", tmp_path / "unrelated")
    link_parent([other], case.parent)
    with pytest.raises(PatchRejected) as info:
        run_engine(case)
    assert "changed function present is not in the vmlinux symbol table" in str(info.value)


def test_source_file_missing_from_parent_is_rejected(tmp_path):
    src = "int present(int x) { return x + 1; }\n"
    case = make_case(tmp_path, src, src.replace("x + 1", "x + 2"))
    from tests.unit.engine_cc import compile_c, link_parent
    other = compile_c("int present(int x) { return x; }\n", tmp_path / "unrelated", name="y.c")
    link_parent([other], case.parent)
    with pytest.raises(PatchRejected) as info:
        run_engine(case)
    assert "source file x.c has no STT_FILE symbol in the vmlinux symbol table" in str(info.value)


def test_existing_anonymous_data_would_be_copied_is_rejected(tmp_path):
    src = r"""
asm(".pushsection .data.anon,\"aw\"\n.long 5\n.popsection");
int use_anon(int x) { int v; asm("movl .data.anon(%%rip), %0" : "=r"(v)); return v + x; }
"""
    msg = rejection(tmp_path, src, src.replace("v + x", "v - x"))
    assert "anonymous data in the existing data section .data.anon" in msg and "copy" in msg


def test_function_sharing_a_section_is_rejected(tmp_path):
    src = "int one(int x) { return x + 1; }\nint two(int x) { return x + 2; }\n"
    msg = rejection(tmp_path, src, src.replace("x + 2", "x + 3"), flags=["-fno-function-sections"])
    assert "changed function two shares section .text with other code" in msg and "-ffunction-sections" in msg


def test_every_module_key_of_a_function_is_named(tmp_path):
    src = JUMP_LABEL + ("static struct static_key slow_path;\n"
                        "int keyed_twice(int x) { if (key_on(&fast_path)) x++; if (key_on(&slow_path)) x--; "
                        "return x * 7; }\n")
    msg = rejection(tmp_path, src, src.replace("x * 7", "x * 9"), parent_name="mymod")
    assert "jump label in function keyed_twice uses key fast_path defined in module mymod (also: slow_path)" in msg


def test_changed_original_without_fentry_is_rejected_even_if_patch_adds_it(tmp_path):
    # ftrace must hook the running (original) function: a notrace original cannot be patched,
    # whatever the patched copy looks like.
    src = "__attribute__((no_instrument_function)) int quiet(int x) { return x * 3; }\n"
    patched = "int quiet(int x) { return x * 4; }\n"
    msg = rejection(tmp_path, src, patched)
    assert "quiet" in msg and "original has no __fentry__" in msg


def test_patch_making_a_traced_function_notrace_is_accepted(tmp_path):
    src = "int loud(int x) { return x * 3; }\n"
    patched = "__attribute__((no_instrument_function)) int loud(int x) { return x * 3; }\n"
    case = run_engine(make_case(tmp_path, src, patched))
    assert case.result.changed_functions == ["loud"]
    assert [f["name"] for f in case.funcs()] == ["loud"]


PARAM = r"""
struct kernel_param { const char *name; void *mod; const void *ops; unsigned short perm;
                      signed char level; unsigned char flags; void *arg; };
static int debug_level;
static const struct kernel_param __param_debug_level __attribute__((used, section("__param"), aligned(8))) =
    { "debug_level", 0, 0, 0644, -1, 0, &debug_level };
int get_debug_level(void) { return debug_level; }
"""


def test_changed_module_parameter_is_rejected_with_its_section(tmp_path):
    msg = rejection(tmp_path, PARAM, PARAM.replace("0644", "0444"), parent_name="mymod")
    assert "section __param changed" in msg and "module parameters" in msg


def test_changed_init_data_is_rejected_with_its_section(tmp_path):
    src = ("static int boot_limit __attribute__((used, section(\".init.data\"))) = 5;\n"
           "int runtime(int x) { return x; }\n")
    msg = rejection(tmp_path, src, src.replace("= 5", "= 6"))
    assert "section .init.data changed" in msg and "__init data" in msg


def test_changed_export_table_is_rejected_with_its_section(tmp_path):
    # the export of a symbol moved to another namespace: its ___ksymtab+ entry changes
    src = ("int shared_fn(int x) { return x; }\n"
           "static const char ns[] __attribute__((used, section(\"__ksymtab_strings\"))) = \"NS_A\";\n"
           "static const struct { int value, name, ns; } __ksymtab_shared_fn\n"
           "    __attribute__((used, section(\"___ksymtab+shared_fn\"), aligned(4))) = { 0, 0, 1 };\n")
    msg = rejection(tmp_path, src, src.replace("0, 0, 1", "0, 0, 2"))
    assert "section ___ksymtab+shared_fn changed" in msg


def test_jump_label_key_is_found_by_its_relocation_not_its_offset(tmp_path):
    # The same entry with the key first: an engine reading offset 8 would take the jump target
    # (code) for the key and miss the module key.
    key_first = JUMP_LABEL.replace(r".long 1b - .\n\t.long %l[l_yes] - .\n\t.quad %c0 - .\n\t",
                                   r".quad %c0 - .\n\t.long 1b - .\n\t.long %l[l_yes] - .\n\t")
    assert key_first != JUMP_LABEL
    msg = rejection(tmp_path, key_first, key_first.replace("x * 2", "x * 3"), parent_name="mymod")
    assert "jump label in function keyed uses key fast_path defined in module mymod" in msg


# #19 item 4: module-keyed tracepoint, dynamic-debug and tracepoint static-call sites are dropped
# (inert while patched) and reported; the parent module defines the tracepoint keys.
MODULE_KEYS = JUMP_LABEL.replace("static struct static_key fast_path;\n", r"""
extern struct static_key __tracepoint_cb_event;
static struct static_key dbg_desc __attribute__((used, section("__dyndbg")));
extern struct static_key __SCK__tp_func_cb_event;
static __attribute__((always_inline)) inline void tp_call(void)
{
    asm volatile("1: .byte 0x0f,0x1f,0x44,0x00,0x00\n\t.pushsection .static_call_sites, \"a\"\n\t"
                 ".long 1b - .\n\t.long %c0 - .\n\t.popsection" : : "i" (&__SCK__tp_func_cb_event));
}
struct static_key __tracepoint_here_event __attribute__((section("__tracepoints")));
static struct static_key fast_path;
int traced(int x) { tp_call(); if (key_on(&__tracepoint_cb_event)) return x * 7; if (key_on(&dbg_desc)) return 0;
                    if (key_on(&__tracepoint_here_event)) return x * 9; return x + 2; }
""")
MODULE_KEY_DEFS = "struct static_key { int enabled; } __tracepoint_cb_event, __SCK__tp_func_cb_event;\n"


def test_module_tracepoint_sites_are_dropped_and_reported(tmp_path):
    case = make_case(tmp_path, MODULE_KEYS, MODULE_KEYS.replace("x + 2", "x + 3"), extra_parent_src=MODULE_KEY_DEFS)
    run_engine(case, parent_name="mymod")
    assert case.result.changed_functions == ["traced"]
    assert sorted(case.result.inert_sites) == [
        "tracepoint __tracepoint_cb_event in traced (key in module mymod)",
        "tracepoint __tracepoint_here_event in traced (key in module mymod)",   # defined in this file
        "tracepoint static call __SCK__tp_func_cb_event in traced (key in module mymod)",
    ]
    # no entry is left to be initialised against a key livepatch resolves only later
    assert ".static_call_sites" not in case.sections()
    assert not [r for r in case.klp_relocations() if r["name"].startswith(("__tracepoint_", "__SCK__", "dbg_desc"))]
    # the dynamic-debug descriptor travels into the patch module (its key is the patch module's
    # own, set up with it): that site is kept, the only entry left
    assert case.sections()["__jump_table"].size == 16
    assert [r.sym.name for r in case.relocations("__jump_table") if r.offset == 8] == ["dbg_desc"]


def test_module_tracepoint_kept_with_other_module_key_is_still_refused(tmp_path):
    both = MODULE_KEYS.replace("return x + 2; }", "return x + 2; }\nint fast(int x) { if (key_on(&fast_path)) "
                               "return x; return -x; }")
    msg = rejection(tmp_path, both, both.replace("return -x;", "return 1 - x;").replace("x + 2", "x + 3"),
                    parent_name="mymod", extra_parent_src=MODULE_KEY_DEFS)
    assert "jump label in function fast uses key fast_path defined in module mymod" in msg


def test_vmlinux_tracepoint_site_is_kept(tmp_path):
    case = make_case(tmp_path, MODULE_KEYS, MODULE_KEYS.replace("x + 2", "x + 3"), extra_parent_src=MODULE_KEY_DEFS)
    run_engine(case)
    assert case.result.inert_sites == []
    assert case.sections()["__jump_table"].size == 48 and case.sections()[".static_call_sites"].size == 8
