"""Which objtool a prepared tree takes from the headers, and the make options that keep it."""

import os
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prebuilt import (
    find_prebuilt_tools,
    headers_source_dir,
    make_skips,
)


def headers_dir(tmp_path, version_line="VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 176\n", dispatcher=False):
    common = tmp_path / "common"
    common.mkdir()
    (common / "Makefile").write_text("# SPDX\n" + version_line + "EXTRAVERSION =\n")
    flavour = tmp_path / "flavour"
    (flavour / "tools/objtool").mkdir(parents=True)
    (flavour / "Makefile").write_text(f"include {common}/Makefile\n")
    tool = flavour / "tools/objtool/objtool"
    tool.write_bytes(b"\x7fELF objtool")
    os.chmod(tool, 0o755)
    if dispatcher:
        (flavour / "tools/objtool/objtool.real-x86").write_bytes(b"\x7fELF real")
    (flavour / "tools/objtool/README").write_text("not a tool")
    return flavour


def test_the_common_makefile_carries_the_version(tmp_path):
    flavour = headers_dir(tmp_path)
    assert headers_source_dir(flavour) == tmp_path / "common"


def test_objtool_of_the_same_version_is_taken_with_its_real_binary(tmp_path):
    flavour = headers_dir(tmp_path, dispatcher=True)
    tools, why = find_prebuilt_tools(flavour, "6.1.176", "6.1.176")
    assert tools is not None and "objtool from" in why
    assert sorted(tools.objtool) == ["objtool", "objtool.real-x86"]
    dest = tmp_path / "tree"
    tools.install(dest)
    assert (dest / "tools/objtool/objtool.real-x86").read_bytes() == b"\x7fELF real"
    assert os.access(dest / "tools/objtool/objtool", os.X_OK)


def test_another_version_or_no_objtool_builds_the_tools(tmp_path):
    flavour = headers_dir(tmp_path)
    tools, why = find_prebuilt_tools(flavour, "6.1.177", "6.1.176")
    assert tools is None and "6.1.176" in why and "6.1.177" in why
    tools, why = find_prebuilt_tools(flavour, "6.1.176", None)
    assert tools is None and "unknown" in why
    (flavour / "tools/objtool/objtool").unlink()
    tools, why = find_prebuilt_tools(flavour, "6.1.176", "6.1.176")
    assert tools is None and "no objtool" in why
    assert find_prebuilt_tools(None, "6.1.176", None)[0] is None


def test_the_digest_follows_the_binary(tmp_path):
    flavour = headers_dir(tmp_path)
    first = find_prebuilt_tools(flavour, "6.1.176", "6.1.176")[0]
    (flavour / "tools/objtool/objtool").write_bytes(b"\x7fELF other objtool")
    second = find_prebuilt_tools(flavour, "6.1.176", "6.1.176")[0]
    assert first.digest != second.digest


def test_make_skips():
    assert make_skips(False) == []
    assert make_skips(True) == ["-o", "tools/objtool", "-o", "tools/bpf/resolve_btfids"]
    # A full build links vmlinux: it needs resolve_btfids, and still uses the headers' objtool.
    assert make_skips(True, whole_kernel=True) == ["-o", "tools/objtool"]


def test_the_digest_is_of_the_files_identity_not_their_bytes(tmp_path, monkeypatch):
    flavour = headers_dir(tmp_path, dispatcher=True)
    first = find_prebuilt_tools(flavour, "6.1.176", "6.1.176")[0]
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} read to find the tools"))
    assert find_prebuilt_tools(flavour, "6.1.176", "6.1.176")[0].digest == first.digest
    # the same size, another mtime (a reinstalled package): another digest, the tree is prepared again
    os.utime(flavour / "tools/objtool/objtool.real-x86", ns=(1, 1))
    assert find_prebuilt_tools(flavour, "6.1.176", "6.1.176")[0].digest != first.digest
