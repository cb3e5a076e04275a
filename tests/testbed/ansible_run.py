"""Run the collection's modules and playbooks through real Ansible (ad-hoc and ansible-playbook).

Tests drive Ansible exactly as a user does, with the repository's ``ansible.cfg`` (which puts
``playbooks/collections`` on the collections path: the committed link to this checkout), and parse the module result from ad-hoc one-line output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class ModuleRun:
    """One ad-hoc module run: exit status, parsed result and the raw output."""

    rc: int
    result: Dict[str, object]
    output: str

    @property
    def failed(self) -> bool:
        return bool(self.result.get("failed")) or self.rc != 0

    @property
    def msg(self) -> str:
        return str(self.result.get("msg", ""))


def ansible_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env.update({"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_FORCE_COLOR": "0", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def run_module(module: str, args: Dict[str, object], hosts: str = "localhost",
               inventory: Optional[Path] = None, check: bool = False, diff: bool = False,
               timeout: float = 900, env: Optional[Dict[str, str]] = None) -> ModuleRun:
    """``ansible HOSTS -m kpatch.livepatch.MODULE -a JSON -o`` and the parsed result of one host.

    ``env`` is added to Ansible's environment, which a local module inherits (e.g. a ``PATH``).
    """
    cmd: List[str] = [str(BIN / "ansible"), hosts, "-m", f"kpatch.livepatch.{module}", "-a", json.dumps(args), "-o"]
    if inventory is not None:
        cmd += ["-i", str(inventory)]
    else:
        cmd += ["-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}"]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(env), cwd=REPO, timeout=timeout,
                          check=False)
    output = proc.stdout + proc.stderr
    result: Dict[str, object] = {}
    for line in proc.stdout.splitlines():
        if " => " in line:
            try:
                result = json.loads(line.split(" => ", 1)[1])
            except ValueError:
                continue
    return ModuleRun(proc.returncode, result, output)


def run_playbook(playbook: Path, inventory: Path, extra_vars: Optional[Dict[str, object]] = None,
                 args: Sequence[str] = (), timeout: float = 1800,
                 env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook)]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    cmd += list(args)
    return subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(env), cwd=REPO, timeout=timeout,
                          check=False)
