"""The tarball ``ansible-galaxy collection build`` makes: only what a user needs, and Galaxy accepts it.

The list of what a user needs is written out here; anything else in the tarball (a development
file, a test, a cache) fails the test with its name.  galaxy-importer, the importer Galaxy and
Automation Hub run on every upload, must accept the tarball with no warning.
"""

from __future__ import annotations

import fnmatch
import json
import subprocess
from pathlib import Path

from tests.unit.galaxy_tools import (  # noqa: F401  pylint: disable=unused-import
    build_collection, collection_tarball, copy_checkout, output_of, run_tool, tarball_members, tool_env)

# Top-level files and directories a user of the collection needs.
SHIPPED = {
    "MANIFEST.json", "FILES.json",  # written by ansible-galaxy
    "README.md", "COPYING", "CHANGELOG.rst", "changelogs", "changelogs/changelog.yaml",
    "requirements.txt", "bindep.txt",  # execution-environment dependencies
    "meta", "plugins", "roles", "playbooks", "kmod", "tools", "docs", "examples",
}
REQUIRED = ["COPYING", "CHANGELOG.rst", "changelogs/changelog.yaml", "meta/runtime.yml",
            "meta/execution-environment.yml", "bindep.txt", "requirements.txt",
            "roles/build_host/README.md", "roles/debuginfo/README.md", "roles/target/README.md",
            "playbooks/apply_livepatch.yml", "plugins/doc_fragments/install_dir.py", "kmod/Kbuild"]
# Development-only paths, however they got into the checkout.
NEVER = ["tests/*", "scripts/*", "bench/*", "Makefile", "ansible.cfg", "pytest.ini", "requirements-test.txt",
         ".*", "*/.*", "build/*", "*__pycache__*", "*.pyc", "playbooks/collections*", "changelogs/fragments*",
         "changelogs/config.yaml"]
PLAYBOOK_ALIASES = {"playbooks/apply-livepatch.yml": "apply_livepatch.yml",
                    "playbooks/rollback-livepatch.yml": "rollback_livepatch.yml",
                    "playbooks/livepatch-status.yml": "livepatch_status.yml"}


def unwanted(paths: list) -> list:
    """Paths outside SHIPPED or matching NEVER."""
    return [p for p in paths
            if p.split("/")[0] not in SHIPPED or any(fnmatch.fnmatch(p, pattern) for pattern in NEVER)
            or (p.startswith("changelogs/") and p != "changelogs/changelog.yaml")]


def test_tarball_holds_only_what_a_user_needs(collection_tarball: Path) -> None:
    members = tarball_members(collection_tarball)
    paths = [m.path for m in members]
    files = [m.path for m in members if not m.is_dir]
    print(f"{collection_tarball.name}: {len(files)} files, {len(members)} entries")
    print("\n".join(sorted(files)))
    assert unwanted(paths) == []
    assert [p for p in REQUIRED if p not in paths] == []
    assert len(paths) == len(set(paths))
    # Every engine, build and target module the plugins import is there.
    assert {p.split("/")[2] for p in paths if p.startswith("plugins/module_utils/_")} == {
        "_elf", "_engine", "_kbuild", "_target"}


def test_playbook_aliases_are_links_inside_the_collection(collection_tarball: Path) -> None:
    links = {m.path: m.link for m in tarball_members(collection_tarball) if m.link is not None}
    assert links == PLAYBOOK_ALIASES


def test_build_leaves_out_development_state(tmp_path: Path) -> None:
    """Caches and build output a developer's checkout has are not packed (build_ignore)."""
    copy = copy_checkout(tmp_path / "checkout")
    for junk in (".pytest_cache/v/cache/lastfailed", "build/livepatch-x.ko", "plugins/modules/__pycache__/kpatch.pyc",
                 ".ansible/collections/x", "tests/output/.tmp/x", "changelogs/.plugin-cache.yaml"):
        (copy / junk).parent.mkdir(parents=True, exist_ok=True)
        (copy / junk).write_text("x", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    paths = [m.path for m in tarball_members(build_collection(copy, out, tmp_path / "home"))]
    assert unwanted(paths) == []
    assert "plugins/modules/kpatch.py" in paths


def import_tarball(tarball: Path, work: Path, **settings: str) -> subprocess.CompletedProcess:
    """galaxy-importer on the tarball, as Galaxy runs it (it writes importer_result.json in ``work``)."""
    env = tool_env(work / "home", **{f"GALAXY_IMPORTER_{k.upper()}": v for k, v in settings.items()})
    return run_tool(["python", "-m", "galaxy_importer.main", str(tarball)], cwd=work, env=env, timeout=900)


def test_galaxy_importer_accepts_the_tarball(collection_tarball: Path, tmp_path: Path) -> None:
    proc = import_tarball(collection_tarball, tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, output_of(proc)
    assert "Importer processing completed successfully" in log, output_of(proc)
    # ansible-lint runs inside the importer: it must have run, and found nothing.
    assert "Linting collection via ansible-lint" in log, output_of(proc)
    assert [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))] == []
    result = json.loads((tmp_path / "importer_result.json").read_text(encoding="utf-8"))
    contents = {(c["content_type"], c["name"]) for c in result["contents"]}
    assert {("module", "kpatch"), ("module", "kpatch_build"), ("module", "kpatch_info"), ("role", "build_host"),
            ("role", "debuginfo"), ("role", "target"), ("filter", "jmespath"), ("filter", "distro_plan"),
            ("playbook", "apply_livepatch.yml")} <= contents
    docs = {c["content_name"]: c for c in result["docs_blob"]["contents"]}
    assert docs["kpatch"]["doc_strings"]["doc"]["attributes"]["platform"]["platforms"] == "linux"
    assert all(role["readme_html"] for role in result["docs_blob"]["contents"] if role["content_type"] == "role")
    assert result["docs_blob"]["collection_readme"]["html"]


def test_galaxy_importer_rejects_a_role_without_readme(tmp_path: Path) -> None:
    """The importer check is live: the collection built without one role's README is refused."""
    copy = copy_checkout(tmp_path / "checkout")
    (copy / "roles" / "target" / "README.md").unlink()
    out = tmp_path / "out"
    out.mkdir()
    proc = import_tarball(build_collection(copy, out, tmp_path / "home"), tmp_path, run_ansible_lint="false")
    assert proc.returncode != 0, output_of(proc)
    assert "No role readme found" in proc.stdout + proc.stderr, output_of(proc)
