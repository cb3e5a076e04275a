"""The diff engine on real Debian 6.1 kernel objects, looked up in the real 6.1 vmlinux.

Pairs are built by ``engine_pairs.build_pair`` (the kbuild fast path, cached); struct sizes come
from the vmlinux DWARF via ``_kbuild/structsizes.py``.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import read_elf
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.diff import create_diff_object
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.lookup import load_parent_symtab
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.structsizes import special_struct_sizes

from tests.integration.engine_pairs import build_pair
from tests.testbed.kernels import cache_root
from tests.unit.engine_cc import decode_funcs, decode_klp_relocations

pytestmark = pytest.mark.integration
TOOL = Path(__file__).resolve().parents[2] / "tools" / "create-diff-object"


@pytest.fixture(scope="module")
def vmlinux_symtab(kernel_6_1):
    return load_parent_symtab(str(kernel_6_1.vmlinux), "vmlinux")


@pytest.fixture(scope="module")
def sizes(kernel_6_1):
    return special_struct_sizes(kernel_6_1.vmlinux, kernel_6_1.release, cache_root() / "struct-sizes",
                                kernel_6_1.config)


@pytest.fixture(scope="module")
def vmlinux_nm(kernel_6_1):
    out = subprocess.run(["nm", str(kernel_6_1.vmlinux)], capture_output=True, text=True, check=True).stdout
    table = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            table.setdefault(parts[2], []).append(int(parts[0], 16))
    return table


def diff(name, kernel, symtab, sizes, tmp_path):
    pair = build_pair(name, kernel)
    out = tmp_path / f"{name}.o"
    result = create_diff_object(str(pair.orig), str(pair.patched), "vmlinux", symtab,
                                str(kernel.headers / "Module.symvers"), "livepatch_test", str(out), sizes)
    return result, read_elf(str(out))


def test_meminfo_string_change_patches_exactly_meminfo_proc_show(kernel_6_1, vmlinux_symtab, sizes, vmlinux_nm,
                                                                 tmp_path):
    result, out = diff("meminfo", kernel_6_1, vmlinux_symtab, sizes, tmp_path)
    assert result.changed_functions == ["meminfo_proc_show"] and result.new_functions == []
    funcs = decode_funcs(out)
    assert len(funcs) == 1
    func = funcs[0]
    assert (func["name"], func["objname"], func["sympos"]) == ("meminfo_proc_show", "vmlinux", 0)
    assert func["old_addr"] == vmlinux_nm["meminfo_proc_show"][0]
    assert func["old_size"] == func["new_size"] == 0xA0C  # gcc 12 rebuild matches the distro vmlinux
    strings = b"".join(s.data for s in out.sections if ".str" in s.name)
    assert b"VMALLOCCHUNK:   " in strings and b"VmallocChunk" not in strings
    # every klp target exists in vmlinux and is not exported
    for reloc in decode_klp_relocations(out):
        assert reloc["name"] in vmlinux_nm, reloc
        assert reloc["section"] == ".text.meminfo_proc_show"


def test_meminfo_output_links_and_reads_cleanly(kernel_6_1, vmlinux_symtab, sizes, tmp_path):
    _result, out = diff("meminfo", kernel_6_1, vmlinux_symtab, sizes, tmp_path)
    path = tmp_path / "meminfo.o"
    proc = subprocess.run(["readelf", "-a", "-W", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "Warning" not in proc.stderr and "Error" not in proc.stderr
    subprocess.run(["ld", "-r", "-o", str(tmp_path / "linked.o"), str(path)], check=True)


def test_meminfo_orc_tables_stay_parallel(kernel_6_1, vmlinux_symtab, sizes, tmp_path):
    result, out = diff("meminfo", kernel_6_1, vmlinux_symtab, sizes, tmp_path)
    secs = out.section_by_name()
    ips = secs[".orc_unwind_ip"]
    assert secs[".orc_unwind"].size // sizes["ORC"] == ips.size // 4 == result.special_kept[".orc_unwind"]
    assert {r.sym.name for r in ips.rela.relocations} == {"meminfo_proc_show"}
    assert [r.sym.name for r in secs["__mcount_loc"].rela.relocations] == ["meminfo_proc_show"]
    # every kept alternative patches meminfo_proc_show
    alt = secs[".altinstructions"]
    assert {r.sym.name for r in alt.rela.relocations if r.offset % sizes["ALT"] == 0} == {"meminfo_proc_show"}


def test_dev_valid_name_change_patches_exactly_that_function(kernel_6_1, vmlinux_symtab, sizes, tmp_path):
    result, out = diff("dev_valid_name", kernel_6_1, vmlinux_symtab, sizes, tmp_path)
    assert result.changed_functions == ["dev_valid_name"] and result.new_functions == []
    assert [f["name"] for f in decode_funcs(out)] == ["dev_valid_name"]


def test_dev_remove_pack_cold_child_change_succeeds(kernel_6_1, vmlinux_symtab, sizes, tmp_path):
    result, out = diff("dev_remove_pack", kernel_6_1, vmlinux_symtab, sizes, tmp_path)
    assert result.changed_functions == ["__dev_remove_pack"]
    assert result.promoted == ["__dev_remove_pack"]  # only its .cold part differed
    cold = [s for s in out.symbols if s.name == "__dev_remove_pack.cold"]
    assert cold and cold[0].section is not None
    strings = b"".join(s.data for s in out.sections if ".str" in s.name)
    assert b"packet type" in strings
    assert [f["name"] for f in decode_funcs(out)] == ["__dev_remove_pack"]
    klp = {(r["name"], r["sympos"]) for r in decode_klp_relocations(out)}
    assert ("ptype_lock", 0) in klp


def _cold_return_target(obj, parent: str) -> int:
    """Offset in ``parent`` at which its .cold part's jump back lands."""
    cold = obj.section_by_name()[".text.unlikely." + parent]
    jumps = [r for r in cold.rela.relocations if r.sym.name in (parent, ".text." + parent)]
    assert len(jumps) == 1, [(r.sym.name, r.addend) for r in cold.rela.relocations]
    return jumps[0].addend + 4 + (jumps[0].sym.value if jumps[0].sym.name == parent else 0)


