# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Lookup pass: where do the output's unresolved references live in the running kernel?

The *parent* is the object being patched: ``vmlinux`` or one module.  Its symbol
table is read either from the ELF file or from ``readelf -s --wide`` text (both
give the same :class:`ParentSymbol` list).  Locals are searched only in the block
of locals that follows the patched source file's ``STT_FILE`` symbol — the block
is identified by the file name plus the object's own local names, because many
kernel files share a base name (``core.c``).  A symbol's ``sympos`` is counted
as the kernel's ``klp_find_object_symbol`` counts: its 1-based rank among *all*
defined symbols of that name, locals and globals alike, in kallsyms order (by
address for vmlinux, symbol-table order for modules), 0 when the name is unique.
A module's symbols in ``.init*`` sections are in its kallsyms only until its
init function returns; a rank that depends on them is refused.

``Module.symvers`` says which globals are exported and by whom; an exported
vmlinux symbol is resolved by the module loader, and so is a global that is
neither exported nor in the parent (kpatch's rule: it lives in another object of
the patch module; the build verifies after linking that every such reference
resolved).  Everything else needs a livepatch relocation.
"""

from __future__ import annotations

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.record import factory, record
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.names import without_number_suffix
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.layout import ELF_MAGIC
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.errors import PatchRejected
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.parentrows import SymbolRows
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import (
    SHN_UNDEF,
    STB_GLOBAL,
    STB_LOCAL,
    STB_WEAK,
    STT_FILE,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
    STT_TLS,
    ElfObject,
    Symbol,
)

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple, Union

_BINDS = {"LOCAL": STB_LOCAL, "GLOBAL": STB_GLOBAL, "WEAK": STB_WEAK, "UNIQUE": STB_GLOBAL}
_TYPES = {"NOTYPE": STT_NOTYPE, "OBJECT": STT_OBJECT, "FUNC": STT_FUNC, "SECTION": STT_SECTION,
          "FILE": STT_FILE, "TLS": STT_TLS}
_HEX_DIGITS = "0123456789abcdefABCDEF"


class SymbolLookupError(PatchRejected, ValueError):
    """A symbol cannot be located in the parent object (the patch is refused); the message names it."""


@record
class ParentSymbol:
    name: str
    value: int
    size: int
    bind: int
    type: int
    defined: bool
    index: int
    # in a section the module loader frees after init (".init*"); known only from ELF input
    init: bool = False


@record
class ExportInfo:
    name: str
    module: str       # "vmlinux" or the module path as Module.symvers writes it
    export_type: str  # EXPORT_SYMBOL / EXPORT_SYMBOL_GPL

    @property
    def objname(self) -> str:
        return module_objname(self.module)


def module_objname(module: str) -> str:
    """Livepatch's object name for a Module.symvers module column ("drivers/x/foo-bar" → "foo_bar")."""
    return module.rsplit("/", 1)[-1].replace("-", "_")


@record
class FileBlock:
    name: str
    locals: List[ParentSymbol] = factory(list)

    def names(self) -> Set[str]:
        return {s.name for s in self.locals}


@record
class ObjectBlocks:
    """The parent's file blocks chosen for one object: one per source file (several after
    ``ld -r``).  Returned by :meth:`ParentSymtab.select_object_blocks` and handed to that object's
    :class:`Resolver`; the table itself keeps no per-object state, so one table serves every
    object of a build and an object without STT_FILE symbols has no block (its locals are refused)."""

    first: Optional[FileBlock] = None  # the object's first file's: the default
    by_file: Dict[str, FileBlock] = factory(dict)

    def of(self, filename: Optional[str] = None) -> Optional[FileBlock]:
        """The block of source file ``filename`` (no or an unknown name: the first file's)."""
        return self.by_file.get(filename, self.first) if filename else self.first


@record
class Resolution:
    """Where a reference goes: ``objname``/``sympos`` of the parent's symbol."""

    name: str
    objname: str
    sympos: int
    bind: int
    type: int
    value: int
    size: int
    external: bool = False


