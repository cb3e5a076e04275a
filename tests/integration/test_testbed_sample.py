"""Proves the testbed: the kernel's own livepatch sample, built against the Debian headers,
loads in the booted Debian kernel and its effect comes and goes."""

import pytest

from tests.testbed.kbuild import build_external_module, copy_sample, modinfo_field
from tests.testbed.vm import run_in_initramfs

pytestmark = pytest.mark.integration

SCRIPT = r"""
set -u
before=$(cat /proc/cmdline)
echo "before=$before"
insmod /work/livepatch-sample.ko || exit 10
i=0
while [ "$(cat /sys/kernel/livepatch/livepatch_sample/transition)" != 0 ]; do
  i=$((i+1)); [ $i -gt 300 ] && { echo "transition stuck"; exit 11; }; sleep 0.1
done
echo "enabled=$(cat /sys/kernel/livepatch/livepatch_sample/enabled)"
echo "patched=$(cat /proc/cmdline)"
echo "tainted=$(cat /proc/sys/kernel/tainted)"
echo 0 > /sys/kernel/livepatch/livepatch_sample/enabled
i=0
while [ -d /sys/kernel/livepatch/livepatch_sample ] && [ "$(cat /sys/kernel/livepatch/livepatch_sample/transition)" != 0 ]; do
  i=$((i+1)); [ $i -gt 300 ] && { echo "unpatch stuck"; exit 12; }; sleep 0.1
done
rmmod livepatch_sample || exit 13
echo "after=$(cat /proc/cmdline)"
lsmod | grep -c livepatch_sample || true
"""


@pytest.fixture
def sample_ko(any_kernel, tmp_path):
    text = copy_sample(any_kernel, "samples/livepatch/livepatch-sample.c")
    return build_external_module(any_kernel, tmp_path, {"livepatch-sample.c": text}, "livepatch-sample")


def test_sample_vermagic_matches_release(any_kernel, sample_ko):
    vermagic = modinfo_field(sample_ko, "vermagic")
    assert vermagic is not None and vermagic.split()[0] == any_kernel.release


def test_sample_livepatch_loads_and_unloads_in_vm(any_kernel, sample_ko):
    result = run_in_initramfs(any_kernel, {"/work/livepatch-sample.ko": sample_ko}, SCRIPT, timeout=240)
    assert not result.timed_out, result.console[-2000:]
    assert result.exit_code == 0, result.output + result.console[-2000:]
    values = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    assert values["patched"] == "this has been live patched"
    assert values["before"] != values["patched"]
    assert values["enabled"] == "1"
    tainted = int(values["tainted"])
    assert tainted & 32768, f"TAINT_LIVEPATCH (bit 15) missing from {tainted}"
    assert values["after"] == values["before"]
    assert result.output.strip().splitlines()[-1] == "0"  # no livepatch_sample in lsmod
    assert "Call Trace" not in result.console
