"""The debuginfo and build_host roles' per-distribution choices, run through real Ansible.

Each case runs the role on localhost with ``*_install: false`` and the facts of another
distribution (``kpatch_debuginfo_os``): the role's ``first_found`` picks the vars file, whose
choices are checked here: the distribution's ``/etc/os-release`` ``ID`` and the version the
builder is handed, the repositories by name, the build dependencies.  What the builder then makes
of an ID (``_kbuild/distro.py``, through the ``distro_plan`` filter) is checked against Debian's
real archive and packages in tests/integration/test_kbuild_distro_debian.py, not here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from tests.testbed.ansible_run import REPO, run_playbook

# (case id, facts, the distribution's os-release ID, the version the builder is given, kernel release)
CASES = [
    ("debian12", dict(distribution="Debian", distribution_version="12.8", distribution_major_version="12",
                      distribution_release="bookworm", os_family="Debian"),
     "debian", "12", "6.1.0-50-cloud-amd64"),
    ("ubuntu2404", dict(distribution="Ubuntu", distribution_version="24.04", distribution_major_version="24",
                        distribution_release="noble", os_family="Debian"),
     "ubuntu", "24.04", "6.8.0-45-generic"),
    ("fedora40", dict(distribution="Fedora", distribution_version="40", distribution_major_version="40",
                      distribution_release="", os_family="RedHat"),
     "fedora", "40", "6.10.6-200.fc40.x86_64"),
    ("rhel8", dict(distribution="RedHat", distribution_version="8.10", distribution_major_version="8",
                   distribution_release="Ootpa", os_family="RedHat"),
     "rhel", "8", "4.18.0-553.el8_10.x86_64"),
    ("rhel9", dict(distribution="RedHat", distribution_version="9.4", distribution_major_version="9",
                   distribution_release="Plow", os_family="RedHat"),
     "rhel", "9", "5.14.0-427.13.1.el9_4.x86_64"),
    ("rhel10", dict(distribution="RedHat", distribution_version="10.0", distribution_major_version="10",
                    distribution_release="Coughlan", os_family="RedHat"),
     "rhel", "10", "6.12.0-55.9.1.el10_0.x86_64"),
    ("centos9", dict(distribution="CentOS", distribution_version="9", distribution_major_version="9",
                     distribution_release="Stream", os_family="RedHat"),
     "centos", "9", "5.14.0-480.el9.x86_64"),
    ("rocky9", dict(distribution="Rocky", distribution_version="9.4", distribution_major_version="9",
                    distribution_release="Blue Onyx", os_family="RedHat"),
     "rocky", "9", "5.14.0-427.13.1.el9_4.x86_64"),
    ("alma8", dict(distribution="AlmaLinux", distribution_version="8.10", distribution_major_version="8",
                   distribution_release="Cerulean Leopard", os_family="RedHat"),
     "almalinux", "8", "4.18.0-553.el8_10.x86_64"),
    ("ol9", dict(distribution="OracleLinux", distribution_version="9.4", distribution_major_version="9",
                 distribution_release="", os_family="RedHat"),
     "ol", "9", "5.15.0-209.161.7.2.el9uek.x86_64"),
]

EXPECTED_REPOS: Dict[str, Dict[str, List[str]]] = {
    "debian12": {"enable": [], "apt": []},
    "ubuntu2404": {"enable": [], "apt": ["deb http://ddebs.ubuntu.com noble main restricted universe multiverse"]},
    "fedora40": {"enable": ["fedora-debuginfo", "updates-debuginfo"], "apt": []},
    "rhel8": {"enable": ["rhel-8-for-x86_64-baseos-debug-rpms", "rhel-8-for-x86_64-baseos-source-rpms"], "apt": []},
    "rhel9": {"enable": ["rhel-9-for-x86_64-baseos-debug-rpms", "rhel-9-for-x86_64-baseos-source-rpms"], "apt": []},
    "rhel10": {"enable": ["rhel-10-for-x86_64-baseos-debug-rpms", "rhel-10-for-x86_64-baseos-source-rpms"],
               "apt": []},
    "centos9": {"enable": ["baseos-debuginfo", "baseos-source"], "apt": []},
    "rocky9": {"enable": ["baseos-debug", "baseos-source"], "apt": []},
    "alma8": {"enable": ["baseos-debuginfo", "baseos-source"], "apt": []},
    "ol9": {"enable": ["kpatch-ol-debuginfo", "kpatch-ol-source"], "apt": []},
}


def _playbook(tmp: Path) -> Path:
    """One play including both roles once per case, collecting what they computed into a JSON file."""
    tasks = []
    for case, facts, _distro, _version, release in CASES:
        os_facts = dict(facts, architecture="x86_64")
        tasks.append({"name": f"build_host for {case}", "ansible.builtin.include_role": {
            "name": "kpatch.livepatch.build_host"},
            "vars": {"kpatch_build_host_os": os_facts, "kpatch_build_host_install": False,
                     "kpatch_build_host_releases": [release]}})
        tasks.append({"name": f"collect {case}", "ansible.builtin.set_fact": {
            "collected": "{{ collected | default({}) | combine({'%s': {"
                         "'plan': kpatch_debuginfo_plans['%s'], 'repos': kpatch_debuginfo_repository_plan,"
                         "'build_packages': kpatch_build_host_packages, 'pip': kpatch_build_host_pip_packages}}) }}"
                         % (case, release)}})
    tasks.append({"ansible.builtin.copy": {"content": "{{ collected | to_nice_json }}", "dest": str(tmp / "out.json")}})
    book = tmp / "roles.yml"
    book.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    return book


@pytest.fixture(scope="module")
def computed(tmp_path_factory) -> Dict[str, dict]:
    tmp = tmp_path_factory.mktemp("roles")
    inventory = tmp / "hosts"
    inventory.write_text(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    proc = run_playbook(_playbook(tmp), inventory, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return json.loads((tmp / "out.json").read_text())


@pytest.mark.parametrize("case,facts,distro,version,release", CASES, ids=[c[0] for c in CASES])
def test_role_hands_the_builder_the_distributions_identity(computed, case, facts, distro, version, release):
    got = computed[case]["plan"]
    assert (got["distro"], got["version"], got["release"]) == (distro, version, release)
    assert got["family"] == ("deb" if facts["os_family"] == "Debian" else "rpm")
    if got["family"] == "rpm":
        # rpmbuild unpacks under the role's work directory (its default), one per release.
        topdir = f"_topdir /var/tmp/kpatch-livepatch/src/{release}/rpmbuild"
        assert sum(topdir in cmd for cmd in got["source_commands"]) == 2, got["source_commands"]


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_role_repositories(computed, case):
    repos = computed[case]["repos"]
    assert repos["enable_repos"] == EXPECTED_REPOS[case]["enable"]
    for line in EXPECTED_REPOS[case]["apt"]:
        assert line in repos["apt_repositories"]
    assert repos["manager"] == ("apt" if case.startswith(("debian", "ubuntu")) else "dnf")


def test_build_dependencies_per_family(computed):
    assert "python3-pyelftools" in computed["debian12"]["build_packages"]
    assert "libelf-dev" in computed["ubuntu2404"]["build_packages"]
    assert "elfutils-libelf-devel" in computed["rhel9"]["build_packages"]
    assert computed["rocky9"]["pip"] == ["pyelftools"] and computed["fedora40"]["pip"] == []
    assert computed["ubuntu2404"]["repos"]["keyring_packages"] == ["ubuntu-dbgsym-keyring"]


def test_unknown_distribution_is_refused_by_name(tmp_path):
    inventory = tmp_path / "hosts"
    inventory.write_text(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    book = tmp_path / "bad.yml"
    book.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [{
        "ansible.builtin.include_role": {"name": "kpatch.livepatch.debuginfo"},
        "vars": {"kpatch_debuginfo_install": False, "kpatch_debuginfo_releases": ["6.6.0-1-generic"],
                 "kpatch_debuginfo_os": {"distribution": "Gentoo", "distribution_version": "2.15",
                                         "distribution_major_version": "2", "distribution_release": "",
                                         "os_family": "Gentoo", "architecture": "x86_64"}}}]}]))
    proc = run_playbook(book, inventory, timeout=120)
    assert proc.returncode != 0
    assert "knows no variables for Gentoo 2.15" in proc.stdout, proc.stdout[-3000:]
    assert REPO.is_dir()
