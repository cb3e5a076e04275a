"""Patch-corpus harness: build every corpus patch for a release, then verify them all in one VM.

A corpus directory ``tests/integration/patches/<release>/`` holds ``NN-name.patch`` files with
one sidecar each:

* ``NN-name.check`` — the patch must build and load.  A busybox ``sh`` script that exits 0 when
  the patch's effect is visible; the VM runs it before the load (must fail), after the load and
  transition (must pass) and after disable + rmmod (must fail).  Header comments give what the
  build must report and what the VM needs::

      # changed: fs/proc/loadavg.o loadavg_proc_show      (object, then its changed functions)
      # new: fs/proc/uptime.o kpatch_corpus_uptime_note   (object, then its new functions)
      # target-module: kernel/drivers/block/loop.ko       (patched module, under modules_dir)
      # files: kernel/fs/romfs/romfs.ko                   (shipped to /work/files/<basename>)
      # prebuild: fs/proc/stat.o                          (objects built in the tree first)

* ``NN-name.expect`` — the patch must be refused; the file holds a regular expression the
  build error must match.

Builds go through ``build_livepatch`` with the shared cache ``cache_root()/"build-tests"`` (the
prepared tree is reused); the VM runs all checks sequentially in one boot.
"""

from __future__ import annotations

import lzma
import re
import shlex
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.verify import PatchRejected
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.pipeline import (
    FUNCTION_SECTIONS,
    BuildRequest,
    BuildResult,
    build_livepatch,
    patch_include_dir,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prepared import PreparedTree
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import (
    KbuildError,
    StepLog,
    commands_through,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.toolchain import Toolchain, choose_toolchain
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.tree import build_objects, prepare_tree
from tests.testbed.kernels import KernelArtifacts, cache_root, log
from tests.testbed.vm import VmResult, run_in_initramfs

PATCH_ROOT = Path(__file__).resolve().parent / "patches"
PATCH_RE = re.compile(r"^(\d\d)-[a-z0-9-]+\.patch$")
# Lines in the guest's kernel log that mean something went wrong in the kernel.
KERNEL_TROUBLE_RE = re.compile(r"Call Trace|WARNING:|BUG:|Oops|general protection")

FuncMap = Dict[str, Set[str]]


class CorpusError(ValueError):
    """A corpus directory or sidecar is malformed."""


@dataclass
class CorpusPatch:
    """One corpus patch and what is expected of it."""

    name: str
    patch: Path
    check: Optional[Path] = None
    expect: Optional[str] = None
    changed: FuncMap = field(default_factory=dict)
    new: FuncMap = field(default_factory=dict)
    target_module: Optional[str] = None
    files: List[str] = field(default_factory=list)
    prebuild: List[str] = field(default_factory=list)

    @property
    def must_load(self) -> bool:
        return self.check is not None

    @property
    def module(self) -> str:
        return f"kpc-{self.name}"[:48]

    @property
    def sysfs_name(self) -> str:
        return self.module.replace("-", "_")


@dataclass
class BuildOutcome:
    """What building one corpus patch (or a set of them) produced."""

    name: str
    ok: bool
    message: str = ""
    result: Optional[BuildResult] = None
    seconds: float = 0.0

    @property
    def changed(self) -> FuncMap:
        return _func_map(self.result, "changed_functions")

    @property
    def new(self) -> FuncMap:
        return _func_map(self.result, "new_functions")


def _func_map(result: Optional[BuildResult], attr: str) -> FuncMap:
    out: FuncMap = {}
    for obj in (result.objects if result else []):
        names = set(getattr(obj, attr))
        if names:
            out[obj.object] = names
    return out


# --------------------------------------------------------------------------- reading the corpus


def _parse_directives(check: Path, cp: CorpusPatch) -> None:
    for line in check.read_text().splitlines():
        m = re.match(r"^#\s*(changed|new|target-module|files|prebuild):\s*(.*)$", line)
        if not m:
            continue
        key, words = m.group(1), m.group(2).split()
        if key in ("changed", "new"):
            if len(words) < 2:
                raise CorpusError(f"{check}: '# {key}:' needs an object and at least one function")
            getattr(cp, key).setdefault(words[0], set()).update(words[1:])
        elif key == "target-module":
            cp.target_module = words[0]
        elif key == "files":
            cp.files.extend(words)
        else:
            cp.prebuild.extend(words)
    if not cp.changed and not cp.new:
        raise CorpusError(f"{check}: no '# changed:' or '# new:' line: the expected functions must be stated")


def load_corpus(release: str, root: Path = PATCH_ROOT) -> List[CorpusPatch]:
    """Every ``NN-name.patch`` of ``release`` with its sidecar, in name order."""
    directory = root / release
    if not directory.is_dir():
        raise CorpusError(f"no corpus directory {directory}")
    corpus = []
    for patch in sorted(directory.glob("*.patch")):
        if not PATCH_RE.match(patch.name):
            continue  # other tests' patches live here too (e.g. reject-init-change.patch)
        cp = CorpusPatch(name=patch.name[:-len(".patch")], patch=patch)
        check, expect = patch.with_suffix(".check"), patch.with_suffix(".expect")
        if check.is_file() == expect.is_file():
            raise CorpusError(f"{patch}: needs exactly one of {check.name} (must load) or {expect.name} (must be refused)")
        if check.is_file():
            cp.check = check
            _parse_directives(check, cp)
        else:
            cp.expect = expect.read_text().strip()
            re.compile(cp.expect)
        corpus.append(cp)
    if not corpus:
        raise CorpusError(f"{directory} holds no NN-name.patch files")
    return corpus


# --------------------------------------------------------------------------- building


def build_cache() -> Path:
    return cache_root() / "build-tests"


def module_tree(art: KernelArtifacts) -> Path:
    """``lib/modules/<release>`` with every module as a plain ``.ko``.

    Debian's 6.12 packages ship ``.ko.xz`` and busybox insmod in the test VM needs an
    uncompressed file, so compressed trees are unpacked once into the cache for the VM (releases
    with plain ``.ko`` files are used in place).  Builds get the packed tree as shipped: reading
    compressed modules is the build's job.
    """
    if not any(art.modules_dir.rglob("*.ko.xz")):
        return art.modules_dir
    dest = cache_root() / "corpus-modules" / art.release
    stamp = dest / ".unpacked"
    if stamp.is_file():
        return dest
    for packed in art.modules_dir.rglob("*.ko.xz"):
        target = dest / packed.relative_to(art.modules_dir).with_suffix("")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(lzma.decompress(packed.read_bytes()))
        tmp.replace(target)
    stamp.write_text(f"unpacked from {art.modules_dir}\n")
    log(f"corpus {art.release}: unpacked compressed modules into {dest}")
    return dest


def make_request(art: KernelArtifacts, patches: Sequence[Path], name: str, out_dir: Path,
                 replace: bool = True) -> BuildRequest:
    return BuildRequest(patches=list(patches), release=art.release, source_dir=art.source_tree(), config=art.config,
                        vmlinux=art.vmlinux, headers=art.headers, cache_dir=build_cache(), output_dir=out_dir,
                        name=name, replace=replace, modules_dir=art.modules_dir)


@contextmanager
def release_tree(art: KernelArtifacts, label: str) -> Iterator[Tuple[PreparedTree, Toolchain]]:
    """The release's shared prepared tree, with kbuild's commands of the block run by the kernel's
    compiler (in its toolchain root when the host's differs), as the builds themselves run them."""
    cache = build_cache()
    steplog = StepLog(cache / "logs" / f"corpus-{label}-{art.release}.log")
    (cache / "work").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"corpus-{label}-", dir=cache / "work"))
    try:
        toolchain = choose_toolchain(make_request(art, [], label, work), steplog, work)
        with commands_through(toolchain.wrapper):
            yield prepare_tree(art.source_tree(), art.config, art.release, cache / "trees", steplog,
                               compiler=toolchain.identity), toolchain
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prebuild_objects(art: KernelArtifacts, objects: Sequence[str]) -> None:
    """Build ``objects`` in the shared tree so its dependency records name the headers they include."""
    with release_tree(art, "prebuild") as (tree, _toolchain):
        missing = [o for o in objects if not (tree.root / o).is_file()]
        if missing:
            # The same flags as the build itself, so kbuild does not rebuild them again right away.
            with_inc = f"{FUNCTION_SECTIONS} -I{patch_include_dir(build_cache())}"
            build_objects(tree, missing, with_inc, build_cache() / "prebuilt" / art.release)


