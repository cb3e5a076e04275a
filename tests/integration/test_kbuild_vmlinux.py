"""Compiler check and special-section struct sizes measured on Debian's real 6.1 vmlinux."""

import shutil
import time

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.compiler import check_compiler, kernel_compiler
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.structsizes import (
    HAS_PYELFTOOLS,
    required_structs,
    special_struct_sizes,
)

pytestmark = pytest.mark.integration

# pahole -C on this vmlinux (see docs in the brief): the sizes the engine must split sections by.
EXPECTED_6_1 = {"PARA": 16, "EX": 12, "BUG": 12, "ALT": 12, "JUMP": 16, "ORC": 6, "STATIC_CALL": 8}


def test_debian_kernel_was_built_by_this_gcc(kernel_6_1):
    assert kernel_compiler(kernel_6_1.vmlinux) == "GCC: (Debian 12.2.0-14+deb12u1) 12.2.0"
    result = check_compiler(kernel_6_1.vmlinux)
    assert result.matches and result.host == result.kernel


def test_required_structs_follow_the_config(kernel_6_1):
    required = required_structs(kernel_6_1.config)
    # CONFIG_PRINTK_INDEX is off in Debian's 6.1 cloud config, so pi_entry is not needed
    assert "PRINTK_INDEX" not in required
    assert set(required) == set(EXPECTED_6_1)


@pytest.mark.skipif(not HAS_PYELFTOOLS, reason="pyelftools not installed")
def test_struct_sizes_with_pyelftools_and_cache(kernel_6_1, tmp_path):
    start = time.monotonic()
    sizes = special_struct_sizes(kernel_6_1.vmlinux, kernel_6_1.release, tmp_path, kernel_6_1.config,
                                 method="pyelftools")
    cold = time.monotonic() - start
    assert sizes == EXPECTED_6_1
    assert (tmp_path / kernel_6_1.release / "struct-sizes.json").is_file()
    start = time.monotonic()
    assert special_struct_sizes(kernel_6_1.vmlinux, kernel_6_1.release, tmp_path, kernel_6_1.config) == EXPECTED_6_1
    warm = time.monotonic() - start
    assert warm < 0.5 < cold
    print(f"struct sizes: cold {cold:.1f}s, cached {warm * 1000:.1f}ms")


@pytest.mark.skipif(shutil.which("pahole") is None, reason="pahole not installed")
def test_pahole_agrees_and_missing_struct_is_named(kernel_6_1, tmp_path):
    sizes = special_struct_sizes(kernel_6_1.vmlinux, kernel_6_1.release, tmp_path, kernel_6_1.config,
                                 method="pahole")
    assert sizes == EXPECTED_6_1
    # without a config every struct is required, and 6.1 cloud has no pi_entry
    with pytest.raises(KbuildError, match=r"cannot find struct pi_entry \(PRINTK_INDEX\)"):
        special_struct_sizes(kernel_6_1.vmlinux, kernel_6_1.release, tmp_path / "noconf", None, method="pahole")


def test_bad_inputs(kernel_6_1, tmp_path):
    with pytest.raises(KbuildError, match="does not exist"):
        special_struct_sizes(tmp_path / "vmlinux", kernel_6_1.release, tmp_path)
    with pytest.raises(KbuildError, match="unknown struct size method"):
        special_struct_sizes(kernel_6_1.vmlinux, kernel_6_1.release, tmp_path, method="guess")
