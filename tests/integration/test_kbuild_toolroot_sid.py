"""A toolchain root for sid's 7.2 kernel (gcc-16) on this gcc-12 host: made once, verified, reused.

The root is debootstrapped from the machine's own Debian archive (suite sid) into the testbed
cache, its gcc-16 must stamp exactly the ``.comment`` identity of the 7.2 vmlinux, and kbuild's
commands then run inside it through ``ToolRoot.wrap``.
"""

import subprocess

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.compiler import (
    compiler_identity, host_compiler, kernel_compiler)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.elfcomment import comment_strings
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError, StepLog
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.toolroot import (
    debian_recipe, debian_suite, ensure_toolroot, verify_root)
from tests.testbed.kernels import cache_root, fetch_kernel

pytestmark = pytest.mark.integration

RELEASE = "7.2.13+deb14-cloud-amd64"


@pytest.fixture(scope="module")
def kernel_7_2():
    return fetch_kernel(RELEASE)


@pytest.fixture(scope="module")
def sid_root(kernel_7_2, tmp_path_factory):
    log = StepLog(tmp_path_factory.mktemp("toolroot-log") / "toolroot.log")
    identity = kernel_compiler(kernel_7_2.vmlinux)
    recipe = debian_recipe(debian_suite(RELEASE), identity)
    root, _reused = ensure_toolroot(cache_root() / "toolroots-tests", recipe, identity, log)
    return root, identity, log


def test_the_host_compiler_differs_from_the_kernels(kernel_7_2):
    # The point of the root: this host's gcc-12 is not the kernel's gcc-16.
    assert host_compiler() != kernel_compiler(kernel_7_2.vmlinux)


def test_root_has_the_kernels_exact_compiler_and_is_reused(sid_root, tmp_path):
    root, identity, log = sid_root
    assert identity.startswith("GCC: (Debian 16.")
    assert root.compiler == identity and root.suite == "sid"
    again, reused = ensure_toolroot(cache_root() / "toolroots-tests", debian_recipe("sid", identity), identity, log)
    assert reused and again.path == root.path
    # kbuild's plain `gcc` inside the root is that compiler, and it compiles host files in place.
    src = tmp_path / "probe.c"
    src.write_text("int probe(void) { return 42; }\n")
    proc = subprocess.run(root.wrap(["gcc", "-c", "-o", "probe.o", "probe.c"], cwd=tmp_path, binds=[tmp_path]),
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert compiler_identity(comment_strings(tmp_path / "probe.o")) == identity


def test_a_root_whose_compiler_differs_is_refused(sid_root):
    root, identity, _log = sid_root
    other = identity.replace("16.2.0-", "16.2.0-99~")
    with pytest.raises(KbuildError, match="the archive no longer has the kernel's exact compiler"):
        verify_root(root.path, debian_recipe("sid", identity), other)
