"""The node-exporter textfile: the exposition format as Prometheus parses it, atomic rewrites."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.kpatch.livepatch.plugins.module_utils._target.metrics import (
    LAST_CHANGE, check_metrics_path, render_metrics, write_metrics)
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.taint import read_taint

INFO = {
    "release": "6.1.0-50-cloud-amd64",
    "livepatch_supported": True,
    "patches": [
        {"name": "livepatch_meminfo", "enabled": True, "transition": False, "module_loaded": True},
        {"name": 'odd"name\\x', "enabled": False, "transition": True, "module_loaded": True},
    ],
    "installed": [{"name": "livepatch_meminfo", "release": "6.1.0-50-cloud-amd64"},
                  {"name": "livepatch_meminfo", "release": "6.12.107+deb12-cloud-amd64"}],
    "stalled_tasks": [{"patch": 'odd"name\\x', "pid": 1}, {"patch": 'odd"name\\x', "pid": 2}],
    "taint": {"mask": 32768 + 4096, "names": ["oot_module", "livepatch"]},
}


def parse(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_every_fact_is_a_parsable_sample() -> None:
    samples = parse(render_metrics(INFO, 1700000000.5))
    meminfo = (("patch", "livepatch_meminfo"),)
    odd = (("patch", 'odd"name\\x'),)
    assert samples[("kpatch_livepatch_supported", (("release", "6.1.0-50-cloud-amd64"),))] == 1
    assert samples[("kpatch_livepatch_patch_enabled", meminfo)] == 1
    assert samples[("kpatch_livepatch_patch_enabled", odd)] == 0
    assert samples[("kpatch_livepatch_patch_transition", odd)] == 1
    assert samples[("kpatch_livepatch_stalled_tasks", odd)] == 2
    assert samples[("kpatch_livepatch_stalled_tasks", meminfo)] == 0
    assert samples[("kpatch_livepatch_installed",
                    (("patch", "livepatch_meminfo"), ("release", "6.12.107+deb12-cloud-amd64")))] == 1
    assert samples[("kpatch_livepatch_kernel_taint", ())] == 36864
    assert samples[("kpatch_livepatch_kernel_taint_flag", (("flag", "livepatch"),))] == 1
    assert samples[(LAST_CHANGE, ())] == 1700000000.5


def test_taint_names_come_from_the_real_decoder(tmp_path: Path) -> None:
    tainted = tmp_path / "tainted"
    tainted.write_text("36864\n")
    info = dict(INFO, taint=read_taint(str(tainted)))
    flags = {dict(k[1])["flag"] for k in parse(render_metrics(info, 1.0)) if k[0].endswith("taint_flag")}
    assert "livepatch" in flags and len(flags) == 2


def test_each_metric_has_help_and_type_once() -> None:
    text = render_metrics(INFO, 1.0)
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge"
        assert family.documentation
    helps = [line for line in text.splitlines() if line.startswith("# HELP ")]
    assert len(helps) == len(set(helps))


def test_last_change_moves_only_on_change(tmp_path: Path) -> None:
    prom = tmp_path / "textfile" / "kpatch.prom"
    write_metrics(str(prom), INFO, changed=True, now=100.0)
    write_metrics(str(prom), INFO, changed=False, now=200.0)
    assert parse(prom.read_text())[(LAST_CHANGE, ())] == 100.0
    write_metrics(str(prom), INFO, changed=True, now=300.0)
    assert parse(prom.read_text())[(LAST_CHANGE, ())] == 300.0
    # Nothing else is left in the collector's directory, and the file is world-readable.
    assert os.listdir(prom.parent) == ["kpatch.prom"]
    assert prom.stat().st_mode & 0o777 == 0o644


def test_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch) -> None:
    prom = tmp_path / "kpatch.prom"
    write_metrics(str(prom), INFO, changed=True, now=5.0)
    before = prom.read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_metrics(str(prom), dict(INFO, patches=[]), changed=True, now=6.0)
    assert prom.read_text() == before
    assert os.listdir(tmp_path) == ["kpatch.prom"]


@pytest.mark.parametrize("path", ["kpatch.prom", "/var/lib/node-exporter/kpatch.txt", "/x/.prom", "/x/a b.prom"])
def test_paths_node_exporter_would_not_read_are_refused(path: str) -> None:
    with pytest.raises(ValueError):
        check_metrics_path(path)