def build_one(art: KernelArtifacts, patches: Sequence[Path], name: str, out_dir: Path,
              replace: bool = True) -> BuildOutcome:
    start = time.monotonic()
    try:
        result = build_livepatch(make_request(art, patches, name, out_dir, replace=replace))
    except PatchRejected as exc:
        # Worded as the kpatch_build module words it, so .expect files fit both.
        return BuildOutcome(name, False, f"the engine rejected the patch: {exc}", seconds=time.monotonic() - start)
    except (KbuildError, OSError, ValueError) as exc:
        return BuildOutcome(name, False, str(exc), seconds=time.monotonic() - start)
    return BuildOutcome(name, True, result=result, seconds=time.monotonic() - start)


def build_corpus(art: KernelArtifacts, corpus: Sequence[CorpusPatch], out_dir: Path) -> Dict[str, BuildOutcome]:
    outcomes: Dict[str, BuildOutcome] = {}
    for cp in corpus:
        if cp.prebuild:
            prebuild_objects(art, cp.prebuild)
        outcome = build_one(art, [cp.patch], cp.module, out_dir)
        outcome.name = cp.name
        outcomes[cp.name] = outcome
        state = "built" if outcome.ok else "refused"
        log(f"corpus {art.release} {cp.name}: {state} in {outcome.seconds:.1f}s"
            + ("" if outcome.ok else f": {outcome.message.splitlines()[0][:200] if outcome.message else ''}"))
    return outcomes


