"""One parser for the kernel config, read once per file and asked everything a build needs."""

import hashlib
import os

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kconfig import KernelConfig

TEXT = """#
# Automatically generated file; DO NOT EDIT.
# Linux/x86 6.12.107 Kernel Configuration
#
CONFIG_LOCALVERSION="-rt"
CONFIG_MODULES=y
CONFIG_EXT4_FS=m
# CONFIG_XFS_FS is not set
CONFIG_MODULE_SIG_HASH="sha512"
CONFIG_X86_KERNEL_IBT=y
CONFIG_NR_CPUS=64
"""


def test_settings_and_questions():
    config = KernelConfig.parse(TEXT)
    assert config.values["CONFIG_NR_CPUS"] == "64" and "CONFIG_XFS_FS" not in config.values
    assert config.is_set("CONFIG_EXT4_FS") and not config.is_set("CONFIG_XFS_FS")
    assert "CONFIG_MODULES" in config.builtin() and "CONFIG_EXT4_FS" not in config.builtin()
    assert config.localversion == "-rt"
    assert config.signature_hash == "sha512"
    assert config.kernel_version == (6, 12)
    assert config.objtool_runs_on_linked_module


def test_defaults_when_unset():
    config = KernelConfig.parse("CONFIG_MODULES=y\n")
    assert config.localversion == "" and config.signature_hash == "sha256"
    assert config.kernel_version is None and not config.objtool_runs_on_linked_module


def test_read_once_while_the_file_is_unchanged(tmp_path):
    path = tmp_path / "config"
    path.write_bytes(TEXT.encode())
    first = KernelConfig.read(path)
    assert KernelConfig.read(path) is first
    assert first.sha256 == hashlib.sha256(TEXT.encode()).hexdigest()
    path.write_bytes(TEXT.replace("sha512", "sha384").encode())
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    second = KernelConfig.read(path)
    assert second is not first and second.signature_hash == "sha384"


def test_digest_is_of_the_bytes(tmp_path):
    # Two configs that differ only in bytes that are not UTF-8 must not share a digest.
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b'CONFIG_X="\xff"\n')
    b.write_bytes(b'CONFIG_X="\xfe"\n')
    assert KernelConfig.read(a).sha256 != KernelConfig.read(b).sha256
