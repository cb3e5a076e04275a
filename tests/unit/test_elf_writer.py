"""The writer on models built from scratch, the way the diff engine builds its output.

No input object: sections, symbols and relocations are created in Python, written,
linked by gcc/ld with a C program, and the program is run -- the machine code only works
if every relocation, symbol and section index came out right.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.errors import ElfWriteError
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import (
    GRP_COMDAT,
    R_X86_64_64,
    R_X86_64_PLT32,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_GROUP,
    SHF_INFO_LINK,
    SHF_WRITE,
    SHN_LORESERVE,
    SHT_GROUP,
    SHT_NOBITS,
    SHT_PROGBITS,
    SHT_RELA,
    STB_GLOBAL,
    STB_LOCAL,
    STT_FUNC,
    STT_OBJECT,
    STT_SECTION,
    ElfObject,
    Relocation,
    Section,
    Symbol,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.writer import write_elf
from tests.testbed.readelf import readelf

MAIN_C = r"""
#include <stdio.h>
int helper(void) { return 41; }
extern int answer(void);
extern int (*answer_ptr)(void);
extern long scratch_counter;
int main(void)
{
    scratch_counter += 5;
    printf("answer=%d via_ptr=%d counter=%ld\n", answer(), answer_ptr(), scratch_counter);
    return 0;
}
"""


def text_section(obj: ElfObject, name: str, code: bytes) -> Section:
    sec = Section(name=name, sh_type=SHT_PROGBITS, flags=SHF_ALLOC | SHF_EXECINSTR, data=code,
                  size=len(code), addralign=16)
    obj.sections.append(sec)
    return sec


def rela_for(obj: ElfObject, base: Section, relocs) -> Section:
    rela = Section(name=".rela" + base.name, sh_type=SHT_RELA, flags=SHF_INFO_LINK | (base.flags & SHF_GROUP),
                   base=base, relocations=list(relocs))
    base.rela = rela
    obj.sections.append(rela)
    return rela


def scratch_object() -> ElfObject:
    """``answer()`` calls ``helper()`` (defined in C) and adds 1; ``answer_ptr`` points at it;
    ``scratch_counter`` lives in .bss.  Globals come before a local in the list on purpose."""
    obj = ElfObject(path="scratch.o")
    obj.symbols.append(Symbol(""))
    # call helper; add $1,%eax; ret
    text = text_section(obj, ".text.answer", b"\xe8\x00\x00\x00\x00\x83\xc0\x01\xc3")
    data = Section(name=".data.answer_ptr", sh_type=SHT_PROGBITS, flags=SHF_ALLOC | SHF_WRITE,
                   data=bytes(8), size=8, addralign=8)
    bss = Section(name=".bss.scratch_counter", sh_type=SHT_NOBITS, flags=SHF_ALLOC | SHF_WRITE, size=8, addralign=8)
    obj.sections += [data, bss]
    answer = Symbol("answer", size=9, bind=STB_GLOBAL, type=STT_FUNC, section=text)
    helper = Symbol("helper", bind=STB_GLOBAL)  # undefined
    obj.symbols += [answer, helper,
                    Symbol("answer_ptr", size=8, bind=STB_GLOBAL, type=STT_OBJECT, section=data),
                    Symbol("scratch_counter", size=8, bind=STB_GLOBAL, type=STT_OBJECT, section=bss)]
    text.secsym = Symbol(text.name, bind=STB_LOCAL, type=STT_SECTION, section=text)
    obj.symbols.append(text.secsym)  # a local after the globals: the writer must reorder
    rela_for(obj, text, [Relocation(1, R_X86_64_PLT32, helper, -4)])
    rela_for(obj, data, [Relocation(0, R_X86_64_64, text.secsym, 0)])
    return obj


def link_and_run(obj_path: Path, workdir: Path) -> str:
    main = workdir / "main.c"
    main.write_text(MAIN_C)
    exe = workdir / (obj_path.stem + ".exe")
    proc = subprocess.run(["gcc", "-no-pie", "-O1", str(main), str(obj_path), "-o", str(exe)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout


def test_scratch_object_links_and_runs(tmp_path: Path) -> None:
    out = tmp_path / "scratch.o"
    write_elf(scratch_object(), str(out))
    readelf(out, "-a")
    assert link_and_run(out, tmp_path) == "answer=42 via_ptr=42 counter=5\n"


def test_scratch_object_reads_back(tmp_path: Path) -> None:
    obj = scratch_object()
    out = tmp_path / "scratch.o"
    write_elf(obj, str(out))
    back = read_elf(str(out))
    assert [s.name for s in back.sections] == [".text.answer", ".data.answer_ptr", ".bss.scratch_counter",
                                               ".rela.text.answer", ".rela.data.answer_ptr", ".symtab",
                                               ".strtab", ".shstrtab"]
    assert [s.name for s in back.symbols] == ["", ".text.answer", "answer", "helper", "answer_ptr",
                                              "scratch_counter"]
    # the writer numbered the model as written
    assert [s.index for s in obj.symbols] == [0, 2, 3, 4, 5, 1]
    rel = back.find_section(".rela.text.answer").relocations[0]
    assert (rel.offset, rel.type, rel.sym.name, rel.addend) == (1, R_X86_64_PLT32, "helper", -4)


def test_scratch_group_and_extended_indices(tmp_path: Path) -> None:
    """A COMDAT group written from a model, pushed past SHN_LORESERVE sections so that
    the writer must invent .symtab_shndx and extended numbering itself."""
    obj = scratch_object()
    padding = [Section(name=".pad.%d" % i, sh_type=SHT_PROGBITS) for i in range(SHN_LORESERVE)]
    obj.sections[0:0] = padding
    text = obj.find_section(".text.answer")
    group = Section(name=".group", sh_type=SHT_GROUP, group_flags=GRP_COMDAT,
                    group_members=[text, text.rela], signature=obj.find_symbol("answer"))
    text.flags |= SHF_GROUP
    text.rela.flags |= SHF_GROUP
    obj.sections.insert(0, group)
    out = tmp_path / "grouped.o"
    write_elf(obj, str(out))
    header = readelf(out, "-h")
    assert "Number of section headers:         0 (" in header
    assert ".symtab_shndx" in readelf(out, "-S")
    groups = readelf(out, "-g")
    assert "COMDAT group section [    1] `.group' [answer] contains 2 sections:" in groups
    assert link_and_run(out, tmp_path) == "answer=42 via_ptr=42 counter=5\n"


@pytest.mark.parametrize("damage, message", [
    ("null", r"symbols\[0\] must be the null symbol"),
    ("rela-sym", r"a relocation in '.rela.text.answer' refers to symbol 'stray'"),
    ("no-base", r"relocation section '.rela.data.answer_ptr' \(its base\) refers to section None"),
    ("shndx", r"symbol 'answer' has section index 5 but no section"),
    ("size", r"section '.text.answer' has size 9 but 10 bytes of data"),
    ("nul", r"name 'bad\\x00name' contains a NUL byte"),
])
def test_inconsistent_models_are_refused(damage: str, message: str, tmp_path: Path) -> None:
    obj = scratch_object()
    text = obj.find_section(".text.answer")
    if damage == "null":
        obj.symbols.pop(0)
    elif damage == "rela-sym":
        text.rela.relocations.append(Relocation(0, R_X86_64_64, Symbol("stray", bind=STB_GLOBAL), 0))
    elif damage == "no-base":
        obj.find_section(".rela.data.answer_ptr").base = None
    elif damage == "shndx":
        answer = obj.find_symbol("answer")
        answer.section, answer.shndx = None, 5
    elif damage == "size":
        text.data += b"\x90"
    elif damage == "nul":
        obj.find_symbol("helper").name = "bad\0name"
    out = tmp_path / "bad.o"
    with pytest.raises(ElfWriteError, match=message):
        write_elf(obj, str(out))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "a temporary file was left behind"


def test_rela_entry_layout(tmp_path: Path) -> None:
    """r_info = symbol index << 32 | type, checked on the raw bytes."""
    obj = scratch_object()
    out = tmp_path / "raw.o"
    write_elf(obj, str(out))
    back = read_elf(str(out))
    raw = back.find_section(".rela.text.answer").data
    offset, info, addend = struct.unpack("<QQq", raw)
    assert (offset, info >> 32, info & 0xFFFFFFFF, addend) == (1, obj.find_symbol("helper").index, R_X86_64_PLT32, -4)
