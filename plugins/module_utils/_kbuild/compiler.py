# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Refuse to build a live patch with a compiler other than the one that built the kernel.

A different GCC lays out and inlines functions differently, so the "original"
objects we compile would not match the running kernel and the diff would patch
the wrong code.  The kernel's compiler is read from vmlinux's ``.comment``
(``GCC: (Debian 12.2.0-14+deb12u1) 12.2.0``).  The host compiler's identity is
taken the same way — from the ``.comment`` of a tiny object it compiles — because
``gcc --version`` wording differs between distributions while ``.comment`` is
exactly what the compiler stamps into every object; ``gcc --version`` is still
reported for the human reading the message.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.elfcomment import comment_strings
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError


class CompilerMismatchError(KbuildError):
    """The host compiler differs from the kernel's and the check was not skipped."""


@dataclass(frozen=True)
class CompilerCheck:
    """Outcome of ``check_compiler``: both identities and whether they matched."""

    kernel: str
    host: str
    host_version_line: str
    matches: bool
    skipped: bool


def compiler_identity(strings: List[str]) -> Optional[str]:
    """The compiler entry among ``.comment`` strings (GCC or clang), or None."""
    for text in strings:
        if text.startswith("GCC:") or "clang version" in text:
            return text.strip()
    return None


def kernel_compiler(vmlinux: Path) -> str:
    """The compiler that built ``vmlinux`` (or a module), from its ``.comment``."""
    found = compiler_identity(comment_strings(Path(vmlinux)))
    if found is None:
        raise KbuildError(f"{vmlinux} has a .comment section but no compiler identification in it")
    return found


def host_compiler(gcc: str = "gcc") -> str:
    """The ``.comment`` identity of ``gcc`` on this host, from an object it compiles."""
    with tempfile.TemporaryDirectory(prefix="kpatch-cc-") as tmp:
        src, obj = os.path.join(tmp, "probe.c"), os.path.join(tmp, "probe.o")
        with open(src, "w") as fh:
            fh.write("int kpatch_probe(void) { return 0; }\n")
        try:
            proc = subprocess.run([gcc, "-c", "-o", obj, src], capture_output=True, text=True, check=False)
        except FileNotFoundError as exc:
            raise KbuildError(f"compiler {gcc!r} not found: install the compiler that built the kernel") from exc
        if proc.returncode != 0:
            raise KbuildError(f"{gcc} cannot compile a trivial file: {proc.stderr.strip()}")
        found = compiler_identity(comment_strings(Path(obj)))
    if found is None:
        raise KbuildError(f"objects compiled by {gcc} carry no compiler identification in .comment")
    return found


def host_version_line(gcc: str = "gcc") -> str:
    """First line of ``gcc --version`` (for messages)."""
    try:
        proc = subprocess.run([gcc, "--version"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return f"{gcc}: not found"
    return proc.stdout.splitlines()[0] if proc.stdout else proc.stderr.strip()


def check_compiler(vmlinux: Path, gcc: str = "gcc", skip_compiler_check: bool = False) -> CompilerCheck:
    """Compare the kernel's and the host's compiler; raise CompilerMismatchError unless skipped."""
    kernel = kernel_compiler(vmlinux)
    host = host_compiler(gcc)
    result = CompilerCheck(kernel=kernel, host=host, host_version_line=host_version_line(gcc),
                           matches=kernel == host, skipped=skip_compiler_check)
    if not result.matches and not skip_compiler_check:
        raise CompilerMismatchError(
            f"compiler mismatch: the kernel ({vmlinux}) was built by '{kernel}' but '{gcc}' is '{host}' "
            f"({result.host_version_line}). Install the exact compiler that built the kernel (recommended); "
            "skip_compiler_check=true builds anyway, at the risk of a patch that does not match the running code")
    return result
