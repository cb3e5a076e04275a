"""Fixtures shared by the integration tests: real Debian kernels from the testbed cache."""

import pytest

from tests.testbed.fixtures import debian_image, debian_vm, debian_vm_factory  # noqa: F401  (fixtures)
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