def test_unchanged_cold_child_travels_with_its_changed_parent(kernel_6_1, vmlinux_symtab, sizes, tmp_path):
    """The documented deviation from kpatch (docs/engine.md): the child's copy comes along.

    kpatch leaves the unchanged __dev_remove_pack.cold in the kernel; the new parent would jump
    into it, and it would jump back into the *original* parent, at an offset of the old layout.
    """
    pair = build_pair("dev_remove_pack_parent", kernel_6_1)
    old_target = _cold_return_target(read_elf(str(pair.orig)), "__dev_remove_pack")
    new_target = _cold_return_target(read_elf(str(pair.patched)), "__dev_remove_pack")
    assert old_target != new_target, "the parent's layout did not move: the test shows nothing"
    result, out = diff("dev_remove_pack_parent", kernel_6_1, vmlinux_symtab, sizes, tmp_path)
    assert result.changed_functions == ["__dev_remove_pack"] and result.promoted == []
    # the copy of the child is in the module and returns into the module's new parent
    assert _cold_return_target(out, "__dev_remove_pack") == new_target
    assert not [r for r in decode_klp_relocations(out) if r["name"].startswith("__dev_remove_pack")]
    assert [f["name"] for f in decode_funcs(out)] == ["__dev_remove_pack"]


def test_cli_with_readelf_text_symtab(kernel_6_1, sizes, tmp_path):
    pair = build_pair("dev_valid_name", kernel_6_1)
    symtab_txt = tmp_path / "vmlinux.symtab"
    with open(symtab_txt, "w") as fh:
        subprocess.run(["readelf", "-s", "--wide", str(kernel_6_1.vmlinux)], stdout=fh, check=True)
    env = {"PATH": "/usr/bin:/bin", **{f"{k}_STRUCT_SIZE": str(v) for k, v in sizes.items()}}
    proc = subprocess.run([sys.executable, str(TOOL), str(pair.orig), str(pair.patched), "vmlinux", str(symtab_txt),
                           str(kernel_6_1.headers / "Module.symvers"), "livepatch_test", str(tmp_path / "o.o")],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["dev.o: changed function: dev_valid_name"]
    funcs = read_elf(str(tmp_path / "o.o")).section_by_name()[".kpatch.funcs"]
    assert struct.unpack_from("<Q", funcs.data, 8)[0] > 0


def _sizes_6_12(kernel):
    """Special-struct sizes from the 6.12 DWARF, cached; 6.12 has no paravirt_patch_site any more
    (``special_struct_sizes`` still demands it when CONFIG_PARAVIRT=y), so it is left out."""
    import json
    from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.structsizes import (
        required_structs,
        sizes_with_pyelftools,
    )
    cache = cache_root() / "struct-sizes" / f"engine-tests-{kernel.release}.json"
    stamp = kernel.vmlinux.stat().st_mtime_ns
    if cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("stamp") == stamp:
            return data["sizes"]
    wanted = {k: v for k, v in required_structs(kernel.config).items() if k != "PARA"}
    by_name = sizes_with_pyelftools(kernel.vmlinux, wanted.values())
    sizes = {k: by_name[name] for k, name in wanted.items() if name in by_name}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"stamp": stamp, "sizes": sizes}))
    return sizes


