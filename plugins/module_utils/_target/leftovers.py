# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""What a run killed mid-install leaves in the install dir, and its removal.

An install writes ``<name>.ko.tmp.<pid>`` and renames it over ``<name>.ko``; a replaced file
is kept aside as ``<name>.ko.prev.<pid>`` until the task ends.  A run killed (SIGKILL, power
loss) between those steps leaves such a file behind.  The boot service never loads one (it
loads ``*.ko`` only, and a rename is atomic, so a ``.ko`` is always whole), but the files
would pile up.  Whoever holds the host lock next removes them: with the lock held no other
run is between those steps, so every such file belongs to a dead run.
"""

from __future__ import annotations

import os
import re
from typing import List

from .modinfo import is_module_name

# The names install_file and InstallJournal give their temporary and kept-aside files.
_LEFTOVER_RE = re.compile(r"^(?P<name>[^/]+)\.ko\.(?:tmp|prev)\.[0-9]+$")


def temp_path(dest: str) -> str:
    """Where an install of ``dest`` writes before its rename (unique to this process)."""
    return f"{dest}.tmp.{os.getpid()}"


def aside_path(dest: str) -> str:
    """Where an install keeps the file it replaces until its task ends."""
    return f"{dest}.prev.{os.getpid()}"


def is_leftover(entry: str) -> bool:
    """True for a temporary or kept-aside file name of an install (never for a ``.ko``)."""
    match = _LEFTOVER_RE.fullmatch(entry)
    return bool(match) and is_module_name(match.group("name"))


def remove_leftovers(install_dir: str) -> List[str]:
    """Remove every install leftover under ``<install_dir>/<release>/``; the paths removed.

    Call only with the host lock held.
    """
    removed: List[str] = []
    if not os.path.isdir(install_dir):
        return removed
    for release in sorted(os.listdir(install_dir)):
        rdir = os.path.join(install_dir, release)
        if release.startswith(".") or not os.path.isdir(rdir):
            continue  # .staging and .rollback hold no install temporaries
        for entry in sorted(os.listdir(rdir)):
            path = os.path.join(rdir, entry)
            if is_leftover(entry) and os.path.isfile(path):
                os.unlink(path)
                removed.append(path)
    return removed
