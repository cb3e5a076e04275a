"""Fixtures shared by the integration tests: real Debian kernels from the testbed cache."""

import pytest

# Imported so that pytest sees the fixtures in every integration test.
from tests.testbed.fixtures import debian_image, debian_vm, debian_vm_factory  # noqa: F401  pylint: disable=unused-import
from tests.testbed.kernels import DEFAULT_RELEASE, fetch_kernel


@pytest.fixture(scope="session")
def kernel_6_1():
    """The default Debian release, fetched and unpacked (cached across runs)."""
    return fetch_kernel(DEFAULT_RELEASE)


@pytest.fixture(scope="session")
def kernel_6_12():
    """Debian's 6.12 cloud kernel (X86_KERNEL_IBT, CALL_PADDING)."""
    return fetch_kernel("6.12.107+deb12-cloud-amd64")


@pytest.fixture(scope="session", params=["6.1.0-50-cloud-amd64", "6.12.107+deb12-cloud-amd64"])
def any_kernel(request):
    """Each testbed release in turn."""
    return fetch_kernel(request.param)


def pytest_terminal_summary(terminalreporter):
    """Print the patch-corpus table of each release the run covered (tests/integration/test_corpus.py)."""
    import sys

    corpus = sys.modules.get("tests.integration.corpus_run")
    tables = getattr(corpus, "TABLES", {}) if corpus else {}
    for release, text in sorted(tables.items()):
        terminalreporter.write_sep("=", f"patch corpus {release}")
        terminalreporter.write(text)


# Scenarios that cost minutes each under software emulation on 2 cores: they run in
# `make test-full` (marker `slow`), while `make test` (CI) keeps every other acceptance test.
SLOW_TESTS = (
    "test_fleet.py::",  # three full VMs, a reboot and rollback
    "test_fleet_faults.py::",  # two full VMs, concurrent applies, a power cut, a reboot into 6.12
    "test_kbuild_tree.py::",  # cold prepare of the 6.1 tree in a fresh directory
    "test_kbuild_tree_6_12.py::",  # cold prepare of the 6.12 tree
    "test_target_kpatch.py::test_role_installs_runtime_idempotently",
    "test_target_kpatch.py::test_install_then_reboot_loads_at_boot",
    "test_target_kpatch.py::test_kpatch_enable_0_loads_nothing",
    "test_target_kpatch.py::test_absent_removes_everything",
    "test_testbed_ssh.py::test_one_image_boots_either_release",
    "test_testbed_ssh.py::test_restart_with_new_cmdline_then_reboot_keeps_the_overlay",
)


def pytest_collection_modifyitems(items):
    for item in items:
        if any(key in item.nodeid for key in SLOW_TESTS):
            item.add_marker(pytest.mark.slow)
