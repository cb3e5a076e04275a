"""The hook sources embedded for the module payload are exactly kmod/ (regenerate with scripts/embed-kmod)."""

import subprocess
import sys
from pathlib import Path

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kmod import KMOD_FILES, kmod_sources

REPO = Path(__file__).resolve().parents[2]


def test_embedded_kmod_sources_match_kmod_directory():
    on_disk = kmod_sources(REPO / "kmod")
    embedded = kmod_sources()
    assert sorted(embedded) == sorted(KMOD_FILES)
    stale = [name for name in KMOD_FILES if embedded[name] != on_disk[name]]
    assert not stale, f"kmod_sources.py is stale for {stale}: run scripts/embed-kmod"


def test_embed_script_check_mode_agrees():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "embed-kmod"), "--check"], check=False)
    assert proc.returncode == 0
