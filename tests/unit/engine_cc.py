"""Test helpers for the diff engine: compile original/patched C sources with kernel-style flags.

Each case writes ``orig`` and ``patched`` sources under the same file name (``x.c``) in two
directories — as kbuild does when a patch is applied in place — compiles them with gcc, links the
original object with ``ld -r`` into a stand-in *parent* (the "running kernel" whose symbol table
the engine looks symbols up in), writes a Module.symvers, runs the engine and reads the output.
"""

from __future__ import annotations

import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import ElfObject, Relocation, Section
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.diff import DiffResult, create_diff_object
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.intermediate import (
    FUNC_ENTRY,
    RELOCATION_ENTRY,
    SYMBOL_ENTRY,
)

KERNEL_CFLAGS = ["-O2", "-ffunction-sections", "-fdata-sections", "-pg", "-mfentry", "-mrecord-mcount",
                 "-mcmodel=kernel", "-fno-pic", "-mno-red-zone", "-fno-asynchronous-unwind-tables",
                 "-fno-common", "-Wno-builtin-declaration-mismatch"]
# The sizes the kernel's DWARF gives on 6.1 for the tables the tests emit with inline asm.
TEST_STRUCT_SIZES = {"BUG": 12, "EX": 12, "JUMP": 16, "ALT": 12, "PARA": 16, "ORC": 6, "STATIC_CALL": 8,
                     "PRINTK_INDEX": 44}
DEFAULT_EXPORTS = ("__fentry__", "_printk", "cold_report", "__might_sleep", "__warn_printk", "memcpy")

# Kernel-style table macros written in inline asm, as the kernel's own headers do.
PRELUDE = r"""
extern int _printk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern void cold_report(const char *what, int value) __attribute__((cold));
extern void __might_sleep(const char *file, int line);
#define BUG_ENTRY() asm volatile("1: ud2\n.pushsection __bug_table,\"aw\"\n2: .long 1b - 2b\n" \
        ".long %c0 - 2b\n.word %c1\n.word 0\n.org 2b+12\n.popsection" :: "i"(__FILE__), "i"(__LINE__))
#define EX_ENTRY() asm volatile("1: nop\n.pushsection __ex_table,\"a\"\n.balign 4\n.long 1b - .\n" \
        ".long 1b - .\n.long 0\n.popsection")
"""


@dataclass
class EngineCase:
    root: Path
    orig: Path
    patched: Path
    parent: Path
    symvers: Path
    out: Path
    result: Optional[DiffResult] = None
    output: Optional[ElfObject] = None

    def sections(self) -> Dict[str, Section]:
        assert self.output is not None, "the engine wrote no output"
        return self.output.section_by_name()

    def symbol_names(self) -> List[str]:
        return [s.name for s in self.output.symbols[1:] if s.type != 3]

    def relocations(self, section: str) -> List[Relocation]:
        sec = self.sections()[section]
        return sec.rela.relocations if sec.rela is not None else []

    def funcs(self) -> List[dict]:
        return decode_funcs(self.output)

    def klp_relocations(self) -> List[dict]:
        return decode_klp_relocations(self.output)


