# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""The host's livepatch state as Prometheus node-exporter textfile metrics.

node-exporter's textfile collector reads ``*.prom`` files from one directory; monitoring then
sees per host which patches are loaded, enabled or in transition, how many tasks stall a
transition, the kernel's taint flags, and when this tool last changed anything.  The file is
rewritten atomically (the collector never reads half a file) by the boot service and by the
``kpatch`` module after every change.  Standard library only.
"""

from __future__ import annotations

import os
import re
import time
from typing import Dict, Iterable, List, Optional, Tuple

from .atomic import atomic_write

LAST_CHANGE = "kpatch_livepatch_last_change_timestamp_seconds"
_HELP = {
    "kpatch_livepatch_supported": "1 when the running kernel has livepatch support (/sys/kernel/livepatch).",
    "kpatch_livepatch_patch_loaded": "1 for each livepatch module loaded in the running kernel.",
    "kpatch_livepatch_patch_enabled": "1 when the patch is enabled, 0 when it is loaded but disabled.",
    "kpatch_livepatch_patch_transition": "1 while the patch is in transition.",
    "kpatch_livepatch_installed": "1 for each module installed for boot, by kernel release.",
    "kpatch_livepatch_stalled_tasks": "Tasks holding up a patch's transition.",
    "kpatch_livepatch_kernel_taint": "The kernel's taint mask (/proc/sys/kernel/tainted).",
    "kpatch_livepatch_kernel_taint_flag": "1 for each taint flag set, by name.",
    LAST_CHANGE: "Unix time of the last change this tool made (load, unload, install, removal).",
}
_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def _escape(value: object) -> str:
    """A label value as the text exposition format wants it (backslash, quote, newline)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample(name: str, labels: Dict[str, object], value: float) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    number = repr(float(value)) if not float(value).is_integer() else str(int(value))
    return f"{name}{{{inner}}} {number}" if inner else f"{name} {number}"


def _samples(info: Dict[str, object], last_change: float) -> Iterable[Tuple[str, Dict[str, object], float]]:
    release = info.get("release", "")
    yield "kpatch_livepatch_supported", {"release": release}, int(bool(info.get("livepatch_supported")))
    for patch in info.get("patches", []):  # type: ignore[union-attr]
        labels = {"patch": patch["name"]}
        yield "kpatch_livepatch_patch_loaded", labels, int(bool(patch.get("module_loaded", True)))
        yield "kpatch_livepatch_patch_enabled", labels, int(bool(patch.get("enabled")))
        yield "kpatch_livepatch_patch_transition", labels, int(bool(patch.get("transition")))
    for row in info.get("installed", []):  # type: ignore[union-attr]
        yield "kpatch_livepatch_installed", {"patch": row["name"], "release": row["release"]}, 1
    stalled: Dict[str, int] = {}
    for task in info.get("stalled_tasks", []):  # type: ignore[union-attr]
        stalled[task["patch"]] = stalled.get(task["patch"], 0) + 1
    for patch in info.get("patches", []):  # type: ignore[union-attr]
        yield "kpatch_livepatch_stalled_tasks", {"patch": patch["name"]}, stalled.get(patch["name"], 0)
    taint = info.get("taint") or {}
    yield "kpatch_livepatch_kernel_taint", {}, int(taint.get("mask", 0))  # type: ignore[union-attr]
    for flag in taint.get("names", []):  # type: ignore[union-attr]
        yield "kpatch_livepatch_kernel_taint_flag", {"flag": flag}, 1
    yield LAST_CHANGE, {}, last_change


def render_metrics(info: Dict[str, object], last_change: float) -> str:
    """``info`` (as ``facts.gather_info`` returns it) in the text exposition format."""
    # The format wants each metric's samples together, under one HELP and TYPE.
    families: Dict[str, List[str]] = {}
    for name, labels, value in _samples(info, last_change):
        families.setdefault(name, []).append(_sample(name, labels, value))
    lines: List[str] = []
    for name, samples in families.items():
        lines += [f"# HELP {name} {_HELP[name]}", f"# TYPE {name} gauge", *samples]
    return "\n".join(lines) + "\n"


def previous_last_change(path: str) -> Optional[float]:
    """The last-change time an earlier write recorded in ``path`` (None when there is none)."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(LAST_CHANGE + " "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_metrics_path(path: str) -> None:
    """Refuse a path node-exporter would not read, before anything is gathered or written."""
    if not os.path.isabs(path) or not path.endswith(".prom"):
        raise ValueError(f"metrics file {path!r} must be an absolute path ending in .prom "
                         "(node-exporter's textfile collector reads only *.prom)")
    base = os.path.basename(path)[:-len(".prom")]
    if not base or not _NAME_RE.match(base.replace("-", "_").replace(".", "_")):
        raise ValueError(f"metrics file {path!r}: the file name must be letters, digits, '-', '_' or '.'")


def write_metrics(path: str, info: Dict[str, object], changed: bool, now: Optional[float] = None) -> str:
    """Rewrite ``path`` atomically from ``info``; the last-change time moves only when ``changed``."""
    check_metrics_path(path)
    stamp = now if now is not None else time.time()
    last = stamp if changed else (previous_last_change(path) or stamp)
    text = render_metrics(info, last)
    atomic_write(path, text.encode("utf-8"))
    return text
