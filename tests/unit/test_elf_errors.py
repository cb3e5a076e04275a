"""Bad input to the ELF reader gives one clear error naming the file and the problem.

The foreign inputs are real files: an i386 object made by ``as --32``, the RISC-V (little-
endian ELF64) and s390x (big-endian ELF64) firmware images qemu ships, a truncated copy of
a gcc object, and a text file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.errors import ElfFormatError
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf, read_symbols
from tests.unit.elf_samples import SAMPLE_C, assemble, compile_c

RISCV_ELF = Path("/usr/share/qemu/opensbi-riscv64-generic-fw_dynamic.elf")
S390_ELF = Path("/usr/share/qemu/s390-ccw.img")
READERS = [read_elf, read_symbols]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("elf-errors")


@pytest.fixture(scope="module")
def sample_obj(workdir: Path) -> Path:
    return compile_c(workdir, "sample", SAMPLE_C)


def _foreign(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not installed (package qemu-system-data)")
    return path


@pytest.mark.parametrize("reader", READERS)
def test_text_file_is_not_elf(reader, workdir: Path) -> None:
    text = workdir / "notes.txt"
    text.write_text("this is not an object file\n")
    with pytest.raises(ElfFormatError, match=r"notes\.txt: not an ELF file"):
        reader(str(text))


@pytest.mark.parametrize("reader", READERS)
def test_32bit_object_is_refused(reader, workdir: Path) -> None:
    obj = assemble(workdir, "i386", "\t.text\n\t.globl f\nf:\n\tret\n", ["--32"])
    with pytest.raises(ElfFormatError, match=r"i386\.o: 32-bit ELF \(ELFCLASS32\); only ELF64"):
        reader(str(obj))


@pytest.mark.parametrize("reader", READERS)
def test_other_machine_is_refused(reader) -> None:
    path = _foreign(RISCV_ELF)
    with pytest.raises(ElfFormatError, match=r"fw_dynamic\.elf: machine RISC-V \(e_machine=243\) is not x86-64"):
        reader(str(path))


def test_big_endian_is_refused() -> None:
    path = _foreign(S390_ELF)
    with pytest.raises(ElfFormatError, match=r"s390-ccw\.img: big-endian .* only little-endian"):
        read_elf(str(path))


def test_missing_file_is_named(workdir: Path) -> None:
    with pytest.raises(ElfFormatError, match=r"nowhere\.o: cannot read: No such file"):
        read_elf(str(workdir / "nowhere.o"))


def test_truncated_header(sample_obj: Path, workdir: Path) -> None:
    cut = workdir / "cut-header.o"
    cut.write_bytes(sample_obj.read_bytes()[:40])
    with pytest.raises(ElfFormatError, match=r"cut-header\.o: truncated ELF header \(40 of 64 bytes\)"):
        read_elf(str(cut))


def test_truncated_body_names_what_is_missing(sample_obj: Path, workdir: Path) -> None:
    """Cut before the section header table (gcc puts it last): the error says so."""
    data = sample_obj.read_bytes()
    cut = workdir / "cut-body.o"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ElfFormatError, match=r"cut-body\.o: section header table .* extends past the end"):
        read_elf(str(cut))


def test_reader_needs_no_pyelftools(sample_obj: Path) -> None:
    """With pyelftools made unimportable the reader reads the object exactly as it does with it
    (the ELF layer is the standard library's), and the build module's check reports it missing."""
    code = (
        "import sys; sys.modules['elftools'] = None\n"
        "sys.path.insert(0, %r)\n"
        "import _bootstrap\n"
        "from ansible_collections.kpatch.livepatch.plugins.module_utils._elf import reader\n"
        "assert reader.HAS_PYELFTOOLS is False and 'elftools' in reader.PYELFTOOLS_IMPORT_ERROR\n"
        "obj = reader.read_elf(%r)\n"
        "print(repr([(s.name, s.sh_type, s.size, s.data) for s in obj.sections]"
        " + [(y.name, y.value, y.size, y.bind) for y in obj.symbols]))\n"
    ) % (str(Path(__file__).resolve().parents[2] / "tools"), str(sample_obj))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    obj = read_elf(str(sample_obj))
    expected = ([(s.name, s.sh_type, s.size, s.data) for s in obj.sections]
                + [(y.name, y.value, y.size, y.bind) for y in obj.symbols])
    assert proc.stdout.strip() == repr(expected)
    assert any(name == ".text" for name, *_rest in expected)


def test_damaged_headers_only_raise_format_errors(sample_obj: Path) -> None:
    """Truncations everywhere and byte damage in the ELF header, section header table and
    symbol table: the reader either copes or raises ElfFormatError, never anything else."""
    import random
    import struct

    from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf_bytes

    data = sample_obj.read_bytes()
    shoff = struct.unpack_from("<Q", data, 40)[0]
    regions = [(16, 64), (shoff, len(data))]
    damaged = [data[:n] for n in range(0, len(data), 13)]
    rng = random.Random(20240601)
    for _attempt in range(3000):
        buf = bytearray(data)
        lo, hi = rng.choice(regions)
        for _byte in range(2):
            buf[rng.randrange(lo, hi)] = rng.randrange(256)
        damaged.append(bytes(buf))
    refused = 0
    for blob in damaged:
        try:
            read_elf_bytes(blob, "damaged.o")
        except ElfFormatError as exc:
            assert str(exc).startswith("damaged.o: ")
            refused += 1
    assert refused > len(damaged) // 4, "damage should be noticed in many cases"
