"""Small real trees for the ``_kbuild`` unit tests: a pristine source, its hard-linked copy, diffs.

The files are tiny but everything else is real: ``cp -al`` for the copy, GNU patch for
applying, ``difflib`` unified diffs as a developer's ``diff -u`` would write them.
"""

from __future__ import annotations

import difflib
import subprocess
from pathlib import Path
from typing import Dict

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prepared import PreparedTree
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import StepLog

SOURCE_FILES: Dict[str, str] = {
    "Makefile": "VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 176\nEXTRAVERSION =\n",
    "fs/proc/meminfo.c": "".join(f"static int line{i} = {i};\n" for i in range(40)),
    "fs/proc/Makefile": "obj-y += meminfo.o\n",
    "include/linux/mm.h": "#define MM_H 1\nstruct page;\n",
    "kernel/sched/core.c": "".join(f"int core{i}(void) {{ return {i}; }}\n" for i in range(30)),
}


def make_tree(base: Path) -> PreparedTree:
    """A pristine source under base/src and its hard-linked copy as a prepared tree."""
    src = base / "src"
    for rel, text in SOURCE_FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    state = base / "work" / "6.1.0-test"
    state.mkdir(parents=True)
    subprocess.run(["cp", "-al", str(src), str(state / "tree")], check=True)
    return PreparedTree(root=state / "tree", source=src, release="6.1.0-test", make_vars=("LOCALVERSION=",),
                        config_sha256="", source_identity="", reused=False, seconds=0.0,
                        log=StepLog(base / "build.log"))


def unified_diff(rel: str, old: str, new: str) -> str:
    """``diff -u a/rel b/rel`` text; /dev/null sides for created or deleted files."""
    old_name = f"a/{rel}" if old else "/dev/null"
    new_name = f"b/{rel}" if new else "/dev/null"
    lines = difflib.unified_diff(old.splitlines(True), new.splitlines(True), old_name, new_name)
    return "".join(lines)


def write_patch(path: Path, *diffs: str) -> Path:
    path.write_text("Subject: test patch\n\n" + "".join(diffs))
    return path


def replace_line(rel: str, old_line: str, new_line: str) -> str:
    """Diff that replaces one line of a SOURCE_FILES file."""
    old = SOURCE_FILES[rel]
    assert old_line in old
    return unified_diff(rel, old, old.replace(old_line, new_line))
