# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Resolution of one object's unresolved references: an ordinary undefined symbol or a klp relocation.

``lookup.py`` reads the parent's symbol table and finds symbols in it; the ``Resolver`` applies
the rules (vmlinux exports, other modules' exports, locals of this object's file block, globals of
another object of the patch module) to one output object's symbols.
"""

from __future__ import annotations

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.record import factory, record
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.lookup import (
    ExportInfo,
    ObjectBlocks,
    ParentSymtab,
    Resolution,
    SymbolLookupError,
)

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import Dict, Optional, Tuple

    from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import Symbol


def source_file(sym: Symbol) -> Optional[str]:
    """The source file a local symbol belongs to (its STT_FILE), when the object names it."""
    return sym.file.name if sym.file is not None else None


def running_name(sym: Symbol) -> str:
    """The name the running kernel knows ``sym`` by: its original twin's (``lock.63240`` for the
    patched ``lock.63243``: gcc numbers static locals anew in each build)."""
    return sym.twin.name if sym.twin is not None else sym.name


@record
class Resolver:
    """Decides, per unresolved symbol, a normal undefined reference or a klp relocation."""

    symtab: ParentSymtab
    exports: Dict[str, ExportInfo]
    blocks: ObjectBlocks = factory(ObjectBlocks)  # this object's, never another's

    def find_local(self, name: str, filename: Optional[str] = None) -> Optional[Resolution]:
        """A local of this object's block of source file ``filename``."""
        return self.symtab.find_local(name, self.blocks.of(filename))

    def exported_by_vmlinux(self, name: str) -> bool:
        info = self.exports.get(name)
        return info is not None and info.module == "vmlinux"

    def resolve(self, sym: Symbol) -> Tuple[bool, Optional[Resolution]]:
        """(needs a klp relocation, where).  ``where`` None + False: a normal reference."""
        if sym.is_local:
            found = self.find_local(running_name(sym), source_file(sym))
            if found is None:
                block = self.blocks.of(source_file(sym))
                raise SymbolLookupError("local symbol %s not found in the %s block of %s's symbol table"
                                        % (running_name(sym), block.name if block else "?", self.symtab.objname))
            return True, found
        info = self.exports.get(sym.name)
        if info is not None:
            if info.module == "vmlinux":
                return False, None  # the module loader resolves vmlinux exports
            if info.objname != self.symtab.objname:
                if self.symtab.is_vmlinux:
                    return False, None  # (vmlinux code cannot reference a module's export)
                # Another module's export, used by the patched module: resolved when the
                # patched module loads, so the patch module itself does not depend on it.
                return True, Resolution(sym.name, info.objname, 0, sym.bind, sym.type, 0, 0, external=True)
            found = self.symtab.find_global(sym.name)
            return True, found or Resolution(sym.name, self.symtab.objname, 0, sym.bind, sym.type, 0, 0)
        found = self.symtab.find_global(sym.name)
        if found is None:
            # Neither exported nor in the parent: it can only be defined by another object of
            # the patch module (a new global function of another patched file).  The reference
            # stays ordinary; the build checks, once the module is linked, that it resolved.
            return False, None
        return True, found