def function_mismatch(cp: CorpusPatch, outcome: BuildOutcome) -> str:
    """Empty when the build reported exactly the expected changed and new functions."""
    problems = []
    for what, want, got in (("changed", cp.changed, outcome.changed), ("new", cp.new, outcome.new)):
        if want != got:
            problems.append(f"{what}: expected {_fmt(want)}, built {_fmt(got)}")
    return "; ".join(problems)


def _fmt(funcs: FuncMap) -> str:
    return "{" + ", ".join(f"{o}: {' '.join(sorted(f))}" for o, f in sorted(funcs.items())) + "}" if funcs else "{}"


# --------------------------------------------------------------------------- the VM script

VM_LIB = r"""
say() { echo "CORPUS $*"; }
check() {  # name phase script: runs one check, reports pass/fail
  if timeout 60 sh "$3" >/tmp/check.out 2>&1; then say "$1 $2 pass"; else say "$1 $2 fail"; fi
}
wait_transition() {  # sysfs name -> 0 when the transition finished
  i=0
  while [ -e /sys/kernel/livepatch/$1/transition ] && [ "$(cat /sys/kernel/livepatch/$1/transition)" != 0 ]; do
    i=$((i+1)); [ $i -gt 1200 ] && return 1; sleep 0.1
  done
  return 0
}
load() {  # name phase ko sysfs: insmod and wait for the transition
  if insmod "$3" 2>/tmp/insmod.err; then
    if wait_transition "$4"; then say "$1 $2 ok"; return 0; fi
    say "$1 $2 stuck"; return 1
  fi
  say "$1 $2 fail $(tr '\n' ' ' </tmp/insmod.err)"; return 1
}
unload() {  # name phase sysfs: disable, wait, rmmod
  if [ -e /sys/kernel/livepatch/$3/enabled ]; then
    echo 0 > /sys/kernel/livepatch/$3/enabled
    wait_transition "$3" || { say "$1 $2 stuck"; return 1; }
  fi
  i=0
  while ! rmmod "$3" 2>/dev/null; do
    i=$((i+1)); [ $i -gt 100 ] && { say "$1 $2 fail"; return 1; }; sleep 0.1
  done
  say "$1 $2 ok"
}
"""


