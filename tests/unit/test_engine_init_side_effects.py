"""``__init`` code that changed only as a side effect of the patch is not a refusal.

Two ways the patch can touch init code without changing it: offsets into ``.altinstr_aux``
(static_cpu_has()'s boot-time fallback, inert in a module) move when another function adds to
that section first, and KPATCH_IGNORE_SECTION(".init.text") tells the engine the author knows
the init code changed (e.g. it inlined a patched helper) and does not need the new version.  A
real change of init code is still refused (``test_engine_reject``).
"""

from __future__ import annotations

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.diff import PatchRejected

from tests.unit.engine_cc import make_case, run_engine

# Each use puts a ud2 into .altinstr_aux and takes its address: a reference through the
# section symbol, at an offset that depends on what came before it in the file.
AUX = r"""
#define AUX_USE() ({ void *p; asm volatile(".pushsection .altinstr_aux,\"ax\"\n1: ud2\n.popsection\n" \
        "leaq 1b(%%rip), %0" : "=r"(p)); p; })
@EARLY@
__attribute__((section(".init.text"))) void *boot_probe(void) { return AUX_USE(); }
int steady(int x) { return x + 1; }
"""
FIRST_USER = "void *early_user(int x) { if (x) return AUX_USE(); return 0; }"


def test_moved_altinstr_aux_offsets_leave_init_code_unchanged(tmp_path):
    # the patch makes early_user use the aux section too: boot_probe's offset into it moves
    orig = AUX.replace("@EARLY@", "void *early_user(int x) { return 0; }")
    case = make_case(tmp_path, orig, AUX.replace("@EARLY@", FIRST_USER))
    run_engine(case)
    assert case.result.changed_functions == ["early_user"]
    assert ".init.text" not in case.sections()


def test_a_real_init_change_next_to_it_is_still_refused(tmp_path):
    orig = AUX.replace("@EARLY@", "void *early_user(int x) { return 0; }")
    patched = (AUX.replace("@EARLY@", FIRST_USER)).replace("return AUX_USE(); }\nint steady", "return (char *)AUX_USE() + 1; }\nint steady")
    with pytest.raises(PatchRejected, match=r"function boot_probe in \.init\.text changed"):
        run_engine(make_case(tmp_path, orig, patched))


INLINED = r"""
static inline int shared_step(int x) { return x * 3; }
__attribute__((section(".init.text"))) int boot_setup(int x) { return shared_step(x) + 1; }
__attribute__((section(".init.text"))) int boot_other(int x) { return x - 1; }
__attribute__((noinline)) int runtime_user(int x) { return shared_step(x) + 2; }
"""
IGNORE_INIT = 'static char *__kpatch_ignore_init __attribute__((used, section(".kpatch.ignore.sections"))) = ".init.text";\n'


def test_ignored_init_section_with_several_functions_is_left_alone(tmp_path):
    patched = INLINED.replace("x * 3", "x * 5") + IGNORE_INIT
    case = run_engine(make_case(tmp_path, INLINED, patched))
    assert case.result.changed_functions == ["runtime_user"]
    assert case.result.ignored == [".init.text"]
    assert ".init.text" not in case.sections()


def test_without_the_directive_the_inlined_change_is_refused(tmp_path):
    with pytest.raises(PatchRejected, match=r"function boot_setup in \.init\.text changed"):
        run_engine(make_case(tmp_path, INLINED, INLINED.replace("x * 3", "x * 5")))
