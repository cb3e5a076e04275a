"""The build_host and debuginfo roles for real on this Debian 12 machine, in check mode.

Check mode makes apt resolve every computed package (pinned to the image's version) against
Debian's real archive without installing ~1 GB on the controller: a wrong name or version
fails the run, naming the package.  The fleet test provides the same inputs pre-unpacked.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.testbed.ansible_run import run_playbook

pytestmark = pytest.mark.integration

RELEASE = "6.1.0-50-cloud-amd64"


def _run(tmp_path, package_version):
    inventory = tmp_path / "hosts"
    inventory.write_text(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    out = tmp_path / "kernels.json"
    book = tmp_path / "build_host.yml"
    book.write_text(json.dumps([{"hosts": "localhost", "gather_facts": True, "gather_subset": ["min"], "tasks": [
        {"ansible.builtin.include_role": {"name": "kpatch.livepatch.build_host"},
         "vars": {"kpatch_build_host_releases": [RELEASE], "kpatch_debuginfo_package_version": package_version,
                  "kpatch_debuginfo_work_dir": str(tmp_path / "src")}},
        {"ansible.builtin.copy": {"content": "{{ kpatch_debuginfo_kernels | to_json }}", "dest": str(out)},
         "check_mode": False},
    ]}]))
    return run_playbook(book, inventory, args=["--check", "-v"], timeout=600), out


def test_debian_build_host_resolves_every_package_in_the_archive(tmp_path):
    proc, out = _run(tmp_path, "6.1.176-1")
    assert proc.returncode == 0, proc.stdout[-4000:]
    kernels = json.loads(out.read_text())
    assert kernels[RELEASE]["vmlinux"] == f"/usr/lib/debug/boot/vmlinux-{RELEASE}"
    assert kernels[RELEASE]["headers"] == f"/usr/src/linux-headers-{RELEASE}"
    assert kernels[RELEASE]["source_dir"] == str(tmp_path / "src" / RELEASE / "linux-source-6.1")
    # apt would install the dbg package at exactly the image's version.
    assert f"Inst linux-image-{RELEASE}-dbg (6.1.176-1" in proc.stdout


def test_a_version_the_archive_does_not_have_fails_naming_it(tmp_path):
    proc, _out = _run(tmp_path, "6.1.176-99")
    assert proc.returncode != 0
    assert "6.1.176-99" in proc.stdout and "linux-" in proc.stdout, proc.stdout[-3000:]
