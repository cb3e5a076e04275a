"""The debuginfo role finds the unpacked source tree a plan's glob names (roles/debuginfo/tasks/unpack-source.yml).

The role's own task file runs through ansible-playbook on localhost against directories laid
out as each distribution family unpacks its source: Debian's ``linux-source-X.Y``, Ubuntu's
``linux*-<version>`` and an RPM ``rpmbuild/BUILD/kernel-*/linux-*``, with decoys that match the
glob's last component only.  Nothing is fetched: the plans' command lists are empty.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.testbed.ansible_run import REPO, run_playbook

TASKS = REPO / "roles" / "debuginfo" / "tasks" / "unpack-source.yml"
RELEASE = "6.1.0-50-cloud-amd64"
CASES = [
    ("linux-source-6.1", ["linux-source-6.1/drivers/net"], "linux-source-6.1"),
    ("linux*-5.15.0", ["linux-hwe-5.15.0/kernel", "otherlinux-5.15.1"], "linux-hwe-5.15.0"),
    ("rpmbuild/BUILD/kernel-*/linux-*",
     ["rpmbuild/BUILD/kernel-5.14.0/linux-5.14.0-362.el9/kernel", "rpmbuild/BUILD/kernel-5.14.0/configs", "linux-top"],
     "rpmbuild/BUILD/kernel-5.14.0/linux-5.14.0-362.el9"),
]


def record_source_dir(tmp_path: Path, glob: str) -> Path:
    """Run the task file for one plan and return where the recorded source_dir points."""
    work = tmp_path / "src"
    out = tmp_path / "kernels.json"
    plan = {"source_tree_glob": glob, "source_commands": [], "config_path": str(tmp_path / "no-config"),
            "headers_path": str(tmp_path / "headers"), "vmlinux_path": str(tmp_path / "vmlinux")}
    book = tmp_path / "unpack.yml"
    book.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Unpack", "ansible.builtin.include_tasks": str(TASKS),
         "vars": {"kpatch_debuginfo_work_dir": str(work), "kpatch_debuginfo_item": {"key": RELEASE},
                  "kpatch_debuginfo_plan": plan}},
        {"name": "Save", "ansible.builtin.copy": {"content": "{{ kpatch_debuginfo_kernels | to_json }}",
                                                  "dest": str(out), "mode": "0644"}},
    ]}]), encoding="utf-8")
    inventory = tmp_path / "hosts"
    inventory.write_text(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n",
                         encoding="utf-8")
    proc = run_playbook(book, inventory, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return Path(json.loads(out.read_text(encoding="utf-8"))[RELEASE]["source_dir"])


@pytest.mark.parametrize(("glob", "dirs", "expected"), CASES, ids=["debian", "ubuntu", "rpm"])
def test_tree_is_the_directory_the_whole_glob_matches(tmp_path: Path, glob: str, dirs: list, expected: str) -> None:
    for rel in dirs:
        (tmp_path / "src" / RELEASE / rel).mkdir(parents=True)
    (tmp_path / "src" / RELEASE / "linux-source-6.1.tar.xz").write_text("", encoding="utf-8")
    assert record_source_dir(tmp_path, glob) == tmp_path / "src" / RELEASE / expected


def test_nothing_unpacked_records_the_glob_itself(tmp_path: Path) -> None:
    """As in check mode, where no source was fetched: the plan's glob is reported as the path."""
    assert record_source_dir(tmp_path, "linux-source-6.1") == tmp_path / "src" / RELEASE / "linux-source-6.1"
    assert record_source_dir(tmp_path, "linux*-5.15.0") == tmp_path / "src" / RELEASE / "linux*-5.15.0"