def test_call_padding_kernel_meminfo(kernel_6_12, tmp_path):
    """6.12 (X86_KERNEL_IBT, CALL_PADDING): functions start 16 bytes into their sections."""
    sizes = _sizes_6_12(kernel_6_12)
    symtab = load_parent_symtab(str(kernel_6_12.vmlinux), "vmlinux")
    pair = build_pair("meminfo", kernel_6_12)
    out = tmp_path / "meminfo.o"
    result = create_diff_object(str(pair.orig), str(pair.patched), "vmlinux", symtab,
                                str(kernel_6_12.headers / "Module.symvers"), "livepatch_test", str(out), sizes)
    assert result.changed_functions == ["meminfo_proc_show"]
    obj = read_elf(str(out))
    func = [s for s in obj.symbols if s.name == "meminfo_proc_show"][0]
    assert func.value == 16 and func.section.data[:16] == b"\x90" * 16
    assert func.section.data[16:20] == b"\xf3\x0f\x1e\xfa"  # endbr64 (IBT) before the fentry call
    assert [r.sym.name for r in obj.section_by_name()["__mcount_loc"].rela.relocations] == ["meminfo_proc_show"]
    funcs = decode_funcs(obj)
    assert [(f["name"], f["new"]) for f in funcs] == [("meminfo_proc_show", "meminfo_proc_show")]


@pytest.mark.parametrize("pair_name", ["lineshift_sched", "lineshift_dev", "lineshift_btrfs", "lineshift_xfs"])
def test_lines_added_above_everything_change_nothing(kernel_6_1, vmlinux_symtab, sizes, tmp_path, pair_name):
    """Hundreds of functions see their __LINE__ values move; none of them may be reported."""
    pair = build_pair(pair_name, kernel_6_1)
    assert pair.orig.read_bytes() != pair.patched.read_bytes()
    result = create_diff_object(str(pair.orig), str(pair.patched), "vmlinux", vmlinux_symtab,
                                str(kernel_6_1.headers / "Module.symvers"), "livepatch_test",
                                str(tmp_path / "out.o"), sizes)
    assert result.changed_functions == [] and result.new_functions == []
    assert not (tmp_path / "out.o").exists()


def test_module_parent_binfmt_misc(kernel_6_1, sizes, tmp_path):
    """Patching a module: its .ko is the parent; its locals become klp relocations to that module."""
    pair = build_pair("binfmt_misc", kernel_6_1)
    parent = kernel_6_1.modules_dir / "kernel" / "fs" / "binfmt_misc.ko"
    symtab = load_parent_symtab(str(parent), "binfmt_misc")
    out = tmp_path / "binfmt.o"
    result = create_diff_object(str(pair.orig), str(pair.patched), "binfmt_misc", symtab,
                                str(kernel_6_1.headers / "Module.symvers"), "livepatch_test", str(out), sizes)
    assert result.changed_functions == ["bm_status_read"]
    obj = read_elf(str(out))
    assert [(f["name"], f["objname"]) for f in decode_funcs(obj)] == [("bm_status_read", "binfmt_misc")]
    klp = decode_klp_relocations(obj)
    assert klp and {r["objname"] for r in klp} == {"binfmt_misc"}
    assert "enabled" in {r["name"] for r in klp}
