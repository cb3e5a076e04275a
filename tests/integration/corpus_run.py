"""Run the whole patch corpus of one release: builds, one VM for the single patches, one VM for
the combined (cumulative) module and the replace test, and the table of results.

``run_release`` is what tests/integration/test_corpus.py calls (once per release per session);
``python -m tests.integration.corpus_run <release>`` runs it by hand and prints the table.
"""

from __future__ import annotations

import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

if __name__ == "__main__":  # by hand: make the collection importable first, as tests/conftest.py does
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    import _bootstrap  # noqa: F401  pylint: disable=unused-import

from tests.integration.corpus import (  # noqa: E402
    PATCH_ROOT,
    BuildOutcome,
    CorpusPatch,
    Row,
    VmPlan,
    build_cache,
    build_corpus,
    build_one,
    function_mismatch,
    load_corpus,
    plan_combined,
    plan_replace,
    plan_single,
    run_plan,
    table_markdown,
    table_text,
    verdict_single,
)
from tests.testbed.ansible_run import REPO, run_module
from tests.testbed.kernels import KernelArtifacts, fetch_kernel, log
from tests.testbed.vm import VmResult

OUTPUT_DIR = REPO / "tests" / "output"
COMBINED = "kpc-combined"
REPLACE_B = "kpc-replace-b"
# How many verified patches the replace test's module B carries.
REPLACE_B_SIZE = 2
# release -> terminal table of the runs done in this process (printed by tests/integration/conftest.py).
TABLES: Dict[str, str] = {}


@dataclass
class VmRun:
    """One VM boot: its raw result and the parsed CORPUS lines."""

    result: Optional[VmResult] = None
    phases: Dict[str, Dict[str, str]] = field(default_factory=dict)

    @property
    def trouble(self) -> int:
        """Kernel-log lines the checks caused that mean trouble (Call Trace, WARNING, BUG, Oops).

        The guest counts them in dmesg after its boot-time baseline; a missing count (the
        script died first) counts as trouble.
        """
        if self.result is None:
            return 0
        reported = self.phases.get("kernel", {}).get("trouble")
        return int(reported) if reported is not None and reported.lstrip("-").isdigit() else 1

    @property
    def healthy(self) -> bool:
        return self.result is not None and not self.result.timed_out and self.result.exit_code == 0


@dataclass
class CorpusRun:
    """Everything one release's corpus run found."""

    release: str
    corpus: List[CorpusPatch]
    gaps: Dict[str, str]
    builds: Dict[str, BuildOutcome] = field(default_factory=dict)
    singles: VmRun = field(default_factory=VmRun)
    combined_build: Optional[BuildOutcome] = None
    combined_set: List[str] = field(default_factory=list)
    replace_a: Optional[str] = None
    replace_b: List[str] = field(default_factory=list)
    replace_build: Optional[BuildOutcome] = None
    joint: VmRun = field(default_factory=VmRun)
    rows: List[Row] = field(default_factory=list)
    markdown: str = ""
    text: str = ""

    def by_name(self, name: str) -> CorpusPatch:
        return next(cp for cp in self.corpus if cp.name == name)

    def single_verdict(self, cp: CorpusPatch) -> str:
        if not self.singles.result:
            return "not run in the VM"
        return verdict_single(self.singles.phases.get(cp.name, {}), cp.target_module is not None)

    def build_verdict(self, cp: CorpusPatch) -> str:
        """'' when the build went as the corpus says it must."""
        outcome = self.builds.get(cp.name)
        if outcome is None:
            return "not built"
        if cp.must_load:
            return function_mismatch(cp, outcome) if outcome.ok else f"build failed: {outcome.message}"
        if outcome.ok:
            return "built, but must be refused"
        return "" if re.search(cp.expect or "", outcome.message, re.S) else f"refused with another message: {outcome.message}"


def read_gaps(release: str) -> Dict[str, str]:
    """``GAPS`` in a corpus directory: ``NN-name: reason`` for each patch known not to pass there."""
    path = PATCH_ROOT / release / "GAPS"
    gaps: Dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, reason = line.split(":", 1) if ":" in line else (line, "")
                gaps[name.strip()] = reason.strip()
    return gaps


