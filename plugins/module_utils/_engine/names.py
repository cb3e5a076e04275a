# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""The grammar of compiler-made symbol names: gcc's ``.N`` counters, ``.cold``/``.part.N`` children,
``__UNIQUE_ID_`` counters, UBSAN's numbered data, ``file.c:LINE`` in strings.

Written with ``str`` methods rather than regular expressions: ``re`` (with ``enum``, which it
imports) is about 7 ms of every start of ``tools/create-diff-object``, which starts once per
object, and these functions run for every symbol of both objects.  Each function states the
pattern it implements; ``tests/unit/test_engine_names.py`` checks them against those patterns.
One difference is deliberate: a pattern's ``$`` also matches before a final newline, and these
functions treat a newline as any other character (symbol and section names have none).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing stays off the engine's start-up path
if TYPE_CHECKING:  # pragma: no cover
    from typing import Optional

UNIQUE_ID = "__UNIQUE_ID_"
UBSAN_DATA_STEMS = (".Lubsan_data", ".Lubsan_type")
SOURCE_SUFFIXES = (".c", ".h", ".S")


def digits_end(text: str) -> int:
    """Where the run of decimal digits that starts ``text`` ends (0 when there is none)."""
    end = 0
    while end < len(text) and text[end].isdecimal():
        end += 1
    return end


def digits_start(text: str) -> int:
    """Where the run of decimal digits that ends ``text`` begins (``len(text)`` when there is none)."""
    end = len(text)
    while end and text[end - 1].isdecimal():
        end -= 1
    return end


def without_number_parts(name: str) -> str:
    """Every ``.N`` component removed, wherever it is (``\\.\\d+(?=\\.|$)`` replaced by nothing):
    ``foo.constprop.19.cold.28`` -> ``foo.constprop.cold``."""
    if "." not in name:
        return name
    head, *parts = name.split(".")
    return ".".join([head] + [part for part in parts if not part.isdecimal()])


def without_number_suffix(name: str) -> str:
    """The trailing ``.N`` components removed (``(\\.\\d+)+$``): ``lock.63243`` -> ``lock``,
    ``foo.isra.0`` -> ``foo.isra``."""
    while "." in name:
        head, _dot, tail = name.rpartition(".")
        if not tail.isdecimal():
            break
        name = head
    return name


def unique_id_base(name: str) -> Optional[str]:
    """``__UNIQUE_ID_x`` for ``__UNIQUE_ID_x77`` (``^(.*__UNIQUE_ID_.*?)\\d+$``): the trailing counter
    after the last ``__UNIQUE_ID_`` removed; None when there is no such counter."""
    marker = name.rfind(UNIQUE_ID)
    if marker < 0 or not name[-1:].isdecimal():
        return None
    cut = max(digits_start(name), marker + len(UNIQUE_ID))
    return name[:cut] if cut < len(name) else None


def child_parent_name(name: str) -> Optional[str]:
    """``foo`` for ``foo.cold``, ``foo.part.3``, ``foo.part.3.cold``, ``foo.cold.12``; None otherwise.

    The pattern: ``^(.+?)\\.(?:cold|part\\.\\d+)(?:\\.\\d+|\\.cold)*$``: the shortest non-empty parent
    followed by ``.cold`` or ``.part.N``, then any run of ``.N``/``.cold``.
    """
    if ".cold" not in name and ".part." not in name:
        return None  # the common case, decided without splitting
    parts = name.split(".")
    for start in range(1, len(parts)):
        if start == 1 and not parts[0]:
            continue  # the parent may not be empty
        rest = parts[start:]
        if rest[0] == "cold":
            tail = rest[1:]
        elif rest[0] == "part" and len(rest) > 1 and rest[1].isdecimal():
            tail = rest[2:]
        else:
            continue
        if all(part == "cold" or part.isdecimal() for part in tail):
            return ".".join(parts[:start])
    return None


def ubsan_data_base(name: str) -> Optional[str]:
    """UBSAN's numbered data name without its number (``(\\.Lubsan_(?:data|type))\\d+$``):
    ``.data..Lubsan_data12`` -> ``.data..Lubsan_data``; None for any other name."""
    cut = digits_start(name)
    if cut == len(name) or not name[:cut].endswith(UBSAN_DATA_STEMS):
        return None
    return name[:cut]


def hide_line_numbers(text: str) -> str:
    """``at net/core/dev.c:10275`` -> ``at net/core/dev.c:#``: each ``.c:N``/``.h:N``/``.S:N``
    (``(\\.[chS]):\\d+`` replaced by ``\\1:#``)."""
    if ":" not in text:
        return text
    pieces = text.split(":")
    out = [pieces[0]]
    for piece in pieces[1:]:
        digits = digits_end(piece)
        out.append("#" + piece[digits:] if digits and out[-1].endswith(SOURCE_SUFFIXES) else piece)
    return ":".join(out)
