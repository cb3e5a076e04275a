"""Output rules kpatch's suite pins down, each on gcc-compiled C.

Replacement functions become local; the patched code's module-namespace imports travel in
``.modinfo``; objects joined by ``ld -r`` (several source files) look their locals up in their
own file's block; gcc's numbers in the middle of clone names (``foo.constprop.19.cold.28``)
do not keep a clone and its original apart.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import STB_GLOBAL, STB_LOCAL

from tests.unit.engine_cc import DEFAULT_EXPORTS, EngineCase, compile_c, make_case, run_engine, write_symvers

GLOBAL = "int exported_worker(int x) { return x + 1; }\nint bystander(int x) { return x; }\n"


def test_replacement_functions_become_local(tmp_path):
    case = run_engine(make_case(tmp_path, GLOBAL, GLOBAL.replace("x + 1", "x + 2")))
    assert case.result.changed_functions == ["exported_worker"]
    worker = [s for s in case.output.symbols if s.name == "exported_worker"]
    assert [(s.bind, s.section is not None) for s in worker] == [(STB_LOCAL, True)]
    orig = [s for s in case.output.symbols if s.bind == STB_GLOBAL and s.section is not None]
    assert orig == []


NAMESPACED = r"""
static const char ns1[] __attribute__((used, section(".modinfo"), aligned(1))) = "x.import_ns=CRYPTO_INTERNAL";
static const char other[] __attribute__((used, section(".modinfo"), aligned(1))) = "x.license=GPL";
static const char ns2[] __attribute__((used, section(".modinfo"), aligned(1))) = "x.import_ns=DMA_BUF";
int uses_namespaces(int x) { return x * 3; }
"""


def test_namespace_imports_travel_in_modinfo(tmp_path):
    case = run_engine(make_case(tmp_path, NAMESPACED, NAMESPACED.replace("x * 3", "x * 4")))
    modinfo = case.sections()[".modinfo"]
    assert modinfo.data.endswith(b"\0")
    assert sorted(modinfo.data.split(b"\0")[:-1]) == [b"import_ns=CRYPTO_INTERNAL", b"import_ns=DMA_BUF"]


def test_no_modinfo_without_namespace_imports(tmp_path):
    case = run_engine(make_case(tmp_path, GLOBAL, GLOBAL.replace("x + 1", "x + 2")))
    assert ".modinfo" not in case.sections()


# Two files with a static of the same name, joined by ld -r (as kpatch's multifile case).
FILE_A = "static __attribute__((noinline)) int helper(int x) { return x * 2; }\nint a_user(int x) { return helper(x); }\n"
FILE_B = ("static __attribute__((noinline)) int helper(int x) { return x * 5; }\n"
          "static __attribute__((noinline)) int b_local(int x) { return helper(x) + 1; }\n"
          "int b_user(int x) { return b_local(x); }\n")


def _joined(root: Path, a_src: str, b_src: str) -> Path:
    a = compile_c(a_src, root, "a.c")
    b = compile_c(b_src, root, "b.c")
    out = root / "joined.o"
    subprocess.run(["ld", "-r", "-o", str(out), str(a), str(b)], check=True)
    return out


def test_objects_of_several_files_look_locals_up_in_their_own_file(tmp_path):
    orig = _joined(tmp_path / "orig", FILE_A, FILE_B)
    patched = _joined(tmp_path / "patched", FILE_A, FILE_B.replace("helper(x) + 1", "helper(x) + 2"))
    case = EngineCase(tmp_path, orig, patched, orig, write_symvers(tmp_path / "Module.symvers", DEFAULT_EXPORTS),
                      tmp_path / "out.o")
    run_engine(case)
    assert case.result.changed_functions == ["b_local"]
    (func,) = case.funcs()
    assert func["name"] == "b_local" and func["old_size"] > 0
    helpers = [r for r in case.klp_relocations() if r["name"] == "helper"]
    # b.c's helper is the second one of the parent's symbol table (kallsyms position 2)
    assert [r["sympos"] for r in helpers] == [2], helpers


# Older gcc numbers clones and their cold parts in the middle of the name; the asm labels give
# gcc 12 those names.  The patch renumbers both and changes only the caller.
CLONES = r"""
static __attribute__((noinline, cold, section(".text.unlikely.scaled.constprop.@P@")))
int scaled_cold(int x) __asm__("scaled.constprop.@P@.cold.@C@");
static __attribute__((noinline, cold, section(".text.unlikely.scaled.constprop.@P@")))
int scaled_cold(int x) { _printk("scaled %d\n", x); return -1; }
static __attribute__((noinline, section(".text.scaled.constprop.@P@")))
int scaled(int x) __asm__("scaled.constprop.@P@");
static __attribute__((noinline, section(".text.scaled.constprop.@P@")))
int scaled(int x) { if (x > 1000) return scaled_cold(x); return x * 3; }
int scaled_user(int x) { return scaled(x) + @K@; }
"""


def _clones(p: int, c: int, k: int) -> str:
    return CLONES.replace("@P@", str(p)).replace("@C@", str(c)).replace("@K@", str(k))


def test_clone_numbers_in_the_middle_of_names_still_pair(tmp_path):
    case = run_engine(make_case(tmp_path, _clones(18, 27, 1), _clones(19, 28, 2)))
    assert case.result.changed_functions == ["scaled_user"]
    assert case.result.promoted == []
    assert [r["name"] for r in case.klp_relocations() if r["name"].startswith("scaled")] == ["scaled.constprop.18"]


# A timer/work-style callback registered by patched code: both functions change.
CALLBACK = r"""
struct timer { void (*fn)(struct timer *); };
extern void arm(struct timer *t);
__attribute__((noinline)) void on_expiry(struct timer *t) { _printk("expired %p\n", t); }
__attribute__((noinline)) static void on_local_expiry(struct timer *t) { _printk("local %p\n", t); }
void start(struct timer *t, int local) { t->fn = local ? on_local_expiry : on_expiry; arm(t); }
"""


def test_address_of_a_changed_function_is_the_originals(tmp_path):
    patched = CALLBACK.replace("expired %p", "expired! %p").replace("local %p", "local! %p") \
        .replace("arm(t); }", "arm(t); _printk(\"armed\\n\"); }")
    case = run_engine(make_case(tmp_path, CALLBACK, patched, exports=DEFAULT_EXPORTS + ("arm",)))
    assert sorted(case.result.changed_functions) == ["on_expiry", "on_local_expiry", "start"]
    taken = {(r["name"], r["objname"]) for r in case.klp_relocations()
             if r["section"].startswith(".text.start") and r["type"] == 11}   # R_X86_64_32S
    # the pointers stored in the timer name the running kernel's functions, not this module's copies
    assert taken == {("on_expiry", "vmlinux"), ("on_local_expiry", "vmlinux")}


def test_address_of_a_new_function_stays_in_the_module(tmp_path):
    patched = CALLBACK.replace("void start(", "__attribute__((noinline)) void fresh(struct timer *t) "
                               "{ _printk(\"fresh\\n\"); }\nvoid start(").replace("? on_local_expiry", "? fresh")
    case = run_engine(make_case(tmp_path, CALLBACK, patched, exports=DEFAULT_EXPORTS + ("arm",)))
    assert "fresh" in case.result.new_functions
    assert not [r for r in case.klp_relocations() if r["name"] == "fresh"]
    assert any(r.sym.name == "fresh" for r in case.relocations(".text.start"))


# The other forms a changed function's address takes (docs/engine.md "Safety"): a new ops table in
# .rodata and a new writable one in .data (R_X86_64_64), and lea func(%rip) (R_X86_64_PC32).
FORMS = CALLBACK + r"""
struct ops { void (*expire)(struct timer *); };
extern void arm_ops(const struct ops *o);
void start_ops(struct timer *t) { arm(t); }
"""
FORMS_PATCHED = CALLBACK.replace("expired %p", "expired! %p") + r"""
struct ops { void (*expire)(struct timer *); };
extern void arm_ops(const struct ops *o);
static const struct ops ro_ops = { on_expiry };
static struct ops rw_ops = { on_expiry };
void start_ops(struct timer *t)
{
    void (*fn)(struct timer *);
    asm volatile("lea on_expiry(%%rip), %0" : "=r"(fn));
    t->fn = fn;
    arm(t); arm_ops(&ro_ops); arm_ops(&rw_ops);
}
"""


def test_every_form_of_a_changed_functions_address_is_the_originals(tmp_path):
    case = run_engine(make_case(tmp_path, FORMS, FORMS_PATCHED, exports=DEFAULT_EXPORTS + ("arm", "arm_ops")))
    assert sorted(case.result.changed_functions) == ["on_expiry", "start_ops"]
    taken = sorted((r["section"], r["type"]) for r in case.klp_relocations() if r["name"] == "on_expiry")
    # R_X86_64_64 in both tables, R_X86_64_PC32 under the lea
    assert taken == [(".data.rw_ops", 1), (".rodata.ro_ops", 1), (".text.start_ops", 2)], taken
    assert not [r for r in case.relocations(".text.start_ops") if r.sym.name == "on_expiry"]
    # ftrace's record of the replacement and the hook's klp_func entry keep naming the module's copy
    assert any(r.sym.name in ("on_expiry", ".text.on_expiry") for r in case.relocations("__mcount_loc"))
    assert [f["new"] for f in case.funcs() if f["name"] == "on_expiry"] == ["on_expiry"]


def test_calls_to_a_changed_function_stay_direct(tmp_path):
    patched = CALLBACK.replace("expired %p", "expired! %p") \
        .replace("arm(t); }", "arm(t); on_expiry(t); }")
    case = run_engine(make_case(tmp_path, CALLBACK, patched, exports=DEFAULT_EXPORTS + ("arm",)))
    calls = [r for r in case.relocations(".text.start") if r.sym.name == "on_expiry" and r.type == 4]
    assert len(calls) == 1   # R_X86_64_PLT32 to the module's copy
    assert {r["type"] for r in case.klp_relocations() if r["name"] == "on_expiry"} == {11}
