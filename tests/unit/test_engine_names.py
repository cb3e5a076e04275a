"""_engine/names.py: each str-method function against the regular expression it stands for.

The engine's name grammar is written without ``re`` (its import is part of every start of the
tool); these tests hold each function to its documented pattern over hand-picked names, every
symbol name of an object gcc compiles here, and a few thousand generated names built from the
grammar's own pieces (so the edge cases are dense: empty parts, ``..``, digits first, markers twice).
"""

from __future__ import annotations

import random
import re

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine import names
from tests.unit.engine_cc import compile_c

NUMBER_PARTS = re.compile(r"\.\d+(?=\.|$)")
NUMBER_SUFFIX = re.compile(r"(\.\d+)+$")
UNIQUE_ID = re.compile(r"^(.*__UNIQUE_ID_.*?)\d+$")
CHILD = re.compile(r"^(?P<parent>.+?)\.(?:cold|part\.\d+)(?:\.\d+|\.cold)*$")
UBSAN = re.compile(r"(\.Lubsan_(?:data|type))\d+$")
LINE = re.compile(r"(\.[chS]):\d+")

PIECES = (".", ".", "..", "cold", "part", ".cold", ".part.4", ".part.", "1", "23", "0", "foo", "_", "__UNIQUE_ID_", "ddebug", "x",
          ".Lubsan_data", ".Lubsan_type", "isra", "constprop", ":", ".c", ".h", ".S", "c", ".c:", ":12", "\u0663", "\u00b2")
HAND_PICKED = ("", ".", "..", "foo", "foo.1", "foo..1", "1.2", ".1", "foo.cold", "foo.cold.12",
               "foo.part.3", "foo.part.3.cold", "foo.part", "foo.part.x", ".cold", "..cold", ".x.cold",
               "a.b.part.1.2.cold.cold", "foo.constprop.19.cold.28", "lock.63243", "foo.isra.0",
               "__UNIQUE_ID_x77", "__UNIQUE_ID_77", "__UNIQUE_ID_", "__UNIQUE_ID_ddebug12.3",
               "a__UNIQUE_ID_b__UNIQUE_ID_9", "f.__UNIQUE_ID_ddebug345", ".data..Lubsan_data12",
               ".data..Lubsan_data", ".data..Lubsan_type0", "x.Lubsan_datax1",
               "at net/core/dev.c:10275", "a.c:1.c:2", "a.c:.h:5", "a.S:12b", "x.c:", "::5", "a.h:\u0663",
               "foo.\u00b2", "x.c:\u00b2")  # U+00B2: a digit to isdigit(), not to \d


def generated(count: int, seed: int = 12) -> list:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 9) for _count in range(count)]
    return ["".join(rng.choice(PIECES) for _piece in range(length)) for length in lengths]


def compiled_names(tmp_path) -> list:
    src = ("static int counter(void) { static int calls; return ++calls; }\n"
           "int entry(int x) { if (__builtin_expect(x > 100, 0)) return counter() * 3; return x + counter(); }\n")
    elf = read_elf(str(compile_c(src, tmp_path)))
    return [sym.name for sym in elf.symbols] + [sec.name for sec in elf.sections]


def all_names(tmp_path) -> list:
    return list(HAND_PICKED) + compiled_names(tmp_path) + generated(4000)


def test_without_number_parts_is_the_number_parts_pattern(tmp_path):
    for name in all_names(tmp_path):
        assert names.without_number_parts(name) == NUMBER_PARTS.sub("", name), name


def test_without_number_suffix_is_the_suffix_pattern(tmp_path):
    for name in all_names(tmp_path):
        assert names.without_number_suffix(name) == NUMBER_SUFFIX.sub("", name), name


def test_unique_id_base_is_the_unique_id_pattern(tmp_path):
    for name in all_names(tmp_path):
        match = UNIQUE_ID.match(name)
        assert names.unique_id_base(name) == (match.group(1) if match else None), name


def test_child_parent_name_is_the_child_pattern(tmp_path):
    for name in all_names(tmp_path):
        match = CHILD.match(name)
        assert names.child_parent_name(name) == (match.group("parent") if match else None), name


def test_ubsan_data_base_is_the_ubsan_pattern(tmp_path):
    for name in all_names(tmp_path):
        expected = UBSAN.sub(r"\1", name) if UBSAN.search(name) else None
        assert names.ubsan_data_base(name) == expected, name


def test_hide_line_numbers_is_the_line_pattern(tmp_path):
    for text in all_names(tmp_path):
        assert names.hide_line_numbers(text) == LINE.sub(r"\1:#", text), text


def test_the_generated_names_reach_every_branch():
    """The generated names are not all trivial: each pattern matches some and misses some."""
    sample = generated(4000)
    for pattern in (NUMBER_PARTS, NUMBER_SUFFIX, UNIQUE_ID, CHILD, UBSAN, LINE):
        hits = sum(1 for name in sample if pattern.search(name))
        assert 20 < hits < len(sample) - 20, (pattern.pattern, hits)
