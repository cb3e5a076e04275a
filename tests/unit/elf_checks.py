"""Round-trip checks shared by the ELF writer's tests (tests/unit/test_elf_roundtrip.py on gcc's
objects, tests/integration/test_elf_roundtrip_debian.py on the Debian kernel's modules)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import List, Tuple

from elftools.elf.elffile import ELFFile

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.writer import write_elf
from tests.testbed.readelf import elf_view, readelf, view_diff


def roundtrip(src: Path, dest: Path) -> Path:
    write_elf(read_elf(str(src)), str(dest))
    return dest


def plain_contents(path: Path) -> List[Tuple[str, bytes]]:
    """(name, bytes) of every section the writer copies verbatim, read by pyelftools."""
    out = []
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        for sec in elf.iter_sections():
            header_type = sec.header["sh_type"]
            if sec.header["sh_type"] in ("SHT_NULL", "SHT_SYMTAB", "SHT_STRTAB", "SHT_SYMTAB_SHNDX",
                                         "SHT_RELA", "SHT_GROUP"):
                continue
            data = b"" if header_type == "SHT_NOBITS" else sec.data()
            out.append((sec.name, data))
    return out


def assert_equivalent(src: Path, out: Path) -> None:
    readelf(out, "-a")  # raises on any warning or error
    diff = view_diff(elf_view(src), elf_view(out))
    assert diff == "", f"{out} differs from {src}:\n{diff}"
    assert plain_contents(src) == plain_contents(out), f"section contents of {out} differ from {src}"


def assert_links(obj: Path, workdir: Path) -> None:
    linked = workdir / (obj.stem + ".ld-r.o")
    proc = subprocess.run(["ld", "-r", str(obj), "-o", str(linked)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and not proc.stderr.strip(), f"ld -r {obj}: {proc.stderr}"
