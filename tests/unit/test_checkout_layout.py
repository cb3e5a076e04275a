"""A plain checkout is a usable collection by construction, with nothing run first.

The collection is found through a link the repository commits
(``playbooks/collections/ansible_collections/kpatch/livepatch -> ../../../..``), which Ansible
searches beside any playbook in ``playbooks/``.  These tests run real Ansible and the real tools
with every other way of finding the collection switched off: no ``ansible.cfg``, an empty
``ANSIBLE_COLLECTIONS_PATH``, a working directory outside the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LINK = REPO / "playbooks" / "collections" / "ansible_collections" / "kpatch" / "livepatch"


def bare_env(tmp_path: Path) -> dict:
    """Ansible's environment with no config file and an empty collections path of its own."""
    empty = tmp_path / "no-collections"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update({"ANSIBLE_CONFIG": str(tmp_path / "absent.cfg"), "ANSIBLE_COLLECTIONS_PATH": str(empty),
                "ANSIBLE_NOCOLOR": "1", "HOME": str(tmp_path)})
    return env


def test_link_is_committed_and_points_at_the_checkout() -> None:
    tracked = subprocess.run(["git", "ls-files", "-s", "playbooks/collections"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    # A git symlink entry has mode 120000; the link must be tracked, not made by a tool.
    assert tracked[:1] == ["120000"], tracked
    assert tracked[-1] == "playbooks/collections/ansible_collections/kpatch/livepatch"
    assert LINK.resolve() == REPO.resolve()


def test_playbook_resolves_the_collection_from_anywhere(tmp_path: Path) -> None:
    for playbook in sorted((REPO / "playbooks").glob("*.yml")):
        proc = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", "localhost,", str(playbook)],
                              cwd=tmp_path, env=bare_env(tmp_path), capture_output=True, text=True, check=False,
                              timeout=300)
        assert proc.returncode == 0, f"{playbook.name}: {proc.stdout}{proc.stderr}"
        assert "couldn't resolve" not in proc.stderr


def test_syntax_check_can_fail(tmp_path: Path) -> None:
    """The check above would catch an unresolvable module: a playbook beside the real ones proves it."""
    bogus = tmp_path / "bogus.yml"
    bogus.write_text("- hosts: all\n  tasks:\n    - kpatch.livepatch.no_such_module: {}\n", encoding="utf-8")
    proc = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", "localhost,", str(bogus)],
                          cwd=tmp_path, env=bare_env(tmp_path), capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode != 0
    assert "no_such_module" in proc.stdout + proc.stderr


def test_tools_import_the_collection_without_creating_anything(tmp_path: Path) -> None:
    before = sorted(p.name for p in REPO.iterdir())
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "create-diff-object"), "--help"], cwd=tmp_path,
                          env=bare_env(tmp_path), capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "create-diff-object" in proc.stdout
    assert sorted(p.name for p in REPO.iterdir()) == before
    assert not (REPO / ".collection").exists()


def test_test_files_have_unique_basenames() -> None:
    """pytest (rootdir-relative imports, no packages) refuses to collect two test files of one name."""
    seen: dict = {}
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, clashes