def build_combined(art: KernelArtifacts, patches: Sequence[CorpusPatch], out_dir: Path) -> BuildOutcome:
    """The cumulative module, built the way a user builds one: through the kpatch_build module."""
    args = {"release": art.release, "source_dir": str(art.source_tree()), "config": str(art.config),
            "vmlinux": str(art.vmlinux), "headers": str(art.headers), "modules_dir": str(art.modules_dir),
            "output_dir": str(out_dir), "cache_dir": str(build_cache()),
            "patches": [str(cp.patch) for cp in patches], "name": COMBINED}
    run = run_module("kpatch_build", args)
    if run.failed:
        return BuildOutcome("combined", False, run.msg or run.output[-3000:])
    from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.pipeline import BuildResult, ObjectDiff

    data = dict(run.result)
    result = BuildResult(module_path=str(data["module_path"]), module_name=str(data["module_name"]),
                         sha256=str(data["sha256"]), vermagic=str(data["vermagic"]), release=art.release,
                         replace=bool(data.get("replace", True)), cached=bool(data.get("cached")),
                         objects=[ObjectDiff(**o) for o in data.get("objects", [])])  # type: ignore[arg-type]
    return BuildOutcome("combined", True, result=result)


def _rows(run: CorpusRun) -> List[Row]:
    rows = []
    for cp in run.corpus:
        outcome = run.builds.get(cp.name)
        gap = run.gaps.get(cp.name, "")
        if not cp.must_load:
            refused_ok = run.build_verdict(cp) == ""
            note = "" if refused_ok else run.build_verdict(cp)
            rows.append(Row(cp.name, "refuse", "no" if not (outcome and outcome.ok) else "yes", "-", "-",
                            "yes" if refused_ok else "no", note or gap))
            continue
        built = bool(outcome and outcome.ok)
        funcs = run.build_verdict(cp)
        phases = run.singles.phases.get(cp.name, {})
        loaded = phases.get("load") == "ok"
        verdict = run.single_verdict(cp) if built else "not built"
        note = funcs or verdict or gap
        rows.append(Row(cp.name, "load", "yes" if built else "no", "yes" if loaded else "no",
                        "yes" if built and not funcs and not verdict else "no", "-", note[:300] if note else gap))
    return rows


def _joint_summary(run: CorpusRun) -> List[str]:
    lines = []
    if run.combined_build is not None:
        lines.append(f"combined module ({len(run.combined_set)} patches): "
                     + ("built" if run.combined_build.ok else f"build failed: {run.combined_build.message[:200]}")
                     + (f"; VM: {combined_verdict(run) or 'all checks fail / pass / fail'}" if run.combined_build.ok else ""))
    if run.replace_a:
        lines.append(f"replace ({run.replace_a} then cumulative {' + '.join(run.replace_b)}): "
                     + (replace_verdict(run) or "A's effect gone, B's present, A removable"))
    lines.append(f"kernel log trouble lines (Call Trace/WARNING/BUG/Oops): singles VM {run.singles.trouble}, "
                 f"combined/replace VM {run.joint.trouble}")
    return lines


def combined_verdict(run: CorpusRun) -> str:
    """'' when the cumulative module loaded and every check failed / passed / failed."""
    if run.combined_build is None or not run.combined_build.ok:
        return "not built"
    phases = run.joint.phases
    wrong = [f"combined {k}={phases.get('combined', {}).get(k, 'missing')}" for k in ("load", "unload")
             if phases.get("combined", {}).get(k) != "ok"]
    for name in run.combined_set:
        got = phases.get(f"combined/{name}", {})
        for phase, want in (("before", "fail"), ("loaded", "pass"), ("unloaded", "fail")):
            if got.get(phase) != want:
                wrong.append(f"{name} {phase}={got.get(phase, 'missing')}")
    return ", ".join(wrong)


def replace_verdict(run: CorpusRun) -> str:
    if run.replace_build is None or not run.replace_build.ok:
        return f"module B not built: {run.replace_build.message[:200] if run.replace_build else ''}"
    phases = run.joint.phases
    want = {("replace", "load-a"): "ok", ("replace", "load-b"): "ok", ("replace", "rmmod-a"): "ok",
            ("replace", "unload-b"): "ok", (f"replace/{run.replace_a}", "a-loaded"): "pass",
            (f"replace/{run.replace_a}", "b-loaded"): "fail"}
    for name in run.replace_b:
        want[(f"replace/{name}", "b-loaded")] = "pass"
        want[(f"replace/{name}", "b-unloaded")] = "fail"
    wrong = [f"{n} {p}={phases.get(n, {}).get(p, 'missing')}" for (n, p), v in want.items()
             if phases.get(n, {}).get(p) != v]
    listing = phases.get("replace", {}).get("livepatch-dir", "")
    b_sysfs = REPLACE_B.replace("-", "_")
    if listing.strip(",") != b_sysfs:
        wrong.append(f"/sys/kernel/livepatch after B = {listing!r}, expected only {b_sysfs}")
    return ", ".join(wrong)


