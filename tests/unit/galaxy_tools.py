"""Running the Ansible ecosystem's own tools on the collection, as a user or a Galaxy maintainer would.

The tools (ansible-galaxy, ansible-lint, galaxy-importer, antsibull-changelog, ansible-builder)
come from the test virtualenv (requirements-test.txt).  Each runs with an environment of its
own: no ``ANSIBLE_*`` variable of the caller, no ``ansible.cfg`` (so the checkout's
``collections_path`` does not leak in), a private ``HOME``, the virtualenv's ``bin`` first on
``PATH`` (galaxy-importer calls ``ansible-doc`` and ``ansible-lint`` by name).

Fixtures: ``collection_tarball`` (``ansible-galaxy collection build`` of the checkout) and
``installed_collection`` (that tarball installed with ``ansible-galaxy collection install``
into a fresh collections path).  Test modules import them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NAMESPACE, NAME = "kpatch", "livepatch"


def collection_version() -> str:
    """The version galaxy.yml declares (the tarball's name carries it)."""
    return str(yaml.safe_load((REPO / "galaxy.yml").read_text(encoding="utf-8"))["version"])


def tool_env(home: Path, **extra: str) -> dict:
    """A clean environment for one tool run: no inherited Ansible settings, a private HOME."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "GALAXY_IMPORTER_"))}
    env.update({"HOME": str(home), "ANSIBLE_CONFIG": str(home / "absent.cfg"), "ANSIBLE_NOCOLOR": "1",
                "NO_COLOR": "1", "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"})
    env.update(extra)
    return env


def run_tool(args: Sequence[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a tool from the virtualenv (by name) and capture its output as text."""
    command = [str(BIN / args[0]), *args[1:]]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False,
                          timeout=timeout)


def output_of(proc: subprocess.CompletedProcess) -> str:
    """Both streams, for assertion messages."""
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def copy_checkout(dest: Path) -> Path:
    """The files git tracks or would track (links kept as links), copied to ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src, dst = REPO / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        elif src.is_file():
            shutil.copy2(src, dst)
    return dest


def build_collection(source: Path, out_dir: Path, home: Path) -> Path:
    """``ansible-galaxy collection build`` of ``source``; returns the tarball's path."""
    proc = run_tool(["ansible-galaxy", "collection", "build", "--force", "--output-path", str(out_dir),
                     str(source)], cwd=out_dir, env=tool_env(home), timeout=300)
    assert proc.returncode == 0, output_of(proc)
    tarball = out_dir / f"{NAMESPACE}-{NAME}-{collection_version()}.tar.gz"
    assert tarball.is_file(), output_of(proc)
    return tarball


@dataclass(frozen=True)
class Member:
    """One entry of the tarball: its path, and the link target for a symbolic link."""

    path: str
    is_dir: bool
    link: Optional[str]


def tarball_members(tarball: Path) -> List[Member]:
    """Every entry of the collection tarball, in archive order."""
    with tarfile.open(tarball, "r:gz") as archive:
        return [Member(m.name.rstrip("/"), m.isdir(), m.linkname if m.issym() else None)
                for m in archive.getmembers()]


@dataclass(frozen=True)
class Installed:
    """A collection installed from the tarball into a collections path of its own."""

    collections_path: Path
    root: Path  # <collections_path>/ansible_collections/kpatch/livepatch
    home: Path

    def env(self) -> dict:
        """An environment that finds the collection only where it was installed."""
        return tool_env(self.home, ANSIBLE_COLLECTIONS_PATH=str(self.collections_path))


@pytest.fixture(scope="session")
def collection_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tarball ``ansible-galaxy collection build`` makes from the checkout."""
    work = tmp_path_factory.mktemp("galaxy-build")
    return build_collection(REPO, work, work / "home")


@pytest.fixture(scope="session")
def installed_collection(collection_tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The tarball installed with ``ansible-galaxy collection install`` into a fresh collections path."""
    work = tmp_path_factory.mktemp("galaxy-install")
    path = work / "collections"
    home = work / "home"
    proc = run_tool(["ansible-galaxy", "collection", "install", "-p", str(path), str(collection_tarball)],
                    cwd=work, env=tool_env(home), timeout=300)
    assert proc.returncode == 0, output_of(proc)
    root = path / "ansible_collections" / NAMESPACE / NAME
    assert (root / "MANIFEST.json").is_file(), output_of(proc)
    return Installed(path, root, home)