@dataclass
class VmPlan:
    """Files to ship into the guest and the script that uses them."""

    files: Dict[str, Path] = field(default_factory=dict)
    lines: List[str] = field(default_factory=list)

    def ship(self, dest: str, src: Path) -> str:
        self.files[dest] = src
        return dest

    def script(self) -> str:
        # Only lines the checks caused count: some kernels warn at boot under TCG already.
        pattern = KERNEL_TROUBLE_RE.pattern
        head = [f"boot_trouble=$(dmesg | grep -cE '{pattern}')",
                "echo '@@BOOT-TROUBLE'", f"dmesg | grep -E -A3 '{pattern}' | head -n 40"]
        tail = [f"say kernel trouble $(( $(dmesg | grep -cE '{pattern}') - boot_trouble ))",
                "echo '@@TROUBLE'", f"dmesg | grep -E -B3 -A15 '{pattern}' | head -n 150",
                "echo '@@DMESG'", f"dmesg | grep -E 'kpatch|livepatch|{pattern}' | tail -n 60"]
        return VM_LIB + "\n".join(head + self.lines + tail) + "\n"


def _ship_inputs(plan: VmPlan, art: KernelArtifacts, cp: CorpusPatch) -> Tuple[str, Optional[str]]:
    check = plan.ship(f"/work/checks/{cp.name}.check", cp.check)  # type: ignore[arg-type]
    modules = module_tree(art)
    for rel in cp.files:
        plan.ship(f"/work/files/{Path(rel).name}", modules / rel)
    target = plan.ship(f"/work/kmods/{Path(cp.target_module).name}", modules / cp.target_module) \
        if cp.target_module else None
    return check, target


def plan_single(plan: VmPlan, art: KernelArtifacts, cp: CorpusPatch, ko: Path) -> None:
    """Before / loaded / unloaded for one patch module (and, for a module patch, both load orders)."""
    check, target = _ship_inputs(plan, art, cp)
    kop = plan.ship(f"/work/ko/{cp.module}.ko", ko)
    n, s = cp.name, cp.sysfs_name
    q = shlex.quote
    if target:
        tmod = Path(target).name[:-3].replace("-", "_")
        plan.lines += [f"insmod {q(target)} || say '{n} target-insmod fail'"]
    plan.lines += [f"check {n} before {q(check)}",
                   f"if load {n} load {q(kop)} {s}; then check {n} loaded {q(check)}; unload {n} unload {s}; "
                   f"check {n} unloaded {q(check)}; fi"]
    if target:
        # Second order: the patch module first, the patched module loaded while it is active.
        plan.lines += [f"rmmod {tmod} || say '{n} target-rmmod fail'",
                       f"if load {n} load-late {q(kop)} {s}; then insmod {q(target)} || say '{n} target-insmod fail'; "
                       f"check {n} loaded-late {q(check)}; rmmod {tmod}; unload {n} unload-late {s}; fi"]


def parse_vm_output(output: str) -> Dict[str, Dict[str, str]]:
    """``CORPUS name phase result`` lines → {name: {phase: result}}."""
    results: Dict[str, Dict[str, str]] = {}
    for line in output.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 4 and parts[0] == "CORPUS":
            results.setdefault(parts[1], {})[parts[2]] = parts[3]
    return results


def run_plan(art: KernelArtifacts, plan: VmPlan, timeout: float = 900) -> Tuple[VmResult, Dict[str, Dict[str, str]]]:
    result = run_in_initramfs(art, dict(plan.files), plan.script(), timeout=timeout)
    return result, parse_vm_output(result.output)


def verdict_single(phases: Dict[str, str], module_patch: bool) -> str:
    """'' when a patch behaved (fail / pass / fail, loads and unloads cleanly), else what went wrong."""
    want = {"before": "fail", "load": "ok", "loaded": "pass", "unload": "ok", "unloaded": "fail"}
    if module_patch:
        want.update({"load-late": "ok", "loaded-late": "pass", "unload-late": "ok"})
    wrong = [f"{k}={phases.get(k, 'missing')}" for k, v in want.items() if phases.get(k) != v]
    return ", ".join(wrong)


