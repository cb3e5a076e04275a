"""The stdlib compile-unit reader against pyelftools on programs gcc links at test time."""

import subprocess

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild import debuginfo
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.cunames import (
    UnsupportedDwarf,
    compile_unit_names,
)


def link(tmp_path, *flags):
    (tmp_path / "sub").mkdir(exist_ok=True)
    (tmp_path / "main.c").write_text("int helper(void);\nint main(void) { return helper(); }\n")
    (tmp_path / "sub" / "helper.c").write_text("int helper(void) { return 3; }\n")
    (tmp_path / "start.S").write_text(".text\n.globl asm_entry\nasm_entry:\n ret\n")
    out = tmp_path / "prog"
    subprocess.run(["gcc", *flags, "-o", str(out), "main.c", "sub/helper.c", "start.S"], cwd=tmp_path, check=True)
    return out


@pytest.mark.parametrize("flags", [["-g", "-gdwarf-5"], ["-g", "-gdwarf-4"], ["-g", "-gdwarf-5", "-gdwarf64"],
                                   ["-g", "-gdwarf-4", "-gstrict-dwarf"]])
def test_same_units_as_pyelftools(tmp_path, flags):
    prog = link(tmp_path, *flags)
    names = compile_unit_names(prog)
    assert ("main.c", str(tmp_path)) in names and ("sub/helper.c", str(tmp_path)) in names
    assert names == debuginfo._unit_names_with_pyelftools(prog)


def test_compile_unit_sources_uses_it_for_linked_files(tmp_path, monkeypatch):
    prog = link(tmp_path, "-g")
    monkeypatch.setattr(debuginfo, "_unit_names_with_pyelftools", lambda path: pytest.fail("pyelftools used"))
    assert {"main.c", "sub/helper.c"} <= set(debuginfo.compile_unit_sources(prog))


def test_unknown_form_falls_back_to_pyelftools(tmp_path, monkeypatch):
    prog = link(tmp_path, "-g")

    def unsupported(path):
        raise UnsupportedDwarf("DWARF form 0x99")
    monkeypatch.setattr(debuginfo, "compile_unit_names", unsupported)
    assert {"main.c", "sub/helper.c"} <= set(debuginfo.compile_unit_sources(prog))


def test_no_debug_info_is_unsupported(tmp_path):
    with pytest.raises(UnsupportedDwarf, match="no .debug_info"):
        compile_unit_names(link(tmp_path, "-g0"))
