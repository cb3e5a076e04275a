# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Out-of-tree modules: live patch a module built outside the kernel tree (a vendor driver, ZFS ...).

The same fast path as for the kernel: the module's source directory is copied into the build's
work directory (the user's copy is never written), and only the objects the patches change are
compiled, before and after applying them, with the module's own Kbuild against the release's
headers (``make -C <headers> M=<copy> foo.o``, as the module's own build runs).  The built
``.ko`` that the targets load is the parent: the patched functions and the symbols they use are
looked up in its symbol table, and livepatch applies the patch whenever that module is loaded,
before or after the patch module.  The patch paths are relative to the module's source directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prepared import PreparedTree
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError, StepLog

# Build products of a module directory: not sources, and not part of its identity.
_BUILD_PRODUCTS = (".o", ".ko", ".mod", ".mod.c", ".cmd", ".symvers", ".order", ".a", ".d", ".tmp")


@dataclass(frozen=True)
class OotModule:
    """An out-of-tree module: the ``.ko`` the targets load and the directory it was built from."""

    ko: Path
    source: Path

    @property
    def name(self) -> str:
        """The module's name as the kernel knows it (``.modinfo`` ``name=``, ``-`` as ``_``)."""
        from ansible_collections.kpatch.livepatch.plugins.module_utils._target.modinfo import (
            ModinfoError,
            read_modinfo,
        )

        try:
            return read_modinfo(str(self.ko)).name.replace("-", "_")
        except ModinfoError as exc:
            raise KbuildError(f"oot_module {self.ko}: {exc}") from exc


def check_oot_inputs(module: OotModule) -> None:
    """The module file and a kbuild source directory exist, and the module names itself."""
    if not Path(module.ko).is_file():
        raise KbuildError(f"oot_module {module.ko} does not exist (the built .ko of the out-of-tree module)")
    if not any((Path(module.source) / name).is_file() for name in ("Kbuild", "Makefile")):
        raise KbuildError(f"oot_module_src {module.source} has no Kbuild or Makefile: it must be the directory "
                          "the module is built from (make -C <headers> M=<dir>)")
    if not module.name:
        raise KbuildError(f"oot_module {module.ko} has no module name in its .modinfo")


def _source_files(source: Path) -> List[str]:
    found = []
    for dirpath, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, source)
        found.extend(os.path.normpath(os.path.join(rel_dir, f)) for f in sorted(files)
                     if not f.startswith(".") and not f.endswith(_BUILD_PRODUCTS))
    return found


def oot_identity(module: OotModule) -> str:
    """Fingerprint of the module and its sources (a module directory is small: every file is hashed)."""
    digest = hashlib.sha256(Path(module.ko).read_bytes())
    for rel in _source_files(Path(module.source)):
        digest.update(rel.encode() + b"\0" + (Path(module.source) / rel).read_bytes())
    return digest.hexdigest()


def oot_source_tree(module: OotModule, work: Path, release: str, headers: Path, log: StepLog) -> PreparedTree:
    """A private copy of the module's source, built against ``headers`` (the pristine copy is the user's)."""
    state = Path(work) / "oot"
    root = state / "src"
    with log.step("copy-oot-source", f"{module.source} -> {root}"):
        shutil.copytree(module.source, root, symlinks=True)
    return PreparedTree(root=root, source=Path(module.source), release=release, make_vars=(), config_sha256="",
                        source_identity="", reused=False, seconds=0.0, log=log, kbuild_dir=Path(headers))


def oot_objects(files: List[str]) -> Tuple[List[str], Dict[str, str]]:
    """Objects to rebuild for the changed files of an out-of-tree module, and the files refused (why)."""
    objects, refused = [], {}
    for rel in files:
        if rel.endswith(".c"):
            objects.append(rel[:-2] + ".o")
        elif rel.endswith(".h"):
            refused[rel] = ("a header of an out-of-tree module: change the .c files that need the change "
                            "(headers are mapped to objects only in the kernel tree)")
        else:
            refused[rel] = "not a C source: build-system and data files cannot be live-patched"
    return sorted(objects), refused
