"""kpatch.livepatch.controller_files through real ansible-playbook: writes, keeps, refuses.

The fleet playbooks write their summary, JUnit report, manifest and status report with it;
it must write only when the bytes or the mode differ (so the run reports what changed), create
the directory, write nothing in check mode, and refuse bad entries before writing any file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from tests.testbed.ansible_run import REPO, ansible_env

PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def run_task(tmp_path: Path, files: List[Dict[str, object]], check: bool = False) -> Dict[str, object]:
    """One controller_files task on localhost; returns its registered result."""
    out = tmp_path / "result.json"
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"kpatch.livepatch.controller_files": {"files": files}, "register": "r", "ignore_errors": True},
        {"ansible.builtin.copy": {"content": "{{ r | to_json }}", "dest": str(out), "mode": "0644"},
         "check_mode": False}]}]
    book = tmp_path / "play.yml"
    book.write_text(json.dumps(play))
    cmd = [str(PLAYBOOK), "-i", "localhost,", "-c", "local", "-e",
           json.dumps({"ansible_python_interpreter": sys.executable}), str(book)] + (["--check"] if check else [])
    proc = subprocess.run(cmd, cwd=REPO, env=ansible_env(), capture_output=True, text=True, check=False, timeout=300)
    assert out.exists(), proc.stdout + proc.stderr
    return json.loads(out.read_text())


def test_writes_creates_the_directory_then_keeps_what_is_equal(tmp_path: Path) -> None:
    report = tmp_path / "deep" / "dir" / "summary.json"
    junit = tmp_path / "deep" / "dir" / "summary.junit.xml"
    files = [{"path": str(report), "content": '{"ok": true}\n'}, {"path": str(junit), "content": "<x/>", "mode": "0600"}]
    first = run_task(tmp_path, files)
    assert first["changed"] is True and first["written"] == [str(report), str(junit)], first
    assert report.read_text() == '{"ok": true}\n' and junit.read_text() == "<x/>"
    assert oct(report.stat().st_mode & 0o777) == "0o644" and oct(junit.stat().st_mode & 0o777) == "0o600"
    again = run_task(tmp_path, files)
    assert again["changed"] is False and again["written"] == [] and again["paths"] == [str(report), str(junit)]
    # Only the file whose bytes differ is rewritten; one whose mode differs is too.
    junit.chmod(0o644)
    third = run_task(tmp_path, [{"path": str(report), "content": '{"ok": false}\n'}, files[1]])
    assert third["written"] == [str(report), str(junit)] and report.read_text() == '{"ok": false}\n'
    assert oct(junit.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in report.parent.iterdir()) == ["summary.json", "summary.junit.xml"]


def test_check_mode_reports_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new" / "manifest.json"
    res = run_task(tmp_path, [{"path": str(target), "content": "{}\n"}], check=True)
    assert res["changed"] is True and res["written"] == [str(target)], res
    assert not target.parent.exists()


def test_bad_entries_are_refused_by_name_before_any_write(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    cases = {
        "relative": ({"path": "summary.json", "content": "x"}, "path must be an absolute file name"),
        "no content": ({"path": str(tmp_path / "a"), "content": 3}, "content must be a string"),
        "bad mode": ({"path": str(tmp_path / "b"), "content": "x", "mode": "rw-r--r--"}, "mode must be octal digits"),
        "unknown key": ({"path": str(tmp_path / "c"), "content": "x", "owner": "root"}, "dictionary of path, content"),
    }
    for name, (entry, message) in cases.items():
        res = run_task(tmp_path, [{"path": str(good), "content": "{}"}, entry])
        assert res["failed"] is True and message in res["msg"], (name, res)
        assert not good.exists(), name
    empty = run_task(tmp_path, [])
    assert empty["failed"] is True and "non-empty list" in empty["msg"]
