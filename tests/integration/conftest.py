"""Fixtures shared by the integration tests: real Debian kernels from the testbed cache."""

import pytest

from tests.testbed.kernels import DEFAULT_RELEASE, fetch_kernel


@pytest.fixture(scope="session")
def kernel_6_1():
    """The default Debian release, fetched and unpacked (cached across runs)."""
    return fetch_kernel(DEFAULT_RELEASE)