def plan_combined(plan: VmPlan, art: KernelArtifacts, corpus: Sequence[CorpusPatch], ko: Path, module: str) -> None:
    """All patches in one cumulative module: every check fails, then passes, then fails again."""
    shipped = [(cp, *_ship_inputs(plan, art, cp)) for cp in corpus]
    kop = plan.ship(f"/work/ko/{module}.ko", ko)
    sysfs = module.replace("-", "_")
    q = shlex.quote
    for _cp, _check, target in shipped:
        if target:
            plan.lines.append(f"insmod {q(target)} || say 'combined target-insmod fail'")
    plan.lines += [f"check combined/{cp.name} before {q(check)}" for cp, check, _t in shipped]
    plan.lines.append(f"load combined load {q(kop)} {sysfs}")
    plan.lines += [f"check combined/{cp.name} loaded {q(check)}" for cp, check, _t in shipped]
    plan.lines.append(f"unload combined unload {sysfs}")
    plan.lines += [f"check combined/{cp.name} unloaded {q(check)}" for cp, check, _t in shipped]
    for _cp, _check, target in shipped:
        if target:
            plan.lines.append(f"rmmod {Path(target).name[:-3].replace('-', '_')} || say 'combined target-rmmod fail'")


def plan_replace(plan: VmPlan, art: KernelArtifacts, a: CorpusPatch, a_ko: Path, b_set: Sequence[CorpusPatch],
                 b_ko: Path, b_module: str) -> None:
    """Module A, then cumulative module B (without A's change) replacing it: A's effect is gone."""
    a_check = _ship_inputs(plan, art, a)[0]
    b_checks = [(cp, _ship_inputs(plan, art, cp)[0]) for cp in b_set]
    ka = plan.ship(f"/work/ko/{a.module}.ko", a_ko)
    kb = plan.ship(f"/work/ko/{b_module}.ko", b_ko)
    sa, sb = a.sysfs_name, b_module.replace("-", "_")
    plan.lines += [f"load replace load-a {ka} {sa}",
                   f"check replace/{a.name} a-loaded {a_check}",
                   f"load replace load-b {kb} {sb}",
                   f"check replace/{a.name} b-loaded {a_check}"]
    plan.lines += [f"check replace/{cp.name} b-loaded {check}" for cp, check in b_checks]
    plan.lines += ["say \"replace livepatch-dir $(ls /sys/kernel/livepatch | tr '\\n' ',')\"",
                   f"if rmmod {sa}; then say 'replace rmmod-a ok'; else say 'replace rmmod-a fail'; fi",
                   f"unload replace unload-b {sb}"]
    plan.lines += [f"check replace/{cp.name} b-unloaded {check}" for cp, check in b_checks]


# --------------------------------------------------------------------------- the report


@dataclass
class Row:
    """One line of the corpus table."""

    name: str
    kind: str  # "load" | "refuse"
    built: str
    loaded: str
    verified: str
    refused: str
    note: str = ""


def _count(column: str, rows: Sequence[Row]) -> int:
    return sum(1 for r in rows if getattr(r, column) == "yes")


def table_markdown(release: str, rows: Sequence[Row], extra: Sequence[str] = ()) -> str:
    loads = [r for r in rows if r.kind == "load"]
    refusals = [r for r in rows if r.kind == "refuse"]
    lines = [f"### {release}", "",
             f"built {_count('built', loads)}/{len(loads)} · loaded {_count('loaded', loads)}/{len(loads)} · "
             f"verified {_count('verified', loads)}/{len(loads)} · refused-as-expected "
             f"{_count('refused', refusals)}/{len(refusals)}", "",
             "| patch | built | loaded | verified | refused as expected | note |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.built} | {r.loaded} | {r.verified} | {r.refused} | {r.note} |")
    lines += ["", *extra]
    return "\n".join(lines) + "\n"


def table_text(release: str, rows: Sequence[Row], extra: Sequence[str] = ()) -> str:
    """The same table for a terminal: fixed-width columns."""
    loads = [r for r in rows if r.kind == "load"]
    refusals = [r for r in rows if r.kind == "refuse"]
    out = [f"patch corpus {release}: built {_count('built', loads)}/{len(loads)}, loaded {_count('loaded', loads)}/"
           f"{len(loads)}, verified {_count('verified', loads)}/{len(loads)}, refused-as-expected "
           f"{_count('refused', refusals)}/{len(refusals)}",
           f"  {'patch':<34} {'built':<6} {'loaded':<7} {'verified':<9} {'refused':<8} note"]
    for r in rows:
        out.append(f"  {r.name:<34} {r.built:<6} {r.loaded:<7} {r.verified:<9} {r.refused:<8} {r.note[:90]}")
    out += [f"  {line}" for line in extra]
    return "\n".join(out) + "\n"
