"""Compiler identity checks of ``_kbuild/compiler.py`` on objects compiled here by gcc.

A "kernel built by another compiler" is a real object whose ``.comment`` was rewritten with
objcopy, exactly what such a vmlinux would carry.
"""

import shutil
import subprocess

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.compiler import (
    CompilerMismatchError,
    check_compiler,
    host_compiler,
    kernel_compiler,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.elfcomment import comment_strings, read_section
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("objcopy") is None,
                                reason="needs gcc and objcopy")


def compile_object(tmp_path, name="k.o"):
    src = tmp_path / "k.c"
    src.write_text("int k(void) { return 1; }\n")
    obj = tmp_path / name
    subprocess.run(["gcc", "-c", "-o", str(obj), str(src)], check=True)
    return obj


def with_comment(tmp_path, obj, comment: bytes):
    data = tmp_path / "comment.bin"
    data.write_bytes(b"\0" + comment + b"\0")
    out = tmp_path / "other.o"
    subprocess.run(["objcopy", "--remove-section", ".comment", "--add-section", f".comment={data}", str(obj), str(out)],
                   check=True)
    return out


def test_host_compiler_matches_gcc_version_output(tmp_path):
    ident = host_compiler("gcc")
    version = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True, check=True).stdout.strip()
    assert ident.startswith("GCC: (") and ident.endswith(version)


def test_same_compiler_passes(tmp_path):
    obj = compile_object(tmp_path)
    result = check_compiler(obj)
    assert result.matches and not result.skipped
    assert result.kernel == result.host == kernel_compiler(obj)
    assert result.host_version_line.startswith("gcc")


def test_other_compiler_is_refused_with_both_versions(tmp_path):
    other = with_comment(tmp_path, compile_object(tmp_path), b"GCC: (GNU) 11.4.1 20231218 (Red Hat 11.4.1-3)")
    with pytest.raises(CompilerMismatchError) as info:
        check_compiler(other)
    message = str(info.value)
    assert "GCC: (GNU) 11.4.1 20231218 (Red Hat 11.4.1-3)" in message
    assert host_compiler() in message
    assert "skip_compiler_check" in message


def test_skip_compiler_check_reports_mismatch_without_raising(tmp_path):
    other = with_comment(tmp_path, compile_object(tmp_path), b"GCC: (GNU) 11.4.1")
    result = check_compiler(other, skip_compiler_check=True)
    assert result.skipped and not result.matches
    assert result.kernel == "GCC: (GNU) 11.4.1"


def test_clang_identity_is_recognised(tmp_path):
    other = with_comment(tmp_path, compile_object(tmp_path), b"Debian clang version 14.0.6")
    assert kernel_compiler(other) == "Debian clang version 14.0.6"


def test_missing_compiler_is_named(tmp_path):
    with pytest.raises(KbuildError, match="compiler 'gcc-does-not-exist' not found"):
        host_compiler("gcc-does-not-exist")


def test_not_elf_and_no_comment(tmp_path):
    text = tmp_path / "vmlinux"
    text.write_text("not an elf file at all, but long enough to have a header" * 2)
    with pytest.raises(KbuildError, match="vmlinux: not an ELF file"):
        kernel_compiler(text)
    obj = compile_object(tmp_path)
    stripped = tmp_path / "stripped.o"
    subprocess.run(["objcopy", "--remove-section", ".comment", str(obj), str(stripped)], check=True)
    with pytest.raises(KbuildError, match="has no .comment section"):
        kernel_compiler(stripped)


def test_read_section_agrees_with_readelf(tmp_path):
    obj = compile_object(tmp_path)
    dump = subprocess.run(["readelf", "-p", ".comment", str(obj)], capture_output=True, text=True, check=True).stdout
    strings = comment_strings(obj)
    assert strings and all(s in dump for s in strings)
    size = int(subprocess.run(["readelf", "-SW", str(obj)], capture_output=True, text=True, check=True).stdout
               .split(".comment")[1].split()[3], 16)
    assert len(read_section(obj, ".comment")) == size
