"""The livepatch conversion (``_engine/klp.py``) on objects carrying the engine's real records.

Input: gcc-compiled functions whose references to unexported symbols are moved into
``.kpatch.*`` sections by the engine's own ``emit_intermediate_sections`` (so producer and
consumer of the layout are tested together), two such objects joined by ``ld -r`` as kbuild
joins a module's parts (which shifts every record's relocation addends), then converted.
GNU readelf checks the result.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import (
    SHF_ALLOC,
    STB_GLOBAL,
    STB_LOCAL,
    STT_FUNC,
    STT_OBJECT,
    Section,
    SHT_PROGBITS,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.writer import write_elf
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.intermediate import (
    KlpRelocation,
    KlpSymbol,
    PatchedFunc,
    emit_intermediate_sections,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.klp import (
    MAX_SYMNAME_BEFORE_6_1,
    KlpError,
    convert_to_klp,
    create_klp_module,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.distro import max_symbol_name
from tests.testbed.readelf import parse_sections, parse_symbols, readelf
from tests.unit.elf_samples import SAMPLE_C, compile_c

PATCH_A = r"""
extern int secret_counter;          /* vmlinux, not exported */
extern int helper_local(int);       /* a local vmlinux function with same-named twins */
extern int ext4_thing;              /* lives in the ext4 module */
int patched_a(int x)
{
    return secret_counter + helper_local(x) + ext4_thing;
}
"""
PATCH_B = r"""
extern int secret_counter;
extern long other_state[4];
int patched_b(int x)
{
    other_state[2] = x;
    return secret_counter * 3;
}
"""
# symbol in the C file -> the record the engine would make for it
TARGETS: Dict[str, KlpSymbol] = {
    "secret_counter": KlpSymbol("secret_counter", "vmlinux", 0, STB_GLOBAL, STT_OBJECT),
    "helper_local": KlpSymbol("helper_local", "vmlinux", 2, STB_LOCAL, STT_FUNC),
    "ext4_thing": KlpSymbol("ext4_thing", "ext4", 0, STB_GLOBAL, STT_OBJECT),
    "other_state": KlpSymbol("other_state", "vmlinux", 1, STB_LOCAL, STT_OBJECT),
}
Expected = List[Tuple[str, str, int, str, str, int]]  # (klp section, base, offset, type, symbol, addend)
_TYPES = {2: "R_X86_64_PC32", 4: "R_X86_64_PLT32", 11: "R_X86_64_32S", 1: "R_X86_64_64"}


def engine_object(workdir: Path, name: str, source: str, targets: Optional[Dict[str, KlpSymbol]] = None,
                  func_name: str = "") -> Expected:
    """Compile ``source``; move references to ``targets`` (default TARGETS) into .kpatch.* records
    the engine's way; ``func_name`` (default ``patched_<last letter of name>``) is the patched function."""
    targets = TARGETS if targets is None else targets
    obj_path = compile_c(workdir, name, source)
    obj = read_elf(str(obj_path))
    moved: List[KlpRelocation] = []
    expected: Expected = []
    for sec in obj.sections:
        if sec.rela is None or not sec.is_text:
            continue
        keep = []
        for rel in sec.rela.relocations:
            target = targets.get(rel.sym.name)
            if target is None:
                keep.append(rel)
                continue
            moved.append(KlpRelocation(sec, rel.offset, rel.type, rel.addend, target, external=False))
            expected.append((f".klp.rela.{target.objname}.{sec.name}", sec.name, rel.offset, _TYPES[rel.type],
                             f".klp.sym.{target.objname}.{target.name},{target.sympos}", rel.addend))
        sec.rela.relocations = keep
    obj.symbols = [s for s in obj.symbols if s.name not in targets]
    func = obj.find_symbol(func_name or f"patched_{name[-1]}")
    emit_intermediate_sections(obj, [PatchedFunc(func, 0xFFFFFFFF81000000, 64, 0, "vmlinux")], moved)
    write_elf(obj, str(obj_path))
    return expected


