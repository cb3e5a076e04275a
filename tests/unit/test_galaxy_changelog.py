"""The changelog as antsibull-changelog keeps it: fragments and changelog.yaml lint clean, and
CHANGELOG.rst is exactly what the tool generates from changelog.yaml (``make changelog``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.unit.galaxy_tools import REPO, collection_version, output_of, run_tool, tool_env


def changelog_copy(dest: Path) -> Path:
    """galaxy.yml, changelogs/ and CHANGELOG.rst: all antsibull-changelog reads and writes."""
    dest.mkdir(parents=True)
    shutil.copy2(REPO / "galaxy.yml", dest / "galaxy.yml")
    shutil.copy2(REPO / "CHANGELOG.rst", dest / "CHANGELOG.rst")
    shutil.copytree(REPO / "changelogs", dest / "changelogs", ignore=shutil.ignore_patterns(".plugin-cache.yaml"))
    return dest


def antsibull(args: list, cwd: Path, home: Path):
    return run_tool(["antsibull-changelog", *args], cwd=cwd, env=tool_env(home), timeout=300)


def test_fragments_lint_clean(tmp_path: Path) -> None:
    proc = antsibull(["lint"], REPO, tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "", output_of(proc)


def test_changelog_yaml_lints_clean(tmp_path: Path) -> None:
    proc = antsibull(["lint-changelog-yaml", "changelogs/changelog.yaml"], REPO, tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "", output_of(proc)


def test_changelog_records_the_release_of_galaxy_yml() -> None:
    changes = yaml.safe_load((REPO / "changelogs" / "changelog.yaml").read_text(encoding="utf-8"))
    release = changes["releases"][collection_version()]
    assert release["changes"]["release_summary"]
    assert {m["name"] for m in release["modules"]} == {p.stem for p in (REPO / "plugins" / "modules").glob("*.py")}


def test_changelog_rst_is_generated_from_changelog_yaml(tmp_path: Path) -> None:
    copy = changelog_copy(tmp_path / "copy")
    (copy / "CHANGELOG.rst").unlink()
    proc = antsibull(["generate"], copy, tmp_path / "home")
    assert proc.returncode == 0, output_of(proc)
    generated = (copy / "CHANGELOG.rst").read_text(encoding="utf-8")
    assert generated == (REPO / "CHANGELOG.rst").read_text(encoding="utf-8"), "CHANGELOG.rst is stale: make changelog"
    assert f"v{collection_version()}\n" in generated


def test_lint_fails_on_a_bad_fragment(tmp_path: Path) -> None:
    copy = changelog_copy(tmp_path / "copy")
    (copy / "changelogs" / "fragments" / "zz-bad.yml").write_text("new_stuff:\n  - not a section\n",
                                                                  encoding="utf-8")
    proc = antsibull(["lint"], copy, tmp_path / "home")
    assert proc.returncode != 0 and "zz-bad.yml" in proc.stdout, output_of(proc)
    assert "new_stuff" in proc.stdout, output_of(proc)
