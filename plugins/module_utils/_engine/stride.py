# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Entry stride of a special section, read from its own relocation pattern.

Every entry of ``__jump_table``, ``.altinstructions``, ``__ex_table`` ... carries its
relocations at fixed offsets inside the entry, so the section's relocations repeat
with the entry size as their period.  The declared size (the kernel's struct size, from
DWARF or kpatch's ``*_STRUCT_SIZE`` variables) is used when that pattern agrees with it,
or when no relocation can decide (no relocations, a single entry).  Otherwise the period
the relocations show is used, and when neither fits the section is refused with both
numbers: slicing a table at the wrong stride would keep halves of two entries.

The last entry may lack its tail padding (``.parainstructions`` of 828 = 51 x 16 + 12
bytes): it must still hold all its relocated fields, and is padded back to a full entry
when kept.
"""

from __future__ import annotations

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.record import record
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import R_X86_64_64, R_X86_64_PC64, Section

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Set, Tuple

# Entries are small structs: a period is looked for among the first relocations only.
_MAX_PATTERN = 16


class StrideError(ValueError):
    """Neither the declared entry size nor the relocations' period tiles the section."""


def relocation_width(rtype: int) -> int:
    """Bytes an x86-64 relocation writes (64-bit absolute/PC-relative, else 32)."""
    return 8 if rtype in (R_X86_64_64, R_X86_64_PC64) else 4


@record(frozen=True)
class Stride:
    """How a special section is cut into entries."""

    size: int
    count: int        # entries, the last one possibly short
    source: str       # "declared" or "relocations"


def _fields(sec: Section) -> List[Tuple[int, int]]:
    """(offset, width) of every relocated field of ``sec``."""
    if sec.rela is None:
        return []
    return [(r.offset, relocation_width(r.type)) for r in sec.rela.relocations]


def tiles(fields: List[Tuple[int, int]], total: int, size: int) -> bool:
    """True when entries of ``size`` bytes (the last possibly short) fit the relocations.

    Each entry must carry at least one relocation, and all at offsets of one struct layout:
    the in-entry offsets of every entry together form fields that do not overlap, and one
    field is relocated in every entry.  (Not every field always is: an alternative with an
    empty replacement has no relocation for it.)  At a wrong stride the in-entry offsets
    drift from entry to entry, and fields overlap, straddle entries or none is common.
    """
    if size <= 0 or total <= 0:
        return False
    count = -(-total // size)
    tail = total - (count - 1) * size
    patterns: Dict[int, Set[int]] = {}
    widths: Dict[int, int] = {}
    for offset, width in fields:
        index, inner = divmod(offset, size)
        limit = tail if index == count - 1 else size
        if offset < 0 or index >= count or inner + width > limit or widths.get(inner, width) != width:
            return False
        patterns.setdefault(index, set()).add(inner)
        widths[inner] = width
    if len(patterns) != count:
        return False
    layout = sorted(widths)
    if any(a + widths[a] > b for a, b in zip(layout, layout[1:])):
        return False
    return bool(set.intersection(*patterns.values()))


def period_of(fields: List[Tuple[int, int]], total: int) -> Optional[int]:
    """The smallest entry size at which at least two entries repeat the same fields, if any."""
    starts = sorted({offset for offset, _w in fields})
    for later in starts[1:_MAX_PATTERN + 1]:
        size = later - starts[0]
        if size < total and tiles(fields, total, size):
            return size
    return None


def entry_period(sec: Section) -> Optional[int]:
    """The entry size ``sec``'s own relocations repeat at, if they show one."""
    return period_of(_fields(sec), sec.size)


def section_stride(sec: Section, declared: int, what: str) -> Stride:
    """The stride to cut ``sec`` at; ``what`` names the declared size's origin in errors."""
    fields = _fields(sec)
    if declared > 0 and (tiles(fields, sec.size, declared) or
                         (not fields and sec.size % declared == 0)):
        return Stride(declared, -(-sec.size // declared), "declared")
    found = period_of(fields, sec.size)
    if found is not None:
        return Stride(found, -(-sec.size // found), "relocations")
    raise StrideError("section %s (%d bytes, %d relocations): entries are neither the declared %d bytes (%s) "
                      "nor of a size its relocations repeat at (%s)"
                      % (sec.name, sec.size, len(fields), declared, what, _spacing(fields)))


def _spacing(fields: List[Tuple[int, int]]) -> str:
    starts = sorted({offset for offset, _w in fields})
    gaps = sorted({b - a for a, b in zip(starts, starts[1:])})[:4]
    if not gaps:
        return "too few relocations to tell"
    return "relocated fields %s bytes apart" % "/".join(str(g) for g in gaps)