def klp_relocations(path: Path) -> Expected:
    """(section, base, offset, type, symbol, addend) of every .klp.rela entry, from readelf."""
    rows: Expected = []
    sections = {r.name: r for r in parse_sections(readelf(path, "-S"))}
    by_index = {r.index: r.name for r in sections.values()}
    current = None
    for line in readelf(path, "-r").splitlines():
        head = re.match(r"^Relocation section '(.+)' at offset", line)
        if head:
            current = head.group(1) if head.group(1).startswith(".klp.rela.") else None
            continue
        entry = re.match(r"^([0-9a-f]{16})\s+[0-9a-f]{16}\s+(\S+)\s+[0-9a-f]{16}\s+(\S+) ([+-]) ([0-9a-f]+)$", line)
        if current and entry:
            addend = int(entry.group(5), 16) * (-1 if entry.group(4) == "-" else 1)
            rows.append((current, by_index[sections[current].info], int(entry.group(1), 16), entry.group(2),
                         entry.group(3), addend))
    return rows


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Expected]:
    """patch_a.o + patch_b.o joined by ld -r, and the klp relocations they must yield."""
    work = tmp_path_factory.mktemp("klp")
    expected = engine_object(work, "patch_a", PATCH_A) + engine_object(work, "patch_b", PATCH_B)
    out = work / "linked.o"
    proc = subprocess.run(["ld", "-r", str(work / "patch_a.o"), str(work / "patch_b.o"), "-o", str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return out, expected


def test_conversion_yields_the_moved_relocations(linked, tmp_path: Path) -> None:
    src, expected = linked
    out = tmp_path / "klp.o"
    result = create_klp_module(str(src), str(out))
    readelf(out, "-a")  # clean: no warnings
    assert sorted(klp_relocations(out)) == sorted(expected)
    assert result.relocations == len(expected) == 5
    assert sorted(result.sections) == [".klp.rela.ext4..text.patched_a", ".klp.rela.vmlinux..text.patched_a",
                                       ".klp.rela.vmlinux..text.patched_b"]


def test_sections_and_symbols_have_the_kernel_format(linked, tmp_path: Path) -> None:
    src, _expected = linked
    out = tmp_path / "klp.o"
    result = create_klp_module(str(src), str(out))
    sections = {r.name: r for r in parse_sections(readelf(out, "-S"))}
    for name in result.sections:
        assert sections[name].type == "RELA" and sections[name].flags == "AIo", sections[name]
        assert sections[name].link == sections[".symtab"].index
    for gone in (".kpatch.relocations", ".kpatch.symbols", ".rela.kpatch.relocations", ".rela.kpatch.symbols"):
        assert gone not in sections
    for kept in (".kpatch.funcs", ".rela.kpatch.funcs", ".kpatch.strings"):
        assert kept in sections
    klp_syms = {row[7]: row for row in parse_symbols(readelf(out, "-s")) if row[7].startswith(".klp.sym.")}
    assert sorted(klp_syms) == [".klp.sym.ext4.ext4_thing,0", ".klp.sym.vmlinux.helper_local,2",
                                ".klp.sym.vmlinux.other_state,1", ".klp.sym.vmlinux.secret_counter,0"]
    assert result.symbols == 4  # secret_counter, used by both objects, once
    for name, (_num, _value, _size, typ, bind, _vis, ndx, _name) in klp_syms.items():
        assert ndx == "OS [0xff20]", f"{name}: readelf Ndx {ndx}"  # SHN_LIVEPATCH
        target = TARGETS[name.split(".")[4].split(",")[0]]
        assert (typ, bind) == ({STT_FUNC: "FUNC", STT_OBJECT: "OBJECT"}[target.type],
                               {STB_LOCAL: "LOCAL", STB_GLOBAL: "GLOBAL"}[target.bind])


def test_plain_object_is_refused(tmp_path: Path) -> None:
    obj = read_elf(str(compile_c(tmp_path, "plain", SAMPLE_C)))
    with pytest.raises(KlpError, match=r"plain\.o: no \.kpatch\.relocations section"):
        convert_to_klp(obj)


def test_module_without_livepatch_modinfo_is_refused(linked) -> None:
    obj = read_elf(str(linked[0]))
    info = b"license=GPL\0vermagic=6.1.0-50-cloud-amd64 SMP mod_unload modversions \0"
    obj.sections.append(Section(name=".modinfo", sh_type=SHT_PROGBITS, flags=SHF_ALLOC, data=info, size=len(info)))
    with pytest.raises(KlpError, match=r"\.modinfo lacks livepatch=Y"):
        convert_to_klp(obj)


def test_unparsable_object_name_is_refused(tmp_path: Path) -> None:
    targets = dict(TARGETS, ext4_thing=KlpSymbol("ext4_thing", "ext4.ko", 0, STB_GLOBAL, STT_OBJECT))
    engine_object(tmp_path, "patch_a", PATCH_A, targets)
    with pytest.raises(KlpError, match=r"object name 'ext4\.ko' .* without '\.'"):
        convert_to_klp(read_elf(str(tmp_path / "patch_a.o")))


LONG_NAME = "helper_" + "x" * 130   # 137 characters: fine for 6.1+, too long before
LONG_SOURCE = "extern int %s(int);\nint patched_l(int x) { return %s(x) + 1; }\n" % (LONG_NAME, LONG_NAME)


def test_names_longer_than_old_kallsyms_reads_are_refused_for_kernels_before_6_1(tmp_path: Path) -> None:
    """#19 item 9: before Linux 6.1 KSYM_NAME_LEN is 128 (the pipeline passes 127 for them,
    ``_kbuild/distro.max_symbol_name``); the same module converts for a newer kernel."""
    assert max_symbol_name("5.15.0-91-generic") == max_symbol_name("5.14.0-362.8.1.el9_3.x86_64") == 127
    assert max_symbol_name("6.1.0-50-cloud-amd64") == max_symbol_name("6.12.107+deb12-cloud-amd64") == 511
    engine_object(tmp_path, "patch_l", LONG_SOURCE,
                  {LONG_NAME: KlpSymbol(LONG_NAME, "vmlinux", 0, STB_LOCAL, STT_FUNC)})
    src = tmp_path / "patch_l.o"
    with pytest.raises(KlpError, match=r"livepatch symbol %s is 137 characters long; .* at most 127" % LONG_NAME):
        create_klp_module(str(src), str(tmp_path / "old.ko"), MAX_SYMNAME_BEFORE_6_1)
    assert create_klp_module(str(src), str(tmp_path / "new.ko")).relocations == 1


def test_a_patched_function_name_too_long_for_old_kernels_is_refused(tmp_path: Path) -> None:
    name = "patched_" + "f" * 125   # 133 characters
    engine_object(tmp_path, "patch_f", "extern int secret_counter;\nint %s(int x) { return secret_counter + x; }\n"
                  % name, func_name=name)
    with pytest.raises(KlpError, match=r"patched function %s is 133 characters long" % name):
        create_klp_module(str(tmp_path / "patch_f.o"), str(tmp_path / "old.ko"), MAX_SYMNAME_BEFORE_6_1)
    assert create_klp_module(str(tmp_path / "patch_f.o"), str(tmp_path / "new.ko")).relocations == 1


CALLS_SOURCE = r"""
int patched_c(int x)
{
    asm volatile("1: call helper_local\n\t.pushsection .call_sites, \"a\"\n\t.long 1b - .\n\t.popsection\n\t"
                 "2: call ext4_helper\n\t.pushsection .call_sites, \"a\"\n\t.long 2b - .\n\t.popsection");
    return x;
}
"""


def test_call_sites_are_dropped_only_for_calls_a_module_object_completes(tmp_path: Path) -> None:
    """#19 item 9: vmlinux klp relocations are applied during the patch module's load, before the
    loader reads .call_sites (module_finalize): that call keeps its entry; ext4's are applied when
    ext4 loads, so its call still reads ``call .+0`` then and loses its entry."""
    targets = {"helper_local": TARGETS["helper_local"],
               "ext4_helper": KlpSymbol("ext4_helper", "ext4", 0, STB_GLOBAL, STT_FUNC)}
    engine_object(tmp_path, "patch_c", CALLS_SOURCE, targets)
    obj = read_elf(str(tmp_path / "patch_c.o"))
    result = convert_to_klp(obj)
    assert result.call_sites_dropped == 1
    sections = {s.name: s for s in obj.sections}
    assert sorted(result.sections) == [".klp.rela.ext4..text.patched_c", ".klp.rela.vmlinux..text.patched_c"]
    listed = [r.sym.value + r.addend for r in sections[".call_sites"].rela.relocations]
    vmlinux_call = [r.offset - 1 for r in sections[".klp.rela.vmlinux..text.patched_c"].relocations]
    assert listed == vmlinux_call and sections[".text.patched_c"].data[listed[0]] == 0xE8