@record(frozen=True)
class Wanted:
    """What the engine will ask of the parent's table for one object: the names of its symbols
    (``running_name`` is always one of them: a twin is a symbol of the original object) and of
    its source files.  A table read for a ``Wanted`` holds every row of those names, every
    STT_FILE row and the whole block of each of those files -- all any lookup reads."""

    names: FrozenSet[str]
    files: FrozenSet[str]
    # the names without gcc's ``.N`` suffixes: find_local also matches ``lock.63240`` for ``lock.63243``,
    # and that symbol's sympos counts every row of its exact name
    bases: FrozenSet[str] = frozenset()

    def covers(self, name: str) -> bool:
        """Whether a table read for this holds every row named ``name``."""
        return name in self.names or without_number_suffix(name) in self.bases


def wanted_by(*objects: ElfObject) -> Wanted:
    """The names and source files of ``objects`` (the original and the patched build)."""
    names = {sym.name for obj in objects for sym in obj.symbols[1:]}
    files = {sym.name for obj in objects for sym in obj.symbols[1:] if sym.type == STT_FILE}
    return Wanted(frozenset(names), frozenset(files), frozenset(without_number_suffix(n) for n in names))


def _symtab_rows(lines: Iterable[str], wanted: Optional[Wanted]) -> List[str]:
    """The lines of the ``.symtab`` table (readelf may print ``.dynsym`` too); with ``wanted``, only
    those a table read for it needs, told apart without parsing (one loop: vmlinux has 120,000).

    A row's name is its last field (readelf prints it as one token); its type and binding
    columns are padded with spaces, so `` FILE `` / `` LOCAL `` find them.  Until the first
    STT_FILE row everything is kept: a module without file symbols is one block.
    """
    rows: List[str] = []
    keep = rows.append
    in_symtab = seen_file = in_wanted_file = False
    names, files, bases = (wanted.names, wanted.files, wanted.bases) if wanted is not None else ((), (), ())
    for line in lines:
        if line.startswith("Symbol table"):
            in_symtab = "'.symtab'" in line
            continue
        if not in_symtab:
            continue
        if wanted is not None:
            # the common case first: a row of another name, in another file's block
            name = line[line.rfind(" ") + 1:].rstrip("\n")
            if "@" in name:
                name = name.split("@", 1)[0]
            if name not in names and seen_file and not (in_wanted_file and " LOCAL " in line):
                if " FILE " in line:
                    in_wanted_file = name in files
                elif "." not in name or without_number_suffix(name) not in bases:
                    continue
            elif " FILE " in line:
                seen_file, in_wanted_file = True, name in files
        keep(line)
    return rows


def _is_hex(text: str) -> bool:
    return bool(text) and not text.strip(_HEX_DIGITS)


def _readelf_row(line: str) -> Optional[Tuple[str, str, str, str, str, str, str]]:
    """(Num, Value, Size, Type, Bind, Ndx, Name) of one symbol row, None for any other line.

    The row's shape: ``Num:`` (decimal), Value (hex), Size (decimal or ``0x`` hex), then Type, Bind,
    Vis and Ndx (one word each) and the name (the rest of the line, possibly empty).  Split, not a
    regular expression: ``re`` stays off the engine's start-up, and vmlinux has 120,000 rows.
    """
    fields = line.split(None, 7)
    if len(fields) < 7 or not fields[0].endswith(":") or not fields[0][:-1].isdecimal():
        return None
    num, value, size, typ, bind, _vis, ndx = fields[:7]
    if not _is_hex(value) or not (size.isdecimal() or (size[:2] == "0x" and _is_hex(size[2:]))):
        return None
    return num[:-1], value, size, typ, bind, ndx, fields[7].rstrip("\n") if len(fields) == 8 else ""


