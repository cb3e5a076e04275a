"""Diff engine behaviours on object pairs compiled by gcc at test time (kernel-style flags)."""

from __future__ import annotations

import struct

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import SHN_UNDEF, STB_GLOBAL, STB_LOCAL
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf

from tests.unit.engine_cc import make_case, run_engine

BASE = r"""
int global_counter = 1;
static int hidden_state;
__attribute__((noinline)) static int helper(int x) { hidden_state += x; return hidden_state * 3; }
int untouched(int x) { return x * 7 + global_counter; }
int target(int x)
{
    _printk("target called with %d\n", x);
    return helper(x) + 1;
}
"""


def test_string_change_reports_exactly_the_function(tmp_path):
    case = run_engine(make_case(tmp_path, BASE, BASE.replace("target called", "TARGET called")))
    assert case.result.changed_functions == ["target"]
    assert case.result.new_functions == []
    secs = case.sections()
    assert ".text.target" in secs and ".text.untouched" not in secs and ".text.helper" not in secs
    # the new string literal travels with the function
    strings = [s for name, s in secs.items() if ".str1." in name]
    assert any(b"TARGET called with %d\n" in s.data for s in strings)
    assert case.funcs() == [{"name": "target", "objname": "vmlinux", "new": "target",
                             "new_size": case.funcs()[0]["new_size"], "old_addr": 0,
                             "old_size": case.funcs()[0]["new_size"], "sympos": 0}]


def test_unchanged_static_function_becomes_klp_relocation(tmp_path):
    case = run_engine(make_case(tmp_path, BASE, BASE.replace("target called", "TARGET called")))
    klp = case.klp_relocations()
    helper = [r for r in klp if r["name"] == "helper"]
    assert len(helper) == 1
    assert helper[0]["objname"] == "vmlinux" and helper[0]["bind"] == STB_LOCAL and helper[0]["sympos"] == 0
    assert helper[0]["section"] == ".text.target" and helper[0]["type"] in (2, 4)  # PC32/PLT32 call
    # a relocation that went to .kpatch.relocations is no longer an ordinary one
    assert all(r.sym.name != "helper" for r in case.relocations(".text.target"))
    assert "helper" not in case.symbol_names()


def test_exported_symbol_stays_an_ordinary_relocation(tmp_path):
    case = run_engine(make_case(tmp_path, BASE, BASE.replace("target called", "TARGET called")))
    names = {r.sym.name for r in case.relocations(".text.target")}
    assert {"__fentry__", "_printk"} <= names
    printk = [s for s in case.output.symbols if s.name == "_printk"][0]
    assert printk.shndx == SHN_UNDEF and printk.bind == STB_GLOBAL
    assert not any(r["name"] == "_printk" for r in case.klp_relocations())


def test_no_change_writes_nothing(tmp_path):
    case = run_engine(make_case(tmp_path, BASE, BASE))
    assert not case.result.has_changes
    assert case.result.changed_functions == [] and not case.out.exists()


def test_new_global_function_is_included_but_not_patched(tmp_path):
    patched = BASE.replace("int target(int x)", "__attribute__((noinline)) int brand_new(int y) { return y * 11; }\nint target(int x)") \
                  .replace("return helper(x) + 1;", "return helper(x) + brand_new(x);")
    case = run_engine(make_case(tmp_path, BASE, patched))
    assert case.result.changed_functions == ["target"]
    assert case.result.new_functions == ["brand_new"]
    assert ".text.brand_new" in case.sections()
    assert [f["name"] for f in case.funcs()] == ["target"]
    calls = [r for r in case.relocations(".text.target") if r.sym.name == "brand_new"]
    assert calls and calls[0].sym.shndx != SHN_UNDEF


def test_new_static_function_included_through_its_caller(tmp_path):
    patched = BASE.replace("int target(int x)",
                           "__attribute__((noinline)) static int fresh(int y) { return y ^ 0x55; }\nint target(int x)") \
                  .replace("return helper(x) + 1;", "return helper(x) + fresh(x);")
    case = run_engine(make_case(tmp_path, BASE, patched))
    assert case.result.new_functions == ["fresh"]
    assert ".text.fresh" in case.sections()


def test_global_data_reference_to_unexported_symbol_is_klp(tmp_path):
    case = run_engine(make_case(tmp_path, BASE, BASE.replace("x * 7 +", "x * 9 +")))
    assert case.result.changed_functions == ["untouched"]
    counter = [r for r in case.klp_relocations() if r["name"] == "global_counter"]
    assert counter and counter[0]["bind"] == STB_GLOBAL and counter[0]["sympos"] == 0


