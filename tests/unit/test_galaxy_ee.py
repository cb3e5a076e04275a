"""Execution environments: ansible-builder makes a build context from the collection's metadata.

``ansible-builder create`` writes the Containerfile and its context for an execution environment
that installs the collection's tarball.  Building the image needs a container engine, which this
machine does not run; instead the test replays the two stages of that Containerfile that need
none, with the very scripts ansible-builder put in the context: the collection install from the
context's ``requirements.yml``, and ``introspect.py``, which collects the collections' Python and
system dependencies (what the image's final stage installs with pip and bindep).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from bindep.depends import Depends

from tests.unit.galaxy_tools import (  # noqa: F401  pylint: disable=unused-import
    REPO, collection_tarball, output_of, run_tool, tool_env)

# bindep profiles of the distributions whose build_host vars files name the same packages.
PROFILES = {"Debian.yml": ["platform:dpkg", "platform:debian"],
            "RedHat.yml": ["platform:rpm", "platform:redhat", "platform:rhel"],
            "Fedora.yml": ["platform:rpm", "platform:redhat", "platform:fedora"]}
PYTHON_PACKAGES = ("python3-",)  # Python libraries come from requirements.txt in an EE


def definition(tarball: Path) -> dict:
    """An execution environment (ansible-builder schema 3) with the collection from its tarball."""
    return {
        "version": 3,
        "images": {"base_image": {"name": "registry.fedoraproject.org/fedora:41"}},
        "dependencies": {
            "python_interpreter": {"package_system": "python3", "python_path": "/usr/bin/python3"},
            "ansible_core": {"package_pip": "ansible-core>=2.16,<2.20"},
            "ansible_runner": {"package_pip": "ansible-runner"},
            "galaxy": {"collections": [{"name": f"collections/{tarball.name}", "type": "file"}]},
        },
        "additional_build_files": [{"src": str(tarball), "dest": "collections"}],
    }


def bindep_names(profiles: list) -> set:
    rules = Depends((REPO / "bindep.txt").read_text(encoding="utf-8")).active_rules(profiles)
    return {rule[0] for rule in rules}


def build_host_packages(vars_file: str) -> set:
    data = yaml.safe_load((REPO / "roles" / "build_host" / "vars" / vars_file).read_text(encoding="utf-8"))
    return {p for p in data["kpatch_build_host_packages"] if not p.startswith(PYTHON_PACKAGES)}


def test_metadata_names_the_dependency_files() -> None:
    meta = yaml.safe_load((REPO / "meta" / "execution-environment.yml").read_text(encoding="utf-8"))
    assert meta == {"version": 1, "dependencies": {"python": "requirements.txt", "system": "bindep.txt"}}
    requirements = (REPO / "requirements.txt").read_text(encoding="utf-8")
    assert "ansible-core" not in requirements  # a development need: the EE brings its own


def test_bindep_lists_what_the_build_host_role_installs() -> None:
    """bindep.txt and roles/build_host/vars name the same system packages, per distribution family."""
    every = set().union(*(build_host_packages(name) for name in PROFILES))
    for vars_file, profiles in PROFILES.items():
        listed = bindep_names(profiles)
        assert build_host_packages(vars_file) <= listed, vars_file
        assert listed <= every, (vars_file, listed - every)


def test_ansible_builder_creates_a_build_context(collection_tarball: Path, tmp_path: Path) -> None:
    ee_file = tmp_path / "execution-environment.yml"
    ee_file.write_text(yaml.safe_dump(definition(collection_tarball)), encoding="utf-8")
    context = tmp_path / "context"
    proc = run_tool(["ansible-builder", "create", "-f", str(ee_file), "-c", str(context), "--output-filename",
                     "Containerfile"], cwd=tmp_path, env=tool_env(tmp_path / "home"), timeout=300)
    assert proc.returncode == 0, output_of(proc)
    containerfile = (context / "Containerfile").read_text(encoding="utf-8")
    assert "ansible-galaxy collection install" in containerfile
    assert "introspect.py introspect" in containerfile
    assert (context / "_build" / "collections" / collection_tarball.name).is_file()

    # The galaxy stage: install the requirements from the context's _build directory.
    build = context / "_build"
    collections = tmp_path / "usr-share-ansible" / "collections"
    proc = run_tool(["ansible-galaxy", "collection", "install", "-r", "requirements.yml", "--collections-path",
                     str(collections)], cwd=build, env=tool_env(tmp_path / "home"), timeout=300)
    assert proc.returncode == 0, output_of(proc)
    # The builder stage: the context's own introspect script over what was installed.
    python_out, system_out = tmp_path / "requirements.txt", tmp_path / "bindep.txt"
    proc = run_tool(["python", str(build / "scripts" / "introspect.py"), "introspect", str(collections),
                     f"--write-pip={python_out}", f"--write-bindep={system_out}"], cwd=tmp_path,
                    env=tool_env(tmp_path / "home"), timeout=300)
    assert proc.returncode == 0, output_of(proc)
    python_deps = python_out.read_text(encoding="utf-8")
    assert "pyelftools" in python_deps and "jmespath" in python_deps, python_deps
    system_deps = system_out.read_text(encoding="utf-8").splitlines()
    assert "gcc  # from collection kpatch.livepatch" in system_deps, system_deps
    assert "elfutils-libelf-devel [platform:rpm]  # from collection kpatch.livepatch" in system_deps, system_deps
