# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""The rows of a parent's symbol table as columns, indexed by name: :class:`ParentSymtab`'s storage.

vmlinux has about 120,000 symbols and one object asks about a few dozen names.  Building a
Python object and a dictionary entry for every row costs a quarter of a second per build, so the
rows are kept as a few flat columns (machine integers in ``bytes``, read through a ``memoryview``
cast) plus a name index made once when the
table is first built: the unique names in sorted order (searched by bisection) and, per name,
its rows in table order.  The same columns are the build's cached form of the table
(``to_payload``/``from_payload``): loading them is a few large copies and one split of the names.
The columns are memoryviews rather than ``array``s because importing ``array`` imports
``collections`` (about 3 ms of every start of ``tools/create-diff-object``).
"""

from __future__ import annotations

import struct
import sys
from bisect import bisect_left

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import Dict, Iterable, List, Sequence, Tuple

    # One row: name, value, size, bind, type, defined, ELF symbol index, in an .init* section.
    Fields = Tuple[str, int, int, int, int, bool, int, bool]

_DEFINED, _INIT = 1, 2
# The columns stored as machine arrays, with their typecodes; the payload records the machine.
_ARRAYS = {"name_ids": "I", "values": "Q", "sizes": "Q", "indexes": "I", "by_name": "I", "starts": "I"}
_BYTES = ("binds", "types", "flags")
PAYLOAD_LAYOUT = (sys.byteorder,) + tuple(f"{code}{struct.calcsize(code)}" for code in _ARRAYS.values())


def _column(code: str, values: Iterable[int]) -> memoryview:
    """``values`` as one writable column of machine integers of ``code`` (``I``: 32-bit, ``Q``: 64-bit)."""
    items = list(values)
    return memoryview(bytearray(struct.pack("%d%s" % (len(items), code), *items))).cast(code)


class SymbolRows:
    """Columns of the table (one entry per row, in table order) and the rows of each name."""

    def __init__(self, names: List[str], columns: Dict[str, Sequence[int]]) -> None:
        self.names = names  # the unique names, sorted
        self.name_ids: Sequence[int] = columns["name_ids"]
        self.values: Sequence[int] = columns["values"]
        self.sizes: Sequence[int] = columns["sizes"]
        self.indexes: Sequence[int] = columns["indexes"]
        self.binds = bytes(columns["binds"])
        self.types = bytes(columns["types"])
        self.flags = bytes(columns["flags"])
        # rows grouped by name id (ascending rows within a name) and where each name's group starts
        self.by_name: Sequence[int] = columns["by_name"]
        self.starts: Sequence[int] = columns["starts"]
        self._check()

    def _check(self) -> None:
        rows = len(self.name_ids)
        lengths = {len(self.values), len(self.sizes), len(self.indexes), len(self.binds), len(self.types),
                   len(self.flags), len(self.by_name)}
        if lengths != {rows} or len(self.starts) != len(self.names) + 1 or (rows and self.starts[-1] != rows):
            raise ValueError("inconsistent symbol table columns")

    @classmethod
    def from_fields(cls, rows: Iterable[Fields]) -> "SymbolRows":
        """The columns of ``rows`` (name, value, size, bind, type, defined, index, init)."""
        rows = list(rows)
        names = sorted({row[0] for row in rows})
        position = {name: i for i, name in enumerate(names)}
        name_ids = _column("I", (position[row[0]] for row in rows))
        by_name = _column("I", sorted(range(len(rows)), key=name_ids.__getitem__))
        starts = _column("I", [0] * (len(names) + 1))
        for name_id in name_ids:
            starts[name_id + 1] += 1
        for i in range(len(names)):
            starts[i + 1] += starts[i]
        return cls(names, {
            "name_ids": name_ids, "by_name": by_name, "starts": starts,
            "values": _column("Q", (row[1] for row in rows)), "sizes": _column("Q", (row[2] for row in rows)),
            "binds": bytes(row[3] for row in rows), "types": bytes(row[4] for row in rows),
            "flags": bytes((_DEFINED if row[5] else 0) | (_INIT if row[7] else 0) for row in rows),
            "indexes": _column("I", (row[6] for row in rows))})

    def to_payload(self) -> Dict[str, object]:
        """Plain ``str``/``bytes`` values (for ``marshal``), read back by ``from_payload``."""
        payload: Dict[str, object] = {"layout": PAYLOAD_LAYOUT, "names": "\0".join(self.names),
                                      "count": len(self.names)}
        for column in _ARRAYS:
            payload[column] = getattr(self, column).tobytes()
        for column in _BYTES:
            payload[column] = getattr(self, column)
        return payload

    @classmethod
    def from_payload(cls, payload: Dict[str, object]) -> "SymbolRows":
        """The columns ``to_payload`` wrote on this machine (ValueError for anything else)."""
        if not isinstance(payload, dict) or payload.get("layout") != PAYLOAD_LAYOUT:
            raise ValueError("symbol table columns of another format or machine")
        try:
            text, count = payload["names"], payload["count"]
            columns: Dict[str, Sequence[int]] = {}
            for column, code in _ARRAYS.items():
                # (a length that is no whole column, or no bytes at all: TypeError, as a missing field)
                columns[column] = memoryview(payload[column]).cast(code)  # type: ignore[arg-type]
            for column in _BYTES:
                columns[column] = payload[column]  # type: ignore[assignment]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"incomplete symbol table columns: {exc}") from exc
        names = text.split("\0") if count else []  # type: ignore[union-attr]
        if len(names) != count:
            raise ValueError("symbol table names do not match their count")
        return cls(names, columns)

    def __len__(self) -> int:
        return len(self.name_ids)

    def rows_named(self, name: str) -> Sequence[int]:
        """The rows called ``name``, in table order."""
        # A binary search of the sorted names: a dictionary of 110,000 names would cost more to
        # build than a build's few hundred lookups cost this way.
        i = bisect_left(self.names, name)
        if i == len(self.names) or self.names[i] != name:
            return ()
        return self.by_name[self.starts[i]:self.starts[i + 1]]

    def fields(self, row: int) -> Fields:
        flags = self.flags[row]
        return (self.names[self.name_ids[row]], self.values[row], self.sizes[row], self.binds[row],
                self.types[row], bool(flags & _DEFINED), self.indexes[row], bool(flags & _INIT))

    def next_of_type(self, sym_type: int, start: int) -> int:
        """The first row from ``start`` on whose type is ``sym_type``; the row count when none is."""
        found = self.types.find(bytes((sym_type,)), start)
        return len(self) if found < 0 else found