def parse_readelf_symbols(text: Union[str, Iterable[str]], wanted: Optional[Wanted] = None) -> List[ParentSymbol]:
    """ParentSymbols from ``readelf -s --wide`` output (the ``.symtab`` table only): the whole text
    or its lines (an open file streams: vmlinux's table is 10 MB of text).

    With ``wanted``, only the rows it needs (see :class:`Wanted`): vmlinux has 120,000 rows, and
    an object asks about a few dozen names, so parsing every row would dominate the engine's time.
    """
    out: List[ParentSymbol] = []
    for line in _symtab_rows(text.splitlines() if isinstance(text, str) else text, wanted):
        fields = _readelf_row(line)
        if fields is None:
            continue
        num, value, size, typ, bind, ndx, name = fields
        if num == "0":
            continue  # the null symbol
        name = name.split("@", 1)[0].strip()
        out.append(ParentSymbol(name, int(value, 16), int(size, 0), _BINDS.get(bind, STB_LOCAL),
                                _TYPES.get(typ, STT_NOTYPE), ndx != "UND", int(num)))
    return out


def symbols_from_model(symbols: Iterable[Symbol]) -> List[ParentSymbol]:
    out = []
    for sym in symbols:
        if sym.index == 0 and not sym.name:
            continue
        init = sym.section is not None and sym.section.name.startswith(".init")
        out.append(ParentSymbol(sym.name, sym.value, sym.size, sym.bind, sym.type,
                                sym.section is not None or sym.shndx != SHN_UNDEF, sym.index, init))
    return out


def read_symvers(path: Optional[str]) -> Dict[str, ExportInfo]:
    """Module.symvers: ``crc<TAB>symbol<TAB>module<TAB>export type[<TAB>namespace]``."""
    exports: Dict[str, ExportInfo] = {}
    if not path:
        return exports
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 4:
                if line.strip():
                    raise SymbolLookupError("%s:%d: not a Module.symvers line: %r" % (path, lineno, line.strip()))
                continue
            exports[parts[1]] = ExportInfo(parts[1], parts[2], parts[3])
    return exports


@record
class _FullViews:
    """Every row of the table by kind, for callers that list the whole table (tests, reports)."""

    globals: Dict[str, ParentSymbol] = factory(dict)
    locals_by_name: Dict[str, List[ParentSymbol]] = factory(dict)
    named: Dict[str, List[ParentSymbol]] = factory(dict)
    blocks: List[FileBlock] = factory(list)
    blocks_by_name: Dict[str, List[FileBlock]] = factory(dict)


def _is_named_local(sym: ParentSymbol) -> bool:
    """A local a file block holds: named, and neither a section nor a file symbol."""
    return sym.bind == STB_LOCAL and bool(sym.name) and sym.type not in (STT_FILE, STT_SECTION)


def _in_kallsyms(sym: ParentSymbol) -> bool:
    """What kallsyms holds and klp counts sympos over: every defined, named symbol."""
    return sym.defined and bool(sym.name) and sym.type not in (STT_FILE, STT_SECTION)


