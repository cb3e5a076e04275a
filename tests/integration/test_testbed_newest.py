"""The newest Debian kernels in the testbed: Debian 13's 6.12 (gcc-14) and sid's 7.2 (gcc-16).

Both come from suites of the machine's own Debian archive through a private sources list
(``tests/testbed/kernels.py``), unpack like the others, and boot under qemu with livepatch
support in place.
"""

import re

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.elfcomment import comment_strings
from tests.testbed.kernels import fetch_kernel
from tests.testbed.vm import run_in_initramfs

pytestmark = pytest.mark.integration

NEWEST = {"6.12.117+deb13-cloud-amd64": 14, "7.2.13+deb14-cloud-amd64": 16}

SCRIPT = r"""
echo "release=$(uname -r)"
[ -d /sys/kernel/livepatch ] && echo livepatch=yes || echo livepatch=no
echo "tainted=$(cat /proc/sys/kernel/tainted)"
"""


@pytest.fixture(scope="module", params=sorted(NEWEST))
def newest(request):
    return fetch_kernel(request.param)


def test_release_is_unpacked_whole(newest):
    assert newest.vmlinuz.is_file()
    assert (newest.headers / "Makefile").is_file()
    assert newest.vmlinux.stat().st_size > 100 * 2**20
    assert newest.source_tarball.is_file()
    config = newest.config.read_text(encoding="utf-8")
    assert "CONFIG_LIVEPATCH=y" in config.splitlines()


def test_vmlinux_names_the_suites_compiler(newest):
    gcc = [s for s in comment_strings(newest.vmlinux) if s.startswith("GCC:")]
    assert gcc, comment_strings(newest.vmlinux)
    major = int(re.search(r"\) (\d+)\.", gcc[0]).group(1))
    assert major == NEWEST[newest.release], gcc


def test_boots_with_livepatch(newest):
    result = run_in_initramfs(newest, {}, SCRIPT, timeout=240)
    assert not result.timed_out, result.console[-2000:]
    assert result.exit_code == 0, result.output + result.console[-2000:]
    values = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    assert values["release"] == newest.release
    assert values["livepatch"] == "yes"
    assert "Call Trace" not in result.console
