"""Source acquisition for real: Debian's ``linux-source-6.1`` of 6.1.176-1 fetched with apt into a build cache.

The cache (``<testbed cache>/acquire-tests``) persists across runs, so only the first run downloads
and unpacks; later runs check the reuse.  Then ``kpatch_build`` runs through Ansible without
``source_dir`` and builds the meminfo example from the acquired tree.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.acquire import (
    acquire_source,
    detect_distro,
    source_request,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError, StepLog
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.tree import makefile_version
from tests.testbed.ansible_run import REPO, run_module
from tests.testbed.kernels import DEFAULT_RELEASE, RELEASES, cache_root

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("apt-get") is None or detect_distro() != ("debian", "12"),
                       reason="fetches Debian 12's linux-source-6.1 with apt"),
]

RELEASE = DEFAULT_RELEASE
PACKAGE_VERSION = RELEASES[RELEASE].source_version  # 6.1.176-1, as the testbed's kernel
MEMINFO = REPO / "examples" / "patches" / "meminfo-string.patch"


def cache() -> Path:
    return cache_root() / "acquire-tests"


def report(msg: str) -> None:
    sys.stderr.write(f"[acquire] {msg}\n")


@pytest.fixture(scope="module")
def acquired(tmp_path_factory):
    """The first acquisition of this run: a download and unpack on a cold cache, else a reuse."""
    acq = source_request(RELEASE, cache(), PACKAGE_VERSION)
    log = StepLog(tmp_path_factory.mktemp("acquire") / "first.log")
    start = time.monotonic()
    tree = acquire_source(acq, log)
    seconds = time.monotonic() - start
    report(f"first acquisition {seconds:.2f}s:\n  " + "\n  ".join(log.lines))
    return acq, tree, log, seconds


def test_the_exact_source_lands_in_the_cache(acquired):
    acq, tree, _log, _seconds = acquired
    assert tree == cache() / "sources" / f"{RELEASE}-{PACKAGE_VERSION}"
    assert makefile_version(tree) == "6.1.176"
    assert (tree / "fs" / "proc" / "meminfo.c").is_file()
    assert not list(acq.sources_dir.glob(f".{tree.name}.*")), "a temporary directory was left behind"
    assert not list(tree.glob("*.deb"))


def test_a_second_acquisition_reuses_the_tree(acquired, tmp_path):
    acq, tree, first_log, first_seconds = acquired
    log = StepLog(tmp_path / "second.log")
    start = time.monotonic()
    again = acquire_source(source_request(RELEASE, cache(), PACKAGE_VERSION), log)
    seconds = time.monotonic() - start
    report(f"second acquisition {seconds * 1000:.1f} ms (first {first_seconds:.2f}s)")
    assert again == tree
    assert len(log.lines) == 1 and "reusing" in log.lines[0] and "acquire-source-1" not in log.lines[0]
    if any("acquire-source-1/2" in line for line in first_log.lines):  # the first one downloaded
        assert seconds < first_seconds / 100


def test_a_wrong_package_version_fails_clearly_and_leaves_nothing(acquired, tmp_path):
    bad = "6.1.0-0-nonexistent"
    acq = source_request(RELEASE, cache(), bad)
    log = StepLog(tmp_path / "bad.log")
    with pytest.raises(KbuildError) as err:
        acquire_source(acq, log)
    msg = str(err.value)
    report(f"wrong version: {msg.splitlines()[0]}")
    assert f"linux-source-6.1={bad}" in msg and "source_dir" in msg and "package_version" in msg
    assert "apt-cache policy linux-source-6.1" in msg
    assert not acq.final_dir.exists()
    assert not list(acq.sources_dir.glob(f".{acq.final_dir.name}.*"))
    assert any("FAILED" in line for line in log.lines)


def _args(kernel, out: Path, **extra) -> dict:
    return dict({"release": kernel.release, "package_version": PACKAGE_VERSION, "config": str(kernel.config),
                 "vmlinux": str(kernel.vmlinux), "headers": str(kernel.headers),
                 "modules_dir": str(kernel.modules_dir), "output_dir": str(out),
                 "patches": [str(MEMINFO)], "name": "livepatch-acquired"}, **extra)


def test_check_mode_reports_the_fetch_and_downloads_nothing(kernel_6_1, tmp_path):
    run = run_module("kpatch_build", _args(kernel_6_1, tmp_path / "out", cache_dir=str(tmp_path / "cache")),
                     check=True)
    assert not run.failed, run.output
    fetch = run.result["source_acquisition"]
    assert fetch["present"] is False and fetch["packages"] == [f"linux-source-6.1={PACKAGE_VERSION}"]
    assert run.result["source_dir"] == str(tmp_path / "cache" / "sources" / f"{RELEASE}-{PACKAGE_VERSION}")
    assert not (tmp_path / "cache" / "sources").exists()


def test_kpatch_build_without_source_dir_builds_from_the_acquired_tree(acquired, kernel_6_1, tmp_path):
    _acq, tree, _log, _seconds = acquired
    for entry in (cache() / "modules").glob("*/result.json"):  # really build, not a cache hit
        if json.loads(entry.read_text()).get("module_name") == "livepatch-acquired":
            shutil.rmtree(entry.parent)
    run = run_module("kpatch_build", _args(kernel_6_1, tmp_path / "out", cache_dir=str(cache())))
    assert not run.failed, run.output
    assert run.result["source_dir"] == str(tree)
    assert run.result["changed"] is True
    assert [(o["object"], o["changed_functions"]) for o in run.result["objects"]] == \
        [("fs/proc/meminfo.o", ["meminfo_proc_show"])]
    assert run.result["vermagic"].split()[0] == RELEASE
    lines = Path(run.result["log"]).read_text().splitlines()
    this_run = lines[max(i for i, line in enumerate(lines) if " start " in line):]  # the log is appended to
    assert "acquire-source" in this_run[1] and "reusing" in this_run[1]
    report(f"kpatch_build timings: {run.result['timings']}")
    report("log:\n  " + "\n  ".join(line for line in this_run if "prepare-tree" in line))
