# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Host tools a prepared tree takes from the release's headers instead of building them.

``make modules_prepare`` builds two host programs from ``tools/``: objtool (run on every object
at compile time) and, with ``CONFIG_DEBUG_INFO_BTF``, resolve_btfids with its own copy of libbpf.
Measured on Debian 6.1 (2 cores), those two are four fifths of ``modules_prepare``.

* objtool: the distro ships the one its kernel was built with, beside the headers
  (``<headers>/tools/objtool/objtool``; Debian's 6.12+ packages add a dispatcher that runs
  ``objtool.real-<arch>`` from the same directory).  When the headers come from the same kernel
  version as the source, that binary is the program ``modules_prepare`` would compile (objects
  built with it are byte-identical, debug info aside), so it is copied into the tree and make is
  told (``-o tools/objtool``) not to rebuild it.
* resolve_btfids: used only when vmlinux or a module is linked.  A prepared tree compiles single
  objects; the patch module is linked against the headers, never in this tree.  Only a full
  build of the tree (``full_build``) needs it, and that one builds it (``whole_kernel``).

Anything else — no objtool beside the headers, headers of another version — and the tree builds
its tools as before.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.cachefile import file_key

OBJTOOL_TARGET = "tools/objtool"
RESOLVE_BTFIDS_TARGET = "tools/bpf/resolve_btfids"
_INCLUDE_RE = re.compile(r"^include\s+(\S+)\s*$", re.M)


@dataclass(frozen=True)
class PrebuiltTools:
    """The headers' objtool files (name → path) and one digest of their identities (``file_key``)."""

    objtool: Dict[str, Path]
    digest: str

    def install(self, root: Path) -> None:
        """Copy the files into ``root/tools/objtool`` (new files: nothing of the source is overwritten)."""
        dest = root / OBJTOOL_TARGET
        dest.mkdir(parents=True, exist_ok=True)
        for name, path in sorted(self.objtool.items()):
            tmp = dest / f".{name}.tmp"
            shutil.copyfile(path, tmp)
            os.chmod(tmp, 0o755)
            os.replace(tmp, dest / name)


def make_skips(prebuilt: bool, whole_kernel: bool = False) -> List[str]:
    """``make -o`` options: the tool targets a prepared tree must not (re)build."""
    targets: Tuple[str, ...] = ()
    if prebuilt:
        targets += (OBJTOOL_TARGET,)
    if prebuilt and not whole_kernel:
        targets += (RESOLVE_BTFIDS_TARGET,)
    return [arg for target in targets for arg in ("-o", target)]


def headers_source_dir(headers: Path) -> Path:
    """The directory whose top Makefile carries the version: Debian's per-flavour headers
    Makefile only includes the common headers' one."""
    makefile = headers / "Makefile"
    try:
        text = makefile.read_text(errors="replace")
    except OSError:
        return headers
    if re.search(r"^VERSION\s*=", text, re.M):
        return headers
    for included in _INCLUDE_RE.findall(text):
        path = Path(included)
        if path.name == "Makefile" and path.is_file():
            return path.parent
    return headers


def find_prebuilt_tools(headers: Optional[Path], source_version: str,
                        headers_version: Optional[str]) -> Tuple[Optional[PrebuiltTools], str]:
    """The headers' objtool when the headers are of ``source_version``; else None and the reason.

    ``headers_version`` is the Makefile version of ``headers_source_dir(headers)`` (None when
    it could not be read).
    """
    if headers is None:
        return None, "no headers given"
    tool_dir = Path(headers) / OBJTOOL_TARGET
    main = tool_dir / "objtool"
    if not (main.is_file() and os.access(main, os.X_OK)):
        return None, f"no objtool in {tool_dir}"
    if headers_version != source_version:
        return None, f"the headers are of kernel {headers_version or 'unknown'}, the source is {source_version}"
    files = {p.name: p.resolve() for p in sorted(tool_dir.iterdir())
             if p.name == "objtool" or p.name.startswith("objtool.real-")}
    # The files' identity, not their bytes: every prepare_tree asks, and a package upgrade
    # changes the size or mtime (the same rule as the other caches beside the build).
    digest = hashlib.sha256()
    for name, path in sorted(files.items()):
        digest.update(name.encode() + b"\0" + file_key(path).encode() + b"\0")
    return PrebuiltTools(objtool=files, digest=digest.hexdigest()), f"objtool from {tool_dir}"