def test_exported_data_reference_stays_ordinary(tmp_path):
    case = make_case(tmp_path, BASE, BASE.replace("x * 7 +", "x * 9 +"),
                     exports=("__fentry__", "_printk", "global_counter"))
    run_engine(case)
    assert any(r.sym.name == "global_counter" for r in case.relocations(".text.untouched"))
    assert not any(r["name"] == "global_counter" for r in case.klp_relocations())


STATIC_LOCAL = r"""
int count_calls(int x)
{
    static int calls;
    calls += x;
    return calls;
}
int other_user(int x)
{
    static int calls;
    calls -= x;
    return calls;
}
"""


def test_static_local_is_correlated_not_duplicated(tmp_path):
    case = run_engine(make_case(tmp_path, STATIC_LOCAL, STATIC_LOCAL.replace("calls += x;", "calls += 2 * x;")))
    assert case.result.changed_functions == ["count_calls"]
    klp = case.klp_relocations()
    # the function keeps using the running kernel's variable: a klp relocation to calls.N
    locals_ = [r for r in klp if r["name"].startswith("calls.")]
    assert locals_ and all(r["bind"] == STB_LOCAL for r in locals_)
    # ...named as in the parent (the original build), not as in the patched build
    parent_names = {s.name for s in read_elf(str(case.parent)).symbols if s.name.startswith("calls.")}
    assert {r["name"] for r in locals_} <= parent_names
    assert not any(name.startswith(".bss.calls") for name in case.sections())


WARN_ONCE = r"""
int warn_user(int x)
{
    static int __already_done;
    if (x < 0 && !__already_done) {
        __already_done = 1;
        _printk("negative %d\n", x);
    }
    return x + 1;
}
"""


def test_special_static_is_never_correlated(tmp_path):
    case = run_engine(make_case(tmp_path, WARN_ONCE, WARN_ONCE.replace("x + 1", "x + 2")))
    assert case.result.changed_functions == ["warn_user"]
    # a fresh __already_done lives in the patch module instead of linking to the kernel's
    assert not any(r["name"].startswith("__already_done") for r in case.klp_relocations())
    assert any(name.startswith(".bss.__already_done") for name in case.sections())


LINE_ONLY = r"""
int sleeper(int x)
{
    __might_sleep("x.c", __LINE__);
    return x * 5;
}
int neighbour(int x) { return x - 1; }
"""


def test_line_number_only_change_is_not_a_change(tmp_path):
    case = run_engine(make_case(tmp_path, LINE_ONLY, "\n\n\n" + LINE_ONLY))
    assert not case.result.has_changes, case.result.changed_functions


def test_real_change_next_to_line_number_is_still_a_change(tmp_path):
    case = run_engine(make_case(tmp_path, LINE_ONLY, "\n\n\n" + LINE_ONLY.replace("x * 5", "x * 6")))
    assert case.result.changed_functions == ["sleeper"]


COLD = r"""
int split(int x)
{
    if (__builtin_expect(x < 0, 0)) {
        cold_report("split: negative argument", x);
        return -22;
    }
    return x * 3;
}
"""


def test_changed_cold_child_is_included_with_its_parent(tmp_path):
    case = make_case(tmp_path, COLD, COLD.replace("negative argument", "bad argument"))
    assert b"split.cold" in case.orig.read_bytes(), "gcc did not split a .cold part; test premise broken"
    run_engine(case)
    assert case.result.changed_functions == ["split"]
    assert case.result.promoted == ["split"]
    assert "split.cold" in case.symbol_names()
    cold = [s for s in case.output.symbols if s.name == "split.cold"][0]
    assert cold.shndx != SHN_UNDEF and cold.section is not None
    assert [f["name"] for f in case.funcs()] == ["split"]


def test_changed_parent_takes_its_unchanged_cold_child(tmp_path):
    case = run_engine(make_case(tmp_path, COLD, COLD.replace("x * 3", "x * 4")))
    assert case.result.changed_functions == ["split"] and case.result.promoted == []
    assert "split.cold" in case.symbol_names()
    assert not any(r["name"] == "split.cold" for r in case.klp_relocations())


def test_renumbered_clone_is_correlated(tmp_path):
    src = r"""
__attribute__((noinline)) static int scale(int x, int factor) { return x * factor + 1; }
int use_scale(int x) { return scale(x, 3); }
int changed(int x) { return x + 1; }
"""
    case = run_engine(make_case(tmp_path, src, src.replace("x + 1; }\n", "x + 2; }\n")))
    assert case.result.changed_functions == ["changed"]
    assert case.result.new_functions == []


