"""The patch-author include directory: patched kernel sources can #include "kpatch-macros.h"."""

from __future__ import annotations

import subprocess

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kmod import kmod_sources
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.pipeline import patch_include_dir


def test_headers_are_written_once_and_kept_identical(tmp_path):
    inc = patch_include_dir(tmp_path)
    headers = {name: data for name, data in kmod_sources().items() if name.endswith(".h")}
    assert sorted(p.name for p in inc.iterdir()) == sorted(headers)
    for name, data in headers.items():
        assert (inc / name).read_bytes() == data
    before = {p.name: p.stat().st_mtime_ns for p in inc.iterdir()}
    assert patch_include_dir(tmp_path) == inc
    # Unchanged headers are not rewritten: kbuild would otherwise rebuild every object using them.
    assert {p.name: p.stat().st_mtime_ns for p in inc.iterdir()} == before


def test_a_stale_header_is_replaced(tmp_path):
    inc = patch_include_dir(tmp_path)
    (inc / "kpatch-macros.h").write_text("/* stale */\n")
    patch_include_dir(tmp_path)
    assert (inc / "kpatch-macros.h").read_bytes() == kmod_sources()["kpatch-macros.h"]


def test_the_macros_header_preprocesses_from_there(tmp_path):
    inc = patch_include_dir(tmp_path)
    src = tmp_path / "user.c"
    src.write_text('#include "kpatch-macros.h"\n')
    # Only the lookup is tested here (kernel headers are not on this path): gcc must find the file.
    proc = subprocess.run(["gcc", "-E", "-M", "-MG", f"-I{inc}", str(src)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert str(inc / "kpatch-macros.h") in proc.stdout
