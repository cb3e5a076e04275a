# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Check that a finished patch module carries the objtool data its kernel relies on.

On x86 the module loader rewrites every return, every retpoline call and (with
call depth tracking) every direct call listed in ``.return_sites``,
``.retpoline_sites`` and ``.call_sites``, and the unwinder needs ORC tables for
every function.  A site missing from those lists is not an error the kernel
reports: the instruction silently keeps its default thunk (a mitigation bypassed,
and on 6.12 one "Unpatched return thunk in use" warning), and stacks through the
module become unreliable, so livepatch transitions stall.  objtool writes the
lists; when it gives up on an object it writes none of them and kbuild still
succeeds.  This check makes that a build failure instead of a module that loads.

Where kbuild runs objtool on the linked module (``delay-objtool``: X86_KERNEL_IBT or
LTO_CLANG kernels), objtool also skips every list a part of the module already carries
("file already has .return_sites, skipping"), leaving the hook's own code out.  The
engine's outputs carry such lists when their original object went through objtool at
compile time (a single-object module such as loop.ko), so ``strip_objtool_output``
removes them first and objtool writes them afresh for the whole module.

``check_undefined_symbols`` closes the engine's multi-object rule: a global that is
neither exported nor in the parent keeps an ordinary relocation because it can only
be defined by another object of the patch module.  Once the module is linked (and its
livepatch relocations converted), any undefined symbol left must be an export from
Module.symvers; otherwise the module could not load, and the build names the symbol
and the object that wanted it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import SHF_ALLOC, STB_WEAK, STT_SECTION
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kconfig import KernelConfig
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError

RETURN_THUNK = "__x86_return_thunk"
INDIRECT_THUNK_PREFIXES = ("__x86_indirect_thunk_", "__x86_indirect_its_thunk_")
# x86 encodings of the instructions whose rel32 field the relocation patches.
JMP_REL32, CALL_REL32 = 0xE9, 0xE8
# -mindirect-branch-cs-prefix (6.0+) puts a CS segment prefix before calls to the r8-r15 thunks
# ("cs call"), so the loader can rewrite them in place; objtool lists the site at the prefix.
CS_PREFIX = 0x2E


# What objtool writes (and refuses to write twice); compiler-made tables (__jump_table, __bug_table,
# .altinstructions, __ex_table, __mcount_loc from -mrecord-mcount) are not among them.
OBJTOOL_SECTIONS = (".orc_unwind", ".orc_unwind_ip", ".return_sites", ".retpoline_sites", ".call_sites",
                    ".ibt_endbr_seal", ".static_call_sites")


class ModuleCheckError(KbuildError):
    """The patch module lacks objtool data its kernel's configuration requires."""


@dataclass
class SiteCheck:
    """What was checked, for the build log."""

    returns: int = 0
    retpolines: int = 0
    orc_entries: int = 0
    problems: List[str] = field(default_factory=list)