def test_timings_cover_every_pass(tmp_path):
    case = run_engine(make_case(tmp_path, BASE, BASE.replace("target called", "TARGET called")))
    assert set(case.result.timings) >= {"read", "bundle", "correlate", "compare", "verify", "include",
                                        "special", "lookup", "output", "write"}
    assert case.result.output_size == case.out.stat().st_size


def test_changed_constant_in_a_merged_pool_is_a_change(tmp_path):
    src = "double scale(double x) { return x * 3.25; }\nint other(int x) { return x; }\n"
    case = make_case(tmp_path, src, src.replace("3.25", "3.5"))
    assert b".rodata.cst8" in case.orig.read_bytes(), "gcc did not use a constant pool; test premise broken"
    run_engine(case)
    assert case.result.changed_functions == ["scale"]
    pool = [s for name, s in case.sections().items() if name.endswith(".cst8")]
    assert pool and pool[0].data == struct.pack("<d", 3.5)


NOISY = r"""
int noisy(int x) { return x + 1; }
int real(int x) { return x * 2; }
"""


def test_kpatch_ignore_function_directive(tmp_path):
    patched = NOISY.replace("x + 1", "x + 3").replace("x * 2", "x * 4") + (
        'static void *__kpatch_ignore_func_noisy __attribute__((used, section(".kpatch.ignore.functions")))'
        " = noisy;\n")
    case = run_engine(make_case(tmp_path, NOISY, patched))
    assert case.result.changed_functions == ["real"] and case.result.ignored == ["noisy"]
    assert ".text.noisy" not in case.sections() and ".kpatch.ignore.functions" not in case.sections()


def test_kpatch_ignore_section_directive(tmp_path):
    patched = NOISY.replace("x + 1", "x + 3").replace("x * 2", "x * 4") + (
        'static char *__kpatch_ignore_sec __attribute__((used, section(".kpatch.ignore.sections")))'
        ' = ".text.noisy";\n')
    case = run_engine(make_case(tmp_path, NOISY, patched))
    assert case.result.changed_functions == ["real"] and case.result.ignored == [".text.noisy"]


CALLBACK_RECORD = r"""
struct kpatch_pre_patch_callback { int (*fn)(void *obj); char *objname; };
static int my_pre_patch(void *obj) { return 0; }
static struct kpatch_pre_patch_callback kpatch_pre_patch_data __attribute__((used,
    section(".kpatch.callbacks.pre_patch"))) = { .fn = my_pre_patch, .objname = 0 };
"""


def _callback_objname(case) -> str:
    """The string the callback record's objname field (offset 8) points at."""
    (ref,) = [r for r in case.relocations(".kpatch.callbacks.pre_patch") if r.offset == 8]
    assert ref.sym.name == ".kpatch.strings"
    strings = case.sections()[".kpatch.strings"].data
    return strings[ref.addend:strings.index(b"\0", ref.addend)].decode()


def test_patch_callback_section_travels_with_its_function(tmp_path):
    patched = NOISY.replace("x * 2", "x * 4") + CALLBACK_RECORD
    case = run_engine(make_case(tmp_path, NOISY, patched))
    assert case.result.changed_functions == ["real"]
    assert "my_pre_patch" in case.result.new_functions
    relocs = case.relocations(".kpatch.callbacks.pre_patch")
    assert [(r.offset, r.sym.name) for r in relocs] == [(0, "my_pre_patch"), (8, ".kpatch.strings")]
    assert relocs[0].sym.section is not None
    assert _callback_objname(case) == "vmlinux"


def test_patch_callback_records_the_module_its_source_belongs_to(tmp_path):
    """#19 item 3: the hook attaches the callback to this object's klp_object, not to vmlinux."""
    case = run_engine(make_case(tmp_path, NOISY, NOISY.replace("x * 2", "x * 4") + CALLBACK_RECORD),
                      parent_name="kpatch_cb_target")
    assert _callback_objname(case) == "kpatch_cb_target"
    assert {f["objname"] for f in case.funcs()} == {"kpatch_cb_target"}


def test_call_padding_functions_are_bundled_and_diffed(tmp_path):
    """CALL_PADDING kernels (6.12): 16 padding bytes precede each function inside its section."""
    padding = ["-fpatchable-function-entry=16,16"]
    case = make_case(tmp_path, BASE, BASE.replace("target called", "TARGET called"), flags=padding)
    run_engine(case)
    assert case.result.changed_functions == ["target"]
    target = [s for s in case.output.symbols if s.name == "target"][0]
    assert target.value == 16 and target.section.name == ".text.target"
    assert case.funcs()[0]["new"] == "target"
    # the call to the unchanged static helper is named by symbol, addend relative to it
    helper = [r for r in case.klp_relocations() if r["name"] == "helper"]
    assert helper and helper[0]["addend"] == -4
    assert [(r.offset, r.sym.name) for r in case.relocations("__mcount_loc")] == [(0, "target")]


