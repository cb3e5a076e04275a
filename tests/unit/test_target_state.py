"""State planning: the steps from a host snapshot to each desired state (pure logic)."""

from __future__ import annotations

import dataclasses

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._target.state import (
    Desired, HostState, PlanError, Source, plan, predict, snapshot)
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.sysfs import (
    KernelModule, LivePatch)
from tests.unit.target_modules import host_state

REL = "6.1.0-50-cloud-amd64"
OTHER = "6.1.0-51-cloud-amd64"
DEST = f"/var/lib/kpatch/{REL}/lp.ko"


def host(patches=(), stale=(), installed=None, hashes=None, supported=True) -> HostState:
    return host_state(REL, patches, stale, installed, hashes, supported)


SRC = Source(path="/var/lib/kpatch/.staging/aa.ko", name="lp", sha256="aa", srcversion=None)


def actions(steps):
    return [(s.kind.value, s.name) for s in steps]


def test_load_from_src_when_absent():
    steps = plan(host(), Desired("loaded", "lp", REL, SRC), DEST)
    assert actions(steps) == [("load", "lp")] and steps[0].path == SRC.path


def test_loaded_is_idempotent():
    assert plan(host(patches=[("lp", True, False)]), Desired("loaded", "lp", REL, SRC), DEST) == []


def test_loaded_while_enabling_needs_no_new_step():
    assert plan(host(patches=[("lp", True, True)]), Desired("loaded", "lp", REL, SRC), DEST) == []


def test_stale_disabled_module_is_removed_before_load():
    steps = plan(host(stale=["lp"]), Desired("loaded", "lp", REL, SRC), DEST)
    assert actions(steps) == [("rmmod", "lp"), ("load", "lp")]


def test_disable_in_progress_is_finished_before_load():
    steps = plan(host(patches=[("lp", False, True)]), Desired("loaded", "lp", REL, SRC), DEST)
    assert actions(steps) == [("unload", "lp"), ("load", "lp")]


def test_load_by_name_uses_installed_file():
    h = host(installed={REL: {"lp": DEST}})
    steps = plan(h, Desired("loaded", "lp", REL), DEST)
    assert actions(steps) == [("load", "lp")] and steps[0].path == DEST


def test_load_by_name_without_file_fails():
    with pytest.raises(PlanError, match="no src was given and it is not installed"):
        plan(host(installed={OTHER: {"lp": "/x"}}), Desired("loaded", "lp", REL), DEST)


def test_loaded_for_other_release_is_refused():
    with pytest.raises(PlanError, match="state=installed"):
        plan(host(), Desired("loaded", "lp", OTHER, SRC), DEST)


def test_no_livepatch_support_is_refused():
    with pytest.raises(PlanError, match="no livepatch support"):
        plan(host(supported=False), Desired("loaded", "lp", REL, SRC), DEST)


def test_different_build_loaded_is_refused():
    h = HostState(release=REL, livepatch_supported=True,
                  patches={"lp": LivePatch("lp", True, False, None)},
                  modules={"lp": KernelModule("lp", "OEK", "OLDVERSION", 0)})
    src = Source(path="/s.ko", name="lp", sha256="bb", srcversion="NEWVERSION")
    with pytest.raises(PlanError, match="different build"):
        plan(h, Desired("loaded", "lp", REL, src), DEST)


def test_different_build_by_sha256_is_refused():
    h = HostState(release=REL, livepatch_supported=True,
                  patches={"lp": LivePatch("lp", True, False, None)},
                  modules={"lp": KernelModule("lp", "OEK", None, 0)},
                  loaded_sha256={"lp": "old"})
    with pytest.raises(PlanError, match="different build of lp is loaded .sha256 old"):
        plan(h, Desired("loaded", "lp", REL, SRC), DEST)
    same = HostState(release=REL, livepatch_supported=True, patches=h.patches, modules=h.modules,
                     loaded_sha256={"lp": SRC.sha256})
    assert plan(same, Desired("loaded", "lp", REL, SRC), DEST) == []


def test_unloaded_steps():
    assert actions(plan(host(patches=[("lp", True, False)]), Desired("unloaded", "lp", REL), DEST)) \
        == [("unload", "lp")]
    assert actions(plan(host(stale=["lp"]), Desired("unloaded", "lp", REL), DEST)) == [("rmmod", "lp")]
    assert plan(host(), Desired("unloaded", "lp", REL), DEST) == []
    # Another release's "unloaded" has nothing to do with the running kernel.
    assert plan(host(patches=[("lp", True, False)]), Desired("unloaded", "lp", OTHER), DEST) == []


def test_installed_copies_then_loads():
    steps = plan(host(), Desired("installed", "lp", REL, SRC), DEST)
    assert actions(steps) == [("install", "lp"), ("load", "lp")]
    assert steps[0].dest == DEST and steps[1].path == DEST


def test_installed_same_bytes_is_idempotent():
    h = host(patches=[("lp", True, False)], installed={REL: {"lp": DEST}}, hashes={DEST: "aa"})
    assert plan(h, Desired("installed", "lp", REL, SRC), DEST) == []


def test_installed_different_bytes_reinstalls_only():
    h = host(patches=[("lp", True, False)], installed={REL: {"lp": DEST}}, hashes={DEST: "old"})
    assert actions(plan(h, Desired("installed", "lp", REL, SRC), DEST)) == [("install", "lp")]


def test_installed_without_load_and_for_other_release():
    assert actions(plan(host(), Desired("installed", "lp", REL, SRC, load=False), DEST)) == \
        [("install", "lp")]
    other_dest = f"/var/lib/kpatch/{OTHER}/lp.ko"
    steps = plan(host(supported=False), Desired("installed", "lp", OTHER, SRC), other_dest)
    assert actions(steps) == [("install", "lp")] and steps[0].release == OTHER


def test_absent_unloads_and_uninstalls():
    h = host(patches=[("lp", True, False)], installed={REL: {"lp": DEST}})
    steps = plan(h, Desired("absent", "lp", REL), DEST)
    assert actions(steps) == [("unload", "lp"), ("uninstall", "lp")]
    assert plan(host(), Desired("absent", "lp", REL), DEST) == []


def test_predict_matches_the_steps():
    h = host(patches=[("old", True, False)], installed={OTHER: {"x": "/p"}})
    steps = plan(h, Desired("installed", "lp", REL, SRC), DEST)
    assert snapshot(h) == {"loaded": ["old"], "installed": {OTHER: ["x"]}}
    assert predict(h, steps) == {"loaded": ["lp", "old"], "installed": {OTHER: ["x"], REL: ["lp"]}}


def test_unknown_state_is_refused():
    with pytest.raises(PlanError, match="unknown state"):
        plan(host(), Desired("enabled", "lp", REL, SRC), DEST)


def forced_host(enabled: bool) -> HostState:
    h = host(patches=[("lp", True, False)] if enabled else [], stale=[] if enabled else ["lp"])
    return dataclasses.replace(h, forced=["lp"])


def test_forced_patch_is_disabled_but_its_module_never_rmmodded():
    assert actions(plan(forced_host(True), Desired("unloaded", "lp", REL), DEST)) == [("unload", "lp")]
    # Disabled already: nothing more can be done until reboot, and nothing is attempted.
    assert plan(forced_host(False), Desired("unloaded", "lp", REL), DEST) == []
    assert plan(forced_host(False), Desired("absent", "lp", REL), DEST) == []


def test_forced_leftover_cannot_be_loaded_again():
    with pytest.raises(PlanError, match="stays loaded until reboot"):
        plan(forced_host(False), Desired("loaded", "lp", REL, SRC), DEST)
