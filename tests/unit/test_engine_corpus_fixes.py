"""Engine fixes found by the patch corpus (tests/integration/patches), each on a small gcc-compiled pair."""

from __future__ import annotations

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.diff import PatchRejected

from tests.unit.engine_cc import make_case, run_engine

# __handle_sysrq (6.1 drivers/tty/sysrq.c) loads ``sysrq_key_table - 8`` as a 64-bit immediate
# in its .cold part: a reference below the start of a named object, which is ordinary array
# arithmetic and must not be rejected.
BELOW_START = r"""
static void *table[4] = { (void *)1, (void *)2, (void *)3, (void *)4 };
void *before_table(int i)
{
    void **p;
    asm("movabs $table-8, %0" : "=r"(p) : "m"(table));
    return p[i];
}
"""


def test_reference_below_a_named_object_is_accepted(tmp_path):
    case = run_engine(make_case(tmp_path, BELOW_START, BELOW_START.replace("return p[i];", "return p[i + 1];")))
    assert case.result.changed_functions == ["before_table"]
    # ``table`` is static in the running kernel: the reference becomes a livepatch relocation
    # to it, still 8 bytes below its start.
    relocs = [r for r in case.klp_relocations() if r["name"] == "table"]
    assert [r["addend"] for r in relocs] == [-8], case.klp_relocations()


def test_reference_past_the_end_of_a_named_object_is_still_rejected(tmp_path):
    patched = BELOW_START.replace("$table-8", "$table+4096")
    with pytest.raises(PatchRejected, match=r"points to table\+0x1000, outside that symbol \(32 bytes\)"):
        run_engine(make_case(tmp_path, BELOW_START, patched))
