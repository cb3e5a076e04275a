"""``prepare_tree`` on Debian's 6.12 source: the release extends the Makefile version
(``6.12.107`` + ``+deb12-cloud-amd64``), so the suffix goes into a ``localversion`` file rather
than a KERNELVERSION override.  The generated release headers must equal the distro's."""

import subprocess

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import StepLog
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.tree import build_objects, prepare_tree

pytestmark = pytest.mark.integration


def test_prepare_6_12_matches_distro_headers(kernel_6_12, tmp_path):
    tree = prepare_tree(kernel_6_12.source_tree(), kernel_6_12.config, kernel_6_12.release, tmp_path,
                        StepLog(tmp_path / "build.log"))
    assert tree.make_vars == ("LOCALVERSION=",)
    assert (tree.root / "localversion").read_text() == "+deb12-cloud-amd64\n"
    out = subprocess.run(["make", "-s", "-C", str(tree.root), *tree.make_vars, "kernelrelease"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == kernel_6_12.release
    for rel in ("include/generated/utsrelease.h", "include/generated/uapi/linux/version.h"):
        assert (tree.root / rel).read_text() == (kernel_6_12.headers / rel).read_text(), rel
    built = build_objects(tree, ["fs/proc/meminfo.o"], "-ffunction-sections -fdata-sections", tmp_path / "out")
    assert b".text.meminfo_proc_show" in built[0].path.read_bytes()
    print(f"6.12 cold prepare {tree.seconds:.1f}s")
