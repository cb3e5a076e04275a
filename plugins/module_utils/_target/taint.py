# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Decode the kernel taint mask (``/proc/sys/kernel/tainted``) into flag names.

The table follows the kernel's ``taint_flags[]`` (kernel/panic.c): bit number, the letter the
kernel prints in oops headers and ``/sys/module/*/taint``, and a readable name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List

TAINTED_PATH = "/proc/sys/kernel/tainted"


@dataclass(frozen=True)
class TaintFlag:
    bit: int
    letter: str
    name: str

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


# Bits 0..18 as of Linux 6.1 and 6.12; unknown higher bits are still reported (as "bit_N").
TAINT_FLAGS: List[TaintFlag] = [
    TaintFlag(0, "P", "proprietary_module"),
    TaintFlag(1, "F", "forced_module"),
    TaintFlag(2, "S", "cpu_out_of_spec"),
    TaintFlag(3, "R", "forced_rmmod"),
    TaintFlag(4, "M", "machine_check"),
    TaintFlag(5, "B", "bad_page"),
    TaintFlag(6, "U", "user"),
    TaintFlag(7, "D", "die"),
    TaintFlag(8, "A", "overridden_acpi_table"),
    TaintFlag(9, "W", "warn"),
    TaintFlag(10, "C", "crap"),
    TaintFlag(11, "I", "firmware_workaround"),
    TaintFlag(12, "O", "oot_module"),
    TaintFlag(13, "E", "unsigned_module"),
    TaintFlag(14, "L", "softlockup"),
    TaintFlag(15, "K", "livepatch"),
    TaintFlag(16, "X", "aux"),
    TaintFlag(17, "T", "randstruct"),
    TaintFlag(18, "N", "test"),
]
_BY_BIT = {flag.bit: flag for flag in TAINT_FLAGS}


def decode_taint(mask: int) -> List[TaintFlag]:
    """Every set bit of ``mask`` as a TaintFlag, lowest bit first."""
    if mask < 0:
        raise ValueError(f"taint mask must be non-negative, got {mask}")
    flags = []
    bit = 0
    while mask >> bit:
        if (mask >> bit) & 1:
            flags.append(_BY_BIT.get(bit, TaintFlag(bit, "?", f"bit_{bit}")))
        bit += 1
    return flags


def taint_letters(mask: int) -> str:
    """The letters of the set flags, e.g. ``"OEK"`` for a loaded unsigned out-of-tree livepatch."""
    return "".join(flag.letter for flag in decode_taint(mask))


def read_taint(path: str = TAINTED_PATH) -> Dict[str, object]:
    """The running kernel's taint as a query-friendly dict: mask, letters, names, flags."""
    with open(path, "r", encoding="ascii") as handle:
        mask = int(handle.read().strip() or "0")
    flags = decode_taint(mask)
    return {
        "mask": mask,
        "letters": "".join(f.letter for f in flags),
        "names": [f.name for f in flags],
        "flags": [f.as_dict() for f in flags],
    }
