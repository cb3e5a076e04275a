# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Gather a host's livepatch state: the planner's HostState and kpatch_info's facts."""

from __future__ import annotations

import os
from typing import Dict, List, Optional

from .loader import DEFAULT_INSTALL_DIR, FORCED_DIR, list_installed, loaded_records
from .modinfo import ModinfoError, read_modinfo, sha256_of
from .stalled import find_stalled_tasks
from .state import HostState
from .sysfs import (LIVEPATCH_ROOT, MODULE_ROOT, list_patches, livepatch_supported,
                    loaded_livepatch_modules)
from .taint import read_taint


def running_release() -> str:
    return os.uname().release


def gather_host_state(install_dir: str = DEFAULT_INSTALL_DIR,
                      root: str = LIVEPATCH_ROOT) -> HostState:
    installed = list_installed(install_dir)
    hashes = {path: sha256_of(path) for mods in installed.values() for path in mods.values()}
    patches = {p.name: p for p in list_patches(root)}
    modules = {m.name: m for m in loaded_livepatch_modules(MODULE_ROOT)}
    return HostState(
        release=running_release(),
        livepatch_supported=livepatch_supported(root),
        patches=patches,
        modules=modules,
        installed=installed,
        installed_sha256=hashes,
        loaded_sha256={n: h for n, h in loaded_records().items() if n in patches},
        forced=sorted(n for n in loaded_records(FORCED_DIR) if n in modules),
    )


def _installed_facts(host: HostState) -> List[Dict[str, object]]:
    rows = []
    for release, mods in sorted(host.installed.items()):
        for name, path in sorted(mods.items()):
            row: Dict[str, object] = {
                "name": name, "release": release, "path": path,
                "sha256": host.installed_sha256.get(path),
                "for_running_kernel": release == host.release,
                "loaded": release == host.release and name in host.patches,
            }
            try:
                info = read_modinfo(path)
                row.update(vermagic=info.vermagic, srcversion=info.srcversion, error=None)
            except ModinfoError as exc:
                row.update(vermagic=None, srcversion=None, error=str(exc))
            rows.append(row)
    return rows


def _patch_facts(host: HostState, installed: List[Dict[str, object]]) -> List[Dict[str, object]]:
    paths = {r["name"]: r["path"] for r in installed if r["for_running_kernel"]}
    rows = []
    for name, patch in sorted(host.patches.items()):
        row = patch.as_dict()
        module = host.modules.get(name)
        row.update(module_loaded=module is not None,
                   srcversion=module.srcversion if module else None,
                   module_taint=module.taint if module else None,
                   loaded_sha256=host.loaded_sha256.get(name),
                   installed_path=paths.get(name),
                   forced=name in host.forced, removable=name not in host.forced)
        rows.append(row)
    # Modules whose patch was disabled or replaced but which were never removed.
    for name, module in sorted(host.modules.items()):
        if name not in host.patches:
            rows.append({"name": name, "enabled": False, "transition": False, "replace": None,
                         "objects": [], "module_loaded": True, "srcversion": module.srcversion,
                         "module_taint": module.taint, "loaded_sha256": None,
                         "installed_path": paths.get(name),
                         "forced": name in host.forced, "removable": name not in host.forced})
    return rows


def _stalled_facts(host: HostState) -> List[Dict[str, object]]:
    rows = []
    for name, patch in sorted(host.patches.items()):
        if patch.transition:
            for task in find_stalled_tasks(int(patch.enabled)):
                row = task.as_dict()
                row["patch"] = name
                rows.append(row)
    return rows


def gather_info(install_dir: str = DEFAULT_INSTALL_DIR, taint_path: Optional[str] = None
                ) -> Dict[str, object]:
    """Everything kpatch_info reports, as lists of flat-ish dicts for jmespath queries."""
    host = gather_host_state(install_dir)
    installed = _installed_facts(host)
    return {
        "release": host.release,
        "livepatch_supported": host.livepatch_supported,
        "patches": _patch_facts(host, installed),
        "installed": installed,
        "taint": read_taint(taint_path) if taint_path else read_taint(),
        "stalled_tasks": _stalled_facts(host),
    }