CONST_TABLE = r"""
static const int weights[4] = { 3, 5, 7, 11 };
int weigh(int i) { return weights[i & 3]; }
int unrelated(int x) { return x + 1; }
"""


def test_changed_const_table_patches_its_readers(tmp_path):
    case = run_engine(make_case(tmp_path, CONST_TABLE, CONST_TABLE.replace("7, 11", "7, 13")))
    assert case.result.changed_functions == ["weigh"] and case.result.promoted == ["weigh"]
    table = case.sections()[".rodata.weights"]
    assert struct.unpack("<4i", table.data) == (3, 5, 7, 13)
    # the new copy is used directly, not the kernel's old table
    assert any(r.sym.name == "weights" and r.sym.section is not None for r in case.relocations(".text.weigh"))


# Each snippet gives `user` a reference to one kind of special static.
SPECIAL_STATICS = {
    "__func__": ("__func__", 'const char *user(int x) { _printk("%d", x); return __func__; }\n'),
    "CSWTCH": ("CSWTCH", "int user(int x) { switch (x) { case 0: return 11; case 1: return 27; case 2: return 43;"
                         " case 3: return 91; case 4: return 5; default: return 0; } }\n"),
    "_rs": ("_rs", "int user(int x) { static struct { int burst; int interval; } _rs = { 10, 5 };"
                   " _rs.burst += x; return _rs.burst; }\n"),
    "__key": ("__key", "int *user(int x) { static int __key; __key += x; return &__key; }\n"),
    "__warned": ("__warned", "int user(int x) { static int __warned; if (!__warned) __warned = x; return 1; }\n"),
    "ddebug": ("__UNIQUE_ID_ddebug", "static int __UNIQUE_ID_ddebug42 __attribute__((used, section(\"__dyndbg\")))"
                                     " = 1;\nint user(int x) { return __UNIQUE_ID_ddebug42 + x; }\n"),
    ".data.once": ("once_flag", "static int once_flag __attribute__((section(\".data.once\")));\n"
                                "int user(int x) { if (!once_flag) once_flag = x; return 2; }\n"),
}


@pytest.mark.parametrize("kind", sorted(SPECIAL_STATICS))
def test_special_statics_get_fresh_copies(tmp_path, kind):
    prefix, src = SPECIAL_STATICS[kind]
    patched = src.replace("return 1;", "return 3;").replace("return 2;", "return 4;") \
                 .replace("_printk(\"%d\"", "_printk(\"%d!\"").replace("return 0;", "return -1;") \
                 .replace("+= x;", "+= 2 * x;").replace("+ x;", "- x;")
    assert patched != src
    case = make_case(tmp_path, src, patched)
    assert prefix.encode() in case.orig.read_bytes()
    run_engine(case)
    assert case.result.changed_functions == ["user"]
    assert not [r for r in case.klp_relocations() if r["name"].startswith(prefix)], case.klp_relocations()
    defined = [s for s in case.output.symbols if s.name.startswith(prefix) and s.section is not None]
    assert defined, "the special static must live in the patch module"


FUNC_LINE = r"""
extern void report_error(const char *func, unsigned int line, int err, int flags);
#define STR2(x) #x
#define STR(x) STR2(x)
int checker(int x)
{
    if (x > 100)
        report_error(__func__, __LINE__, 5, 0);
    if (x < -100)
        _printk("bad value at %s:%d\n", __FILE__, __LINE__);
    if (x == 42)
        _printk("trace " __FILE__ ":" STR(__LINE__) "\n");
    return x - 3;
}
"""
FUNC_LINE_EXPORTS = ("__fentry__", "_printk", "report_error")


def test_moved_lines_next_to_func_and_file_are_not_a_change(tmp_path):
    case = run_engine(make_case(tmp_path, FUNC_LINE, "\n\n\n\n\n" + FUNC_LINE, exports=FUNC_LINE_EXPORTS))
    assert not case.result.has_changes, case.result.changed_functions


def test_changed_argument_beside_a_line_number_is_a_change(tmp_path):
    case = run_engine(make_case(tmp_path, FUNC_LINE, FUNC_LINE.replace("__LINE__, 5, 0)", "__LINE__, 6, 0)"),
                                exports=FUNC_LINE_EXPORTS))
    assert case.result.changed_functions == ["checker"]


