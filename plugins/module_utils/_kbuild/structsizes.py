# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Sizes of the structs behind the kernel's special sections, read from vmlinux's DWARF.

The diff engine splits ``.altinstructions``, ``__ex_table``, ``__bug_table`` ...
into entries; the entry size is the size of a C struct that changes between
kernel versions and configs, so it is measured on the very vmlinux being patched.

Two readers: pyelftools walking the top-level DIEs of each compile unit and
stopping as soon as every wanted struct was seen (about 100 compile units, a
few seconds), and ``pahole -F dwarf -C a,b,c`` (slower, used when pyelftools is
missing).  Which structs are required depends on the config (no
``paravirt_patch_site`` without CONFIG_PARAVIRT, no ``pi_entry`` without
CONFIG_PRINTK_INDEX ...); the result is cached per release, keyed by the
vmlinux's size and mtime.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional, Set, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.cachefile import (
    file_key,
    read_keyed_json,
    write_keyed_json,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kconfig import KernelConfig
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError

try:
    from elftools.elf.elffile import ELFFile
    HAS_PYELFTOOLS = True
except ImportError:  # build hosts normally have it; targets never need this module
    ELFFile = None
    HAS_PYELFTOOLS = False


@dataclass(frozen=True)
class SpecialStruct:
    key: str
    struct: str
    config: Optional[str]  # config symbol that makes the section exist; None = always
    # First kernel (major, minor) without the struct; None = still present.
    removed_in: Optional[Tuple[int, int]] = None


SPECIAL_STRUCTS = (
    # 6.8 folded paravirt patching into alternatives: no .parainstructions, no struct.
    SpecialStruct("PARA", "paravirt_patch_site", "CONFIG_PARAVIRT", removed_in=(6, 8)),
    SpecialStruct("EX", "exception_table_entry", None),
    SpecialStruct("BUG", "bug_entry", "CONFIG_GENERIC_BUG"),
    SpecialStruct("ALT", "alt_instr", None),
    SpecialStruct("JUMP", "jump_entry", "CONFIG_JUMP_LABEL"),
    SpecialStruct("ORC", "orc_entry", "CONFIG_UNWINDER_ORC"),
    SpecialStruct("STATIC_CALL", "static_call_site", "CONFIG_HAVE_STATIC_CALL_INLINE"),
    SpecialStruct("PRINTK_INDEX", "pi_entry", "CONFIG_PRINTK_INDEX"),
)
CACHE_FORMAT = 1


def required_structs(config: Optional[Path]) -> Dict[str, str]:
    """key -> struct name of the structs this config's kernel must contain (all, without a config)."""
    if config is None:
        return {s.key: s.struct for s in SPECIAL_STRUCTS}
    kconfig = KernelConfig.read(Path(config))
    version = kconfig.kernel_version
    return {s.key: s.struct for s in SPECIAL_STRUCTS
            if (s.config is None or kconfig.is_set(s.config))
            and (s.removed_in is None or version is None or version < s.removed_in)}


def sizes_with_pyelftools(vmlinux: Path, names: Iterable[str]) -> Dict[str, int]:
    """struct name -> byte size for the complete definitions of ``names`` (stops once all are found)."""
    if not HAS_PYELFTOOLS:
        raise KbuildError("pyelftools is not installed on the build host (pip install pyelftools)")
    wanted: Set[bytes] = {n.encode() for n in names}
    found: Dict[str, int] = {}
    with open(vmlinux, "rb") as fh:
        elf = ELFFile(fh)
        if not elf.has_dwarf_info():
            raise KbuildError(f"{vmlinux} has no DWARF debug info: use the -dbg/-debuginfo vmlinux")
        dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
        for cu in dwarf.iter_CUs():
            for die in cu.get_top_DIE().iter_children():
                if die.tag != "DW_TAG_structure_type":
                    continue
                name, size = die.attributes.get("DW_AT_name"), die.attributes.get("DW_AT_byte_size")
                if name and size and name.value in wanted and "DW_AT_declaration" not in die.attributes:
                    found.setdefault(name.value.decode(), int(size.value))
            if len(found) == len(wanted):
                break
    return found


_PAHOLE_STRUCT = re.compile(r"^struct (\w+) \{$")
_PAHOLE_SIZE = re.compile(r"/\* size: (\d+),")


def sizes_with_pahole(vmlinux: Path, names: Iterable[str]) -> Dict[str, int]:
    """Same as ``sizes_with_pyelftools`` via ``pahole -F dwarf -C a,b,...``."""
    if shutil.which("pahole") is None:
        raise KbuildError("pahole is not installed (apt-get install dwarves / dnf install dwarves)")
    proc = subprocess.run(["pahole", "-F", "dwarf", "-C", ",".join(names), str(vmlinux)],
                          capture_output=True, text=True, check=False)
    found: Dict[str, int] = {}
    current = None
    for line in proc.stdout.splitlines():
        m = _PAHOLE_STRUCT.match(line)
        if m:
            current = m.group(1)
            continue
        m = _PAHOLE_SIZE.search(line)
        if m and current:
            found.setdefault(current, int(m.group(1)))
            current = None
    if not found and proc.returncode != 0:
        raise KbuildError(f"pahole failed on {vmlinux}: {proc.stderr.strip()[-500:]}")
    return found


def _cache_file(cache_dir: Path, release: str) -> Path:
    return Path(cache_dir) / release / "struct-sizes.json"


def special_struct_sizes(vmlinux: Path, release: str, cache_dir: Path, config: Optional[Path] = None,
                         method: str = "auto") -> Dict[str, int]:
    """``{"ALT": 12, "EX": 12, ...}`` for the structs ``config`` needs, measured on ``vmlinux``.

    ``method``: ``auto`` (pyelftools, else pahole), ``pyelftools`` or ``pahole``.
    A required struct missing from the DWARF is an error naming it.
    """
    if method not in ("auto", "pyelftools", "pahole"):
        raise KbuildError(f"unknown struct size method {method!r}: use auto, pyelftools or pahole")
    vmlinux = Path(vmlinux)
    if not vmlinux.is_file():
        raise KbuildError(f"vmlinux {vmlinux} does not exist (install the kernel's -dbg/-debuginfo package)")
    required = required_structs(config)
    cache = _cache_file(cache_dir, release)
    key: Dict[str, object] = {"format": CACHE_FORMAT, "vmlinux": file_key(vmlinux), "required": sorted(required)}
    cached = read_keyed_json(cache, key)
    if cached is not None and isinstance(cached.get("sizes"), dict):
        return {k: int(v) for k, v in cached["sizes"].items()}  # type: ignore[union-attr]
    if method == "pahole" or (method == "auto" and not HAS_PYELFTOOLS):
        by_name = sizes_with_pahole(vmlinux, required.values())
    else:
        by_name = sizes_with_pyelftools(vmlinux, required.values())
    missing = [f"struct {name} ({k})" for k, name in required.items() if name not in by_name]
    if missing:
        raise KbuildError(f"cannot find {', '.join(missing)} in the DWARF of {vmlinux}; the config enables "
                          "them, so this vmlinux does not match the config or lacks debug info")
    sizes = {k: by_name[name] for k, name in required.items()}
    write_keyed_json(cache, key, {"sizes": sizes})
    return sizes
