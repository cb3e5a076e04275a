"""``_kbuild/oot.py``: the inputs of an out-of-tree module build, checked before any work."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.oot import (
    OotModule,
    check_oot_inputs,
    oot_identity,
    oot_objects,
    oot_source_tree,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.request import BuildRequest, check_inputs
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError, StepLog
from tests.unit.test_kbuild_debuginfo import compile_objects


def fake_module(tmp_path: Path) -> OotModule:
    """A source directory with a Kbuild and a .ko-like object carrying a real .modinfo name."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "Kbuild").write_text("obj-m := demo.o\n")
    (src / "demo.c").write_text('__attribute__((section(".modinfo"))) const char n[] = '
                                '"name=my-demo\\0vermagic=6.1.0-test SMP mod_unload ";\n')
    (obj,) = compile_objects(src, ["demo.c"])
    ko = src / "demo.ko"
    obj.rename(ko)
    return OotModule(ko=ko, source=src)


def test_module_name_comes_from_its_modinfo(tmp_path):
    module = fake_module(tmp_path)
    check_oot_inputs(module)
    assert module.name == "my_demo"


def test_missing_inputs_are_named(tmp_path):
    module = fake_module(tmp_path)
    with pytest.raises(KbuildError, match="oot_module .*nope.ko does not exist"):
        check_oot_inputs(OotModule(tmp_path / "nope.ko", module.source))
    (module.source / "Kbuild").unlink()
    with pytest.raises(KbuildError, match="has no Kbuild or Makefile"):
        check_oot_inputs(module)


def test_identity_follows_sources_not_build_products(tmp_path):
    module = fake_module(tmp_path)
    before = oot_identity(module)
    (module.source / "demo.o").write_bytes(b"rebuilt")
    assert oot_identity(module) == before
    (module.source / "demo.c").write_text("int changed;\n")
    assert oot_identity(module) != before


def test_only_c_files_of_an_out_of_tree_module_are_patched():
    objects, refused = oot_objects(["demo.c", "sub/part.c", "demo.h", "Kbuild"])
    assert objects == ["demo.o", "sub/part.o"]
    assert "header of an out-of-tree module" in refused["demo.h"] and "build-system" in refused["Kbuild"]


def test_source_copy_builds_with_the_headers_and_m(tmp_path):
    module = fake_module(tmp_path)
    tree = oot_source_tree(module, tmp_path / "work", "6.1.0-test", Path("/usr/src/headers"), StepLog(tmp_path / "log"))
    assert (tree.root / "demo.c").read_text() == (module.source / "demo.c").read_text()
    assert tree.source == module.source and tree.root != module.source
    argv = tree.make_argv(["demo.o"], jobs=2, extra=["KCFLAGS=-x"])
    assert argv == ["make", "-C", "/usr/src/headers", f"M={tree.root}", "-j2", "KCFLAGS=-x", "demo.o"]


def test_request_for_an_out_of_tree_module_needs_both_paths_and_no_kernel_source(tmp_path):
    module = fake_module(tmp_path)
    (tmp_path / "config").write_text("CONFIG_LIVEPATCH=y\n")
    (tmp_path / "vmlinux").write_text("")
    (tmp_path / "headers").mkdir()
    (tmp_path / "headers" / "Makefile").write_text("")
    (tmp_path / "p.patch").write_text("--- a/demo.c\n+++ b/demo.c\n")
    req = BuildRequest(patches=[tmp_path / "p.patch"], release="6.1.0-test", source_dir=tmp_path / "no-kernel-source",
                       config=tmp_path / "config", vmlinux=tmp_path / "vmlinux", headers=tmp_path / "headers",
                       cache_dir=tmp_path / "cache", output_dir=tmp_path / "out",
                       oot_module=module.ko, oot_module_src=module.source)
    check_inputs(req)  # no kernel source tree is needed
    with pytest.raises(KbuildError, match="needs both oot_module .* and oot_module_src"):
        check_inputs(replace(req, oot_module_src=None))
