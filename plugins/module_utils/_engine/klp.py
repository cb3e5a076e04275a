# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Turn a linked patch module's ``.kpatch.*`` records into livepatch ELF (create-klp-module).

The diff engine cannot resolve references to symbols that are not exported by
their object; it moves them into ``.kpatch.relocations``/``.kpatch.symbols``
(layout in ``intermediate.py``).  After kbuild has linked the module, this pass
rewrites them into what the kernel's livepatch core applies itself
(Documentation/livepatch/module-elf-format.rst, kernel/livepatch/core.c):

* one SHT_RELA section ``.klp.rela.<objname>.<section>`` per (object, patched
  section), flagged SHF_RELA_LIVEPATCH (the module loader leaves it alone),
  SHF_ALLOC (it must stay in memory: the relocations of a module that is loaded
  later are applied then) and SHF_INFO_LINK, sh_info = the section it patches;
* one symbol ``.klp.sym.<objname>.<name>,<sympos>`` per distinct target, with
  section index SHN_LIVEPATCH, bind/type as in the target object.

The kernel parses ``<objname>`` up to the first '.', reads at most 55
characters of it and 511 of the name, and refuses a module-specific section
that references a vmlinux symbol; all of that is checked here first.  The two
consumed sections and their ``.rela`` sections are dropped; ``.kpatch.funcs``
and ``.kpatch.strings`` stay (the module's hook walks them at init).

Each record has a twin in the ordinary ``.rela`` section of its destination: the
engine's placeholder relocation against an undefined weak ``.klp.sym.*`` symbol
(see ``intermediate.py``).  Each is removed after checking it matches its record
(the module loader would otherwise resolve the weak symbol to 0 and write there,
and livepatch refuses to relocate a non-zero place); a placeholder relocation with
no record is an error.  Entries of ``.call_sites`` (objtool's list of direct
calls, patched at load for call depth tracking) that point at a call whose target
only a module object's livepatch relocation resolves are dropped too: at load time
that call still reads ``call .+0``, and the kernel would warn about, or mis-patch,
its missing padding.  Calls completed by vmlinux relocations (applied during the
load, before ``.call_sites`` is read) keep their entries.  The
``external`` field is not needed here: the engine already names the exporting
module as the symbol's object, and the kernel resolves it when that module loads.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.record import factory, record
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import (
    R_X86_64_32,
    R_X86_64_32S,
    R_X86_64_64,
    R_X86_64_NONE,
    R_X86_64_PC32,
    R_X86_64_PC64,
    R_X86_64_PLT32,
    SHF_ALLOC,
    SHF_INFO_LINK,
    SHF_RELA_LIVEPATCH,
    SHN_LIVEPATCH,
    SHT_RELA,
    ElfObject,
    Relocation,
    Section,
    Symbol,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.intermediate import (
    FUNC_ENTRY,
    KLP_SYM_PREFIX,
    RELOCATION_ENTRY,
    SYMBOL_ENTRY,
    klp_symbol_name,
)

KLP_RELA_PREFIX = ".klp.rela."
# kernel/livepatch/core.c: sscanf(".klp.sym.%55[^.].%511[^,],%lu") -- MODULE_NAME_LEN / KSYM_NAME_LEN.
MAX_OBJNAME = 55
MAX_SYMNAME = 511
# Before Linux 6.1 KSYM_NAME_LEN was 128: kallsyms holds no longer name and klp_resolve_symbols
# reads at most 127 characters of one ("%127[^,]"), so a longer name is not found, or a different
# symbol sharing its first 127 characters is.
MAX_SYMNAME_BEFORE_6_1 = 127
# What x86-64 apply_relocate_add() handles (arch/x86/kernel/module.c).
KERNEL_RELOC_TYPES = {R_X86_64_NONE: "R_X86_64_NONE", R_X86_64_64: "R_X86_64_64", R_X86_64_32: "R_X86_64_32",
                      R_X86_64_32S: "R_X86_64_32S", R_X86_64_PC32: "R_X86_64_PC32",
                      R_X86_64_PLT32: "R_X86_64_PLT32", R_X86_64_PC64: "R_X86_64_PC64"}

_DEST, _OBJNAME, _KSYM = 0, 24, 32  # field offsets in a relocation entry
_SYM_NAME, _SYM_OBJNAME = 24, 32  # field offsets in a symbol entry
_FUNC_NAME = 40  # field offset of the name in a .kpatch.funcs entry
CONSUMED = (".kpatch.relocations", ".kpatch.symbols")
CALL_SITES = ".call_sites"
CALL_OPCODE = 0xE8


class KlpError(ValueError):
    """The module's intermediate records cannot become livepatch relocations."""


@record
class KlpResult:
    """What the conversion made: counts and the section names, for logs and tests."""

    relocations: int = 0
    symbols: int = 0
    sections: List[str] = factory(list)
    placeholders: int = 0
    call_sites_dropped: int = 0


@record
class _Records:
    """One intermediate section with its relocations indexed by offset."""

    section: Section
    relocs: Dict[int, Relocation]


def _records(obj: ElfObject, name: str, entsize: int) -> _Records:
    sec = obj.find_section(name)
    if sec is None:
        raise KlpError("%s: no %s section: not a module built from the diff engine's output" % (obj.path, name))
    if len(sec.data) % entsize:
        raise KlpError("%s: %s is %d bytes, not a multiple of its %d-byte entries"
                       % (obj.path, name, len(sec.data), entsize))
    relocs: Dict[int, Relocation] = {}
    if sec.rela is not None:
        for rel in sec.rela.relocations:
            if rel.offset in relocs:
                raise KlpError("%s: two relocations at %s+%#x" % (obj.path, name, rel.offset))
            relocs[rel.offset] = rel
    return _Records(sec, relocs)


def _pointer(obj: ElfObject, recs: _Records, offset: int, what: str) -> Tuple[Section, int]:
    """(section, offset) an R_X86_64_64 field of a record points at (after any ld -r merging)."""
    rel = recs.relocs.get(offset)
    if rel is None or rel.type != R_X86_64_64:
        raise KlpError("%s: %s at %s+%#x has no R_X86_64_64 relocation" % (obj.path, what, recs.section.name, offset))
    if rel.sym.section is None:
        raise KlpError("%s: %s at %s+%#x points at %r, which is not defined in the module"
                       % (obj.path, what, recs.section.name, offset, rel.sym.name))
    return rel.sym.section, rel.sym.value + rel.addend


def _string(obj: ElfObject, recs: _Records, offset: int, strings: Section, what: str) -> str:
    sec, where = _pointer(obj, recs, offset, what)
    if sec is not strings:
        raise KlpError("%s: %s at %s+%#x points into %s, not .kpatch.strings"
                       % (obj.path, what, recs.section.name, offset, sec.name))
    end = strings.data.find(b"\0", where)
    if where < 0 or end < 0:
        raise KlpError("%s: %s at %s+%#x points outside .kpatch.strings" % (obj.path, what, recs.section.name, offset))
    return strings.data[where:end].decode("utf-8", "surrogateescape")


@record(frozen=True)
class _Target:
    objname: str
    name: str
    sympos: int
    bind: int
    type: int


def _check_objname(obj: ElfObject, objname: str, context: str) -> None:
    if not objname or "." in objname or len(objname) > MAX_OBJNAME:
        raise KlpError("%s: object name %r (%s) must be 1-%d characters without '.': the kernel could not "
                       "parse it" % (obj.path, objname, context, MAX_OBJNAME))


def _target(obj: ElfObject, syms: _Records, offset: int, strings: Section) -> _Target:
    if offset < 0 or offset % SYMBOL_ENTRY.size or offset >= len(syms.section.data):
        raise KlpError("%s: a .kpatch.relocations entry refers to .kpatch.symbols+%#x, not an entry"
                       % (obj.path, offset))
    _src, sympos, bind, typ, _name, _objname = SYMBOL_ENTRY.unpack_from(syms.section.data, offset)
    name = _string(obj, syms, offset + _SYM_NAME, strings, "symbol name")
    objname = _string(obj, syms, offset + _SYM_OBJNAME, strings, "symbol object name")
    _check_objname(obj, objname, "symbol %s" % name)
    if not name or len(name) > MAX_SYMNAME or "," in name:
        raise KlpError("%s: symbol name %r cannot be a livepatch symbol (1-%d characters, no ',')"
                       % (obj.path, name, MAX_SYMNAME))
    return _Target(objname, name, sympos, bind, typ)


class _Builder:
    """Collects the new symbols and sections, reusing them per name."""

    def __init__(self, obj: ElfObject) -> None:
        self.obj = obj
        self.symbols: Dict[str, Symbol] = {}
        self.sections: Dict[str, Section] = {}
        self.symtab = next((s for s in obj.sections if s.name == ".symtab"), None)
        self.placeholders = 0
        # (id(section), offset) of every place a livepatch relocation for a *module* object
        # writes: applied when that module loads, after the patch module's own load-time fix-ups.
        self.late_sites: Set[Tuple[int, int]] = set()

    def symbol(self, target: _Target) -> Symbol:
        name = klp_symbol_name(target.objname, target.name, target.sympos)
        sym = self.symbols.get(name)
        if sym is None:
            sym = Symbol(name=name, bind=target.bind, type=target.type, shndx=SHN_LIVEPATCH)
            self.symbols[name] = sym
        elif (sym.bind, sym.type) != (target.bind, target.type):
            raise KlpError("%s: %s is recorded with two different bind/type pairs" % (self.obj.path, name))
        return sym

    def take_placeholder(self, sec: Section, offset: int, rtype: int, addend: int, name: str,
                         late: bool = False) -> None:
        """Remove the placeholder relocation twin of a record, after checking it matches."""
        if late:
            self.late_sites.add((id(sec), offset))
        twin = None
        if sec.rela is not None:
            twin = next((r for r in sec.rela.relocations if r.offset == offset and _is_placeholder(r.sym)), None)
        if twin is None:
            # Outputs of engines before placeholders existed: the place already reads 0.
            return
        if (twin.type, twin.addend, twin.sym.name) != (rtype, addend, name):
            raise KlpError("%s: placeholder relocation at %s+%#x (%s, type %d, addend %d) does not match its "
                           "record (%s, type %d, addend %d)" % (self.obj.path, sec.name, offset, twin.sym.name,
                                                                twin.type, twin.addend, name, rtype, addend))
        sec.rela.relocations.remove(twin)
        self.placeholders += 1

    def section(self, objname: str, base: Section) -> Section:
        name = "%s%s.%s" % (KLP_RELA_PREFIX, objname, base.name)
        sec = self.sections.get(name)
        if sec is None:
            sec = Section(name=name, sh_type=SHT_RELA, flags=SHF_RELA_LIVEPATCH | SHF_INFO_LINK | SHF_ALLOC,
                          addralign=8, entsize=24, link=self.symtab, base=base)
            self.sections[name] = sec
        return sec


def _convert_entries(obj: ElfObject, builder: _Builder) -> int:
    relocs = _records(obj, ".kpatch.relocations", RELOCATION_ENTRY.size)
    syms = _records(obj, ".kpatch.symbols", SYMBOL_ENTRY.size)
    strings = obj.find_section(".kpatch.strings")
    if strings is None:
        raise KlpError("%s: no .kpatch.strings section: not a module built from the diff engine's output" % obj.path)
    count = 0
    for base in range(0, len(relocs.section.data), RELOCATION_ENTRY.size):
        _dest, rtype, _external, addend, _objname, _ksym = RELOCATION_ENTRY.unpack_from(relocs.section.data, base)
        dest_sec, dest_off = _pointer(obj, relocs, base + _DEST, "relocation destination")
        objname = _string(obj, relocs, base + _OBJNAME, strings, "relocation object name")
        _check_objname(obj, objname, "relocation %d" % (base // RELOCATION_ENTRY.size))
        ksym_sec, ksym_off = _pointer(obj, relocs, base + _KSYM, "relocation symbol")
        if ksym_sec is not syms.section:
            raise KlpError("%s: relocation %d points into %s, not .kpatch.symbols"
                           % (obj.path, base // RELOCATION_ENTRY.size, ksym_sec.name))
        target = _target(obj, syms, ksym_off, strings)
        if rtype not in KERNEL_RELOC_TYPES:
            raise KlpError("%s: relocation type %d for %s is not one the x86-64 kernel applies"
                           % (obj.path, rtype, target.name))
        if objname != "vmlinux" and target.objname == "vmlinux":
            raise KlpError("%s: a relocation for module %s references vmlinux symbol %s; the kernel refuses "
                           "that (the symbol must be exported or the relocation tied to vmlinux)"
                           % (obj.path, objname, target.name))
        if not 0 <= dest_off < dest_sec.size:
            raise KlpError("%s: relocation destination %s+%#x is outside the section"
                           % (obj.path, dest_sec.name, dest_off))
        sec = builder.section(objname, dest_sec)
        klp_sym = builder.symbol(target)
        sec.relocations.append(Relocation(dest_off, rtype, klp_sym, addend))
        builder.take_placeholder(dest_sec, dest_off, rtype, addend, klp_sym.name, late=objname != "vmlinux")
        count += 1
    return count


def _is_placeholder(sym: Symbol) -> bool:
    return sym.section is None and sym.shndx == 0 and sym.name.startswith(KLP_SYM_PREFIX)


def _drop_placeholder_symbols(obj: ElfObject) -> None:
    """Every placeholder relocation must have been matched; then the placeholder symbols go."""
    for sec in obj.sections:
        for rel in sec.relocations:
            if _is_placeholder(rel.sym):
                base = sec.base.name if sec.base is not None else sec.name
                raise KlpError("%s: relocation at %s+%#x against %s has no .kpatch.relocations record: the "
                               "module would load with a hole there" % (obj.path, base, rel.offset, rel.sym.name))
    obj.symbols = [s for s in obj.symbols if not _is_placeholder(s)]
    emptied = {id(s) for s in obj.sections if s.sh_type == SHT_RELA and s.base is not None and not s.relocations}
    for sec in obj.sections:
        if sec.rela is not None and id(sec.rela) in emptied:
            sec.rela = None
    obj.sections = [s for s in obj.sections if id(s) not in emptied]


def _drop_klp_call_sites(obj: ElfObject, builder: "_Builder") -> int:
    """Drop ``.call_sites`` entries for calls that a module object's livepatch relocation completes.

    A vmlinux object's relocations are applied while the patch module loads, before the
    kernel reads ``.call_sites`` (``module_finalize``, 6.2+ call depth tracking): those calls
    are complete by then and keep their entries (dropping them only costs RSB stuffing)."""
    sites = obj.find_section(CALL_SITES)
    if sites is None or sites.rela is None or not builder.late_sites:
        return 0
    kept: List[Relocation] = []
    for rel in sorted(sites.rela.relocations, key=lambda r: r.offset):
        target = rel.sym.section
        insn = (rel.sym.value + rel.addend) if target is not None else -1
        is_klp_call = (target is not None and (id(target), insn + 1) in builder.late_sites
                       and 0 <= insn < len(target.data) and target.data[insn] == CALL_OPCODE)
        if not is_klp_call:
            kept.append(rel)
    dropped = len(sites.rela.relocations) - len(kept)
    if dropped:
        entry = 4  # one s32 PC-relative offset per call (filled in by the relocation)
        for index, rel in enumerate(kept):
            rel.offset = index * entry
        sites.rela.relocations = kept
        sites.data = bytes(entry * len(kept))
        sites.size = len(sites.data)
    return dropped


def _drop_consumed(obj: ElfObject) -> None:
    """Remove the consumed sections, their rela sections and every symbol defined in them."""
    gone = set()
    for name in CONSUMED:
        sec = obj.find_section(name)
        if sec is not None:
            gone.add(id(sec))
            if sec.rela is not None:
                gone.add(id(sec.rela))
    obj.sections = [s for s in obj.sections if id(s) not in gone]
    dropped = [s for s in obj.symbols if s.section is not None and id(s.section) in gone]
    dropped_ids = {id(s) for s in dropped}
    for sec in obj.sections:
        for rel in sec.relocations:
            if id(rel.sym) in dropped_ids:
                raise KlpError("%s: %s still refers to %s, which is dropped with the intermediate sections"
                               % (obj.path, sec.name, rel.sym.name))
    obj.symbols = [s for s in obj.symbols if id(s) not in dropped_ids]


def _modinfo_says_livepatch(obj: ElfObject) -> Optional[bool]:
    """None for a plain object; for a module, whether .modinfo carries livepatch=Y.

    (An engine output may carry a .modinfo of its own, the import_ns records of the patched
    code; only a module's has the vermagic= record modpost adds.)"""
    modinfo = obj.find_section(".modinfo")
    records = modinfo.data.split(b"\0") if modinfo is not None else []
    if not any(r.startswith(b"vermagic=") for r in records):
        return None
    return b"livepatch=Y" in records


def _looked_up_names(obj: ElfObject, builder: "_Builder") -> List[Tuple[str, str]]:
    """(name, what) of every name the kernel looks up in kallsyms: livepatch symbols and the
    functions of ``.kpatch.funcs``."""
    names = []
    for sym in builder.symbols.values():
        objname_and_name = sym.name[len(KLP_SYM_PREFIX):].rsplit(",", 1)[0]
        names.append((objname_and_name.split(".", 1)[1], "livepatch symbol"))
    funcs, strings = obj.find_section(".kpatch.funcs"), obj.find_section(".kpatch.strings")
    if funcs is not None and strings is not None:
        recs = _records(obj, ".kpatch.funcs", FUNC_ENTRY.size)
        for base in range(0, len(funcs.data), FUNC_ENTRY.size):
            names.append((_string(obj, recs, base + _FUNC_NAME, strings, "function name"), "patched function"))
    return names


def _check_name_lengths(obj: ElfObject, builder: "_Builder", max_name: int) -> None:
    for name, what in _looked_up_names(obj, builder):
        if len(name) > max_name:
            raise KlpError("%s: %s %s is %d characters long; this kernel's kallsyms and livepatch core read at "
                           "most %d (KSYM_NAME_LEN before Linux 6.1), so it would not be found at load"
                           % (obj.path, what, name, len(name), max_name))


def convert_to_klp(obj: ElfObject, max_name: int = MAX_SYMNAME) -> KlpResult:
    """Rewrite ``obj`` in place (see the module docstring); the caller writes it out.

    ``max_name``: the longest symbol name the target kernel resolves (``MAX_SYMNAME_BEFORE_6_1``
    for kernels before 6.1)."""
    if _modinfo_says_livepatch(obj) is False:
        raise KlpError("%s: .modinfo lacks livepatch=Y (MODULE_INFO(livepatch, \"Y\")): the kernel would "
                       "refuse to enable it as a live patch" % obj.path)
    builder = _Builder(obj)
    if builder.symtab is None:
        raise KlpError("%s: no .symtab section" % obj.path)
    count = _convert_entries(obj, builder)
    _check_name_lengths(obj, builder, max_name)
    dropped_sites = _drop_klp_call_sites(obj, builder)
    _drop_placeholder_symbols(obj)
    _drop_consumed(obj)
    obj.sections.extend(builder.sections.values())
    obj.symbols.extend(builder.symbols.values())
    return KlpResult(relocations=count, symbols=len(builder.symbols), sections=list(builder.sections),
                     placeholders=builder.placeholders, call_sites_dropped=dropped_sites)


def create_klp_module(in_path: str, out_path: str, max_name: int = MAX_SYMNAME) -> KlpResult:
    """Read a linked patch module, convert it, write ``out_path`` atomically."""
    from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf
    from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.writer import write_elf

    obj = read_elf(str(in_path))
    result = convert_to_klp(obj, max_name)
    write_elf(obj, str(out_path))
    return result
