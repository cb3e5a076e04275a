"""The boot service's unit file, rendered by Ansible's own templating (trim_blocks and all).

A block tag at the end of a line once swallowed the newline, joining ``ExecStart`` with the next
directive: systemd then passed ``60SyslogIdentifier=...`` as the timeout and the service failed
at every boot.  Rendering it here through real Ansible catches that without a VM.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "roles" / "target" / "templates" / "kpatch-livepatch.service.j2"


def render(tmp_path: Path, extra: dict) -> str:
    out = tmp_path / "unit.service"
    play = tmp_path / "play.yml"
    defaults = {"kpatch_target_python": "/usr/bin/python3", "kpatch_target_install_dir": "/var/lib/kpatch",
                "kpatch_target_timeout": 60, "kpatch_target_runtime_dir": "/usr/lib/kpatch-livepatch",
                "kpatch_target_service_name": "kpatch-livepatch", "kpatch_target_metrics_file": ""}
    play.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "vars": {**defaults, **extra},
                                 "tasks": [{"ansible.builtin.template": {"src": str(TEMPLATE), "dest": str(out),
                                                                         "mode": "0644"}}]}]))
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           "-e", json.dumps({"ansible_python_interpreter": sys.executable}), str(play)],
                          cwd=tmp_path, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out.read_text()


def directives(text: str) -> dict:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


@pytest.mark.parametrize("metrics", ["", "/var/lib/node-exporter/kpatch.prom"])
def test_every_directive_on_its_own_line(tmp_path: Path, metrics: str) -> None:
    unit = directives(render(tmp_path, {"kpatch_target_metrics_file": metrics}))
    argv = unit["ExecStart"].split()
    assert argv[:4] == ["/usr/bin/python3", "-B", "-m", "kpatch_target.boot"]
    assert argv[argv.index("--timeout") + 1] == "60"
    assert ("--metrics-file" in argv) == bool(metrics)
    if metrics:
        assert argv[argv.index("--metrics-file") + 1] == metrics
    assert unit["SyslogIdentifier"] == "kpatch-livepatch"
    assert unit["Environment"] == "PYTHONPATH=/usr/lib/kpatch-livepatch/kpatch_target.zip"
