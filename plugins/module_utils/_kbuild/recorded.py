# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""kbuild's recorded compile command of an object, run without make once it is proven to give kbuild's bytes.

Compiling one object through ``make`` in a prepared tree costs about 1.3 s on 2 cores, of which
the compiler and objtool take 0.45 s: the rest is make evaluating the top Makefile (its compiler
probes) and walking the ``prepare`` targets, all up to date in a stamped tree.  kbuild records the
exact command it ran for an object in ``.<object>.cmd`` (``cmd_``/``savedcmd_<object> := ...``),
and that command line depends on the config, the flags, the compiler and the object's name, not
on the source's content: the same key as the unpatched-object cache (``objcache.entry_key``).

The command is trusted for a key only after a proof: run with its output moved to a scratch
file on the unpatched source, it must give exactly the bytes kbuild gave for that source (the
cached or just-compiled unpatched object).  A kbuild rule that changes the object after that
command (an older kernel's ``record_mcount`` or modversions step) fails the proof, and the
object keeps going through make.  The verdict is kept beside the cache entry, so the proof runs
once per key.  Only a patch that changes nothing but ``.c`` files compiles its patched side this
way: a changed header may change what ``prepare`` generates (``asm-offsets.h``), which only make
would redo.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Dict, List, Optional

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.cachefile import read_keyed_json, write_keyed_json
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prepared import PreparedTree, tree_lock
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError, StepLog, run_logged

# A dot name: the cache entries beside it (objcache) are the directories without one.
VERDICT_NAME = ".recorded-command.json"
# kbuild writes ``$`` as ``$$`` and ``#`` as ``$(pound)`` in a .cmd file (it is a Makefile fragment).
_MAKE_ESCAPES = (("$(pound)", "#"), ("$$", "$"))
# The section-name prefix of an exported symbol's entry (``__ksymtab``, ``__ksymtab_gpl``, ...).
_EXPORTS = b"__ksymtab"


def recorded_command(tree: PreparedTree, relobj: str) -> Optional[str]:
    """The command kbuild last ran to make ``relobj`` in ``tree``, as the shell runs it; None if none."""
    obj = Path(relobj)
    prefixes = (f"cmd_{relobj} := ", f"savedcmd_{relobj} := ")
    try:
        with open(tree.root / obj.parent / f".{obj.name}.cmd", encoding="utf-8", errors="replace") as fh:
            first = fh.readline().rstrip("\n")
    except OSError:
        return None
    command = next((first[len(p):] for p in prefixes if first.startswith(p)), None)
    if command is None:
        return None
    for escaped, plain in _MAKE_ESCAPES:
        command = command.replace(escaped, "\0" if plain == "$" else plain)
    if "$" in command:
        return None  # a make expansion we do not evaluate
    return command.replace("\0", "$")


def retarget(command: str, relobj: str, dest: Path) -> Optional[str]:
    """``command`` writing its object to ``dest`` (and gcc's dependency file beside it), not in the tree.

    The object's name is replaced where it is a whole word of the command (``-o``, objtool's
    argument); None when it is not there, or not as kbuild writes it.
    """
    obj = Path(relobj)
    depfile = f"-Wp,-MMD,{obj.parent}/.{obj.name}.d"
    word = re.compile(r"(?<=\s)%s(?=\s|$)" % re.escape(relobj))
    if f" {depfile} " not in command or f" -o {relobj} " not in command:
        return None
    moved = command.replace(f" {depfile} ", f" -Wp,-MMD,{shlex.quote(str(dest.parent / f'.{dest.name}.d'))} ")
    return word.sub(lambda _m: shlex.quote(str(dest)), moved)


def proven_command(entries: Path, command: Optional[str]) -> Optional[bool]:
    """The verdict kept in ``entries`` for ``command``: True/False, None when it was never tried."""
    kept = read_keyed_json(entries / VERDICT_NAME, {"command": command})
    return None if kept is None else kept.get("reproduces") is True


def run_recorded(tree: PreparedTree, command: str, relobj: str, dest: Path, log: StepLog) -> None:
    """Run ``relobj``'s recorded command in the tree, its object going to ``dest``."""
    moved = retarget(command, relobj, dest)
    if moved is None:
        raise KbuildError(f"internal error: the recorded command of {relobj} cannot be moved to {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    run_logged(log, ["sh", "-c", moved], cwd=tree.root, what=f"compiling {relobj} (kbuild's recorded command)")
    if not dest.is_file():
        raise KbuildError(f"kbuild's recorded command for {relobj} succeeded but wrote no {dest}")
    (dest.parent / f".{dest.name}.d").unlink(missing_ok=True)


def prove(tree: PreparedTree, entries: Path, relobj: str, reference: Path, scratch: Path) -> Optional[str]:
    """The recorded command of ``relobj`` if it reproduces ``reference`` (kbuild's object of the tree's
    current sources), proven now or earlier for this cache key (``entries``); else None."""
    command = recorded_command(tree, relobj)
    if command is None or retarget(command, relobj, scratch) is None:
        return None
    verdict = proven_command(entries, command)
    if verdict is None:
        dest = scratch / relobj
        with tree.log.step("prove-recorded-command", relobj) as res:
            try:
                run_recorded(tree, command, relobj, dest, tree.log)
                verdict = dest.read_bytes() == reference.read_bytes()
            except KbuildError as exc:
                verdict, res.detail = False, f"{relobj}: it failed outside make ({str(exc).splitlines()[0]})"
            res.detail = res.detail or (f"{relobj}: {'the same bytes as kbuild' if verdict else 'other bytes than kbuild'}"
                                        f"{'' if verdict else ': make keeps compiling it'}")
            write_keyed_json(entries / VERDICT_NAME, {"command": command},
                             {"reproduces": verdict, "detail": res.detail})
    return command if verdict else None


def build_recorded(tree: PreparedTree, commands: Dict[str, str], out_dir: Path, unpatched_dir: Path) -> List[str]:
    """Compile each object of ``commands`` (proven by ``prove``) into ``out_dir``; return those left to make.

    An object that exports a symbol its unpatched build did not is left to make: on some kernels
    kbuild's rule rewrites exporting objects after the command (modversions), which the proof on
    the unpatched source could not have seen.
    """
    left: List[str] = []
    with tree_lock(tree.state_dir), tree.log.step("build-recorded", " ".join(sorted(commands))) as res:
        for rel, command in sorted(commands.items()):
            dest = Path(out_dir) / rel
            run_recorded(tree, command, rel, dest, tree.log)
            if _EXPORTS in dest.read_bytes() and _EXPORTS not in (Path(unpatched_dir) / rel).read_bytes():
                dest.unlink()
                left.append(rel)
        exporting = f"; exports, left to make: {' '.join(left)}" if left else ""
        res.detail = f"{' '.join(sorted(commands))} -> {out_dir}{exporting}"
    return left
