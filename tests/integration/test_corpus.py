"""The patch corpus (issue 7): real patches against real Debian kernels, built, loaded, verified.

For each release, every ``tests/integration/patches/<release>/NN-name.patch`` is built with the
kpatch_build pipeline; the ones that must load are loaded one by one in the booted kernel
(before / loaded / unloaded checks), then all together as one cumulative module, then a
replace test; the ones that must be refused are refused with their expected message.  The
table of results is printed at the end of the pytest run and written to
``tests/output/corpus-<release>.md``.

A patch listed in the release's ``GAPS`` file (``NN-name: reason``) is expected to fail there
(strict xfail: it is reported when it starts to pass).  The 6.1 corpus has no GAPS file.
"""

from __future__ import annotations

import os
from typing import Dict

import pytest

from tests.integration.corpus import PATCH_ROOT, load_corpus
from tests.integration.corpus_patches import R61, R72, R612, R612_DEB13
from tests.integration.corpus_run import TABLES, CorpusRun, combined_verdict, read_gaps, replace_verdict, run_release
from tests.testbed.kernels import fetch_kernel

pytestmark = pytest.mark.integration

# Comma-separated releases to run; `make test` runs 6.1, `make test-full` every corpus release
# (both 6.12s and 7.2; each adds 15-45 min cold), `make corpus-newest` Debian 13's 6.12 and 7.2.
RELEASES = [r for r in os.environ.get("KPATCH_CORPUS_RELEASES", R61).split(",") if r]
_RUNS: Dict[str, CorpusRun] = {}


def corpus_run(release: str) -> CorpusRun:
    """The release's corpus run, done once per session whichever test asks first."""
    if release not in _RUNS:
        _RUNS[release] = run_release(fetch_kernel(release))
        TABLES[release] = _RUNS[release].text
    return _RUNS[release]


def _params():
    params = []
    for release in RELEASES:
        if not (PATCH_ROOT / release).is_dir():
            continue
        gaps = read_gaps(release)
        for cp in load_corpus(release):
            marks = [pytest.mark.xfail(reason=gaps[cp.name], strict=True)] if cp.name in gaps else []
            params.append(pytest.param(release, cp.name, marks=marks, id=f"{release}:{cp.name}"))
    return params


def _gap_marks(release: str, key: str):
    gaps = read_gaps(release)
    return [pytest.mark.xfail(reason=gaps[key], strict=True)] if key in gaps else []


RELEASE_PARAMS = [pytest.param(r, id=r) for r in RELEASES if (PATCH_ROOT / r).is_dir()]


@pytest.mark.parametrize("release,name", _params())
def test_build_outcome(release, name):
    """Loadable patches build with exactly the expected changed/new functions; the others are refused."""
    run = corpus_run(release)
    assert run.build_verdict(run.by_name(name)) == ""


@pytest.mark.parametrize("release,name", [p for p in _params() if not p.values[1].startswith("9")])
def test_effect_before_loaded_and_after_unload(release, name):
    """In the booted kernel: check fails, passes once loaded, fails again once removed."""
    run = corpus_run(release)
    cp = run.by_name(name)
    assert run.build_verdict(cp) == "", "not built as expected"
    assert run.single_verdict(cp) == "", run.singles.phases.get(name)


@pytest.mark.parametrize("release", [pytest.param(r, id=r, marks=_gap_marks(r, "kernel-log")) for r in
                                     [p.values[0] for p in RELEASE_PARAMS]])
def test_kernel_log_has_no_call_trace(release):
    run = corpus_run(release)
    assert run.singles.healthy, (run.singles.result.output[-3000:] if run.singles.result else "VM not run")
    assert run.singles.trouble == 0, run.singles.result.output[-5000:]
    if run.joint.result is not None:
        assert run.joint.healthy, run.joint.result.output[-3000:]
        assert run.joint.trouble == 0, run.joint.result.output[-5000:]


@pytest.mark.parametrize("release", [pytest.param(r, id=r, marks=_gap_marks(r, "combined")) for r in
                                     [p.values[0] for p in RELEASE_PARAMS]])
def test_all_passing_patches_as_one_cumulative_module(release):
    run = corpus_run(release)
    assert run.combined_set, "no patch passed on its own"
    assert combined_verdict(run) == ""


@pytest.mark.parametrize("release", [pytest.param(r, id=r, marks=_gap_marks(r, "replace")) for r in
                                     [p.values[0] for p in RELEASE_PARAMS]])
def test_cumulative_module_replaces_an_earlier_one(release):
    run = corpus_run(release)
    assert run.replace_a, "fewer than three patches passed on their own"
    assert replace_verdict(run) == ""


def test_6_1_corpus_covers_the_issue():
    """At least 25 loadable patches and 6 refusals on 6.1, none of them excused."""
    corpus = load_corpus(R61)
    assert sum(cp.must_load for cp in corpus) >= 25
    assert sum(not cp.must_load for cp in corpus) >= 6
    assert read_gaps(R61) == {}


@pytest.mark.parametrize("release", [R612, R612_DEB13, R72])
def test_newer_corpora_are_the_6_1_corpus(release):
    """The 6.12 and 7.2 corpora hold the same patches as 6.1's, with the same kind of sidecar."""
    names = {cp.name: cp.must_load for cp in load_corpus(release)}
    assert names == {cp.name: cp.must_load for cp in load_corpus(R61)}
