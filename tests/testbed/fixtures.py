"""pytest fixtures for the full-VM testbed: the cached Debian image and a session-wide VM.

Import them into a conftest (``from tests.testbed.fixtures import debian_image, debian_vm,
debian_vm_factory``).
The session VM is booted once, on first use, and killed by the fixture's finalizer however the
session ends (the qemu process also dies with pytest and at its hard timeout).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

from tests.testbed.image import DebianImage, build_debian_image
from tests.testbed.kernels import DEFAULT_RELEASE, fetch_kernel
from tests.testbed.sshvm import DebianVM

# The whole integration session shares one VM; generous, but never unbounded.
SESSION_VM_HARD_TIMEOUT = float(os.environ.get("KPATCH_VM_HARD_TIMEOUT", "3600"))


@pytest.fixture(scope="session")
def debian_image() -> DebianImage:
    """The Debian 12 image carrying the default release's kernel (built once, then cached)."""
    artifacts = fetch_kernel(DEFAULT_RELEASE, with_dbg=False, with_source=False)
    return build_debian_image(artifacts)


@pytest.fixture(scope="session")
def debian_vm(debian_image: DebianImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebianVM]:
    """A booted VM of the default release, reachable over SSH, shared by the whole session."""
    vm = DebianVM(debian_image, name="debian-vm", workdir=tmp_path_factory.mktemp("debian-vm"),
                  hard_timeout=SESSION_VM_HARD_TIMEOUT)
    try:
        vm.start()
        vm.wait_ssh()
        yield vm
    finally:
        vm.close()


@pytest.fixture
def debian_vm_factory(debian_image: DebianImage, tmp_path: Path) -> Iterator[Callable[..., DebianVM]]:
    """Boots extra VMs for one test (e.g. a small fleet); all are killed when the test ends.

    ``factory(name="vm2", image=None, release=None, append="")`` returns a booted DebianVM.
    """
    vms: List[DebianVM] = []

    def factory(name: str = "vm", image: Optional[DebianImage] = None, **kwargs) -> DebianVM:
        kwargs.setdefault("hard_timeout", 1800.0)
        vm = DebianVM(image or debian_image, name=name, workdir=tmp_path / f"vm-{name}", **kwargs)
        vms.append(vm)
        vm.start()
        vm.wait_ssh()
        return vm

    try:
        yield factory
    finally:
        for vm in vms:
            vm.close()
