# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""A kernel ``.config``: read and parsed once, then asked what the build needs to know.

Every question a build asks of the distro's config — can it take live patches, which signature
digest, which special sections its kernel has, whether objtool runs on linked modules, the
``CONFIG_LOCALVERSION`` suffix, the kernel version in its header — is answered here from one
parse, so that the rules live in one place and the file is read once per build.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, Optional, Tuple

_SETTING_RE = re.compile(r"^(CONFIG_\w+)=(.*)$", re.M)
_VERSION_RE = re.compile(r"^# Linux/\S+ (\d+)\.(\d+)\S* Kernel Configuration$", re.M)


def parse_config(text: str) -> Dict[str, str]:
    """``CONFIG_*`` → value for every option a kernel config sets (``# ... is not set`` lines omitted)."""
    return {m.group(1): m.group(2) for m in _SETTING_RE.finditer(text)}


def read_config(tree_root: Path) -> Dict[str, str]:
    """The settings of a build tree's own ``.config`` (after ``olddefconfig``)."""
    return parse_config((Path(tree_root) / ".config").read_text(errors="replace"))


# Configs already read, by (real path, inode, size, mtime): a build asks many questions of one file.
_READ: Dict[Tuple[str, int, int, int], "KernelConfig"] = {}


@dataclass(frozen=True)
class KernelConfig:
    """One kernel config: its text, settings and the digest of its bytes."""

    text: str
    sha256: str
    path: Optional[Path] = None
    values: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, path: Optional[Path] = None) -> "KernelConfig":
        return cls.from_bytes(text.encode("utf-8", "surrogateescape"), path)

    @classmethod
    def from_bytes(cls, data: bytes, path: Optional[Path] = None) -> "KernelConfig":
        text = data.decode("utf-8", "replace")
        return cls(text=text, sha256=hashlib.sha256(data).hexdigest(), path=path, values=parse_config(text))

    @classmethod
    def read(cls, path: Path) -> "KernelConfig":
        """The config at ``path``, parsed once while the file stays the same."""
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in _READ:
            _READ[key] = cls.from_bytes(Path(path).read_bytes(), Path(path))
        return _READ[key]

    def builtin(self) -> FrozenSet[str]:
        """The options set to ``y``."""
        return frozenset(name for name, value in self.values.items() if value == "y")

    def is_set(self, name: str) -> bool:
        """``name`` is ``y`` or ``m``."""
        return self.values.get(name) in ("y", "m")

    def string(self, name: str) -> str:
        """A string option's value without its quotes ('' when unset)."""
        return self.values.get(name, "").strip().strip('"')

    @property
    def localversion(self) -> str:
        return self.string("CONFIG_LOCALVERSION")

    @property
    def signature_hash(self) -> str:
        """The module signature digest (``CONFIG_MODULE_SIG_HASH``), sha256 when not set."""
        return self.string("CONFIG_MODULE_SIG_HASH") or "sha256"

    @property
    def kernel_version(self) -> Optional[Tuple[int, int]]:
        """(major, minor) from the ``# Linux/x86 6.12.107 Kernel Configuration`` header."""
        m = _VERSION_RE.search(self.text)
        return (int(m.group(1)), int(m.group(2))) if m else None

    @property
    def objtool_runs_on_linked_module(self) -> bool:
        """kbuild's ``delay-objtool``: objtool runs once on a multi-object module after linking it."""
        return bool(self.builtin() & {"CONFIG_X86_KERNEL_IBT", "CONFIG_LTO_CLANG"})