def compile_c(source: str, directory: Path, name: str = "x.c", flags: Sequence[str] = ()) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(PRELUDE + source)
    obj = directory / (name[:-2] + ".o")
    proc = subprocess.run(["gcc", *KERNEL_CFLAGS, *flags, "-c", name, "-o", obj.name], cwd=directory,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError("gcc failed:\n" + proc.stderr)
    return obj


def link_parent(objects: Sequence[Path], dest: Path) -> Path:
    subprocess.run(["ld", "-r", "-o", str(dest), *map(str, objects)], check=True)
    return dest


def write_symvers(dest: Path, exports: Sequence[str], module: str = "vmlinux") -> Path:
    dest.write_text("".join("0x00000000\t%s\t%s\tEXPORT_SYMBOL\t\n" % (name, module) for name in exports))
    return dest


def make_case(root: Path, orig_src: str, patched_src: str, flags: Sequence[str] = (),
              patched_flags: Optional[Sequence[str]] = None, extra_parent_src: Optional[str] = None,
              exports: Sequence[str] = DEFAULT_EXPORTS) -> EngineCase:
    orig = compile_c(orig_src, root / "orig", flags=flags)
    patched = compile_c(patched_src, root / "patched", flags=flags if patched_flags is None else patched_flags)
    parts = [orig]
    if extra_parent_src is not None:
        parts.append(compile_c(extra_parent_src, root / "other", name="other.c", flags=flags))
    parent = link_parent(parts, root / "parent.o")
    symvers = write_symvers(root / "Module.symvers", exports)
    return EngineCase(root, orig, patched, parent, symvers, root / "out.o")


def run_engine(case: EngineCase, parent_name: str = "vmlinux", struct_sizes=None) -> EngineCase:
    sizes = TEST_STRUCT_SIZES if struct_sizes is None else struct_sizes
    case.result = create_diff_object(str(case.orig), str(case.patched), parent_name, str(case.parent),
                                     str(case.symvers), "test_patch", str(case.out), sizes)
    case.output = read_elf(str(case.out)) if case.out.exists() else None
    return case


def _string_at(obj: ElfObject, sec: Section, offset: int) -> str:
    strings = obj.section_by_name()[".kpatch.strings"].data
    for reloc in sec.rela.relocations:
        if reloc.offset == offset:
            return strings[reloc.addend:strings.index(b"\0", reloc.addend)].decode()
    raise AssertionError("no string pointer at %s+%#x" % (sec.name, offset))


def decode_funcs(obj: ElfObject) -> List[dict]:
    sec = obj.section_by_name()[".kpatch.funcs"]
    out = []
    for i, (_new, new_size, old_addr, old_size, sympos, _n, _o) in enumerate(FUNC_ENTRY.iter_unpack(sec.data)):
        base = i * FUNC_ENTRY.size
        target = [r.sym.name for r in sec.rela.relocations if r.offset == base]
        out.append({"name": _string_at(obj, sec, base + 40), "objname": _string_at(obj, sec, base + 48),
                    "new": target[0] if target else None, "new_size": new_size, "old_addr": old_addr,
                    "old_size": old_size, "sympos": sympos})
    return out


def decode_klp_relocations(obj: ElfObject) -> List[dict]:
    secs = obj.section_by_name()
    syms_sec, rel_sec = secs[".kpatch.symbols"], secs[".kpatch.relocations"]
    symbols = []
    for i, (_src, sympos, bind, typ) in enumerate((e[0], e[1], e[2], e[3])
                                                  for e in SYMBOL_ENTRY.iter_unpack(syms_sec.data)):
        base = i * SYMBOL_ENTRY.size
        symbols.append({"name": _string_at(obj, syms_sec, base + 24), "objname": _string_at(obj, syms_sec, base + 32),
                        "sympos": sympos, "bind": bind, "type": typ})
    out = []
    for i, (_dest, rtype, external, addend, _obj, _ksym) in enumerate(RELOCATION_ENTRY.iter_unpack(rel_sec.data)):
        base = i * RELOCATION_ENTRY.size
        dest = [r for r in rel_sec.rela.relocations if r.offset == base][0]
        ksym = [r for r in rel_sec.rela.relocations if r.offset == base + 32][0]
        entry = dict(symbols[ksym.addend // SYMBOL_ENTRY.size])
        entry.update({"section": dest.sym.section.name if dest.sym.section else dest.sym.name,
                      "offset": dest.addend, "type": rtype, "external": external, "addend": addend,
                      "rel_objname": _string_at(obj, rel_sec, base + 24)})
        out.append(entry)
    return out


def u32(data: bytes, offset: int) -> int:
    return struct.unpack_from("<I", data, offset)[0]