def run_release(art: KernelArtifacts, out_dir: Optional[Path] = None) -> CorpusRun:
    """Build, load and verify the release's whole corpus; write tests/output/corpus-<release>.md."""
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix=f"corpus-{art.release}-"))
    run = CorpusRun(art.release, load_corpus(art.release), read_gaps(art.release))
    run.builds = build_corpus(art, run.corpus, out_dir)
    loadable = [cp for cp in run.corpus if cp.must_load and run.builds[cp.name].ok]
    if loadable:
        plan = VmPlan()
        for cp in loadable:
            plan_single(plan, art, cp, Path(run.builds[cp.name].result.module_path))  # type: ignore[union-attr]
        result, phases = run_plan(art, plan, timeout=900)
        run.singles = VmRun(result, phases)
        log(f"corpus {art.release}: singles VM {result.seconds:.0f}s exit={result.exit_code}")
    verified = [cp for cp in loadable if run.build_verdict(cp) == "" and run.single_verdict(cp) == ""]
    _run_joint(run, art, verified, out_dir)
    run.rows = _rows(run)
    extra = _joint_summary(run)
    run.markdown = table_markdown(art.release, run.rows, extra)
    run.text = table_text(art.release, run.rows, extra)
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUTPUT_DIR / f"corpus-{art.release}.md").write_text(run.markdown)
    _write_vm_logs(run)
    TABLES[art.release] = run.text
    return run


def _write_vm_logs(run: CorpusRun) -> None:
    """The guests' script output and consoles, for when a check fails (tests/output/)."""
    for label, vm in (("singles", run.singles), ("joint", run.joint)):
        if vm.result is not None:
            (OUTPUT_DIR / f"corpus-{run.release}-{label}-vm.log").write_text(
                f"exit={vm.result.exit_code} seconds={vm.result.seconds:.1f} timed_out={vm.result.timed_out}\n"
                f"--- script output\n{vm.result.output}\n--- console\n{vm.result.console}\n")
    failed = {n: o.message for n, o in run.builds.items() if not o.ok}
    if run.combined_build is not None and not run.combined_build.ok:
        failed["combined"] = run.combined_build.message
    (OUTPUT_DIR / f"corpus-{run.release}-builds.log").write_text(
        "".join(f"== {n}\n{m}\n" for n, m in sorted(failed.items())))


def _run_joint(run: CorpusRun, art: KernelArtifacts, verified: List[CorpusPatch], out_dir: Path) -> None:
    if not verified:
        return
    plan = VmPlan()
    run.combined_set = [cp.name for cp in verified]
    run.combined_build = build_combined(art, verified, out_dir)
    log(f"corpus {art.release}: combined module of {len(verified)} patches "
        + ("built" if run.combined_build.ok else f"FAILED: {run.combined_build.message[:300]}"))
    if run.combined_build.ok:
        plan_combined(plan, art, verified, Path(run.combined_build.result.module_path), COMBINED)  # type: ignore[union-attr]
    if len(verified) > REPLACE_B_SIZE:
        a, b_set = verified[0], verified[1:1 + REPLACE_B_SIZE]
        run.replace_a, run.replace_b = a.name, [cp.name for cp in b_set]
        run.replace_build = build_one(art, [cp.patch for cp in b_set], REPLACE_B, out_dir)
        if run.replace_build.ok:
            plan_replace(plan, art, a, Path(run.builds[a.name].result.module_path), b_set,  # type: ignore[union-attr]
                         Path(run.replace_build.result.module_path), REPLACE_B)  # type: ignore[union-attr]
    if plan.lines:
        result, phases = run_plan(art, plan, timeout=900)
        run.joint = VmRun(result, phases)
        log(f"corpus {art.release}: combined/replace VM {result.seconds:.0f}s exit={result.exit_code}")


def main(argv: Sequence[str]) -> int:
    for release in argv:
        run = run_release(fetch_kernel(release))
        sys.stdout.write(run.text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
