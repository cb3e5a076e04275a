"""The ELF reader and writer on real objects: read → write must give an equivalent object.

Inputs are compiled by gcc/as at test time (kernel-style flags); the Debian 6.1 image's ``.ko``
files and ``vmlinux`` are the inputs of tests/integration/test_elf_roundtrip_debian.py.  Equivalence is judged by GNU
readelf, not by our own reader (see ``tests/testbed/readelf.py`` for the normalisation);
every output must also pass ``readelf -a -W`` without a warning and link with ``ld -r``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import (
    SHN_ABS,
    SHN_COMMON,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHT_GROUP,
    SHT_NOBITS,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    SHT_SYMTAB_SHNDX,
    STB_LOCAL,
    STT_FILE,
    STT_SECTION,
    STT_TLS,
    Symbol,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf, read_symbols
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.writer import serialise, write_elf
from tests.testbed.readelf import elf_view, parse_sections, parse_symbols, readelf, view_diff
from tests.unit.elf_checks import assert_equivalent, assert_links, roundtrip
from tests.unit.elf_samples import SAMPLE_C, assemble, compile_c, many_sections_asm

_REGENERATED = (SHT_SYMTAB, SHT_STRTAB, SHT_SYMTAB_SHNDX, SHT_RELA, SHT_GROUP)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("elf")


@pytest.fixture(scope="module")
def sample_obj(workdir: Path) -> Path:
    return compile_c(workdir, "sample", SAMPLE_C)


@pytest.fixture(scope="module")
def many_obj(workdir: Path) -> Path:
    return assemble(workdir, "many", many_sections_asm())


# --------------------------------------------------------------------------- round trips


def test_sample_roundtrip_is_equivalent_and_links(sample_obj: Path, workdir: Path) -> None:
    out = roundtrip(sample_obj, workdir / "sample.rt.o")
    assert_equivalent(sample_obj, out)
    assert_links(out, workdir)


def test_second_roundtrip_is_byte_identical(sample_obj: Path, workdir: Path) -> None:
    """Writing is a fixed point: read(write(x)) writes the very same bytes."""
    first = roundtrip(sample_obj, workdir / "sample.rt1.o")
    second = roundtrip(first, workdir / "sample.rt2.o")
    assert first.read_bytes() == second.read_bytes()


def test_extended_section_numbering_roundtrip(many_obj: Path, workdir: Path) -> None:
    header = readelf(many_obj, "-h")
    assert "Number of section headers:         0 (" in header, "the input should need extended numbering"
    out = roundtrip(many_obj, workdir / "many.rt.o")
    assert "Number of section headers:         0 (" in readelf(out, "-h")
    assert_equivalent(many_obj, out)
    assert_links(out, workdir)


# --------------------------------------------------------------------------- the model the reader builds


def test_reader_wiring_matches_readelf(sample_obj: Path) -> None:
    obj = read_elf(str(sample_obj))
    rows = parse_sections(readelf(sample_obj, "-S"))
    names = {row.index: row.name for row in rows}
    assert [(s.index, s.name) for s in obj.sections] == [(r.index, r.name) for r in rows if r.index]
    symbols = parse_symbols(readelf(sample_obj, "-s"))
    assert len(obj.symbols) == len(symbols)
    for sym, (num, value, size, typ, bind, _vis, ndx, name) in zip(obj.symbols, symbols):
        assert sym.index == int(num) and sym.value == int(value, 16) and sym.name == name
        if ndx.isdigit():
            assert sym.section is not None and sym.section.name == names[int(ndx)], name
        else:
            assert sym.section is None and sym.shndx == {"UND": SHN_UNDEF, "ABS": SHN_ABS, "COM": SHN_COMMON}[ndx]
    by_name = obj.symbol_by_name()
    secs = obj.section_by_name()
    assert by_name["per_thread"].type == STT_TLS and secs[".tbss.per_thread"].sh_type == SHT_NOBITS
    assert secs[".bss.counter"].data == b"" and secs[".bss.counter"].size == 4
    assert secs[".text.helper"].secsym is not None and secs[".text.helper"].secsym.type == STT_SECTION
    assert secs[".text.helper"].rela is secs[".rela.text.helper"] and secs[".rela.text.helper"].base is secs[".text.helper"]
    fentry = [r for r in secs[".rela.text.exported"].relocations if r.sym.name == "__fentry__"]
    assert len(fentry) == 1 and fentry[0].offset == 1 and fentry[0].addend == -4
    group = secs[".group"]
    assert group.signature is by_name["grouped_sig"] and group.group_flags == 1
    assert [m.name for m in group.group_members] == [".text.grouped", ".rela.text.grouped", ".data.grouped",
                                                     ".rela.data.grouped"]
    assert all(m.grouped for m in group.group_members)
    file_sym = by_name["sample.c"]
    assert file_sym.type == STT_FILE
    for sym in obj.symbols[1:]:
        expect = file_sym if sym.bind == STB_LOCAL and sym.type != STT_FILE else None
        assert sym.file is expect, sym.name


def test_reader_resolves_extended_indices(many_obj: Path) -> None:
    obj = read_elf(str(many_obj))
    assert len(obj.sections) > SHN_LORESERVE
    last = obj.symbol_by_name()["f%d" % (sum(1 for s in obj.sections if s.name.startswith(".text.f")) - 1)]
    assert last.section is not None and last.section.index >= SHN_LORESERVE
    assert last.section.name == ".text." + last.name
    callers = [r for s in obj.sections if s.sh_type == SHT_RELA for r in s.relocations if r.sym is last]
    assert callers, "relocations should reach the symbol behind SHN_XINDEX"


def test_read_symbols_equals_read_elf(sample_obj: Path) -> None:
    full = read_elf(str(sample_obj)).symbols
    fast = read_symbols(str(sample_obj))

    def key(s: Symbol) -> tuple:
        return (s.index, s.name, s.value, s.size, s.bind, s.type, s.other, s.shndx,
                s.section.name if s.section else None, s.file.name if s.file else None)

    assert [key(s) for s in fast] == [key(s) for s in full]
    assert all(s.section is None or s.section.data == b"" for s in fast), "read_symbols must not load section data"


# --------------------------------------------------------------------------- the writer on engine-made models


def test_normalisation_sees_changes(sample_obj: Path, workdir: Path) -> None:
    """The comparison is not blind: one changed addend, binding or group member shows up."""
    base = elf_view(sample_obj)
    edits = {
        "addend": lambda o: setattr(o.find_section(".rela.text.exported").relocations[1], "addend", 99),
        "bind": lambda o: setattr(o.find_symbol("shared_val"), "bind", 2),
        "member": lambda o: o.find_section(".group").group_members.pop(),
        "rela-sym": lambda o: setattr(o.find_section(".rela.text.helper").relocations[0], "sym",
                                      o.find_symbol("exported")),
    }
    for what, edit in edits.items():
        obj = read_elf(str(sample_obj))
        edit(obj)
        out = workdir / f"edited-{what}.o"
        write_elf(obj, str(out))
        assert view_diff(base, elf_view(out)) != "", f"editing {what} went unnoticed"


def test_writer_orders_locals_first_and_drops_symbols(sample_obj: Path, workdir: Path) -> None:
    """An engine-style edit: drop a function section with its relocations and symbols (and, as
    kpatch does, .eh_frame, whose FDE for it would dangle), add a local at the end."""
    obj = read_elf(str(sample_obj))
    weak = obj.find_section(".text.weak_fn")
    eh_frame = obj.find_section(".eh_frame")
    gone = {id(weak), id(weak.rela), id(eh_frame), id(eh_frame.rela)}
    obj.sections = [s for s in obj.sections if id(s) not in gone]
    dropped = {id(s) for s in obj.symbols if s.section is weak}
    obj.symbols = [s for s in obj.symbols if id(s) not in dropped]
    for sec in obj.sections:
        sec.relocations = [r for r in sec.relocations if id(r.sym) not in dropped]
    obj.symbols.append(Symbol(name="late_local", bind=STB_LOCAL, type=2, section=obj.find_section(".text.helper")))
    out = workdir / "edited.o"
    write_elf(obj, str(out))
    readelf(out, "-a")
    rows = parse_symbols(readelf(out, "-s"))
    binds = [r[4] for r in rows]
    assert binds.index("GLOBAL") > binds.index("LOCAL") and "LOCAL" not in binds[binds.index("GLOBAL"):]
    assert "late_local" in [r[7] for r in rows] and "weak_fn" not in [r[7] for r in rows]
    symtab = [r for r in parse_sections(readelf(out, "-S")) if r.type == "SYMTAB"][0]
    assert symtab.info == binds.index("GLOBAL")
    assert_links(out, workdir)


def test_removed_section_still_referenced_is_refused(sample_obj: Path, workdir: Path) -> None:
    obj = read_elf(str(sample_obj))
    obj.sections = [s for s in obj.sections if s.name != ".text.weak_fn"]
    out = workdir / "refused.o"
    with pytest.raises(ValueError, match=r"\.text\.weak_fn.*not in the model's section list"):
        write_elf(obj, str(out))
    assert not out.exists()
    assert not [p for p in workdir.iterdir() if p.name.startswith(".refused.o")], "temporary file left behind"


def test_write_keeps_existing_file_on_failure(sample_obj: Path, workdir: Path) -> None:
    out = workdir / "kept.o"
    shutil.copyfile(sample_obj, out)
    obj = read_elf(str(sample_obj))
    obj.find_section(".text.helper").data += b"\x90"  # size no longer matches
    with pytest.raises(ValueError, match=r"\.text\.helper.*size 31 but 32 bytes"):
        write_elf(obj, str(out))
    assert out.read_bytes() == sample_obj.read_bytes()


def test_serialise_is_deterministic(sample_obj: Path) -> None:
    obj = read_elf(str(sample_obj))
    assert serialise(obj) == serialise(obj)