def test_changed_argument_plus_moved_lines_is_a_change(tmp_path):
    patched = "\n\n" + FUNC_LINE.replace("__LINE__, 5, 0)", "__LINE__, 5, 1)")
    case = run_engine(make_case(tmp_path, FUNC_LINE, patched, exports=FUNC_LINE_EXPORTS))
    assert case.result.changed_functions == ["checker"]


PART = r"""
extern void heavy(int);
static int work(int x)
{
    if (__builtin_expect(x == 0, 1))
        return 0;
    heavy(x); heavy(x + 1); heavy(x + 2); heavy(x + 3); heavy(x + 4);
    heavy(x + 5); heavy(x + 6); heavy(x + 7); heavy(x + 8); heavy(x + 9);
    return 1;
}
int caller_a(int x) { return work(x) + 1; }
int caller_b(int x) { return work(x * 2) + 2; }
"""


def test_changed_part_clone_without_parent_is_patched_itself(tmp_path):
    """gcc split ``work`` into inlined fast paths and ``work.part.0`` and dropped ``work``: the
    part has its own fentry call, so it is patched directly and its callers stay untouched."""
    case = make_case(tmp_path, PART, PART.replace("heavy(x + 9)", "heavy(x + 10)"),
                     exports=("__fentry__", "heavy"))
    names = [s.name for s in read_elf(str(case.orig)).symbols]
    assert "work.part.0" in names and "work" not in names, "gcc did not split work; test premise broken"
    run_engine(case)
    assert case.result.changed_functions == ["work.part.0"] and case.result.promoted == []
    assert [(f["name"], f["sympos"]) for f in case.funcs()] == [("work.part.0", 0)]


def test_changed_part_clone_promotes_its_parent_and_every_caller(tmp_path):
    """With ``work`` kept, ``work.part.0`` is its child: the parent and every function the fast
    path was inlined into (they call the part directly) get new copies."""
    src = PART.replace("static int work", "int work")
    case = make_case(tmp_path, src, src.replace("heavy(x + 9)", "heavy(x + 10)"), exports=("__fentry__", "heavy"))
    assert b"work.part.0" in case.orig.read_bytes()
    run_engine(case)
    assert sorted(case.result.changed_functions) == ["caller_a", "caller_b", "work"]
    assert sorted(case.result.promoted) == ["caller_a", "caller_b", "work"]
    part = [s for s in case.output.symbols if s.name == "work.part.0"]
    assert part and part[0].section is not None
    # every call to the part in the new copies reaches the module's new part
    for func in ("caller_a", "caller_b", "work"):
        calls = [r for r in case.relocations(".text." + func) if r.sym.name == "work.part.0"]
        assert calls and all(r.sym.section is not None for r in calls), func


def test_call_padding_new_function_is_accepted(tmp_path):
    """A new function adds a __patchable_function_entries entry; that table is compiler bookkeeping, not kernel data."""
    padding = ["-fpatchable-function-entry=16,16"]
    patched = BASE.replace("int target(int x)", "__attribute__((noinline)) int brand_new(int y) { return y * 11; }\n"
                           "int target(int x)").replace("return helper(x) + 1;", "return helper(x) + brand_new(x);")
    case = make_case(tmp_path, BASE, patched, flags=padding)
    assert b"__patchable_function_entries" in case.orig.read_bytes()
    run_engine(case)
    assert case.result.changed_functions == ["target"] and case.result.new_functions == ["brand_new"]
    assert "__patchable_function_entries" not in case.sections()


STACK_LINE = r"""
extern void corruption(int tag, int level, void *mp, void *buf, int size, const char *file, int line);
int inspect(void *mp, void *buf)
{
    if (!buf)
        corruption(1, 2, mp, buf, 344, __FILE__, __LINE__);
    return 0;
}
"""


def test_line_passed_on_the_stack_after_the_file_name(tmp_path):
    """xfs_corruption_error(..., __FILE__, __LINE__): the file in r9, the line pushed as the 7th argument."""
    case = run_engine(make_case(tmp_path, STACK_LINE, "\n\n\n" + STACK_LINE, exports=("__fentry__", "corruption")))
    assert not case.result.has_changes, case.result.changed_functions
    case = run_engine(make_case(tmp_path / "real", STACK_LINE, STACK_LINE.replace("344", "345"),
                                exports=("__fentry__", "corruption")))
    assert case.result.changed_functions == ["inspect"]
