"""Runs inside the guest: enable/disable one livepatch module N times while a workload calls it.

Copied to the guest with the target runtime archive (package ``kpatch_target``, on ``PYTHONPATH``) and run as
``python3 soak_guest.py <module.ko> <name> <cycles> <proc file> <patched text>``.  Each cycle
loads the module through the runtime's own loader (insmod + transition wait, as the kpatch
module does), checks that the workload's file now reads the patched text, unloads it and checks
that the text is back.  A shell loop reads the proc file (so calls the patched function) for
the whole run.  Prints one JSON object: cycles done, failures, stalls (a transition that needed
a signal or did not finish), new kernel warnings in dmesg and newly set taint flags.
Standard library only: the guest has nothing else.
"""

import json
import re
import subprocess
import sys
import time

from kpatch_target._target.loader import LoaderError, load_module, unload_module

WARNING_RE = re.compile(r"WARNING:|BUG:|Oops|Call Trace|general protection|livepatch: .*(fail|error)",
                        re.IGNORECASE)
TAINT_WARN_BIT = 9  # "W": the kernel issued a warning


def dmesg_lines():
    return subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout.splitlines()


def taint():
    with open("/proc/sys/kernel/tainted", encoding="ascii") as handle:
        return int(handle.read())


def read_text(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


def one_cycle(path, name, proc_file, patched, original, timeout):
    """Problems of one enable/disable cycle (empty when it went through) and whether it stalled."""
    problems = []
    load = load_module(path, name, timeout)
    stalled = bool(load.transition.signalled) or not load.transition.complete
    if read_text(proc_file) != patched:
        problems.append(f"{proc_file} not patched after the load")
    unload = unload_module(name, timeout)
    stalled = stalled or bool(unload and (unload.signalled or not unload.complete))
    if read_text(proc_file) != original:
        problems.append(f"{proc_file} not back after the unload")
    return problems, stalled


def main(argv):
    path, name, cycles, proc_file, patched = argv[1], argv[2], int(argv[3]), argv[4], argv[5]
    original = read_text(proc_file)
    seen = len(dmesg_lines())
    taint_before = taint()
    workload = subprocess.Popen(["sh", "-c", f"while :; do cat {proc_file} >/dev/null; done"])
    report = {"cycles": 0, "failures": [], "stalls": 0, "warnings": [], "calls_while_soaking": 0}
    start = time.monotonic()
    try:
        for cycle in range(cycles):
            try:
                problems, stalled = one_cycle(path, name, proc_file, patched, original, 60)
            except LoaderError as exc:
                problems, stalled = [str(exc)], bool(exc.stalled)
            report["failures"] += [f"cycle {cycle}: {p}" for p in problems]
            report["stalls"] += int(stalled)
            report["cycles"] += 1
    finally:
        workload.kill()
        workload.wait()
    report["seconds"] = round(time.monotonic() - start, 1)
    report["warnings"] = [line for line in dmesg_lines()[seen:] if WARNING_RE.search(line)]
    report["new_taint"] = taint() & ~taint_before
    report["warn_taint"] = bool(report["new_taint"] & (1 << TAINT_WARN_BIT))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
