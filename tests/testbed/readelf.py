"""An index-free view of an ELF object as GNU readelf prints it, for comparing two objects.

Two objects are "equivalent" when they have the same sections (name, type, flags, sizes,
alignment, what they link to), the same symbols in the same order, the same relocations
and the same groups -- regardless of file layout and of how section/symbol numbers or
string table offsets came out.  The view is built from ``readelf -S -s -r -g -W``, an
implementation independent of ours, and every index readelf prints is replaced by the
name it stands for:

* sections: the file offset is dropped (layout); the sizes of ``.strtab``/``.shstrtab`` are
  dropped (string sharing is the writer's choice); sh_link becomes the linked section's name;
  sh_info becomes the base section's name (RELA), the signature symbol's name (GROUP) or
  stays a number; ``.symtab_shndx`` is left out (it exists only when indices need it).
* symbols: the Ndx column becomes the section name (UND/ABS/COM stay).
* relocations: the Info column (symbol index << 32 | type) is dropped -- the type name, the
  symbol's value and name and the addend remain; the rela section's file offset is dropped.
* groups: member indices become member names.
"""

from __future__ import annotations

import difflib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple, Union

_SEC_HEAD = re.compile(r"^\s*\[\s*(\d+)\]\s(.*)$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
# Ndx is a number, UND/ABS/COM, or an OS/processor-specific index such as "OS [0xff20]".
_SYM_LINE = re.compile(r"^\s*(\d+):\s+([0-9a-f]+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+"
                       r"(OS \[0x[0-9a-f]+\]|PRC\[0x[0-9a-f]+\]|\S+)\s?(.*)$")
_RELA_HEAD = re.compile(r"^Relocation section '(.+)' at offset 0x[0-9a-f]+ contains (\d+) entr")
_RELA_LINE = re.compile(r"^([0-9a-f]{16})\s+[0-9a-f]{16}\s+(\S+)\s*(.*)$")
_GROUP_HEAD = re.compile(r"^(\S+ )?group section \[\s*(\d+)\] `(.+)' \[(.*)\] contains (\d+) sections")
_GROUP_MEMBER = re.compile(r"^\s+\[\s*(\d+)\]\s+(\S+)")


class ReadelfError(AssertionError):
    """readelf failed or printed a warning: the object is not clean."""


def readelf(path: Union[str, Path], *options: str) -> str:
    """readelf's output; any warning or error on stderr is a failure."""
    proc = subprocess.run(["readelf", *options, "-W", str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or proc.stderr.strip():
        raise ReadelfError(f"readelf {' '.join(options)} {path} (exit {proc.returncode}): {proc.stderr.strip()[:2000]}")
    return proc.stdout


@dataclass
class RawSection:
    index: int
    name: str
    type: str
    addr: str
    size: str
    entsize: str
    flags: str
    link: int
    info: int
    align: str


def parse_sections(text: str) -> List[RawSection]:
    """``readelf -S -W`` rows.  The Flg column may be empty, so parse around the address."""
    rows = []
    for line in text.splitlines():
        match = _SEC_HEAD.match(line)
        if not match:
            continue
        tokens = match.group(2).split()
        at = next(i for i in range(1, len(tokens)) if _HEX16.match(tokens[i]))
        # A type name may be several words ("SYMTAB SECTION INDICES"); names have no spaces.
        name_end = 0 if match.group(1) == "0" else 1
        name = " ".join(tokens[:name_end])
        sh_type = " ".join(tokens[name_end:at])
        addr, _off, size, entsize = tokens[at:at + 4]
        rest = tokens[at + 4:]
        flags = rest[0] if len(rest) == 4 else ""
        link, info, align = rest[-3:]
        rows.append(RawSection(int(match.group(1)), name, sh_type, addr, size, entsize, flags,
                               int(link), int(info), align))
    return rows


def parse_symbols(text: str) -> List[Tuple[str, ...]]:
    """``readelf -s -W`` rows of .symtab: (num, value, size, type, bind, vis, ndx, name)."""
    rows = []
    in_symtab = False
    for line in text.splitlines():
        if line.startswith("Symbol table "):
            in_symtab = "'.symtab'" in line
            continue
        match = _SYM_LINE.match(line)
        if in_symtab and match:
            rows.append(match.groups())
    return rows


@dataclass
class ElfView:
    sections: List[Tuple]
    symbols: List[Tuple]
    relocations: List[Tuple]
    groups: List[Tuple]

    def lines(self) -> List[str]:
        out = [f"S {row}" for row in self.sections]
        out += [f"Y {row}" for row in self.symbols]
        out += [f"R {row}" for row in self.relocations]
        out += [f"G {row}" for row in self.groups]
        return out


def _section_key(sec: RawSection, by_index: Dict[int, RawSection], symbols: List[Tuple[str, ...]]) -> Tuple:
    size = None if sec.type == "STRTAB" else sec.size
    link = by_index[sec.link].name if sec.link else ""
    if sec.type == "RELA":
        info: object = by_index[sec.info].name
    elif sec.type == "GROUP":
        info = symbols[sec.info][7]
    else:
        info = sec.info
    return (sec.name, sec.type, sec.addr, size, sec.entsize, sec.flags, link, info, sec.align)


def _relocations(text: str) -> List[Tuple]:
    rows: List[Tuple] = []
    current = ""
    for line in text.splitlines():
        head = _RELA_HEAD.match(line)
        if head:
            current = head.group(1)
            rows.append(("section", current, int(head.group(2))))
            continue
        entry = _RELA_LINE.match(line)
        if entry and current:
            rows.append((current, entry.group(1), entry.group(2), entry.group(3).strip()))
    return rows


def _groups(text: str) -> List[Tuple]:
    rows: List[Tuple] = []
    for line in text.splitlines():
        head = _GROUP_HEAD.match(line)
        if head:
            rows.append(((head.group(1) or "").strip(), head.group(3), head.group(4), int(head.group(5)), []))
            continue
        member = _GROUP_MEMBER.match(line)
        if member and rows:
            rows[-1][4].append(member.group(2))
    return [row[:4] + (tuple(row[4]),) for row in rows]


def elf_view(path: Union[str, Path]) -> ElfView:
    """The index-free view of ``path`` (see the module docstring)."""
    raw_sections = parse_sections(readelf(path, "-S"))
    by_index = {sec.index: sec for sec in raw_sections}
    symbols = parse_symbols(readelf(path, "-s"))
    sections = [_section_key(sec, by_index, symbols) for sec in raw_sections
                if sec.index and sec.type != "SYMTAB SECTION INDICES"]
    syms = []
    for num, value, size, typ, bind, vis, ndx, name in symbols:
        where = by_index[int(ndx)].name if ndx.isdigit() else ndx
        syms.append((value, size, typ, bind, vis, where, name))
    return ElfView(sections, syms, _relocations(readelf(path, "-r")), _groups(readelf(path, "-g")))


def view_diff(a: ElfView, b: ElfView, limit: int = 60) -> str:
    """A unified diff of two views ('' when equivalent), cut to ``limit`` lines."""
    diff = list(difflib.unified_diff(a.lines(), b.lines(), "original", "rewritten", lineterm="", n=1))
    if len(diff) > limit:
        diff = diff[:limit] + [f"... {len(diff) - limit} more lines"]
    return "\n".join(diff)
