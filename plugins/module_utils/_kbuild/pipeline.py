# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""The kpatch_build pipeline: source patches → one livepatch module for one kernel release.

The build is a list of named steps over one ``Build`` (the checked request, its log and
scratch space, and what each step produced), in the order kpatch-build runs its own:

1. ``toolchain`` — the kernel's compiler on the host, or a toolchain root that has it;
2. ``checks`` — what can fail before any compile (the signing key);
3. ``hook`` — kbuild starts compiling the ``kmod/`` hook's object in the background (it needs
   nothing the next steps make, and the compile below keeps one core busy);
4. ``compile`` — prepare the release's tree once (cached), compile the changed objects unpatched
   and patched (vmlinux's debuginfo and struct sizes are read meanwhile);
5. ``diff`` — the engine on each object pair;
6. ``module`` — link the outputs with the hook against the headers, convert to livepatch format;
7. ``verify`` — every undefined symbol resolves, objtool's sites are listed, the vermagic;
8. ``sign`` — the kernel's module signature, when a key is given;
9. ``publish`` — the module and its result into the cache.

The kernel source tree is restored on every exit path (``patched_tree``) and the module reaches
the cache only when every step succeeded: a failed build leaves no artifact.  The same inputs
again return the cached module unchanged.  ``StepLog`` is the one clock: a step's time in the
result is its stage's in the log.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.acquire import acquire_source
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.diffing import engine_output_path, run_engine
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.distro import max_symbol_name
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kmod import (
    HookObject,
    build_patch_module,
    kmod_sources,
    start_hook_object,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.modcheck import (
    check_objtool_sites,
    check_undefined_symbols,
    strip_objtool_output,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.pairs import (
    CompiledPairs,
    compile_kernel,
    compile_oot,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.request import (
    BuildRequest,
    check_inputs,
    sign_file_path,
    signature_hash,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.results import (
    BuildResult,
    ObjectDiff,
    cache_key,
    cached_result,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import (
    KbuildError,
    StepLog,
    commands_through,
    run_logged,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.toolchain import Toolchain, choose_toolchain
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.tree import sha256_file
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.vmlinuxreads import VmlinuxReads

FUNCTION_SECTIONS = "-ffunction-sections -fdata-sections"
T = TypeVar("T")


@dataclass
class Build:
    """One build in progress: its checked request, log and scratch space, and each step's product."""

    req: BuildRequest
    key: str
    log: StepLog
    work: Path
    toolchain: Optional[Toolchain] = None
    hook: Optional[HookObject] = None  # compiling in the background from the "hook" step on
    compiled: Optional[CompiledPairs] = None
    sizes: Dict[str, int] = field(default_factory=dict)
    diffs: List[ObjectDiff] = field(default_factory=list)
    klp_ko: Optional[Path] = None
    vermagic: str = ""
    module: Optional[Path] = None  # the finished module in the cache

    def needs(self, value: Optional[T], what: str) -> T:
        """``value``, which an earlier step must have produced (an error naming it otherwise)."""
        if value is None:
            raise KbuildError(f"internal error: the build reached a step before {what} was produced")
        return value

    @property
    def out_dir(self) -> Path:
        return self.work / "output"

    @property
    def module_dir(self) -> Path:
        """Where the finished module and its result are kept in the cache."""
        return Path(self.req.cache_dir) / "modules" / self.key


# --------------------------------------------------------------------------- helpers


def patch_include_dir(cache_dir: Path, hook: Optional[Mapping[str, bytes]] = None) -> Path:
    """A directory with the patch-author headers, so patched sources can ``#include "kpatch-macros.h"``.

    kpatch-build puts its patch headers on the include path the same way; the path is stable so
    that kbuild's command-line check does not rebuild objects needlessly between builds.
    ``hook``: the hook's files as the build read them (default: the collection's ``kmod/``).
    """
    inc = cache_dir / "include"
    inc.mkdir(parents=True, exist_ok=True)
    for name, data in (kmod_sources() if hook is None else hook).items():
        if name.endswith(".h"):
            dest = inc / name
            if not dest.is_file() or dest.read_bytes() != data:
                tmp = inc / f".{name}.tmp"
                tmp.write_bytes(data)
                os.replace(tmp, dest)
    return inc


def sign_module(req: BuildRequest, ko: Path, log: StepLog, step: str = "sign", what: str = "sign-file") -> None:
    """Append the kernel's module signature to ``ko`` with the release's ``sign-file``."""
    # check_signing_inputs (run by check_inputs before any build) made sure sign-file exists.
    with log.step(step, str(ko)):
        run_logged(log, [str(sign_file_path(req)), signature_hash(req), str(req.signing_key), str(req.signing_cert), str(ko)],
                   what=what)


def _publish(ko: Path, final_dir: Path, name: str) -> Path:
    """Move the finished module into place atomically: readers see all of it or nothing."""
    final_dir.mkdir(parents=True, exist_ok=True)
    dest = final_dir / f"{name}.ko"
    tmp = final_dir / f".{name}.ko.tmp"
    shutil.copyfile(ko, tmp)
    # On disk before the rename: after a crash the name holds the old module or the new, never a hole.
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    return dest


# --------------------------------------------------------------------------- the steps


def choose_compiler(build: Build) -> None:
    with build.log.step("check-compiler") as res:
        build.toolchain = choose_toolchain(build.req, build.log, build.work)
        res.detail = build.toolchain.detail


def check_signing(build: Build) -> None:
    """Sign a scratch file before any compile: a key that does not match its certificate, a key
    ``sign-file`` cannot read or a wrong ``KBUILD_SIGN_PIN`` fails here, not after the build."""
    req = build.req
    if not req.signing_key:
        return
    probe = build.work / "sign-probe"
    probe.write_bytes(b"kpatch-livepatch signing probe\n")
    sign_module(req, probe, build.log, step="check-signing",
                what=f"signing with signing_key {req.signing_key} and signing_cert {req.signing_cert}")


def start_hook(build: Build) -> None:
    """The hook's object is compiled by kbuild on the other core while the changed objects are built
    and diffed; the link then finds it up to date."""
    req = build.req
    build.hook = start_hook_object(Path(req.headers), req.module_name, build.work / "kmod", build.log,
                                   req.replace, req.hook_sources)


def compile_objects(build: Build) -> None:
    """The changed objects, unpatched and patched; vmlinux's reads overlap the tree's preparation."""
    req, toolchain = build.req, build.needs(build.toolchain, "the compiler choice")
    with VmlinuxReads(req, build.log) as reads:
        # The same flags for the header mapping's compiles as for the build below: kbuild then finds
        # the objects it compiled up to date instead of compiling them again.
        cflags = f"{FUNCTION_SECTIONS} -I{patch_include_dir(Path(req.cache_dir), req.hook_sources)}"
        build.compiled = (compile_oot(req, req.oot, build.log, build.work, cflags) if req.oot
                          else compile_kernel(req, build.log, build.work, toolchain.other_compiler, cflags,
                                              compiler=toolchain.identity, debuginfo=reads.debuginfo))
        build.sizes = reads.struct_sizes()
    for adjusted in build.compiled.adjustments:
        build.log.note("hunk-adjusted", adjusted.describe())


def diff_objects(build: Build) -> None:
    compiled = build.needs(build.compiled, "the compiled objects")
    build.out_dir.mkdir(parents=True)
    build.diffs = run_engine(build.req, compiled.pairs, compiled.orig_dir, compiled.patched_dir, build.out_dir,
                             build.sizes, build.log)


def link_module(build: Build) -> None:
    """The engine's outputs and the hook linked against the headers, then in livepatch format."""
    from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.klp import create_klp_module

    req, log = build.req, build.log
    outputs = sorted(build.out_dir.glob("output-*.o"))
    if req.kernel_config.objtool_runs_on_linked_module:
        with log.step("strip-objtool-output") as res:
            res.detail = " ".join(strip_objtool_output(outputs)) or "nothing to strip"
    linked = build_patch_module(Path(req.headers), outputs, req.module_name, build.work / "kmod", log,
                                replace=req.replace, jobs=req.jobs, sources=req.hook_sources, hook=build.hook)
    build.klp_ko = build.work / f"{req.module_name}.ko"
    with log.step("create-klp-module") as res:
        conv = create_klp_module(str(linked), str(build.klp_ko), max_symbol_name(req.release))
        res.detail = (f"{conv.relocations} livepatch relocations, {conv.symbols} symbols, sections "
                      f"{' '.join(conv.sections) or '-'}; {conv.placeholders} placeholders removed, "
                      f"{conv.call_sites_dropped} call sites dropped")


def verify_module(build: Build) -> None:
    """What the kernel's loader will need: resolvable symbols, listed objtool sites, this release."""
    from ansible_collections.kpatch.livepatch.plugins.module_utils._target.modinfo import read_modinfo

    req, log = build.req, build.log
    compiled, ko = build.needs(build.compiled, "the compiled objects"), build.needs(build.klp_ko, "the module")
    with log.step("check-undefined-symbols") as res:
        symvers = Path(req.headers) / "Module.symvers"
        made_from = {engine_output_path(build.out_dir, i, obj): obj for i, obj in enumerate(sorted(compiled.pairs))}
        resolved = check_undefined_symbols(ko, {p: o for p, o in made_from.items() if p.is_file()},
                                           symvers if symvers.is_file() else None)
        res.detail = f"{resolved} undefined symbols, all exported"
    with log.step("check-objtool-sites") as res:
        sites = check_objtool_sites(ko, req.kernel_config, compiled.source_root)
        res.detail = f"{sites.returns} returns, {sites.retpolines} retpoline calls listed; {sites.orc_entries} ORC entries"
    info = read_modinfo(str(ko))
    if info.release != req.release:
        raise KbuildError(f"built module has vermagic {info.vermagic!r}, not for {req.release}: "
                          "the headers do not belong to this release")
    build.vermagic = info.vermagic


def sign(build: Build) -> None:
    if build.req.signing_key:
        sign_module(build.req, build.needs(build.klp_ko, "the module"), build.log)


def publish_to_cache(build: Build) -> None:
    build.module = _publish(build.needs(build.klp_ko, "the module"), build.module_dir, build.req.module_name)


# The build after the compiler choice, in order; each step's time is its stage's in the log.
BUILD_STEPS: Tuple[Tuple[str, Callable[[Build], None]], ...] = (
    ("checks", check_signing),
    ("hook", start_hook),
    ("compile", compile_objects),
    ("diff", diff_objects),
    ("module", link_module),
    ("verify", verify_module),
    ("sign", sign),
    ("publish", publish_to_cache),
)


def run_steps(build: Build, steps: Sequence[Tuple[str, Callable[[Build], None]]]) -> None:
    for name, step in steps:
        with build.log.stage(name):
            step(build)


def result_of(build: Build) -> BuildResult:
    """The finished build's result, as recorded in the cache (timings: the log's stages)."""
    req = build.req
    compiled, module = build.needs(build.compiled, "the compiled objects"), build.needs(build.module, "the module")
    return BuildResult(module_path=str(module), module_name=req.module_name, sha256=sha256_file(module),
                       vermagic=build.vermagic, release=req.release, replace=req.replace, cached=False,
                       objects=build.diffs, timings=dict(build.log.stages), log=str(build.log.path),
                       cache_key=build.key, source_dir=str(req.source_dir),
                       hunk_adjustments=[asdict(a) for a in compiled.adjustments],
                       skipped_files=[{"file": f, "reason": why} for f, why in sorted(compiled.skipped.items())])


# --------------------------------------------------------------------------- entry points


def plan(req: BuildRequest) -> Dict[str, object]:
    """What a build would do (check mode): the key and whether the cache already has it."""
    req = check_inputs(req)
    key = cache_key(req)
    hit = cached_result(req, key)
    planned: Dict[str, object] = {
        "module_name": req.module_name, "cache_key": key, "cached": hit is not None, "source_dir": str(req.source_dir),
        "module_path": hit.module_path if hit else str(Path(req.output_dir) / f"{req.module_name}.ko")}
    if req.acquire:  # what a build would fetch; check mode downloads nothing
        planned["source_acquisition"] = req.acquire.describe()
    return planned


def build_livepatch(req: BuildRequest) -> BuildResult:
    """Build (or fetch from the cache) the livepatch module for ``req``."""
    start = time.monotonic()
    req = check_inputs(req)
    key = cache_key(req)
    hit = cached_result(req, key)
    if hit is not None:
        final = _publish(Path(hit.module_path), Path(req.output_dir), hit.module_name)
        return replace(hit, module_path=str(final), source_dir=str(req.source_dir))
    cache_dir = Path(req.cache_dir)
    log = StepLog(cache_dir / "logs" / f"{req.module_name}-{key}.log")
    log.note("start", f"{req.module_name} for {req.release} from {' '.join(str(p) for p in req.patches)}")
    if req.acquire:
        with log.stage("acquire_source"):
            req = replace(req, source_dir=acquire_source(req.acquire, log))
    (cache_dir / "work").mkdir(parents=True, exist_ok=True)
    build = Build(req, key, log, Path(tempfile.mkdtemp(prefix=f"{req.module_name}-", dir=cache_dir / "work")))
    try:
        run_steps(build, (("toolchain", choose_compiler),))
        # Inside a toolchain root every kbuild command of the build runs there (steplog.run_logged).
        with commands_through(build.needs(build.toolchain, "the compiler choice").wrapper):
            run_steps(build, BUILD_STEPS)
    finally:
        if build.hook is not None:
            build.hook.wait()  # (a failed build's hook compile must not outlive its directory)
        shutil.rmtree(build.work, ignore_errors=True)
    log.stages["total"] = round(time.monotonic() - start, 3)
    result = result_of(build)
    (build.module_dir / "result.json").write_text(json.dumps(result.as_dict(), indent=1, sort_keys=True))
    final = _publish(Path(result.module_path), Path(req.output_dir), result.module_name)
    log.note("done", f"{final} sha256={result.sha256} in {log.stages['total']:.2f}s "
                     f"({' '.join(f'{k}={v:.2f}s' for k, v in log.stages.items() if k != 'total')})")
    return replace(result, module_path=str(final))