class ParentSymtab:
    """The parent's symbol table; each lookup reads only the rows of the name it asks about.

    The rows are columns indexed by name (:class:`SymbolRows`): the table is made from
    ParentSymbols, or from columns already indexed (the build's cached form, which loads without
    touching every row).  A row becomes a ParentSymbol when a lookup first reads it, and stays
    the same object.  ``wanted`` set: the table holds only the rows one object needs
    (:func:`load_parent_symtab`), and a question about any other name is refused rather than
    answered from a partial table.
    """

    def __init__(self, symbols: Union[Sequence[ParentSymbol], SymbolRows], objname: str,
                 wanted: Optional[Wanted] = None) -> None:
        self.objname = objname
        self.wanted = wanted
        self.is_vmlinux = objname == "vmlinux"
        if isinstance(symbols, SymbolRows):
            self.rows, self._symbols = symbols, {}
        else:
            self.rows = SymbolRows.from_fields((s.name, s.value, s.size, s.bind, s.type, s.defined, s.index, s.init)
                                               for s in symbols)
            self._symbols = dict(enumerate(symbols))
        self._blocks_of: Dict[str, List[FileBlock]] = {}
        self._views: Optional[_FullViews] = None

    def symbol(self, row: int) -> ParentSymbol:
        """Row ``row`` of the table (the same object every time: sympos ranks compare identity)."""
        sym = self._symbols.get(row)
        if sym is None:
            sym = self._symbols[row] = ParentSymbol(*self.rows.fields(row))
        return sym

    def _rows_named(self, name: str) -> List[ParentSymbol]:
        return [self.symbol(row) for row in self.rows.rows_named(name)]

    def _block(self, file_row: int) -> FileBlock:
        """The locals from STT_FILE row ``file_row`` to the next one."""
        end = self.rows.next_of_type(STT_FILE, file_row + 1)
        locals_ = [self.symbol(row) for row in range(file_row + 1, end) if self.rows.binds[row] == STB_LOCAL]
        return FileBlock(self.symbol(file_row).name, [s for s in locals_ if _is_named_local(s)])

    def file_blocks(self, filename: str) -> List[FileBlock]:
        """The blocks of every STT_FILE symbol called ``filename``, in table order."""
        if filename not in self._blocks_of:
            self._blocks_of[filename] = [self._block(row) for row in self.rows.rows_named(filename)
                                         if self.rows.types[row] == STT_FILE]
        return self._blocks_of[filename]

    def _full_views(self) -> _FullViews:
        if self._views is None:
            views, current = _FullViews(), None
            for sym in map(self.symbol, range(len(self.rows))):
                if _in_kallsyms(sym):
                    views.named.setdefault(sym.name, []).append(sym)
                if sym.type == STT_FILE:
                    current = FileBlock(sym.name)
                    views.blocks.append(current)
                    views.blocks_by_name.setdefault(sym.name, []).append(current)
                elif _is_named_local(sym):
                    views.locals_by_name.setdefault(sym.name, []).append(sym)
                    if current is not None:
                        current.locals.append(sym)
                elif sym.bind != STB_LOCAL and sym.defined:
                    views.globals.setdefault(sym.name, sym)
            self._views = views
        return self._views

    @property
    def globals(self) -> Dict[str, ParentSymbol]:
        """Every defined global or weak symbol by name (the first of a name)."""
        return self._full_views().globals

    @property
    def locals_by_name(self) -> Dict[str, List[ParentSymbol]]:
        return self._full_views().locals_by_name

    @property
    def named(self) -> Dict[str, List[ParentSymbol]]:
        """Every symbol kallsyms holds, by name."""
        return self._full_views().named

    @property
    def blocks(self) -> List[FileBlock]:
        return self._full_views().blocks

    @property
    def blocks_by_name(self) -> Dict[str, List[FileBlock]]:
        return self._full_views().blocks_by_name

    def select_object_blocks(self, obj: ElfObject) -> ObjectBlocks:
        """The block of every source file of ``obj`` (several after ``ld -r``), chosen by its locals."""
        blocks = ObjectBlocks()
        for file_sym in [s for s in obj.symbols[1:] if s.type == STT_FILE]:
            block = self.select_file_block(file_sym.name, object_local_names(obj, file_sym))
            blocks.by_file.setdefault(file_sym.name, block)
            if blocks.first is None:
                blocks.first = block
        return blocks

    def select_file_block(self, filename: str, local_names: Iterable[str]) -> FileBlock:
        """The block of ``filename`` holding the object's locals (best match, must be unique)."""
        candidates = self.file_blocks(filename)
        has_blocks = self.rows.next_of_type(STT_FILE, 0) < len(self.rows)
        if not candidates and not has_blocks and not self.is_vmlinux:
            # Distro modules are shipped without STT_FILE symbols: the whole module is the
            # block, and find_local's one-match rule refuses names it cannot tell apart.
            whole = FileBlock(filename)
            whole.locals = [s for same in self.locals_by_name.values() for s in same]
            return whole
        if not candidates:
            raise SymbolLookupError("source file %s has no STT_FILE symbol in the %s symbol table"
                                    % (filename, self.objname))
        wanted = set(local_names)
        scored = sorted(((len(wanted & b.names()), i, b) for i, b in enumerate(candidates)), reverse=True,
                        key=lambda t: (t[0], -t[1]))
        best = scored[0]
        if len(scored) > 1 and scored[1][0] == best[0] and wanted:
            raise SymbolLookupError("cannot tell which of %d '%s' files in %s the object is: their locals "
                                    "match equally well" % (len(candidates), filename, self.objname))
        return best[2]

    def _check_covered(self, name: str) -> None:
        if self.wanted is not None and not self.wanted.covers(name):
            raise SymbolLookupError("internal error: %s was not among the names announced to the %s symbol "
                                    "table read for this object" % (name, self.objname))

    def _kallsyms_rank(self, sym: ParentSymbol) -> int:
        """``sympos`` of ``sym``: the kernel walks kallsyms counting every symbol of the name."""
        self._check_covered(sym.name)
        same = [s for s in self._rows_named(sym.name) if _in_kallsyms(s)] or [sym]
        if self.is_vmlinux:
            return _rank(sorted(same, key=lambda s: (s.value, s.index)), sym)
        # a module's kallsyms lose the .init* symbols once its init returns: the patch may be
        # applied before (the module loading) or after, so both counts must agree
        rank = _rank(same, sym)
        if sym.init or rank != _rank([s for s in same if not s.init], sym):
            raise SymbolLookupError("symbol %s of %s has a same-named symbol in an .init section (or is one): "
                                    "its kallsyms position changes when the module's init code is freed, so "
                                    "livepatch cannot find it reliably" % (sym.name, self.objname))
        return rank

    def find_local(self, name: str, block: Optional[FileBlock]) -> Optional[Resolution]:
        """A local of file block ``block``: exact name, else a unique match ignoring ``.N``."""
        if block is None:
            raise SymbolLookupError("local symbol %s: the object has no STT_FILE symbol, so no block of locals "
                                    "of the %s symbol table can be chosen for it" % (name, self.objname))
        exact = [s for s in block.locals if s.name == name]
        if not exact:
            base = without_number_suffix(name)
            exact = [s for s in block.locals if without_number_suffix(s.name) == base]
        if len(exact) != 1:
            return None
        sym = exact[0]
        return Resolution(sym.name, self.objname, self._kallsyms_rank(sym), sym.bind, sym.type,
                          sym.value, sym.size)

    def find_global(self, name: str) -> Optional[Resolution]:
        self._check_covered(name)
        sym = next((s for s in self._rows_named(name) if s.bind != STB_LOCAL and s.defined and s.type != STT_FILE),
                   None)
        if sym is None:
            return None
        return Resolution(sym.name, self.objname, self._kallsyms_rank(sym), sym.bind, sym.type,
                          sym.value, sym.size)


