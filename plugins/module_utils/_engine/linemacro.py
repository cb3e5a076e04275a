# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Recognise functions whose only difference is a moved ``__LINE__``.

Adding lines above a function changes the ``__LINE__`` immediates its calls
pass (``__might_sleep(__FILE__, __LINE__)``, ``__ext4_journal_stop(__func__,
__LINE__, h)`` ...) and ``"file.c:123"`` strings, without changing behaviour.
Such a function must not be patched.  A differing immediate counts as a line
number only when it is loaded by ``mov $imm32, %reg`` into an argument
register of the next call and either

* the callee is a known line-taking helper and the register is its line
  argument (``LINE_MACRO_CALLEES``), or
* the same call receives ``__func__`` or a ``*.c``/``*.h`` file-name string in
  the argument register just before it (directly or through a register
  copy) — the kernel passes a line right after the function or file it
  belongs to (``__ext4_error(sb, __func__, __LINE__, ...)``, ``WARN``'s
  ``__FILE__, __LINE__``).

Any other differing byte is a real change.  Only the x86-64 instruction forms
gcc emits for these loads are decoded.
"""

from __future__ import annotations


from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import (
    R_X86_64_PC32,
    R_X86_64_PLT32,
    Relocation,
)

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import List, Optional, Sequence, Tuple

# Helpers taking __LINE__ → the 0-based position of that argument (only that register counts).
LINE_MACRO_CALLEES = {
    "__might_sleep": 1, "__might_fault": 1, "__might_resched": 1, "__cant_sleep": 1, "__cant_migrate": 1,
    "lockdep_rcu_suspicious": 1, "__ext4_journal_start_sb": 1, "__ext4_journal_start_reserved": 1,
    "__btrfs_abort_transaction": 2, "__btrfs_handle_fs_error": 2, "__jbd2_debug": 3, "xfs_errortag_test": 2,
}
# System V argument registers in order: rdi rsi rdx rcx r8 r9 (x86 register numbers), then the
# stack: ``STACK_ARGUMENT`` stands for an immediate pushed as the 7th argument.
STACK_ARGUMENT = 16
ARG_REGISTERS = (7, 6, 2, 1, 8, 9, STACK_ARGUMENT)
# How far (bytes) the load of a line may precede the call that consumes it.
CALL_WINDOW = 96
# How far after the load a jump to the shared rest of the call setup is looked for.
JUMP_SCAN = 12
_CALL_OPCODES = (0xE8, 0xE9)  # call rel32, jmp rel32 (tail call)


def imm32_load(data: bytes, lo: int, hi: int) -> Optional[Tuple[int, int]]:
    """(register, end of instruction) of a ``mov $imm32, %r32`` — or ``push $imm32``/``push
    $imm8``, the stack argument — whose immediate covers data[lo:hi]."""
    # nearest opcode first: a byte further back may be another instruction's operand
    for start in range(lo - 1, max(-1, hi - 6), -1):
        op = data[start]
        if start + 1 <= lo and hi <= start + 5:
            if 0xB8 <= op <= 0xBF:
                rex_b = start > 0 and data[start - 1] == 0x41
                return (op - 0xB8) + (8 if rex_b else 0), start + 5
            if op == 0x68:
                return STACK_ARGUMENT, start + 5
        if op == 0x6A and start + 1 == lo and hi == start + 2:
            return STACK_ARGUMENT, start + 2
    return None


def loaded_register(data: bytes, field: int) -> Optional[int]:
    """The register an instruction loads when its 4-byte operand (a relocation) is at ``field``."""
    if field < 3:
        return None
    rex, op, modrm = data[field - 3], data[field - 2], data[field - 1]
    if rex in (0x48, 0x49) and op == 0xC7 and modrm & 0xF8 == 0xC0:  # mov $imm32, %r64
        return (modrm & 7) + (8 if rex == 0x49 else 0)
    if rex in (0x48, 0x4C) and op == 0x8D and modrm & 0xC7 == 0x05:  # lea disp32(%rip), %r64
        return ((modrm >> 3) & 7) + (8 if rex == 0x4C else 0)
    if 0xB8 <= modrm <= 0xBF:  # mov $imm32, %r32
        return (modrm - 0xB8) + (8 if op == 0x41 else 0)
    return None


def _is_call(data: bytes, reloc: Relocation) -> bool:
    return reloc.type in (R_X86_64_PC32, R_X86_64_PLT32) and reloc.offset >= 1 and \
        data[reloc.offset - 1] in _CALL_OPCODES


def _is_line_companion(reloc: Relocation) -> bool:
    """``__func__`` or a source-file name: what a line number travels with."""
    if reloc.sym.name.startswith("__func__"):
        return True
    return reloc.string is not None and reloc.string.endswith((".c", ".h"))


def _next_argument(register: int) -> Optional[int]:
    if register in ARG_REGISTERS[:-1]:
        return ARG_REGISTERS[ARG_REGISTERS.index(register) + 1]
    return None


def _jump_after(data: bytes, at: int, relocated: set) -> Optional[int]:
    """Target of an unconditional ``jmp`` starting at ``at`` (gcc cross-jumps shared call setup)."""
    if at + 2 <= len(data) and data[at] == 0xEB:
        return at + 2 + int.from_bytes(data[at + 1:at + 2], "little", signed=True)
    if at + 5 <= len(data) and data[at] == 0xE9 and at + 1 not in relocated:
        return at + 5 + int.from_bytes(data[at + 1:at + 5], "little", signed=True)
    return None


def is_line_immediate(data: bytes, relocs: Sequence[Relocation], register: int, end: int) -> bool:
    """Is the immediate loaded into ``register`` by the instruction ending at ``end`` the line
    argument of the next call?"""
    if register not in ARG_REGISTERS:
        return False
    calls = [r for r in relocs if _is_call(data, r)]
    relocated = {r.offset for r in relocs}
    # The call setup goes on after the load, or where a jump shortly after it leads
    # (gcc cross-jumps the shared tail of similar calls).
    resumes = [end] + [t for t in (_jump_after(data, at, relocated) for at in range(end, end + JUMP_SCAN))
                       if t is not None and 0 <= t < len(data)]
    return any(_line_argument_of_call(data, relocs, calls, register, end, resume) for resume in resumes)


def _line_argument_of_call(data: bytes, relocs: Sequence[Relocation], calls: List[Relocation], register: int,
                           end: int, resume: int) -> bool:
    after = [r for r in calls if resume <= r.offset <= resume + CALL_WINDOW]
    if not after:
        return False
    call = min(after, key=lambda r: r.offset)
    position = LINE_MACRO_CALLEES.get(call.sym.name)
    if position is not None and ARG_REGISTERS[position] == register:
        return True
    before = [r.offset for r in calls if r.offset < end]
    start = max(max(before) + 4 if before else 0, end - CALL_WINDOW)
    windows = [(start, end), (resume, call.offset)]
    companions = set()
    for reloc in relocs:
        if any(lo <= reloc.offset < hi for lo, hi in windows) and _is_line_companion(reloc):
            loaded = loaded_register(data, reloc.offset)
            if loaded is not None:
                companions.add(loaded)
    for lo, hi in windows:
        companions |= _copied_registers(data, lo, hi, companions)
    return any(_next_argument(c) == register for c in companions)


def _copied_registers(data: bytes, start: int, end: int, sources: set) -> set:
    """Registers that receive a copy (``mov %src, %dst``, 64-bit) of one of ``sources`` in data[start:end]."""
    copies = set()
    for at in range(start, end - 2):
        rex, op, modrm = data[at], data[at + 1], data[at + 2]
        if rex in (0x48, 0x49, 0x4C, 0x4D) and op == 0x89 and modrm >= 0xC0:
            src = ((modrm >> 3) & 7) + (8 if rex & 4 else 0)
            dst = (modrm & 7) + (8 if rex & 1 else 0)
            if src in sources or src in copies:
                copies.add(dst)
    return copies


def diff_ranges(a: bytes, b: bytes) -> List[Tuple[int, int]]:
    """[lo, hi) byte ranges where two equally long buffers differ."""
    ranges: List[Tuple[int, int]] = []
    start: Optional[int] = None
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y and start is None:
            start = i
        elif x == y and start is not None:
            ranges.append((start, i))
            start = None
    if start is not None:
        ranges.append((start, len(a)))
    return ranges


def only_line_immediates_differ(new_data: bytes, old_data: bytes, relocs: Sequence[Relocation]) -> bool:
    """Every differing byte lies in a line-number immediate (same instruction in both)."""
    if len(new_data) != len(old_data):
        return False
    for lo, hi in diff_ranges(new_data, old_data):
        load = imm32_load(new_data, lo, hi)
        if load is None or imm32_load(old_data, lo, hi) != load:
            return False
        if not is_line_immediate(new_data, relocs, load[0], load[1]):
            return False
    return True
