# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""The kbuild Makefile reader: logical lines, and what Makefiles add to kernel object compiles.

``logical_lines`` joins continuation lines the way make does, for every reader of kbuild
Makefiles (the object lists of ``objects.py``, the flags here).  ``makefile_flags`` finds the
headers forced into compiles (``-include``/``-imacros``) and the ``-I`` directories that open a
restricted area of the tree, which decide which files a patched header can reach.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

_INCLUDE_DIR_RE = re.compile(r"(?:^|\s)-I\s*(\S+)")
_FORCED_RE = re.compile(r"(?:^|\s)-(?:include|imacros)\s+(\S+)")
_ASSIGN_LHS_RE = re.compile(r"^\s*(?:[^:=#\s]+\s*:\s*)?(?:export\s+|override\s+)?([A-Za-z0-9_.$()/-]+)\s*(?::=|\+=|\?=|=)")


@dataclass
class MakefileFlags:
    """What the Makefiles add to compiles: forced headers (by scope) and opened restricted directories."""

    forced: List[Tuple[str, str]] = field(default_factory=list)
    forced_unresolved: List[str] = field(default_factory=list)
    open_dirs: Set[str] = field(default_factory=set)  # restricted directories on a kernel compile's -I
    open_all: str = ""  # an -I argument we could not place (then no area is restricted), with where


# Variables whose -I/-include reach kernel object compiles (kbuild's per-directory and global flags).
_KBUILD_FLAG_VARS = re.compile(r"^(?:subdir-)?(?:ccflags|asflags|cppflags)-|^(?:CFLAGS|AFLAGS|CPPFLAGS)_|"
                               r"^(?:KBUILD_(?:C|A|CPP)FLAGS|LINUXINCLUDE|USERINCLUDE|NOSTDINC_FLAGS|"
                               r"EXTRA_(?:C|A|CPP)FLAGS|_?[ac]_flags|cpp_flags)\b")
_VAR_REF_RE = re.compile(r"\$[({]([A-Za-z_][A-Za-z0-9_-]*)[)}]")


def logical_lines(text: str) -> List[str]:
    """A Makefile's lines with backslash continuations joined (as make reads them)."""
    return re.sub(r"\\\n", " ", text).splitlines()


def makefile_flags(root: Path, arch: Optional[str], makefiles: Sequence[str],
                   area: Callable[[str], str]) -> MakefileFlags:
    """What kbuild Makefiles add to kernel object compiles: forced headers, -I into restricted areas.

    Only kbuild's flag variables count (``ccflags-y``, ``CFLAGS_foo.o``, ``KBUILD_CFLAGS``, ...),
    expanded through the Makefile's own variables and, failing that, through variables any
    kernel Makefile defines (``FULL_AMD_PATH``).  ``-include``/``-imacros`` in the top Makefile
    and ``scripts/Makefile.*`` apply to every object (scope ``""``); elsewhere to the Makefile's
    directory and below.  Makefiles of other architectures and of host programs are skipped.
    """
    out = MakefileFlags()
    texts: Dict[str, str] = {}
    for rel in makefiles:
        directory = os.path.dirname(rel)
        if rel not in texts and (not area(rel) or directory == "scripts"):
            texts[rel] = (root / rel).read_text(errors="replace")
    global_vars: Dict[str, List[str]] = {}
    for rel, text in texts.items():
        src = _src_dir(rel)
        for name, value in _make_vars(text).items():
            global_vars.setdefault(name, []).append(value.replace("$(src)", src).replace("$(obj)", src))
    for rel, text in sorted(texts.items()):
        if not re.search(r"-I|-include|-imacros", text):
            continue
        directory, src = os.path.dirname(rel), _src_dir(rel)
        # The top Makefile includes scripts/Makefile.* and arch/<arch>/Makefile*: they apply everywhere.
        scope = "" if directory in ("", ".", "scripts") or directory == f"arch/{arch}" else directory
        local = _make_vars(text)
        for line in logical_lines(text):
            m = _ASSIGN_LHS_RE.match(line.split("#", 1)[0])
            if line.startswith("\t") or not m or m.group(1).startswith(("cmd_", "quiet_cmd_")):
                continue  # recipes and commands (a header test compiling to /dev/null) build no object
            rhs = _expand(line.split("#", 1)[0][m.end():], local, global_vars)
            for token in _FORCED_RE.findall(rhs):
                name = re.sub(r"^(\$\([a-z]+\)/)+", "", token.strip("'\""))
                if "$" in name:
                    out.forced_unresolved.append(scope)
                elif (scope, name) not in out.forced:
                    out.forced.append((scope, name))
            if not _KBUILD_FLAG_VARS.search(m.group(1)):
                continue
            for token in _INCLUDE_DIR_RE.findall(rhs):
                for where in _make_paths(token, src, arch, global_vars):
                    if where is None:
                        out.open_all = out.open_all or f"-I{token} in {rel}"
                    elif area(where + "/"):
                        out.open_dirs.add(where)
    return out


def _src_dir(rel: str) -> str:
    """What ``$(src)`` means in a Makefile: its directory; in ``scripts/Makefile.*``, any kernel directory."""
    directory = os.path.dirname(rel)
    return "." if directory in ("", "scripts") else directory


def _make_vars(text: str) -> Dict[str, str]:
    """``NAME = value`` assignments of one Makefile, ``+=`` appended (conditionals ignored: all branches)."""
    out: Dict[str, str] = {}
    for line in logical_lines(text):
        m = re.match(r"^\s*(?:export\s+|override\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*(:=|::=|\?=|\+=|=)(.*)$",
                     line.split("#", 1)[0])
        if m:
            name, op, value = m.group(1), m.group(2), m.group(3).strip()
            out[name] = f"{out[name]} {value}" if op == "+=" and name in out else value
    return out


def _expand(text: str, local: Dict[str, str], global_vars: Dict[str, List[str]]) -> str:
    """Substitute variables (a few levels deep): the Makefile's own, else every kernel Makefile's definitions."""
    builtin = ("srctree", "objtree", "src", "obj", "SRCARCH", "ARCH", "SUBARCH", "HEADER_ARCH")
    for _depth in range(4):
        new = _VAR_REF_RE.sub(lambda m: m.group(0) if m.group(1) in builtin else
                              local.get(m.group(1), " ".join(global_vars.get(m.group(1), [m.group(0)]))), text)
        if new == text:
            break
        text = new
    return text


def _make_paths(token: str, src: str, arch: Optional[str], global_vars: Dict[str, List[str]]) -> List[Optional[str]]:
    """Every tree-relative directory an ``-I`` argument may name ("" outside the tree; None = unknown)."""
    token = token.strip("'\"")
    known = {"srctree": ".", "objtree": ".", "src": src, "obj": src,
             "SRCARCH": arch, "ARCH": arch, "SUBARCH": arch, "HEADER_ARCH": arch}
    candidates = [token]
    for _depth in range(4):
        expanded: List[str] = []
        for cand in candidates:
            m = _VAR_REF_RE.search(cand)
            if not m:
                expanded.append(cand)
                continue
            name = m.group(1)
            values = [known[name]] if name in known else global_vars.get(name, [])
            if not values or None in values:
                return [None]
            expanded.extend(cand[:m.start()] + v + cand[m.end():] for v in values)  # type: ignore[operator]
        candidates = expanded[:64]
    out: List[Optional[str]] = []
    for cand in candidates:
        if "$" in cand or " " in cand.strip():
            out.append(None)
        elif os.path.isabs(cand):
            out.append("")
        else:
            path = os.path.normpath(cand)
            out.append("" if path.startswith("..") else path)
    return out