def _rank(order: List[ParentSymbol], sym: ParentSymbol) -> int:
    """1-based position of ``sym`` in ``order`` (same-named symbols), 0 when it is the only one."""
    if len(order) <= 1:
        return 0
    return 1 + next(i for i, s in enumerate(order) if s is sym)


def load_parent_symtab(path: str, objname: str, wanted: Optional[Wanted] = None) -> ParentSymtab:
    """Read the parent's table from an ELF file, or from readelf text when ``path`` is not ELF.

    ``wanted`` narrows a readelf text table to what one object's lookups need; the table then
    refuses questions outside it (an ELF parent is read whole: it is cached by the build).
    """
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == ELF_MAGIC:
        from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_symbols
        return ParentSymtab(symbols_from_model(read_symbols(path)), objname)
    with open(path, encoding="utf-8", errors="replace") as fh:
        return ParentSymtab(parse_readelf_symbols(fh, wanted), objname, wanted)


def object_file_name(obj: ElfObject) -> Optional[str]:
    for sym in obj.symbols[1:]:
        if sym.type == STT_FILE:
            return sym.name
    return None


def object_local_names(obj: ElfObject, file_sym: Optional[Symbol] = None) -> List[str]:
    """Names of the object's own function/object locals (of source file ``file_sym`` if given),
    to recognise its file block."""
    return [s.name for s in obj.symbols[1:]
            if s.is_local and s.type in (STT_FUNC, STT_OBJECT) and s.section is not None
            and (file_sym is None or s.file is file_sym)
            and not s.name.startswith(("__pfx_", "__cfi_", "__UNIQUE_ID_", "__already_done", "__func__",
                                       "__key", "_rs", "CSWTCH", "__warned"))]
