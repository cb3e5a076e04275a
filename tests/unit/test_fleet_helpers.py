"""Small pure helpers behind the fleet work: filters, recap parsing, struct requirements by version."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.kpatch.livepatch.plugins.filter.fleet import distro_plan, jmespath_search
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.structsizes import (
    required_structs)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kconfig import KernelConfig
from tests.testbed.fleet import parse_recap

RECAP = """
PLAY RECAP *********************************************************************
localhost                  : ok=20   changed=0    unreachable=0    failed=0    skipped=1    rescued=0    ignored=0
vm612                      : ok=16   changed=2    unreachable=0    failed=1    skipped=4    rescued=1    ignored=0
"""


def test_parse_recap():
    recap = parse_recap(RECAP)
    assert recap["localhost"]["changed"] == 0
    assert recap["vm612"] == {"ok": 16, "changed": 2, "unreachable": 0, "failed": 1, "skipped": 4,
                              "rescued": 1, "ignored": 0}


def test_jmespath_filter_queries_fleet_facts():
    fleet = [{"host": "a", "patches": [{"name": "p", "enabled": True, "transition": False}]},
             {"host": "b", "patches": [{"name": "p", "enabled": True, "transition": True}]}]
    assert jmespath_search(fleet, "[?length(patches[?transition]) > `0`].host") == ["b"]
    assert jmespath_search(fleet, "[?!contains(patches[?enabled && !transition].name, 'p')].host") == ["b"]
    with pytest.raises(AnsibleFilterError, match="jmespath expression"):
        jmespath_search(fleet, "[?")


def test_distro_plan_filter_reports_unsupported_distribution():
    assert distro_plan("6.1.0-50-cloud-amd64", "debian", "12")["vmlinux_path"] == \
        "/usr/lib/debug/boot/vmlinux-6.1.0-50-cloud-amd64"
    with pytest.raises(AnsibleFilterError, match="not supported"):
        distro_plan("6.6.0", "gentoo", "2")


@pytest.mark.parametrize("version,para", [("6.1.176", True), ("6.7.12", True), ("6.8.0", False),
                                          ("6.12.107", False)])
def test_paravirt_patch_site_required_only_before_6_8(tmp_path, version, para):
    config = tmp_path / "config"
    config.write_text(f"#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86 {version} Kernel Configuration\n"
                      "#\nCONFIG_PARAVIRT=y\nCONFIG_JUMP_LABEL=y\n")
    assert KernelConfig.read(config).kernel_version == tuple(int(x) for x in version.split(".")[:2])
    assert ("PARA" in required_structs(config)) is para
    assert "JUMP" in required_structs(config)
