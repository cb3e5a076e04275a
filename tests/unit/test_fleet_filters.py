"""The playbooks' naming rule and build bookkeeping filters, through Ansible's own templating.

Every expression below is rendered in one real ``ansible-playbook`` run from the checkout (the
collection found through its ansible.cfg), so the filters are checked by name and arguments
as the playbooks call them.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kmod import MAX_MODULE_NAME
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.request import BuildRequest

REPO = Path(__file__).resolve().parents[2]
NAMES = ["cve fix; now", "a" * 60, "déjà-vu_2"]
ONE = {"name": "m", "kname": "m", "patches": ["/p"], "replace": True}
BUILT = {"item": {"name": "m", "release": "6.1", "patches": ["/w/ab-fix.patch"]}, "module_name": "m-x",
         "sha256": "aa", "vermagic": "6.1 SMP", "replace": True}
STATE = {"release": "6.1.0-50-cloud-amd64", "livepatch_supported": True, "patches": [],
         "installed": [{"name": "m", "sha256": "aa", "for_running_kernel": True}], "taint": {"mask": 0},
         "stalled_tasks": []}
FAILED = {"item": {"name": "m", "release": "6.12", "patches": []}, "failed": True, "msg": "no vmlinux"}

CASES = {
    **{f"name-{i}": ("v | kpatch.livepatch.livepatch_module_name", n) for i, n in enumerate(NAMES)},
    "from-patch": ("v | kpatch.livepatch.livepatch_module_name(from_patch=true)", "cve-2026-1.patch"),
    "from-patch-kernel": ("v | kpatch.livepatch.livepatch_module_name(from_patch=true, kernel=true)", "cve-2026-1.diff"),
    "unusable": ("v | kpatch.livepatch.livepatch_module_name", "..."),
    "desired-nameless": ("v | kpatch.livepatch.livepatch_desired", [{"patches": []}]),
    "builds": ("v | kpatch.livepatch.livepatch_build_items",
               [{"kpatch_release": "6.1", "kpatch_desired": [ONE]}, {"kpatch_release": "6.12", "kpatch_desired": [ONE]},
                {"kpatch_release": "6.1", "kpatch_desired": [ONE]}, {"kpatch_desired": [ONE]}]),
    "index": ("v | kpatch.livepatch.livepatch_module_index('/art')", [BUILT, FAILED]),
    # The gather's raw read as a pseudo-terminal returns it: \r\n, stderr lines mixed in.
    "state-read": ("v | kpatch.livepatch.livepatch_state_read",
                   'kpatch-stamp:abc-1\r\nwarning: something\r\n{"not": "facts"}\r\n%s\r\n' % json.dumps(STATE)),
    "state-no-runtime": ("v | kpatch.livepatch.livepatch_state_read", "kpatch-stamp:\r\n"),
    "state-python-failed": ("v | kpatch.livepatch.livepatch_state_read",
                            'kpatch-stamp:abc-1\r\nTraceback (most recent call last):\r\n'
                            '  File "<string>", line 1\r\n{"release": "6.1", "insta\r\n'),
}


def run_play(tmp_path, cases):
    """Render each ``(expression, v)``; returns key → {"ok": value} or {"error": message}."""
    tasks = []
    keys = sorted(cases)
    for i, key in enumerate(keys):
        expr, value = cases[key]
        tasks.append({"name": key, "ansible.builtin.set_fact": {f"r{i}": "{{ %s }}" % expr},
                      "vars": {"v": value}, "ignore_errors": True, "register": f"e{i}"})
    out = tmp_path / "rendered.json"
    collect = ", ".join(f"'{key}': ({{'error': e{i}.msg}} if e{i} is failed else {{'ok': r{i}}})"
                        for i, key in enumerate(keys))
    tasks.append({"ansible.builtin.copy": {"content": "{{ {%s} | to_json }}" % collect, "dest": str(out),
                                           "mode": "0644"}})
    play = tmp_path / "play.yml"
    play.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           "-e", json.dumps({"ansible_python_interpreter": sys.executable}), str(play)],
                          cwd=REPO, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return run_play(tmp_path_factory.mktemp("filters"), CASES)


def request(name=None, patch="/srv/cve-2026-1.patch"):
    return BuildRequest(patches=[patch], release="r", source_dir="s", config="c", vmlinux="v", headers="h",
                        cache_dir="x", output_dir="o", name=name)


def test_the_playbook_names_a_module_as_the_builder_does(rendered):
    for i, name in enumerate(NAMES):
        assert rendered[f"name-{i}"] == {"ok": request(name).module_name}
        assert len(request(name).module_name) <= MAX_MODULE_NAME


def test_default_and_kernel_names(rendered):
    assert rendered["from-patch"] == {"ok": request().module_name} == {"ok": "livepatch-cve-2026-1"}
    assert rendered["from-patch-kernel"] == {"ok": "livepatch_cve_2026_1"}


def test_refusals_name_the_problem(rendered):
    assert "no usable characters" in rendered["unusable"]["error"]
    assert "needs a name" in rendered["desired-nameless"]["error"]


def test_build_items_one_per_module_and_release_in_host_order(rendered):
    assert rendered["builds"] == {"ok": [{"name": "m", "release": "6.1", "patches": ["/p"], "replace": True},
                                         {"name": "m", "release": "6.12", "patches": ["/p"], "replace": True}]}


def test_module_index_records_builds_and_failures(rendered):
    index = rendered["index"]["ok"]
    assert index["m@6.1"] == {"name": "m", "release": "6.1", "built": True, "kname": "m_x", "file": "/art/6.1/m.ko",
                              "sha256": "aa", "vermagic": "6.1 SMP", "replace": True, "patches": ["ab-fix.patch"]}
    assert index["m@6.12"] == {"name": "m", "release": "6.12", "built": False,
                               "reason": "building m for 6.12 failed: no vmlinux"}


def test_desired_settles_names_paths_and_replace(tmp_path):
    patch = tmp_path / "fix.patch"
    patch.write_text("")
    (tmp_path / "link.patch").symlink_to(patch)
    wanted = [{"name": "fix one", "patches": [str(tmp_path / "link.patch")]},
              {"name": "two", "patches": [], "replace": "no"}]
    got = run_play(tmp_path, {"d": ("v | kpatch.livepatch.livepatch_desired(true)", wanted)})["d"]
    assert got == {"ok": [{"name": "fix-one", "kname": "fix_one", "patches": [str(patch)], "replace": True},
                          {"name": "two", "kname": "two", "patches": [], "replace": False}]}


def test_state_read_takes_the_stamp_and_the_state(rendered):
    assert rendered["state-read"] == {"ok": {"stamp": "abc-1", "state": STATE}}


def test_state_read_without_runtime_or_with_a_failed_python_has_no_state(rendered):
    assert rendered["state-no-runtime"] == {"ok": {"stamp": "", "state": None}}
    # A cut or unparsable state line is no state: the playbook falls back to kpatch_info.
    assert rendered["state-python-failed"] == {"ok": {"stamp": "abc-1", "state": None}}


def test_fetch_needed_lists_only_modules_the_controller_lacks(tmp_path):
    art = tmp_path / "art"
    (art / "6.1").mkdir(parents=True)
    held = art / "6.1" / "m.ko"
    held.write_bytes(b"built bytes")
    digest = hashlib.sha256(b"built bytes").hexdigest()
    same = {"item": {"name": "m", "release": "6.1"}, "sha256": digest, "module_path": "/b/m.ko"}
    other = {"item": {"name": "m", "release": "6.1"}, "sha256": "0" * 64, "module_path": "/b/m.ko"}
    missing = {"item": {"name": "m", "release": "6.12"}, "sha256": digest, "module_path": "/b/m12.ko"}
    failed = {"item": {"name": "m", "release": "7.2"}, "failed": True, "msg": "no vmlinux"}
    expr = "v | kpatch.livepatch.livepatch_fetch_needed('%s')" % art
    got = run_play(tmp_path, {"f": (expr, [same, other, missing, failed])})["f"]
    assert got == {"ok": [other, missing]}
