"""Patches spanning several objects: a new global defined by one patched file, used by another.

kpatch's rule: a global that is neither exported nor in the parent's symbol table can only live
in another object of the patch module, so its reference stays an ordinary relocation.  The
safety moves to the link: ``modcheck.check_undefined_symbols`` refuses a linked module with an
undefined symbol that Module.symvers does not export, naming the symbol and the object.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.modcheck import (
    ModuleCheckError,
    check_undefined_symbols,
)

from tests.unit.engine_cc import DEFAULT_EXPORTS, EngineCase, compile_c, link_parent, run_engine, write_symvers

PROVIDER = "int provider_base(int x) { return x + 1; }\n"
# The patch adds new_helper() to provider.c and calls it from user.c.
PROVIDER_PATCHED = PROVIDER + "int new_helper(int x) { return x * 11; }\n"
USER = "extern int new_helper(int x);\nint consumer(int x) { return x - 3; }\n"
USER_PATCHED = USER.replace("return x - 3;", "return new_helper(x) - 3;")


def diff_pair(root: Path, name: str, orig: str, patched: str, parent: Path) -> EngineCase:
    """Diff ``name``.c before/after against ``parent``, the running kernel holding every file."""
    case = EngineCase(root, compile_c(orig, root / "orig", name + ".c"), compile_c(patched, root / "patched", name + ".c"),
                      parent, write_symvers(root / "Module.symvers", DEFAULT_EXPORTS), root / "out.o")
    return run_engine(case)


@pytest.fixture()
def two_outputs(tmp_path):
    parent = link_parent([compile_c(PROVIDER, tmp_path / "p0", "provider.c"),
                          compile_c(USER, tmp_path / "u0", "user.c")], tmp_path / "vmlinux.o")
    provider = diff_pair(tmp_path / "provider", "provider", PROVIDER, PROVIDER_PATCHED, parent)
    user = diff_pair(tmp_path / "user", "user", USER, USER_PATCHED, parent)
    return tmp_path, provider, user


def test_global_of_another_patched_object_keeps_an_ordinary_relocation(two_outputs):
    _root, provider, user = two_outputs
    assert provider.result.new_functions == ["new_helper"]
    assert user.result.changed_functions == ["consumer"]
    calls = [r for r in user.relocations(".text.consumer") if r.sym.name == "new_helper"]
    assert len(calls) == 1 and calls[0].sym.is_undefined
    assert not [r for r in user.klp_relocations() if r["name"] == "new_helper"]


def _link(dest: Path, *objects: Path) -> Path:
    subprocess.run(["ld", "-r", "-o", str(dest), *map(str, objects)], check=True)
    return dest


def test_linked_module_with_both_objects_resolves(two_outputs):
    root, provider, user = two_outputs
    module = _link(root / "both.ko", provider.out, user.out)
    symvers = write_symvers(root / "Module.symvers", ["__fentry__"])
    assert check_undefined_symbols(module, {provider.out: "provider.o", user.out: "user.o"}, symvers) == 1


def test_linked_module_missing_the_defining_object_is_refused(two_outputs):
    root, _provider, user = two_outputs
    module = _link(root / "alone.ko", user.out)
    symvers = write_symvers(root / "Module.symvers", ["__fentry__"])
    with pytest.raises(ModuleCheckError, match=r"new_helper \(wanted by kernel/user\.o \(out\.o\)\)"):
        check_undefined_symbols(module, {user.out: "kernel/user.o"}, symvers)


def test_weak_references_may_stay_unresolved(tmp_path):
    obj = compile_c("extern int maybe_there(void) __attribute__((weak));\n"
                    "int probe(void) { return maybe_there ? maybe_there() : 0; }\n", tmp_path, "weak.c")
    symvers = write_symvers(tmp_path / "Module.symvers", ["__fentry__"])
    assert check_undefined_symbols(obj, {obj: "weak.o"}, symvers) == 1
