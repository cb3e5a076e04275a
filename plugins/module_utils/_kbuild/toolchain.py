# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Which compiler a build uses: the host's, a toolchain root's, or (skipped check) another one.

The kernel's compiler comes from vmlinux's ``.comment``.  When the host's gcc stamps the same
identity, everything runs on the host.  When it does not, a Debian kernel of a known suite gets
a toolchain root with exactly its compiler (``toolroot.py``; an RPM-family kernel one from dnf,
``rpmroot.py``) and every kbuild command of the build runs inside it.  Otherwise the build is refused, unless ``skip_compiler_check`` accepts
the host's compiler (which then builds in a tree of its own).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.compiler import (
    check_compiler, host_compiler, kernel_compiler)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.request import BuildRequest
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import CommandWrapper, StepLog
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.rpmroot import rpm_dist, rpm_recipe
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.toolroot import (
    RootRecipe, ToolRoot, debian_recipe, debian_suite, ensure_toolroot)


@dataclass
class Toolchain:
    """The outcome of the compiler check for one build."""

    other_compiler: Optional[str]  # the host's compiler when it is used though it differs (skip)
    identity: str = ""  # the .comment identity of the compiler that compiles (keys cached trees and objects)
    root: Optional[ToolRoot] = None
    wrapper: Optional[CommandWrapper] = None
    detail: str = ""


def header_binds(headers: Path) -> List[Path]:
    """Directories a headers tree reaches outside itself: its symlinks' targets and included Makefiles.

    Debian's headers link ``scripts`` and ``tools`` into ``/usr/lib/linux-kbuild-X.Y`` and include
    the ``-common`` headers' Makefile by absolute path.
    """
    found = [headers.resolve()]
    for entry in headers.iterdir():
        if entry.is_symlink():
            target = entry.resolve()
            found.append(target.parent if target.is_file() else target)
    makefile = headers / "Makefile"
    if makefile.is_file():
        for line in makefile.read_text(encoding="utf-8", errors="replace").splitlines():
            match = re.match(r"^\s*include\s+(/\S+)", line)
            if match:
                found.append(Path(match.group(1)).parent)
    return found


def build_binds(req: BuildRequest, work: Path) -> List[Path]:
    """Host directories a build's commands read or write, made visible inside a toolchain root."""
    paths: List[Optional[Path]] = [Path(req.cache_dir), work, Path(req.output_dir), Path(req.config).parent,
                                   *(Path(p).parent for p in req.patches)]
    if not req.oot:
        paths.append(Path(req.source_dir))
    else:
        paths += [Path(req.oot_module).parent, Path(req.oot_module_src)]
    for key in (req.signing_key, req.signing_cert):
        if key and str(key).startswith("/"):
            paths.append(Path(key).parent)
    existing = [p for p in paths if p is not None and p.exists()]
    if Path(req.headers).is_dir():
        existing += header_binds(Path(req.headers))
    return existing


def needs_toolchain(argv: Sequence[str], header_dirs: Sequence[Path]) -> bool:
    """Commands that run the kernel's toolchain: ``make`` (gcc, ld, objtool, modpost, pahole run under
    it), kbuild's recorded commands and the headers' own programs (``scripts/sign-file``, built for
    the kernel's suite).

    Everything else (``cp -al`` of the source, ``patch``, downloads) stays on the host: inside
    the root, each bound directory is a mount of its own, and hard links across them fail.
    """
    program = str(argv[0]) if argv else ""
    # ``sh -c`` runs kbuild's recorded compile command of an object (recorded.py), as make would.
    if os.path.basename(program) in ("make", "sh"):
        return True
    if not os.path.isabs(program):
        return False
    return any(candidate.startswith(str(base) + os.sep)
               for candidate in (program, os.path.realpath(program)) for base in header_dirs)


def _wrapper(root: ToolRoot, binds: Sequence[Path], work: Path, headers: Path) -> CommandWrapper:
    # The headers' directories are read once per build, not once per command.
    header_dirs = [headers, *header_binds(headers)] if headers.is_dir() else [headers]

    def wrap(argv: Sequence[str], cwd: Optional[Path]) -> List[str]:
        if not needs_toolchain(argv, header_dirs):
            return list(argv)
        return root.wrap(argv, Path(cwd) if cwd else work, binds)
    return wrap


def uses_toolchain_root(req: BuildRequest) -> bool:
    """A build whose host compiler differs compiles in a toolchain root (rather than skip or refuse)."""
    return req.toolchain_root == "auto" and (debian_suite(req.release) is not None
                                             or rpm_dist(req.release) is not None)


def root_recipe(req: BuildRequest, kernel: str) -> RootRecipe:
    """How the root for this kernel's compiler is made: debootstrap for Debian, dnf for the RPM family."""
    suite = debian_suite(req.release)
    if suite is not None:
        return debian_recipe(suite, kernel, req.toolchain_root_mirror)
    return rpm_recipe(req.release, kernel)


def choose_toolchain(req: BuildRequest, log: StepLog, work: Path) -> Toolchain:
    """Check the compiler; when it differs, make (or reuse) a toolchain root, else refuse or skip."""
    kernel = kernel_compiler(Path(req.vmlinux))
    host = host_compiler()
    if host == kernel:
        return Toolchain(other_compiler=None, identity=host, detail=host)
    if not uses_toolchain_root(req):
        # No root for this kernel: refused with both compilers named, unless the check is skipped.
        check = check_compiler(Path(req.vmlinux), skip_compiler_check=req.skip_compiler_check)
        return Toolchain(other_compiler=check.host, identity=check.host,
                         detail=f"kernel '{check.kernel}', host '{check.host}' (skipped)")
    recipe = root_recipe(req, kernel)
    root, reused = ensure_toolroot(Path(req.cache_dir), recipe, kernel, log)
    return Toolchain(other_compiler=None, identity=kernel, root=root,
                     wrapper=_wrapper(root, build_binds(req, work), work, Path(req.headers)),
                     detail=f"'{kernel}' in the toolchain root {root.path} ({recipe.name}, "
                            f"{'reused' if reused else 'made'}); the host has '{host}'")
