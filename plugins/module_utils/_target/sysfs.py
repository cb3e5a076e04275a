# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Read and drive the livepatch sysfs interface (``/sys/kernel/livepatch``).

Layout (Documentation/ABI/testing/sysfs-kernel-livepatch, kernel/livepatch/core.c):
``<patch>/enabled`` (rw: write 0 disables; writing during a transition reverses it),
``<patch>/transition`` (ro), ``<patch>/force`` (wo, dangerous), ``<patch>/replace`` (ro, only on
kernels that have it, 6.14+), ``<patch>/signal`` (wo, only 4.16..5.0; later kernels signal stalled
tasks themselves every 15 s), ``<patch>/<object>/patched`` (5.x+) and
``<patch>/<object>/<function>,<sympos>/`` directories.  A patch whose transition to disabled has
finished is freed: its directory vanishes while its module may stay loaded until ``rmmod``.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

LIVEPATCH_ROOT = "/sys/kernel/livepatch"
MODULE_ROOT = "/sys/module"


class SysfsError(RuntimeError):
    """A sysfs write was refused; the message names the file and the kernel's reason."""


@dataclass(frozen=True)
class PatchedFunction:
    name: str
    sympos: int


@dataclass(frozen=True)
class PatchedObject:
    name: str  # "vmlinux" or a module name
    patched: Optional[bool]  # None where the kernel has no <object>/patched file
    functions: List[PatchedFunction] = field(default_factory=list)


@dataclass(frozen=True)
class LivePatch:
    """One directory under /sys/kernel/livepatch."""

    name: str
    enabled: bool
    transition: bool
    replace: Optional[bool]  # None where the kernel does not expose it
    objects: List[PatchedObject] = field(default_factory=list)

    @property
    def active(self) -> bool:
        """Enabled and settled: what state ``loaded`` means."""
        return self.enabled and not self.transition

    def as_dict(self) -> Dict[str, object]:
        return {
            "name": self.name,
            "enabled": self.enabled,
            "transition": self.transition,
            "replace": self.replace,
            "objects": [
                {"name": o.name, "patched": o.patched,
                 "functions": [{"name": f.name, "sympos": f.sympos} for f in o.functions]}
                for o in self.objects
            ],
        }


def _read(path: str) -> Optional[str]:
    """The attribute's text, or None when it is gone.

    A patch freed between our open and our read makes the read fail with ENODEV (the kernfs
    node is removed under an open file): found by the enable/disable soak, and as much "gone"
    as ENOENT.
    """
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV):
            return None
        raise


def _read_bool(path: str) -> Optional[bool]:
    value = _read(path)
    return None if value is None else value not in ("0", "N", "n", "")


def livepatch_supported(root: str = LIVEPATCH_ROOT) -> bool:
    """True when the running kernel has CONFIG_LIVEPATCH (the sysfs root exists)."""
    return os.path.isdir(root)


def _read_object(path: str, name: str) -> PatchedObject:
    functions = []
    for entry in sorted(os.listdir(path)):
        func, sep, pos = entry.rpartition(",")
        if sep and pos.isdigit() and os.path.isdir(os.path.join(path, entry)):
            functions.append(PatchedFunction(func, int(pos)))
    return PatchedObject(name=name, patched=_read_bool(os.path.join(path, "patched")),
                         functions=functions)


def read_patch(name: str, root: str = LIVEPATCH_ROOT) -> Optional[LivePatch]:
    """The patch's sysfs state, or None when it has no directory (not loaded, or freed)."""
    base = os.path.join(root, name)
    try:
        entries = sorted(os.listdir(base))
        enabled = _read_bool(os.path.join(base, "enabled"))
        transition = _read_bool(os.path.join(base, "transition"))
        objects = [_read_object(os.path.join(base, e), e) for e in entries
                   if os.path.isdir(os.path.join(base, e))]
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV):
            return None  # freed while we looked: a finished disable
        raise
    if enabled is None:
        return None
    return LivePatch(name=name, enabled=enabled, transition=bool(transition),
                     replace=_read_bool(os.path.join(base, "replace")), objects=objects)


def list_patches(root: str = LIVEPATCH_ROOT) -> List[LivePatch]:
    """Every livepatch the kernel currently knows, sorted by name."""
    if not os.path.isdir(root):
        return []
    patches = (read_patch(name, root) for name in sorted(os.listdir(root)))
    return [p for p in patches if p is not None]


def _write(path: str, value: str) -> None:
    try:
        with open(path, "w", encoding="ascii") as handle:
            handle.write(value)
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        raise SysfsError(f"writing {value!r} to {path} failed: {exc.strerror} ({reason})") from exc


def disable_patch(name: str, root: str = LIVEPATCH_ROOT) -> None:
    """Start disabling (or reverse an in-flight enable of) the patch."""
    _write(os.path.join(root, name, "enabled"), "0")


def force_transition(name: str, root: str = LIVEPATCH_ROOT) -> None:
    """Mark every task as switched.  Dangerous: the module can never be removed afterwards."""
    _write(os.path.join(root, name, "force"), "1")


def signal_via_sysfs(name: str, root: str = LIVEPATCH_ROOT) -> bool:
    """Ask the kernel to signal stalled tasks where it has the attribute; False where it has not."""
    path = os.path.join(root, name, "signal")
    if not os.path.exists(path):
        return False
    _write(path, "1")
    return True


def transition_in_progress(root: str = LIVEPATCH_ROOT) -> Optional[str]:
    """Name of the patch in transition (the kernel allows one at a time), or None."""
    for patch in list_patches(root):
        if patch.transition:
            return patch.name
    return None


@dataclass(frozen=True)
class KernelModule:
    """A loaded module as /sys/module shows it."""

    name: str
    taint: str
    srcversion: Optional[str]
    refcnt: Optional[int]

    @property
    def is_livepatch(self) -> bool:
        return "K" in self.taint


def read_module(name: str, root: str = MODULE_ROOT) -> Optional[KernelModule]:
    """The loaded module ``name`` (built-ins have no ``initstate`` and count as not loaded)."""
    base = os.path.join(root, name)
    if _read(os.path.join(base, "initstate")) is None:
        return None
    refcnt = _read(os.path.join(base, "refcnt"))
    return KernelModule(name=name, taint=_read(os.path.join(base, "taint")) or "",
                        srcversion=_read(os.path.join(base, "srcversion")),
                        refcnt=int(refcnt) if refcnt and refcnt.isdigit() else None)


def loaded_livepatch_modules(root: str = MODULE_ROOT) -> List[KernelModule]:
    """Loaded modules tainted 'K' (livepatch), whether or not their patch is still registered."""
    found = []
    for name in sorted(os.listdir(root)):
        # Not every entry is a module directory (6.12 has a plain file /sys/module/compression).
        if not os.path.isdir(os.path.join(root, name)):
            continue
        module = read_module(name, root)
        if module is not None and module.is_livepatch:
            found.append(module)
    return found
