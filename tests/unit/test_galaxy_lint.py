"""ansible-lint passes on the checkout at the production profile (the profile Galaxy rates).

The configuration is the repository's ``.ansible-lint``; ``ansible-lint`` finds it from the
working directory, as a developer running it by hand would.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.unit.galaxy_tools import REPO, output_of, run_tool, tool_env

SUMMARY = re.compile(r"(Passed|Failed): (\d+) failure\(s\), (\d+) warning\(s\)")


def lint(target_dir: Path, home: Path, *args: str):
    """ansible-lint in ``target_dir``, machine-readable (one violation per line), never fixing."""
    return run_tool(["ansible-lint", "--nocolor", "--offline", "-f", "pep8", *args], cwd=target_dir, env=tool_env(home),
                    timeout=600)


def test_config_requires_the_production_profile() -> None:
    config = yaml.safe_load((REPO / ".ansible-lint").read_text(encoding="utf-8"))
    assert config["profile"] == "production"
    # The checkout's link back to itself must never be walked (a directory loop).
    assert "playbooks/collections/" in config["exclude_paths"]
    # Rules are configured collection-wide with their reason, never silenced file by file.
    assert not (REPO / ".ansible-lint-ignore").exists()
    assert config.get("warn_list", []) == []


def test_collection_passes_ansible_lint_at_production_profile(tmp_path: Path) -> None:
    proc = lint(REPO, tmp_path / "home")
    summary = SUMMARY.search(proc.stderr)
    assert proc.returncode == 0 and summary, output_of(proc)
    assert summary.groups() == ("Passed", "0", "0"), output_of(proc)
    assert "'production'" in proc.stderr, output_of(proc)
    assert proc.stdout.strip() == "", output_of(proc)


def test_ansible_lint_fails_on_a_violation(tmp_path: Path) -> None:
    """The same configuration fails a playbook that breaks a production-profile rule."""
    project = tmp_path / "project"
    project.mkdir()
    (project / ".ansible-lint").write_text((REPO / ".ansible-lint").read_text(encoding="utf-8"), encoding="utf-8")
    (project / "bad.yml").write_text(
        "---\n- name: Bad\n  hosts: all\n  tasks:\n    - name: List without shell features\n"
        "      ansible.builtin.shell: ls /tmp\n      changed_when: false\n", encoding="utf-8")
    proc = lint(project, tmp_path / "home", "bad.yml")
    assert proc.returncode != 0, output_of(proc)
    assert "bad.yml:5: command-instead-of-shell" in proc.stdout, output_of(proc)
