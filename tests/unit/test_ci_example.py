"""The example CI pipeline (examples/ci/gitlab-ci.yml), run as far as it can be here.

The CI service is not here; its jobs' commands are.  Each job's ``ansible-playbook`` line is
expanded with the pipeline's own variables and run against the collection found by name (the
checkout's collections path, as after ``ansible-galaxy collection install``) with
``--syntax-check``: every playbook must resolve by its collection name and parse with the
job's extra variables.  The stages run in the documented order, and every rollout job reports JUnit.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "examples" / "ci" / "gitlab-ci.yml"
PLAYBOOKS = {"kpatch.livepatch.apply_livepatch", "kpatch.livepatch.rollback_livepatch",
             "kpatch.livepatch.livepatch_status"}


def pipeline() -> dict:
    return yaml.safe_load(PIPELINE.read_text(encoding="utf-8"))


def jobs(doc: dict) -> dict:
    return {name: job for name, job in doc.items() if isinstance(job, dict) and "script" in job}


def expand(command: str, variables: dict, job: str) -> list:
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        command = command.replace(f"${name}", str(value))
    command = command.replace("$CI_JOB_NAME", job)
    return shlex.split(command)


def test_stages_run_build_canary_rollout_status() -> None:
    doc = pipeline()
    assert doc["stages"] == ["build", "canary", "rollout", "status"]
    stages = {name: job["stage"] for name, job in jobs(doc).items()}
    assert stages["build"] == "build" and stages["canary"] == "canary" and stages["rollout"] == "rollout"
    assert stages["status"] == "status"
    template = doc[".playbook"]
    assert template["artifacts"]["reports"]["junit"] == "reports/$CI_JOB_NAME.junit.xml"
    for name in ("build", "canary", "rollout", "rollback"):
        assert jobs(doc)[name]["extends"] == ".playbook"


def test_every_job_command_resolves_and_parses(tmp_path: Path) -> None:
    doc = pipeline()
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[kpatch_targets]\nweb1\n[canary]\nweb1\n", encoding="utf-8")
    variables = dict(doc["variables"], INVENTORY=str(inventory), REPORT=str(tmp_path / "report.json"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(REPO / "playbooks" / "collections"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_CONFIG=str(tmp_path / "none.cfg"))
    ran = set()
    for name, job in jobs(doc).items():
        for line in job["script"]:
            argv = expand(line, variables, name)
            assert argv[0] == "ansible-playbook", line
            playbook = next(a for a in argv if a.startswith("kpatch.livepatch."))
            assert playbook in PLAYBOOKS, playbook
            argv[0] = str(Path(sys.executable).parent / "ansible-playbook")
            proc = subprocess.run(argv + ["--syntax-check"], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  check=False, timeout=300)
            assert proc.returncode == 0, f"{name}: {' '.join(argv)}\n{proc.stdout}{proc.stderr}"
            ran.add(playbook)
    assert ran == PLAYBOOKS
