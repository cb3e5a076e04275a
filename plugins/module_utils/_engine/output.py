# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Output pass: turn the included part of the patched object into the output model.

Included sections keep their order; their relocations stay, except those whose
target is not in the output and is not an export of vmlinux: those are recorded in
``.kpatch.relocations`` (see ``intermediate.py``) and, in place, retargeted to an
undefined weak *placeholder* symbol named like the livepatch symbol they become
(``.klp.sym.<objname>.<name>,<sympos>``).  The placeholder keeps every call and
jump visible to objtool when kbuild runs it on the linked patch module (IBT
kernels): without it the instruction reads ``call .+0`` and objtool gives up on
the whole module, leaving it without ORC data and return/retpoline sites.  The
klp converter removes each placeholder relocation again, checking it against its
record.  Symbols that are referenced but not included become undefined;
undefined locals (and globals no longer referenced) are dropped, since only a
livepatch relocation can reach them.
"""

from __future__ import annotations

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.record import factory, record
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import (
    SHF_ALLOC,
    SHN_UNDEF,
    SHT_PROGBITS,
    STB_LOCAL,
    STB_WEAK,
    STT_FILE,
    STT_FUNC,
    STT_NOTYPE,
    STT_SECTION,
    ElfObject,
    Relocation,
    Section,
    Symbol,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.bundle import pc_relative_bias
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.funcptr import (
    original_addresses,
    takes_function_address,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.intermediate import (
    KlpRelocation,
    KlpSymbol,
    PatchedFunc,
    emit_intermediate_sections,
    placeholder_name,
    section_symbol,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.lookup import SymbolLookupError
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.resolver import (
    Resolver,
    running_name,
    source_file,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.verify import PatchRejected

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import Dict, List, Tuple


@record
class OutputResult:
    """The livepatch object built from the patched one, with its replacement functions and klp relocations."""

    obj: ElfObject
    funcs: List[PatchedFunc] = factory(list)
    klp_relocations: List[KlpRelocation] = factory(list)
    klp_objects: Dict[int, str] = factory(dict)   # id(symbol) → objname


def _included_sections(patched: ElfObject) -> List[Section]:
    for sec in patched.sections:
        if sec.is_rela and sec.base is not None and sec.base.include and not sec.base.is_debug:
            sec.include = True
    return [sec for sec in patched.sections if sec.include and not sec.is_debug]


def _make_undefined(sym: Symbol) -> None:
    sym.section = None
    sym.shndx = SHN_UNDEF
    sym.value = 0
    sym.size = 0


def _included_symbols(patched: ElfObject) -> List[Symbol]:
    out = [patched.symbols[0]]
    for sym in patched.symbols[1:]:
        if not sym.include and sym.type != STT_FILE:
            continue
        if sym.type == STT_SECTION and (sym.section is None or not sym.section.include):
            continue
        if sym.section is not None and not sym.section.include:
            _make_undefined(sym)
        out.append(sym)
    return out


def _resolve_changed_functions(changed: List[Symbol], resolver: Resolver) -> List[PatchedFunc]:
    funcs = []
    for sym in changed:
        name = running_name(sym)
        found = resolver.find_local(name, source_file(sym)) if sym.is_local else \
            resolver.symtab.find_global(name)
        if found is None:
            raise PatchRejected("changed function %s is not in the %s symbol table (inlined or renamed in the "
                                "running kernel?)" % (sym.name, resolver.symtab.objname))
        funcs.append(PatchedFunc(sym, found.value, found.size, found.sympos, found.objname, found.name))
    return funcs


IMPORT_NS = b"import_ns="


def _modinfo_namespaces(patched: ElfObject) -> bytes:
    """The ``import_ns=NS`` records of the patched object's ``.modinfo``, NUL-terminated.

    The patched code may use symbols exported into a namespace (EXPORT_SYMBOL_NS): the patch
    module must import it too, or modpost and the module loader refuse it.  Built-in code
    spells the key ``<object>.import_ns=``; a module's own records are ``import_ns=``.
    """
    sec = patched.find_section(".modinfo")
    if sec is None:
        return b""
    records = []
    for entry in sec.data.split(b"\0"):
        at = entry.find(IMPORT_NS)
        if at >= 0:
            records.append(entry[at:] + b"\0")
    return b"".join(records)


def _add_modinfo(out: ElfObject, data: bytes) -> None:
    if data:
        out.sections.append(Section(name=".modinfo", sh_type=SHT_PROGBITS, flags=SHF_ALLOC, addralign=1,
                                    data=data, size=len(data), include=True))


def _localise_replacements(changed: List[Symbol]) -> None:
    """Replacement functions become local, as in kpatch: no other object of the patch module
    (the hook's init code, another patched file) may link to them directly and call them before
    livepatch has applied their relocations; their callers reach them through the patched
    original instead."""
    for sym in changed:
        sym.bind = STB_LOCAL
        if sym.prefix is not None:
            sym.prefix.bind = STB_LOCAL


def _placeholder(placeholders: Dict[KlpSymbol, Symbol], ksym: KlpSymbol) -> Symbol:
    """The undefined weak symbol standing in for ``ksym`` until the klp conversion (one per target)."""
    sym = placeholders.get(ksym)
    if sym is None:
        sym = Symbol(name=placeholder_name(ksym), bind=STB_WEAK, type=STT_NOTYPE, shndx=SHN_UNDEF)
        sym.include = True
        placeholders[ksym] = sym
    return sym


def _klp_relocations(sections: List[Section], resolver: Resolver, originals: Dict[int, KlpSymbol]
                     ) -> Tuple[List[KlpRelocation], Dict[int, str], List[Symbol]]:
    """Record the relocations only livepatch can resolve; retarget them to placeholders in place.

    Besides undefined symbols, this takes the address of a changed function (``originals``):
    it must be the original's, which stays valid after an atomic replace retires this module
    (livepatch redirects it to whichever replacement is live), never the module's own copy."""
    moved: List[KlpRelocation] = []
    decided: Dict[int, Tuple[bool, KlpSymbol, bool]] = {}
    objects: Dict[int, str] = {}
    placeholders: Dict[KlpSymbol, Symbol] = {}
    for rela in sections:
        if not rela.is_rela or rela.base is None:
            continue
        kept = []
        for reloc in rela.relocations:
            sym = reloc.sym
            if id(sym) in originals and takes_function_address(reloc, rela.base):
                ksym = originals[id(sym)]
                moved.append(KlpRelocation(rela.base, reloc.offset, reloc.type, reloc.addend, ksym, False,
                                           resolver.symtab.objname))
                kept.append(Relocation(offset=reloc.offset, type=reloc.type, sym=_placeholder(placeholders, ksym),
                                       addend=reloc.addend))
                continue
            if not sym.is_undefined:
                kept.append(reloc)
                continue
            if id(sym) not in decided:
                try:
                    need, where = resolver.resolve(sym)
                except SymbolLookupError as exc:
                    raise PatchRejected("%s (referenced from %s+%#x)" % (exc, rela.base.name, reloc.offset))
                ksym = None
                if need:
                    ksym = KlpSymbol(where.name, where.objname, where.sympos, where.bind, where.type)
                    objects[id(sym)] = where.objname
                decided[id(sym)] = (need, ksym, where.external if where else False)
            need, ksym, external = decided[id(sym)]
            if not need:
                kept.append(reloc)
                continue
            moved.append(KlpRelocation(rela.base, reloc.offset, reloc.type, reloc.addend, ksym, external,
                                       resolver.symtab.objname))
            kept.append(Relocation(offset=reloc.offset, type=reloc.type, sym=_placeholder(placeholders, ksym),
                                   addend=reloc.addend))
        rela.relocations = kept
    return moved, objects, list(placeholders.values())


def _jumps_into_functions_by_section(obj: ElfObject) -> int:
    """Express code references into the middle of a function as section symbol + offset again.

    The bundle pass names every target by its function (correlation needs that);
    the output is re-read by objtool when kbuild links the patch module (IBT
    kernels), which takes a jump to ``func+N`` as a sibling call to ``func`` --
    e.g. an alternative's replacement jumping back into its function -- and warns
    about the modified stack frame there.  The compiler's own spelling, the section
    symbol, means the same address to the linker and the loader.
    """
    rewritten = 0
    for rela in obj.sections:
        if not rela.is_rela or rela.base is None or not rela.base.is_text:
            continue
        for reloc in rela.relocations:
            sym = reloc.sym
            if sym.type != STT_FUNC or sym.section is None or reloc.addend + pc_relative_bias(reloc, rela.base) == 0:
                continue
            secsym = section_symbol(obj, sym.section)
            reloc.addend += sym.value
            reloc.sym = secsym
            rewritten += 1
    return rewritten


def _drop_unreferenced_undefined(obj: ElfObject) -> None:
    used = set()
    for sec in obj.sections:
        if sec.is_rela:
            used.update(id(r.sym) for r in sec.relocations)
        signature = getattr(sec, "signature", None)
        if signature is not None:
            used.add(id(signature))
    obj.symbols = [obj.symbols[0]] + [s for s in obj.symbols[1:]
                                      if not (s.is_undefined and s.type != STT_FILE) or id(s) in used]
    for sym in obj.symbols[1:]:
        if sym.is_local and sym.is_undefined and sym.type != STT_FILE:
            raise PatchRejected("local symbol %s is still referenced but not included" % sym.name)


def build_output(patched: ElfObject, changed: List[Symbol], resolver: Resolver) -> OutputResult:
    """Assemble the output model (still to be written with ``write_elf``)."""
    sections = _included_sections(patched)
    symbols = _included_symbols(patched)
    out = ElfObject(path=patched.path, ei_osabi=patched.ei_osabi, ei_abiversion=patched.ei_abiversion,
                    e_type=patched.e_type, e_machine=patched.e_machine, e_flags=patched.e_flags,
                    sections=sections, symbols=symbols)
    funcs = _resolve_changed_functions(changed, resolver)
    originals = original_addresses(funcs)  # with the parent's bind, before localising
    _localise_replacements(changed)
    moved, objects, placeholders = _klp_relocations(sections, resolver, originals)
    out.symbols.extend(placeholders)
    _jumps_into_functions_by_section(out)
    out.sections = [s for s in out.sections if not (s.is_rela and not s.relocations)]
    for sec in out.sections:
        if sec.rela is not None and sec.rela not in out.sections:
            sec.rela = None
    _drop_unreferenced_undefined(out)
    _add_modinfo(out, _modinfo_namespaces(patched))
    emit_intermediate_sections(out, funcs, moved, resolver.symtab.objname)
    return OutputResult(out, funcs, moved, objects)
