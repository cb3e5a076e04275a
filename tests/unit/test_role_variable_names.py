"""Every variable a role defines carries the collection's prefix ``kpatch_<role>_``.

ansible-lint's ``var-naming[no-role-prefix]`` would demand the bare ``<role>_`` prefix; it is
skipped in ``.ansible-lint`` because the collection's own convention is stricter (role variables
share the play's namespace with the user's inventory).  This test enforces that convention instead,
over the same definitions the lint rule reads: defaults, vars, argument specs, ``register``,
``set_fact``, ``loop_var`` and task ``vars``.  Variables handed to another role (``include_role``
or ``import_role`` with ``vars``) belong to that role and carry its prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

import yaml

from tests.unit.galaxy_tools import REPO

ROLE_CALLS = ("ansible.builtin.include_role", "ansible.builtin.import_role", "include_role", "import_role")
SET_FACT = ("ansible.builtin.set_fact", "set_fact")
BLOCK_KEYS = ("block", "rescue", "always")


@dataclass(frozen=True)
class Definition:
    """A variable name a role defines, the role whose prefix it must carry, and where it is."""

    name: str
    owner: str
    where: str


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def role_of_call(task: dict) -> str:
    """The short role name a task includes or imports, else ''."""
    for key in ROLE_CALLS:
        if isinstance(task.get(key), dict):
            return str(task[key].get("name", "")).rsplit(".", maxsplit=1)[-1]
    return ""


def task_definitions(tasks: list, role: str, where: str) -> Iterator[Definition]:
    """Names a task list defines (recursing into blocks)."""
    for task in tasks or []:
        if not isinstance(task, dict):
            continue
        for key in BLOCK_KEYS:
            yield from task_definitions(task.get(key, []), role, where)
        if task.get("register"):
            yield Definition(task["register"], role, where)
        for key in SET_FACT:
            if isinstance(task.get(key), dict):
                yield from (Definition(n, role, where) for n in task[key] if n != "cacheable")
        loop_var = (task.get("loop_control") or {}).get("loop_var")
        if loop_var:
            yield Definition(loop_var, role, where)
        owner = role_of_call(task) or role
        yield from (Definition(n, owner, where) for n in (task.get("vars") or {}))


def role_definitions(role_dir: Path) -> Iterator[Definition]:
    """Every variable name the role defines, with the role that owns it."""
    role = role_dir.name
    base = role_dir.parents[1]  # where paths in messages start (the repository for the real roles)
    for sub in ("defaults", "vars"):
        for path in sorted((role_dir / sub).glob("*.yml")):
            yield from (Definition(n, role, str(path.relative_to(base))) for n in load_yaml(path))
    specs = role_dir / "meta" / "argument_specs.yml"
    if specs.exists():
        for entry in load_yaml(specs)["argument_specs"].values():
            yield from (Definition(n, role, str(specs.relative_to(base))) for n in entry.get("options", {}))
    for path in sorted((role_dir / "tasks").glob("*.yml")):
        yield from task_definitions(load_yaml(path) or [], role, str(path.relative_to(base)))


def misnamed(roles_dir: Path) -> List[str]:
    """Definitions without their owner's ``kpatch_<role>_`` prefix (Ansible's own ansible_* aside)."""
    found = []
    for role_dir in sorted(p for p in roles_dir.iterdir() if (p / "tasks").is_dir()):
        for definition in role_definitions(role_dir):
            if definition.name.startswith("ansible_"):
                continue  # connection variables belong to Ansible
            if not definition.name.startswith(f"kpatch_{definition.owner}_"):
                found.append(f"{definition.where}: {definition.name} (role {definition.owner})")
    return found


def test_every_role_variable_carries_kpatch_role_prefix() -> None:
    assert misnamed(REPO / "roles") == []


def test_check_sees_every_kind_of_definition() -> None:
    """The checker finds the definitions the roles really have (it cannot pass by seeing nothing)."""
    names = {d.name for d in role_definitions(REPO / "roles" / "debuginfo")}
    assert {"kpatch_debuginfo_releases", "kpatch_debuginfo_distro_id", "kpatch_debuginfo_trees",
            "kpatch_debuginfo_kernels", "kpatch_debuginfo_item"} <= names
    owners = {(d.name, d.owner) for d in role_definitions(REPO / "roles" / "build_host")}
    assert ("kpatch_debuginfo_releases", "debuginfo") in owners


def test_check_flags_a_bare_role_prefix(tmp_path: Path) -> None:
    tasks = tmp_path / "roles" / "target" / "tasks"
    tasks.mkdir(parents=True)
    (tmp_path / "roles" / "target" / "defaults").mkdir()
    (tmp_path / "roles" / "target" / "defaults" / "main.yml").write_text("target_port: 1\n", encoding="utf-8")
    (tasks / "main.yml").write_text(
        "- name: A block\n  block:\n    - name: Probe\n      ansible.builtin.command: 'true'\n"
        "      register: probe_result\n      changed_when: false\n", encoding="utf-8")
    found = misnamed(tmp_path / "roles")
    assert [line.split(": ", 1)[1] for line in found] == ["target_port (role target)", "probe_result (role target)"]
