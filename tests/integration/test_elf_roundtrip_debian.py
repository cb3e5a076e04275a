"""The ELF reader and writer on the Debian 6.1 kernel's own files (fetched: integration).

Real ``.ko`` files of three shapes round-trip to objects GNU readelf finds equivalent, and every
symbol of the real ``vmlinux`` reads as readelf shows it.  The gcc-compiled inputs are
tests/unit/test_elf_roundtrip.py's; the checks are tests/unit/elf_checks.py's.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_symbols
from tests.testbed.kernels import DEFAULT_RELEASE, fetch_kernel
from tests.testbed.readelf import parse_sections, parse_symbols, readelf
from tests.unit.elf_checks import assert_equivalent, assert_links, roundtrip

pytestmark = pytest.mark.integration

# Debian modules of different shapes: tiny, medium with many relocations, and a 3.8 MB one.
DEBIAN_MODULES = ["fs/binfmt_misc.ko", "net/key/af_key.ko", "fs/btrfs/btrfs.ko"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("elf")


@pytest.fixture(scope="module")
def kernel():
    return fetch_kernel(DEFAULT_RELEASE)


@pytest.mark.parametrize("module", DEBIAN_MODULES)
def test_debian_module_roundtrip(kernel, module: str, workdir: Path) -> None:
    src = kernel.modules_dir / "kernel" / module
    assert src.exists(), f"{src} missing from the Debian image"
    out = roundtrip(src, workdir / Path(module).name)
    assert_equivalent(src, out)
    assert_links(out, workdir)
    modinfo = subprocess.run(["modinfo", "-F", "vermagic", str(out)], capture_output=True, text=True, check=False)
    assert modinfo.stdout.startswith(kernel.release + " "), modinfo.stderr


def test_read_symbols_of_debian_vmlinux(kernel) -> None:
    """All ~118k symbols of the real vmlinux agree with readelf, and locals know their file."""
    symbols = read_symbols(str(kernel.vmlinux))
    rows = parse_symbols(readelf(kernel.vmlinux, "-s"))
    sections = {r.index: r.name for r in parse_sections(readelf(kernel.vmlinux, "-S"))}
    assert len(symbols) == len(rows) > 100000
    for sym, (num, value, size, typ, bind, _vis, ndx, name) in zip(symbols, rows):
        if sym.name != name or sym.value != int(value, 16) or str(sym.size) != size and hex(sym.size) != size:
            pytest.fail(f"symbol {num}: ours {sym.name!r} {sym.value:#x} {sym.size}, readelf {name!r} {value} {size}")
        if ndx.isdigit() and (sym.section is None or sym.section.name != sections[int(ndx)]):
            pytest.fail(f"symbol {num} {name}: section {sym.section and sym.section.name} vs {sections[int(ndx)]}")
    meminfo = [s for s in symbols if s.name == "meminfo_proc_show"]
    assert len(meminfo) == 1 and meminfo[0].size == 0xA0C and meminfo[0].file.name == "meminfo.c"
