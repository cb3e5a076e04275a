"""The rollout summary as JUnit XML: one case per host, failures and skips as CI systems read them."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.kpatch.livepatch.plugins.filter.report import junit_report

REPO = Path(__file__).resolve().parents[2]
SUMMARY = {
    "playbook": "apply-livepatch", "target_group": "web", "ok": False,
    "counts": {"changed": 1, "unchanged": 1, "failed": 1, "not_reached": 1},
    "hosts": [
        {"host": "web1", "release": "6.1.0-50-cloud-amd64", "outcome": "changed", "reason": "",
         "module": "livepatch-meminfo", "sha256": "ab" * 32},
        {"host": "web2", "release": "6.1.0-50-cloud-amd64", "outcome": "unchanged", "reason": "",
         "module": "livepatch-meminfo", "sha256": "ab" * 32},
        {"host": "web3", "release": "6.12.107+deb12-cloud-amd64", "outcome": "failed",
         "reason": "transition stalled: pid 77 (sleeper)", "module": "livepatch-meminfo", "sha256": "cd" * 32},
        {"host": "web4", "release": "unknown", "outcome": "not_reached", "reason": "unreachable <ssh> & \"quoted\"",
         "module": "", "sha256": ""},
    ],
}


def parse(xml: str) -> ET.Element:
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    return ET.fromstring(xml.split("\n", 1)[1])


def test_one_case_per_host_with_counts() -> None:
    root = parse(junit_report(SUMMARY))
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "1")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert sorted(cases) == ["web1", "web2", "web3", "web4"]
    assert cases["web3"].get("classname") == "kpatch.livepatch.6.12.107+deb12-cloud-amd64"
    assert cases["web1"].find("failure") is None and cases["web1"].find("skipped") is None
    failure = cases["web3"].find("failure")
    assert failure is not None and failure.get("message") == "transition stalled: pid 77 (sleeper)"
    skipped = cases["web4"].find("skipped")
    # Markup in a reason is escaped, not interpreted.
    assert skipped is not None and skipped.get("message") == "unreachable <ssh> & \"quoted\""


def test_all_patched_has_no_failure() -> None:
    ok = dict(SUMMARY, hosts=SUMMARY["hosts"][:2])
    suite = parse(junit_report(ok)).find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures")) == ("2", "0")


@pytest.mark.parametrize("bad", [None, [], {"hosts": "web1"}, {"hosts": [{"outcome": "changed"}]}])
def test_not_a_summary_is_refused(bad) -> None:
    with pytest.raises(AnsibleFilterError):
        junit_report(bad)


def test_filter_runs_in_ansible(tmp_path: Path) -> None:
    """Through real Ansible, as the playbooks use it: the collection's filter writes the report."""
    out = tmp_path / "apply-summary.junit.xml"
    play = tmp_path / "play.yml"
    play.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"ansible.builtin.copy": {"content": "{{ summary | kpatch.livepatch.junit_report }}", "dest": str(out),
                                  "mode": "0644"}}]}]), encoding="utf-8")
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           "-e", json.dumps({"summary": SUMMARY, "ansible_python_interpreter": sys.executable}),
                           str(play)], cwd=REPO, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert parse(out.read_text(encoding="utf-8")).find("testsuite").get("failures") == "1"
