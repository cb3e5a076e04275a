# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0 or later; by its "any later version" clause that includes
# version 3 (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Controller-side filter that turns a rollout summary into a JUnit XML report.

CI systems (GitLab, Jenkins, GitHub's test reporters) show JUnit natively: one test case per
host, a failure per host that is not patched (with the summary's reason as its message), a
skipped case per host the rollout never reached.  The input is the JSON summary the fleet
playbooks write (``playbooks/tasks/write-summary.yml``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import xml.etree.ElementTree as ET

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_native

PASSED = ("changed", "unchanged", "built")


def _case(host):
    """One ``<testcase>`` for a host entry of the summary."""
    if not isinstance(host, dict) or not host.get("host"):
        raise AnsibleFilterError("junit_report: every summary host needs a 'host' name, got %r" % (host,))
    release = to_native(host.get("release") or "unknown")
    case = ET.Element("testcase", {"classname": "kpatch.livepatch.%s" % release, "name": to_native(host["host"])})
    outcome = to_native(host.get("outcome") or "")
    reason = to_native(host.get("reason") or "")
    module = to_native(host.get("module") or "")
    detail = "outcome=%s release=%s module=%s sha256=%s" % (outcome, release, module, host.get("sha256") or "")
    if outcome == "not_reached":
        ET.SubElement(case, "skipped", {"message": reason or "not reached"})
    elif outcome not in PASSED:
        failure = ET.SubElement(case, "failure", {"message": reason or outcome or "failed", "type": outcome or "failed"})
        failure.text = detail
    out = ET.SubElement(case, "system-out")
    out.text = detail + ("\nreason: %s" % reason if reason else "")
    return case


def junit_report(summary):
    """``summary | kpatch.livepatch.junit_report``: the rollout summary as a JUnit XML document."""
    if not isinstance(summary, dict) or not isinstance(summary.get("hosts"), list):
        raise AnsibleFilterError("junit_report expects a rollout summary (a dict with a 'hosts' list)")
    cases = [_case(h) for h in summary["hosts"]]
    failures = sum(1 for c in cases if c.find("failure") is not None)
    skipped = sum(1 for c in cases if c.find("skipped") is not None)
    name = "%s %s" % (to_native(summary.get("playbook") or "kpatch.livepatch"), to_native(summary.get("target_group") or ""))
    attrs = {"name": name.strip(), "tests": str(len(cases)), "failures": str(failures), "errors": "0",
             "skipped": str(skipped)}
    suites = ET.Element("testsuites", attrs)
    suite = ET.SubElement(suites, "testsuite", attrs)
    suite.extend(cases)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


class FilterModule(object):
    def filters(self):
        return {"junit_report": junit_report}
