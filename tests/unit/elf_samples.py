"""Real ELF inputs for the reader/writer tests, produced at test time by gcc and as.

* ``SAMPLE_C`` compiled with the flags kpatch builds kernel objects with: function and
  data sections, ``__fentry__`` calls and ``__mcount_loc``, a jump table, merged string
  sections, a ``.cold`` split, weak/alias/hidden/common/TLS symbols, a COMDAT group and
  an absolute symbol.
* ``many_sections_asm``: more than SHN_LORESERVE (0xff00) sections, so the object
  needs extended section numbering (e_shnum 0, e_shstrndx SHN_XINDEX, .symtab_shndx).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import List, Sequence

KERNEL_CFLAGS = ["-O2", "-ffunction-sections", "-fdata-sections", "-pg", "-mfentry", "-mrecord-mcount",
                 "-mcmodel=kernel", "-fno-pic"]

SAMPLE_C = r"""
/* Kernel-style C exercising the section/symbol kinds create-diff-object meets. */
extern int printk(const char *fmt, ...);
extern void external_hook(int);

static int counter;
int shared_val = 3;
int common_val __attribute__((common));
static const char *const names[] = { "zero", "one", "two" };
__thread int per_thread;
int hidden_val __attribute__((visibility("hidden"))) = 7;

__attribute__((noinline)) static int helper(int x)
{
    return x * counter + names[x & 1][0];
}

int exported(int y)
{
    counter++;
    printk("exported %d\n", y);
    return helper(y) + shared_val;
}

int __attribute__((weak)) weak_fn(int z) { return z - 1; }
int alias_fn(int z) __attribute__((alias("weak_fn")));

__attribute__((section(".init.text"))) int init_fn(void) { return printk("init\n"); }

int dispatch(int op, int v)
{
    switch (op) {
    case 0: return v + 11;
    case 1: return v * 13;
    case 2: return v - 17;
    case 3: return v ^ 19;
    case 4: return v << 3;
    case 5: return helper(v);
    case 6: return v / 7;
    default: return -1;
    }
}

int rarely(int v)
{
    if (__builtin_expect(v == 12345, 0)) {
        external_hook(v);
        printk("rare path %d %d %d\n", v, v + 1, v + 2);
        external_hook(v + 1);
    }
    return v + per_thread;
}

/* A COMDAT group and an absolute symbol, as kernel assembly produces them. */
asm(".section .text.grouped,\"axG\",@progbits,grouped_sig,comdat\n"
    ".globl grouped_sig\n.type grouped_sig,@function\n"
    "grouped_sig:\n\tcall exported\n\tret\n"
    ".section .data.grouped,\"awG\",@progbits,grouped_sig,comdat\n"
    "\t.quad grouped_sig\n"
    ".globl abs_marker\n.set abs_marker, 0x1234\n"
    ".text\n");
"""

# Enough sections that some indices are >= SHN_LORESERVE (0xff00 = 65280).
MANY_SECTIONS = 65400


def run(argv: List[str], cwd: Path) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def compile_c(directory: Path, name: str, source: str, flags: Sequence[str] = tuple(KERNEL_CFLAGS)) -> Path:
    src = directory / f"{name}.c"
    src.write_text(source)
    out = directory / f"{name}.o"
    run(["gcc", *flags, "-c", str(src), "-o", str(out)], directory)
    return out


def many_sections_asm(count: int = MANY_SECTIONS) -> str:
    """One function per section; every 1000th calls the last one, so relocations reach
    symbols whose section index needs SHN_XINDEX."""
    chunks = []
    for i in range(count):
        call = f"\tcall f{count - 1}\n" if i % 1000 == 0 else ""
        chunks.append(f"\t.section .text.f{i},\"ax\",@progbits\n\t.globl f{i}\n\t.type f{i},@function\n"
                      f"f{i}:\n{call}\tret\n\t.size f{i},.-f{i}\n")
    chunks.append("\t.section .text.local_tail,\"ax\",@progbits\nlocal_tail:\n\tret\n"
                  "\t.section .data.tail,\"aw\",@progbits\n\t.quad local_tail\n")
    return "".join(chunks)


def assemble(directory: Path, name: str, source: str, flags: Sequence[str] = ()) -> Path:
    src = directory / f"{name}.s"
    src.write_text(source)
    out = directory / f"{name}.o"
    run(["as", *flags, str(src), "-o", str(out)], directory)
    return out
