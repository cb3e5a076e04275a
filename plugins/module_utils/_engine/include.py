# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Inclusion pass: choose what goes into the output object.

Starting points are the changed functions (with their ``.cold``/``.part``
children), new global symbols and the patch-author hook sections
(``.kpatch.callbacks.*``, ``.kpatch.force``).  From there everything the
included code references is followed: a referenced symbol whose section is new
or changed is included with that section; an unchanged function or object is
only *referenced* (it becomes an undefined symbol resolved against the running
kernel); a section symbol (string literals, constant pools, alternative
replacement code) always pulls its whole section because nothing else can
name it.  Debug sections are never included.
"""

from __future__ import annotations

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import (
    SHT_GROUP,
    STT_FILE,
    STT_FUNC,
    STT_NOTYPE,
    STT_SECTION,
    ElfObject,
    Section,
    Status,
    Symbol,
)

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import List

# Sections every output needs, whatever changed.
STANDARD_SECTIONS = (".symtab", ".strtab", ".shstrtab", ".symtab_shndx", ".note.GNU-stack")
# Sections the kmod/kpatch-macros.h macros emit; the hook reads them at load time.
HOOK_SECTION_PREFIXES = (".kpatch.callbacks.", ".kpatch.force")


def is_anonymous(sym: Symbol) -> bool:
    """Section symbols and local labels (``.LC0``): only this object can resolve them."""
    return sym.type == STT_SECTION or (sym.type == STT_NOTYPE and sym.is_local and sym.section is not None)


class Includer:
    """Worklist-driven inclusion (no recursion: kernel objects nest deeply)."""

    def __init__(self) -> None:
        self.pending: List[Section] = []

    def include_symbol(self, sym: Symbol) -> None:
        sym.include = True
        sec = sym.section
        if sec is None or sec.include or sec.is_debug:
            return
        # Unchanged functions/objects are linked against the running kernel instead;
        # section symbols and assembler-local labels (.LC0) name nothing it has.
        if not is_anonymous(sym) and sym.status == Status.SAME:
            return
        self.include_section(sec)

    def include_section(self, sec: Section) -> None:
        if sec.include or sec.is_debug:
            return
        sec.include = True
        if sec.secsym is not None:
            sec.secsym.include = True
        if sec.sym is not None:
            sec.sym.include = True
            if sec.sym.prefix is not None:
                sec.sym.prefix.include = True
        if sec.rela is not None:
            sec.rela.include = True
            self.pending.append(sec.rela)

    def drain(self) -> None:
        while self.pending:
            rela = self.pending.pop()
            for reloc in rela.relocations:
                self.include_symbol(reloc.sym)


def include_standard_elements(obj: ElfObject, inc: Includer) -> None:
    obj.symbols[0].include = True
    for sec in obj.sections:
        if sec.name in STANDARD_SECTIONS:
            sec.include = True
    for sym in obj.symbols[1:]:
        if sym.type == STT_FILE:
            sym.include = True


def include_changed_functions(obj: ElfObject, inc: Includer) -> List[Symbol]:
    """Changed functions (parents), and all their children: returns the parents."""
    changed = []
    for sym in obj.symbols[1:]:
        if sym.type != STT_FUNC or sym.status != Status.CHANGED or sym.section is None:
            continue
        if sym.parent is not None:
            continue  # children ride with their parent, prefix symbols with their function
        changed.append(sym)
        inc.include_symbol(sym)
        for child in sym.children:
            child.include = True
            if child.section is not None:
                inc.include_section(child.section)
    return changed


def include_new_globals(obj: ElfObject, inc: Includer) -> List[Symbol]:
    new = []
    for sym in obj.symbols[1:]:
        if sym.status == Status.NEW and not sym.is_local and sym.section is not None:
            new.append(sym)
            inc.include_symbol(sym)
    return new


def include_hook_sections(obj: ElfObject, inc: Includer) -> None:
    for sec in obj.sections:
        if sec.name.startswith(HOOK_SECTION_PREFIXES) and not sec.is_rela:
            inc.include_section(sec)


def include_groups(obj: ElfObject) -> None:
    """Keep a COMDAT/section group when any member is kept, listing only kept members."""
    for sec in obj.sections:
        if sec.sh_type != SHT_GROUP:
            continue
        kept = [m for m in sec.group_members if m.include]
        if kept:
            sec.include = True
            sec.group_members = kept
            if getattr(sec, "signature", None) is not None:
                sec.signature.include = True


def new_functions(obj: ElfObject) -> List[Symbol]:
    """Included functions with no counterpart in the original object (children excluded)."""
    return [s for s in obj.symbols[1:] if s.type == STT_FUNC and s.status == Status.NEW and s.include
            and s.section is not None and s.section.include and s.parent is None]
