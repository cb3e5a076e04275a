"""The collection as a user gets it: installed from its tarball, used by name.

``ansible-galaxy collection install`` puts the tarball into a fresh collections path; with only
that path (no checkout, no ``ansible.cfg``), the playbooks run by collection name and
``ansible-doc`` documents every module, filter and role.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.unit.galaxy_tools import (  # noqa: F401  pylint: disable=unused-import
    Installed, collection_tarball, installed_collection, output_of, run_tool)

PLAYBOOKS = ["apply_livepatch", "rollback_livepatch", "livepatch_status"]


def ansible_doc(installed: Installed, cwd: Path, *args: str):
    return run_tool(["ansible-doc", *args], cwd=cwd, env=installed.env(), timeout=300)


def documented(installed: Installed, cwd: Path, plugin_type: str) -> dict:
    """``ansible-doc --list`` of the collection for one plugin type: name -> short description."""
    proc = ansible_doc(installed, cwd, "-t", plugin_type, "--list", "--json", "kpatch.livepatch")
    assert proc.returncode == 0, output_of(proc)
    return json.loads(proc.stdout)


def filter_names(filter_dir: Path) -> set:
    """Every filter the installed filter plugins register (FilterModule.filters() of each file)."""
    names = set()
    for path in sorted(filter_dir.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"installed_filter_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        names |= set(module.FilterModule().filters())
    return names


def expected_names(installed: Installed) -> dict:
    """What the installed files say exists: modules, filters and roles."""
    root = installed.root
    return {
        "module": {f"kpatch.livepatch.{p.stem}" for p in (root / "plugins" / "modules").glob("*.py")},
        "filter": {f"kpatch.livepatch.{n}" for n in filter_names(root / "plugins" / "filter")},
        "role": {f"kpatch.livepatch.{p.name}" for p in (root / "roles").iterdir() if (p / "tasks").is_dir()},
    }


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_runs_by_collection_name(installed_collection: Installed, tmp_path: Path, playbook: str) -> None:
    proc = run_tool(["ansible-playbook", "-i", "localhost,", "--syntax-check", f"kpatch.livepatch.{playbook}"],
                    cwd=tmp_path, env=installed_collection.env(), timeout=300)
    assert proc.returncode == 0, output_of(proc)
    # The playbook is the installed one, not a checkout's.
    assert f"playbook: {installed_collection.root}/playbooks/{playbook}.yml" in proc.stdout, output_of(proc)


def test_hyphenated_playbook_name_is_the_same_file(installed_collection: Installed) -> None:
    link = installed_collection.root / "playbooks" / "apply-livepatch.yml"
    assert link.is_symlink() and link.resolve() == installed_collection.root / "playbooks" / "apply_livepatch.yml"


def test_unknown_playbook_name_fails(installed_collection: Installed, tmp_path: Path) -> None:
    proc = run_tool(["ansible-playbook", "-i", "localhost,", "--syntax-check", "kpatch.livepatch.no_such_playbook"],
                    cwd=tmp_path, env=installed_collection.env(), timeout=300)
    assert proc.returncode != 0


CONTROLLER_SIDE = {"kpatch.livepatch.controller_files"}


@pytest.mark.parametrize("plugin_type", ["module", "filter", "role"])
def test_ansible_doc_documents_everything(installed_collection: Installed, tmp_path: Path, plugin_type: str) -> None:
    names = expected_names(installed_collection)[plugin_type]
    assert names, plugin_type
    assert set(documented(installed_collection, tmp_path, plugin_type)) == names
    for name in sorted(names):
        proc = ansible_doc(installed_collection, tmp_path, "-t", plugin_type, "--json", name)
        assert proc.returncode == 0, output_of(proc)
        doc = json.loads(proc.stdout)[name]
        if plugin_type == "role":
            main = doc["entry_points"]["main"]
            assert main["short_description"] and main["options"], name
        else:
            assert doc["doc"]["short_description"] and doc["doc"]["description"], name
            assert doc["examples"], name
        if plugin_type == "module":
            # Modules run on Linux targets and build hosts; controller_files is an action that writes on
            # the controller, which may be any POSIX system.
            expected = "posix" if name in CONTROLLER_SIDE else "linux"
            assert doc["doc"]["attributes"]["platform"]["platforms"] == expected, name
            assert doc["doc"]["attributes"]["check_mode"]["support"] in ("full", "partial"), name
