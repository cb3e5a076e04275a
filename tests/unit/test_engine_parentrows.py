"""The parent table's columns: the same answers from ParentSymbols as from the cached columns."""

import marshal
import random

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import (
    STB_GLOBAL,
    STB_LOCAL,
    STB_WEAK,
    STT_FILE,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.lookup import (
    ParentSymbol,
    ParentSymtab,
    SymbolLookupError,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.parentrows import SymbolRows

NAMES = ["", "a.c", "b.c", "twice", "twice.12", "entry", "counter", "shared"]


def random_table(seed):
    """A table mixing files, locals, globals, weaks, undefined and .init rows, many names shared
    (section and file symbols are local and locals defined, as every ELF writer makes them)."""
    rng = random.Random(seed)
    rows = []
    for i in range(rng.randrange(40)):
        sym_type = rng.choice([STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE, STT_FILE])
        bind = STB_LOCAL if sym_type in (STT_SECTION, STT_FILE) else rng.choice([STB_LOCAL, STB_GLOBAL, STB_WEAK])
        rows.append(ParentSymbol(rng.choice(NAMES), rng.randrange(8), rng.randrange(4), bind, sym_type,
                                 bind == STB_LOCAL or rng.random() < 0.8, i + 1, rng.random() < 0.2))
    return rows


def answer(call):
    try:
        return repr(call())
    except SymbolLookupError as exc:
        return f"refused: {exc}"


def answers(table):
    """Every question the engine asks, for every name."""
    out = [answer(lambda n=n: table.find_global(n)) for n in NAMES]
    for filename in ("a.c", "b.c", "none.c"):
        for hint in ([], ["twice"], ["entry", "counter"]):
            block = answer(lambda f=filename, h=hint: (b := table.select_file_block(f, h)).name + repr(b.locals))
            out.append(block)
            if not block.startswith("refused"):
                chosen = table.select_file_block(filename, hint)
                out += [answer(lambda n=n, b=chosen: table.find_local(n, b)) for n in NAMES]
    return out


@pytest.mark.parametrize("objname", ["vmlinux", "mod"])
def test_columns_read_back_give_the_same_answers(objname):
    for seed in range(150):
        symbols = random_table(seed)
        direct = ParentSymtab(symbols, objname)
        cached = ParentSymtab(SymbolRows.from_payload(marshal.loads(marshal.dumps(direct.rows.to_payload()))),
                              objname)
        assert answers(cached) == answers(direct), seed
        assert [vars(s) for s in map(cached.symbol, range(len(cached.rows)))] == [vars(s) for s in symbols]


def test_a_row_is_one_object_and_names_are_found_by_bisection():
    symbols = [ParentSymbol("x.c", 0, 0, STB_LOCAL, STT_FILE, False, 1),
               ParentSymbol("dup", 0x20, 4, STB_LOCAL, STT_FUNC, True, 2),
               ParentSymbol("b.c", 0, 0, STB_LOCAL, STT_FILE, False, 3),
               ParentSymbol("dup", 0x10, 4, STB_LOCAL, STT_FUNC, True, 4),
               ParentSymbol("dup", 0x30, 4, STB_GLOBAL, STT_FUNC, True, 5)]
    table = ParentSymtab(SymbolRows.from_payload(ParentSymtab(symbols, "vmlinux").rows.to_payload()), "vmlinux")
    assert table.symbol(3) is table.symbol(3)
    assert list(table.rows.rows_named("dup")) == [1, 3, 4] and not table.rows.rows_named("zzz")
    # vmlinux's sympos counts by address: the b.c local (0x10) first, x.c's (0x20) second, the global third
    assert table.find_local("dup", table.select_file_block("x.c", ["dup"])).sympos == 2
    assert table.find_global("dup").sympos == 3


def test_columns_that_do_not_fit_together_are_refused():
    payload = ParentSymtab(random_table(3) or random_table(4), "vmlinux").rows.to_payload()
    with pytest.raises(ValueError, match="inconsistent"):
        SymbolRows.from_payload(dict(payload, flags=payload["flags"][:-1]))
    with pytest.raises(ValueError, match="another format or machine"):
        SymbolRows.from_payload(dict(payload, layout=("middle",)))
    with pytest.raises(ValueError, match="incomplete"):
        SymbolRows.from_payload({k: v for k, v in payload.items() if k != "sizes"})