def strip_objtool_output(objects: Sequence[Path]) -> List[str]:
    """Remove objtool's lists from engine outputs (in place) so objtool regenerates them; returns what went."""
    from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf

    removed: List[str] = []
    for path in objects:
        present = {s.name for s in read_elf(str(path)).sections}
        names = [n for n in OBJTOOL_SECTIONS if n in present]
        if not names:
            continue
        argv = ["objcopy"] + [f"--remove-section={n}" for n in names]
        argv += [f"--remove-section=.rela{n}" for n in names if f".rela{n}" in present]
        proc = subprocess.run(argv + [str(path)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise KbuildError(f"objcopy could not remove {', '.join(names)} from {path}: {proc.stderr.strip()}")
        removed += [f"{Path(path).name}:{n}" for n in names]
    return removed


def _site_targets(obj, name: str) -> Set[Tuple[int, int]]:
    """(id(section), offset) each entry of a PC-relative site list points at."""
    sec = obj.find_section(name)
    if sec is None or sec.rela is None:
        return set()
    return {(id(r.sym.section), r.sym.value + r.addend) for r in sec.rela.relocations if r.sym.section is not None}


def _thunk_uses(obj, wanted) -> List[Tuple[object, int, str]]:
    """(section, opcode offset, symbol) of every rel32 jump/call in code to a thunk ``wanted`` accepts."""
    uses = []
    for rela in obj.sections:
        base = rela.base
        if not rela.is_rela or base is None or not base.is_text:
            continue
        for rel in rela.relocations:
            insn = rel.offset - 1
            if wanted(rel.sym.name) and 0 <= insn < len(base.data) and base.data[insn] in (JMP_REL32, CALL_REL32):
                uses.append((base, insn, rel.sym.name))
    return uses


def _is_listed(listed: Set[Tuple[int, int]], sec, opcode: int) -> bool:
    """The site list names the instruction: at its opcode, or at a CS prefix right before it."""
    if (id(sec), opcode) in listed:
        return True
    return opcode > 0 and sec.data[opcode - 1] == CS_PREFIX and (id(sec), opcode - 1) in listed


def loader_patches(source_root: Optional[Path]) -> Set[str]:
    """Which site lists this kernel's module loader applies (``apply_returns``, ``apply_retpolines``).

    CONFIG_RETPOLINE predates ``.retpoline_sites`` (5.16) by years, so the config alone would
    demand lists that older kernels (RHEL 8's 4.18) never had; the kernel's own declarations tell.
    Without a source tree both are assumed.
    """
    wanted = {"apply_returns", "apply_retpolines"}
    header = Path(source_root) / "arch" / "x86" / "include" / "asm" / "alternative.h" if source_root else None
    if header is None or not header.is_file():
        return wanted
    text = header.read_text(errors="replace")
    return {name for name in wanted if f"{name}(" in text}


def check_objtool_sites(ko: Path, config: KernelConfig, source_root: Optional[Path] = None) -> SiteCheck:
    """Raise ModuleCheckError when ``ko`` misses return/retpoline sites or ORC data its kernel needs."""
    from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf

    obj = read_elf(str(ko))
    enabled = config.builtin()
    applied = loader_patches(source_root)
    result = SiteCheck()
    if enabled & {"CONFIG_RETHUNK", "CONFIG_MITIGATION_RETHUNK"} and "apply_returns" in applied:
        listed = _site_targets(obj, ".return_sites")
        uses = _thunk_uses(obj, lambda name: name == RETURN_THUNK)
        result.returns = len(uses)
        result.problems += [f"{sec.name}+{off:#x}: return through {sym} not listed in .return_sites"
                            for sec, off, sym in uses if not _is_listed(listed, sec, off)]
    if enabled & {"CONFIG_RETPOLINE", "CONFIG_MITIGATION_RETPOLINE"} and "apply_retpolines" in applied:
        listed = _site_targets(obj, ".retpoline_sites")
        uses = _thunk_uses(obj, lambda name: name.startswith(INDIRECT_THUNK_PREFIXES))
        result.retpolines = len(uses)
        result.problems += [f"{sec.name}+{off:#x}: indirect call through {sym} not listed in .retpoline_sites"
                            for sec, off, sym in uses if not _is_listed(listed, sec, off)]
    if "CONFIG_UNWINDER_ORC" in enabled:
        orc_ip = obj.find_section(".orc_unwind_ip")
        has_code = any(s.is_text and s.size and s.flags & SHF_ALLOC for s in obj.sections)
        result.orc_entries = (orc_ip.size // 4) if orc_ip is not None else 0
        if has_code and (orc_ip is None or obj.find_section(".orc_unwind") is None):
            result.problems.append("no ORC unwind tables (.orc_unwind/.orc_unwind_ip): stacks through the "
                                   "module would be unreliable and livepatch transitions could not complete")
    if result.problems:
        shown: Dict[str, None] = dict.fromkeys(result.problems[:8])
        more = len(result.problems) - len(shown)
        raise ModuleCheckError(f"{ko.name}: objtool data missing, the kernel would run this code with its "
                               f"mitigations or unwinding broken: {'; '.join(shown)}"
                               f"{f' (and {more} more)' if more > 0 else ''}. objtool probably stopped on the "
                               "linked module: see 'objtool' lines in the build log")
    return result


def _undefined_names(path: Path) -> Set[str]:
    """Names of the undefined, non-weak symbols an object's relocations use."""
    from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf

    obj = read_elf(str(path))
    return {r.sym.name for sec in obj.sections if sec.is_rela for r in sec.relocations
            if r.sym.is_undefined and r.sym.type != STT_SECTION and r.sym.bind != STB_WEAK and r.sym.name}


def check_undefined_symbols(ko: Path, objects: Mapping[Path, str], symvers: Optional[Path]) -> int:
    """Raise ModuleCheckError unless every undefined symbol of the linked ``ko`` is exported.

    ``objects`` maps each engine output linked into ``ko`` to the kernel object it was
    made from (named in the error).  Weak references may stay unresolved, as in the kernel
    itself; livepatch symbols (SHN_LIVEPATCH) are not undefined.  Returns how many
    undefined symbols Module.symvers resolves.
    """
    from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.lookup import read_symvers

    exports = read_symvers(str(symvers)) if symvers is not None and Path(symvers).is_file() else {}
    missing = sorted(_undefined_names(ko) - set(exports))
    if not missing:
        return len(_undefined_names(ko))
    wanted_by = {path: _undefined_names(path) for path in objects}
    problems = []
    for name in missing:
        users = [f"{objects[p]} ({Path(p).name})" for p in objects if name in wanted_by[p]]
        problems.append(f"{name} (wanted by {', '.join(users) or 'the patch hook'})")
    raise ModuleCheckError(f"{ko.name}: undefined symbol(s) that no object of the patch module defines and "
                           f"the kernel does not export (Module.symvers): {'; '.join(problems)}. A global "
                           "that is neither exported nor in the patched kernel object must be defined by "
                           "another patched object of the same module")
