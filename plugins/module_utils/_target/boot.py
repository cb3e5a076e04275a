# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Boot-time loader: load the patch modules installed for the running kernel.

The ``target`` role copies this package (standard library only) to the host and a systemd
oneshot unit runs ``python3 -m kpatch_target.boot``.  It loads every
``<install_dir>/<running release>/*.ko`` with the same checks and transition handling as the
``kpatch`` module, does nothing when the kernel command line has ``kpatch.enable=0``, and prints
one line per installed module (stdout goes to the journal) including those of other releases,
which it skips.  Exit status 1 when any module for the running kernel failed to load.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .executor import Executor, KernelOps, RunOptions, check_installed_file, host_session, refresh_metrics
from .facts import gather_host_state
from .loader import DEFAULT_INSTALL_DIR, LoaderError, reference_vermagic
from .metrics import check_metrics_path
from .modinfo import ModinfoError
from .state import Desired, HostState, PlanError, plan

DISABLE_PARAM = "kpatch.enable"


def disabled_on_cmdline(cmdline: str) -> bool:
    """True when the last ``kpatch.enable=`` on the command line is 0/n/no/off/false."""
    value = None
    for word in cmdline.split():
        key, sep, val = word.partition("=")
        if key == DISABLE_PARAM and sep:
            value = val.strip().lower()
    return value in ("0", "n", "no", "off", "false")


def _load_one(host: HostState, name: str, path: str, executor: Executor,
              reference: Optional[str]) -> str:
    """Take one installed module to ``loaded``, as the ``kpatch`` module would; its log line."""
    try:
        steps = plan(host, Desired(state="loaded", name=name, release=host.release), path)
    except PlanError as exc:
        return f"{name}: FAILED: {exc}"
    if not steps:
        return f"{name}: already loaded"
    try:
        check_installed_file(path, name, host.release, None, reference)
        outcome = executor.run(steps)
    except (ModinfoError, LoaderError) as exc:
        return f"{name}: FAILED: {exc}"
    replaced = f" (replaced {', '.join(outcome.replaced)})" if outcome.replaced else ""
    return f"{name}: loaded from {path}{replaced}"


def load_installed(host: HostState, options: RunOptions, reference: Optional[str],
                   ops: Optional[KernelOps] = None) -> List[str]:
    """One log line per installed module, in name order; loads those of the running kernel.

    ``reference`` is the vermagic of the running kernel's own modules (None when none is found).
    """
    lines: List[str] = []
    for release, mods in sorted(host.installed.items()):
        if release != host.release:
            lines += [f"{name}: skipped, installed for {release}, running {host.release}"
                      for name in sorted(mods)]
    mine = host.installed.get(host.release, {})
    if not mine:
        return lines + [f"no patch module installed for {host.release}"]
    if not host.livepatch_supported:
        return lines + [f"{name}: FAILED: kernel has no livepatch support" for name in mine]
    for name, path in sorted(mine.items()):
        # One executor per module: an outcome (replaced patches, undone installs) is per module.
        lines.append(_load_one(host, name, path, Executor(options, ops), reference))
    return lines


def boot_load(install_dir: str, timeout: float, cmdline: str) -> List[str]:
    """The boot's log lines: nothing loaded with ``kpatch.enable=0``, else what is installed."""
    if disabled_on_cmdline(cmdline):
        return [f"{DISABLE_PARAM}=0 on the kernel command line: not loading any patch module"]
    host = gather_host_state(install_dir)
    return load_installed(host, RunOptions(timeout=timeout), reference_vermagic(host.release))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m kpatch_target.boot", description=__doc__)
    parser.add_argument("--install-dir", default=DEFAULT_INSTALL_DIR)
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for each patch's transition")
    parser.add_argument("--metrics-file", default=None,
                        help="node-exporter textfile (*.prom) to rewrite with the state after loading")
    parser.add_argument("--cmdline", default="/proc/cmdline", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.metrics_file:
        try:
            check_metrics_path(args.metrics_file)
        except ValueError as exc:
            parser.error(str(exc))
    with open(args.cmdline, "r", encoding="utf-8") as handle:
        cmdline = handle.read()
    with host_session(args.install_dir, lock_wait=args.timeout * 4) as leftovers:
        # Files of an install killed mid-way (never loaded: they are not *.ko).
        lines = [f"removed {path}, left by an interrupted install" for path in leftovers or []]
        lines += boot_load(args.install_dir, args.timeout, cmdline)
    for line in lines:
        sys.stdout.write(f"kpatch: {line}\n")
    if args.metrics_file:
        problem = refresh_metrics(args.metrics_file, args.install_dir,
                                  changed=any(": loaded" in line for line in lines))
        if problem:
            sys.stdout.write(f"kpatch: {problem}\n")
    sys.stdout.flush()
    return 1 if any(": FAILED:" in line for line in lines) else 0


if __name__ == "__main__":
    raise SystemExit(main())
