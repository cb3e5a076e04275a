# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Which references of the output take the address of a changed function (#19 item 2).

A pointer to a replacement function can outlive its module: patched code stores it in a timer,
a work item, an RCU callback or an ops table, an atomic replace retires the module and the
target side removes it, then the pointer is called.  Such references must name the running
kernel's *original* instead: ftrace sends every call of it to whichever patch is live.  Calls
and jumps stay direct (they run while the caller, in the same module, is running).

The forms gcc emits for x86-64 kernel code (``-mcmodel=kernel``), each at the function's start:

* ``R_X86_64_32S`` in code: ``mov $func, reg/mem`` and ``cmp $func, reg`` (comparing against
  the original is right too: unpatched code stores the original);
* ``R_X86_64_PC32`` in code under ``lea func(%rip), reg`` (other compilers, hand-written asm);
* ``R_X86_64_64`` in data (``.data*``/``.rodata*``: ops tables, static initialisers) of the
  patched object.  Special sections (``__mcount_loc``, ``__jump_table`` ...) keep naming the
  module's copy: ftrace and objtool describe that code, not the original.  Per-CPU data is left
  alone: the module loader copies it out before livepatch applies a module's relocations.
"""

from __future__ import annotations

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import (
    R_X86_64_32S,
    R_X86_64_64,
    R_X86_64_PC32,
    Relocation,
    Section,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.intermediate import KlpSymbol, PatchedFunc

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import Dict, List

_DATA_PREFIXES = (".data", ".rodata")
_LEA_OPCODE = 0x8D
_RIP_RELATIVE_MODRM = (0xC7, 0x05)   # mask, value: mod=00 rm=101


def original_addresses(funcs: List[PatchedFunc]) -> Dict[int, KlpSymbol]:
    """id(replacement) → the running kernel's original, for the references that take its address.

    Nested functions (a '.' in the name: their names differ between builds) keep the module's
    copy, as in kpatch; new functions have no original and are not in ``funcs``."""
    return {id(f.symbol): KlpSymbol(f.old_name or f.symbol.name, f.objname, f.sympos, f.symbol.bind, f.symbol.type)
            for f in funcs if f.symbol.parent is None and "." not in f.symbol.name}


def _is_rip_relative_lea(code: bytes, offset: int) -> bool:
    if offset < 2 or offset > len(code):
        return False
    mask, value = _RIP_RELATIVE_MODRM
    return code[offset - 2] == _LEA_OPCODE and (code[offset - 1] & mask) == value


def _is_plain_data(base: Section) -> bool:
    return base.name.startswith(_DATA_PREFIXES) and "percpu" not in base.name


def takes_function_address(reloc: Relocation, base: Section) -> bool:
    """Whether ``reloc`` (in ``base``) stores or compares a function's start address."""
    if base.is_text:
        if reloc.type == R_X86_64_32S:
            return reloc.addend == 0
        return reloc.type == R_X86_64_PC32 and reloc.addend == -4 and _is_rip_relative_lea(base.data, reloc.offset)
    return reloc.type == R_X86_64_64 and reloc.addend == 0 and _is_plain_data(base)
