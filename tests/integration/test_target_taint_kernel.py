"""Taint decoding checked against the kernel's own taint_flags[] table (kernel/panic.c of the fetched tree)."""

from __future__ import annotations

import re

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._target.taint import (
    TAINT_FLAGS, decode_taint, taint_letters)
from tests.testbed.kernels import fetch_kernel

pytestmark = pytest.mark.integration


def kernel_taint_table(source_tree) -> dict:
    """bit → letter, parsed from the kernel source's TAINT_* defines and taint_flags[]."""
    header = (source_tree / "include/linux/panic.h").read_text()
    bits = {m.group(1): int(m.group(2))
            for m in re.finditer(r"#define\s+(TAINT_[A-Z_]+)\s+(\d+)\b", header)}
    panic = (source_tree / "kernel/panic.c").read_text()
    letters = {}
    for m in re.finditer(r"\[\s*(TAINT_[A-Z_]+)\s*\]\s*=\s*\{\s*'(.)'", panic):
        letters[bits[m.group(1)]] = m.group(2)
    return letters


@pytest.fixture(scope="module")
def kernel_table():
    return kernel_taint_table(fetch_kernel(with_dbg=False).source_tree())


def test_table_matches_kernel_source(kernel_table):
    assert len(kernel_table) >= 19
    assert {f.bit: f.letter for f in TAINT_FLAGS} == kernel_table


def test_every_single_bit_decodes_to_its_kernel_letter(kernel_table):
    for bit, letter in kernel_table.items():
        flags = decode_taint(1 << bit)
        assert [(f.bit, f.letter) for f in flags] == [(bit, letter)]


def test_combination_and_unknown_bits(kernel_table):
    mask = (1 << 12) | (1 << 13) | (1 << 15) | (1 << 40)
    flags = decode_taint(mask)
    assert [f.bit for f in flags] == [12, 13, 15, 40]
    assert flags[-1].name == "bit_40" and flags[-1].letter == "?"
    assert taint_letters(mask) == kernel_table[12] + kernel_table[13] + kernel_table[15] + "?"
