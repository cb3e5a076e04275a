"""Function-scope statics: paired through the functions using them, looked up by their original name.

gcc numbers static locals anew in every build (``lock.63240`` becomes ``lock.63243`` when the
patch adds a static above it) and may move their users into a ``.part`` child; the patched code
must still reach the running kernel's variables.
"""

from __future__ import annotations

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf

from tests.unit.engine_cc import make_case, run_engine

TWO_LOCKS = r"""
int first_user(int x) { static int lock; lock += x; return lock; }
int second_user(int x) { static int lock; lock -= x; return lock; }
"""
# The patch adds a function with its own static (gcc numbers from the end of the file): the later
# statics are renumbered, and the patched second_user's lock takes the number first_user's lock
# had in the original build.
RENUMBERED = TWO_LOCKS.replace("lock -= x;", "lock -= x * 2;") + \
    "int last(void) { static int lock; return ++lock; }\n"


def _lock_used_by(path, func: str) -> str:
    """The static ``lock.N`` a function's code references (through its section symbol)."""
    obj = read_elf(str(path))
    rela = obj.section_by_name()[".rela.text." + func]
    names = {r.sym.name[len(".bss."):] for r in rela.relocations if r.sym.name.startswith(".bss.lock.")}
    assert len(names) == 1, names
    return names.pop()


def test_renumbered_static_is_looked_up_by_its_original_name(tmp_path):
    case = make_case(tmp_path, TWO_LOCKS, RENUMBERED)
    orig_lock, patched_lock = _lock_used_by(case.orig, "second_user"), _lock_used_by(case.patched, "second_user")
    # the trap: the patched name exists in the original too, as first_user's lock
    assert patched_lock != orig_lock and patched_lock == _lock_used_by(case.orig, "first_user")
    run_engine(case)
    assert case.result.changed_functions == ["second_user"] and case.result.new_functions == ["last"]
    locks = [r for r in case.klp_relocations() if r["name"].startswith("lock.")]
    assert {(r["name"], r["section"]) for r in locks} == {(orig_lock, ".text.second_user")}, locks


AUDIT = r"""
extern void slow_path(int *p);
extern int audit_enabled;
void audit_end(int *ab)
{
    static int lock;
    static int messages;
    if (!ab)
        return;
    if (audit_enabled) {
        lock++;
        messages += *ab;
        slow_path(&lock);
        _printk("audit %d %d\n", lock, messages);
        slow_path(&messages);
        _printk("audit2 %d %d\n", lock, messages);
        slow_path(ab);
        _printk("audit3 %d %d\n", lock, messages);
    }
}
void caller1(int *x) { audit_end(x); }
void caller2(int *x) { audit_end(x + 1); }
"""


def test_static_locals_whose_users_moved_into_a_part_child_are_still_shared(tmp_path):
    # the original build keeps one function; the patched one splits the body into audit_end.part.0
    case = make_case(tmp_path, AUDIT, AUDIT.replace("audit3", "AUDIT3"), flags=["-fno-partial-inlining"],
                     patched_flags=[], exports=("__fentry__", "_printk", "slow_path", "audit_enabled"))
    patched_funcs = {s.name for s in read_elf(str(case.patched)).symbols if s.type == 2}
    assert "audit_end.part.0" in patched_funcs, patched_funcs
    run_engine(case)
    # audit_end and its callers, which inlined the new split-off head
    assert case.result.changed_functions[0] == "audit_end"
    names = {r["name"] for r in case.klp_relocations()}
    assert {n.split(".")[0] for n in names if n.startswith(("lock.", "messages."))} == {"lock", "messages"}
    orig_statics = {s.name for s in read_elf(str(case.orig)).symbols if s.name.startswith(("lock.", "messages."))}
    assert {n for n in names if n.startswith(("lock.", "messages."))} == orig_statics
