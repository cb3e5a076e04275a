# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""The kpatch_build pipeline: source patches → one livepatch module for one kernel release.

The fast path: prepare the release's source tree once (cached), compile only the objects the
patches change — before and after applying them — run the diff engine on each pair, link the
results with the hook in ``kmod/`` against the release's headers, convert the module to
livepatch format and (optionally) sign it.  The kernel source tree is restored on every exit
path (``patched_tree``), and the module reaches the cache only when every step succeeded: a
failed build leaves no artifact.  The same inputs again return the cached module unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.acquire import acquire_source
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.compiler import (
    host_compiler,
    kernel_compiler,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.distro import max_symbol_name
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kmod import build_patch_module, kmod_sources
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.modcheck import (
    check_objtool_sites,
    check_undefined_symbols,
    objtool_runs_on_linked_module,
    strip_objtool_output,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.oot import oot_identity
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.parentsyms import parent_symtab
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.pairs import (
    NoChangesError,
    compile_kernel,
    compile_oot,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.request import (
    BuildRequest,
    check_inputs,
    is_pkcs11,
    sign_file_path,
    signature_hash,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import (
    KbuildError,
    StepLog,
    commands_through,
    run_logged,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.toolchain import (
    Toolchain,
    choose_toolchain,
    uses_toolchain_root,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.vmlinuxreads import VmlinuxReads
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.tree import sha256_file, source_identity

# Bumped when the cache layout or the meaning of a cached result changes.
CACHE_FORMAT = 1
FUNCTION_SECTIONS = "-ffunction-sections -fdata-sections"
# What follows ".ko" in a module file name: plain, or compressed the ways distros ship them.
MODULE_SUFFIXES = ("", ".xz", ".gz", ".zst")


@dataclass
class ObjectDiff:
    """What the engine found in one changed object."""

    object: str
    parent: str
    changed_functions: List[str] = field(default_factory=list)
    new_functions: List[str] = field(default_factory=list)
    klp_relocations: int = 0
    timings: Dict[str, float] = field(default_factory=dict)
    # module-keyed tracepoint / dynamic-debug sites left inert while patched (_engine/modkeys.py)
    inert_sites: List[str] = field(default_factory=list)


@dataclass
class BuildResult:
    """The module built (or found in the cache) and how it was made."""

    module_path: str
    module_name: str
    sha256: str
    vermagic: str
    release: str
    replace: bool
    cached: bool
    objects: List[ObjectDiff] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    log: str = ""
    cache_key: str = ""
    source_dir: str = ""
    # Hunks applied at an offset or with fuzz (patch, file, hunk, line, offset, fuzz).
    hunk_adjustments: List[Dict[str, object]] = field(default_factory=list)
    # Changed files from which this kernel builds no object (file, reason): not patched, not refused.
    skipped_files: List[Dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


# --------------------------------------------------------------------------- inputs and cache


def _code_identity() -> str:
    """Hash of the engine, build and hook sources: a new collection version rebuilds modules."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    files = sorted(list(here.parent.glob("_elf/*.py")) + list(here.parent.glob("_engine/*.py"))
                   + list(here.glob("*.py")))
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for name, data in sorted(kmod_sources().items()):
        digest.update(name.encode() + b"\0" + data)
    return digest.hexdigest()


def cache_key(req: BuildRequest) -> str:
    """Identity of a build: the same key means the same module bytes would come out."""
    vm = os.stat(req.vmlinux)
    parts = {
        "format": CACHE_FORMAT,
        "patches": [sha256_file(Path(p)) for p in req.patches],
        "release": req.release,
        "config": sha256_file(Path(req.config)),
        "vmlinux": [vm.st_size, int(vm.st_mtime)],
        "name": req.module_name,
        "replace": req.replace,
        "fuzz": req.fuzz,
        "signed": _signing_identity(req),
        "compiler": build_compiler(req),
        "code": _code_identity(),
        "source": (oot_identity(req.oot) if req.oot else req.acquire.identity if req.acquire
                   else source_identity(Path(req.source_dir))),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _signing_identity(req: BuildRequest) -> Optional[List[str]]:
    """Certificate and key of a signed build: a module signed with one key is never returned for another."""
    if not req.signing_key or not req.signing_cert:
        return None
    key = str(req.signing_key) if is_pkcs11(req.signing_key) else sha256_file(Path(str(req.signing_key)))
    return [sha256_file(Path(str(req.signing_cert))), key, signature_hash(req)]


def build_compiler(req: BuildRequest) -> Optional[str]:
    """The host compiler when a build would use one other than the kernel's (skip_compiler_check), else None.

    Without the skip a build only ever runs with the kernel's compiler, which vmlinux already
    identifies; with it, objects from another compiler are different bytes and must not share a key.
    """
    if not req.skip_compiler_check:
        return None
    host = host_compiler()
    if host == kernel_compiler(Path(req.vmlinux)) or uses_toolchain_root(req):
        return None  # the kernel's own compiler builds it (on the host, or in a toolchain root)
    return host


def cached_result(req: BuildRequest, key: str) -> Optional[BuildResult]:
    """The result recorded for ``key``, if its module is still there with the recorded hash."""
    entry = Path(req.cache_dir) / "modules" / key / "result.json"
    try:
        data = json.loads(entry.read_text())
    except (OSError, ValueError):
        return None
    ko = Path(data["module_path"])
    if not ko.is_file() or sha256_file(ko) != data["sha256"]:
        return None
    data["objects"] = [ObjectDiff(**o) for o in data.get("objects", [])]
    data["cached"] = True
    return BuildResult(**data)


# --------------------------------------------------------------------------- steps


def find_module_ko(modules_dir: Optional[Path], module: str, scratch: Path) -> Path:
    """The release's own ``<module>.ko`` (its symbol table is the parent for lookups).

    Distros ship modules compressed (Debian 6.12: ``.ko.xz``; others ``.ko.zst``/``.ko.gz``);
    a compressed one is unpacked into ``scratch`` and that plain copy is returned.
    """
    if modules_dir is None or not Path(modules_dir).is_dir():
        raise KbuildError(f"the patch changes module {module}, but no modules directory was given "
                          f"(/lib/modules/<release> of the target kernel)")
    names = {module, module.replace("_", "-")}
    for path in sorted(Path(modules_dir).rglob("*.ko*")):
        base, _sep, suffix = path.name.partition(".ko")
        if base in names and suffix in MODULE_SUFFIXES:
            return plain_module(path, scratch)
    raise KbuildError(f"module {module}.ko (plain, .xz, .gz or .zst) not found under {modules_dir}")


def plain_module(path: Path, scratch: Path) -> Path:
    """``path`` when it is a plain ``.ko``, else its contents unpacked into ``scratch``."""
    from ansible_collections.kpatch.livepatch.plugins.module_utils._target.modinfo import (
        ModinfoError,
        decompress_module,
    )

    base, _sep, suffix = Path(path).name.partition(".ko")
    if not suffix:
        return Path(path)
    try:
        plain = decompress_module(str(path), Path(path).read_bytes())
    except ModinfoError as exc:
        raise KbuildError(str(exc)) from exc
    scratch.mkdir(parents=True, exist_ok=True)
    dest = scratch / f"{base}.ko"
    dest.write_bytes(plain)
    return dest


def _parent_file(req: BuildRequest, parent: str, scratch: Path) -> Path:
    """vmlinux, the out-of-tree module being patched, or the release's own module ``parent``."""
    if parent == "vmlinux":
        return Path(req.vmlinux)
    if req.oot and parent == req.oot.name:
        return plain_module(req.oot.ko, scratch)
    return find_module_ko(req.modules_dir, parent, scratch)


def engine_output_path(out_dir: Path, index: int, obj: str) -> Path:
    """Where ``run_engine`` writes the output of the ``index``-th object (sorted order)."""
    return out_dir / f"output-{index}-{Path(obj).stem}.o"


def run_engine(req: BuildRequest, pairs: Dict[str, str], orig_dir: Path, patched_dir: Path,
               out_dir: Path, sizes: Dict[str, int], log: StepLog) -> List[ObjectDiff]:
    """Diff each original/patched object pair; return what changed, write outputs to ``out_dir``."""
    # Imported here: the engine needs pyelftools, which the module reports missing on its own.
    from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.diff import create_diff_object

    symtabs: Dict[str, object] = {}
    symvers = Path(req.headers) / "Module.symvers"
    diffs: List[ObjectDiff] = []
    for index, (obj, parent) in enumerate(sorted(pairs.items())):
        with log.step("diff-object", obj) as res:
            if parent not in symtabs:
                scratch = out_dir.parent / "parents"
                source = _parent_file(req, parent, scratch)
                # A module unpacked into this build's scratch space is a new file each time: not cached.
                cached = scratch not in source.parents
                symtabs[parent] = parent_symtab(source, parent, Path(req.cache_dir) / "symtabs" if cached else None)
            out = engine_output_path(out_dir, index, obj)
            result = create_diff_object(str(orig_dir / obj), str(patched_dir / obj), parent, symtabs[parent],
                                        str(symvers) if symvers.is_file() else None, req.module_name, str(out),
                                        struct_sizes=sizes)
            res.detail = (f"{obj}: changed {' '.join(result.changed_functions) or '-'}; "
                          f"new {' '.join(result.new_functions) or '-'}")
        if result.has_changes:
            diffs.append(ObjectDiff(obj, parent, result.changed_functions, result.new_functions,
                                    result.klp_relocations, result.timings, result.inert_sites))
    if not diffs:
        raise NoChangesError(f"the patch {' '.join(str(p) for p in req.patches)} changes no function in "
                             f"{', '.join(sorted(pairs))}: nothing to live patch")
    return diffs


def patch_include_dir(cache_dir: Path) -> Path:
    """A directory with the patch-author headers, so patched sources can ``#include "kpatch-macros.h"``.

    kpatch-build puts its patch headers on the include path the same way; the path is stable so
    that kbuild's command-line check does not rebuild objects needlessly between builds.
    """
    inc = cache_dir / "include"
    inc.mkdir(parents=True, exist_ok=True)
    for name, data in kmod_sources().items():
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


def check_signing(req: BuildRequest, work: Path, log: StepLog) -> None:
    """Sign a scratch file before any compile: a key that does not match its certificate, a key
    ``sign-file`` cannot read or a wrong ``KBUILD_SIGN_PIN`` fails here, not after the build."""
    probe = work / "sign-probe"
    probe.write_bytes(b"kpatch-livepatch signing probe\n")
    sign_module(req, probe, log, step="check-signing",
                what=f"signing with signing_key {req.signing_key} and signing_cert {req.signing_cert}")


def _publish(ko: Path, final_dir: Path, name: str) -> Path:
    """Move the finished module into place atomically: readers see all of it or nothing."""
    final_dir.mkdir(parents=True, exist_ok=True)
    dest = final_dir / f"{name}.ko"
    tmp = final_dir / f".{name}.ko.tmp"
    shutil.copyfile(ko, tmp)
    os.replace(tmp, dest)
    return dest


# --------------------------------------------------------------------------- entry point


def plan(req: BuildRequest) -> Dict[str, object]:
    """What a build would do (check mode): the key and whether the cache already has it."""
    check_inputs(req)
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
    check_inputs(req)
    key = cache_key(req)
    hit = cached_result(req, key)
    if hit is not None:
        final = _publish(Path(hit.module_path), Path(req.output_dir), hit.module_name)
        hit.module_path = str(final)
        hit.source_dir = str(req.source_dir)
        return hit
    cache_dir = Path(req.cache_dir)
    log = StepLog(cache_dir / "logs" / f"{req.module_name}-{key}.log")
    log.note("start", f"{req.module_name} for {req.release} from {' '.join(str(p) for p in req.patches)}")
    timings: Dict[str, float] = {}
    if req.acquire:
        t = time.monotonic()
        req.source_dir = acquire_source(req.acquire, log)
        _timed(timings, "acquire_source", t)
    (cache_dir / "work").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{req.module_name}-", dir=cache_dir / "work"))
    try:
        t = time.monotonic()
        with log.step("check-compiler") as res:
            toolchain = choose_toolchain(req, log, work)
            res.detail = toolchain.detail
        _timed(timings, "toolchain", t)
        # Inside a toolchain root every kbuild command of the build runs there (steplog.run_logged).
        with commands_through(toolchain.wrapper):
            result = _build(req, key, log, work, timings, toolchain)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.source_dir = str(req.source_dir)
    timings["total"] = round(time.monotonic() - start, 3)
    result.timings = timings
    entry = cache_dir / "modules" / key / "result.json"
    entry.write_text(json.dumps(result.as_dict(), indent=1, sort_keys=True))
    final = _publish(Path(result.module_path), Path(req.output_dir), result.module_name)
    result.module_path = str(final)
    log.note("done", f"{final} sha256={result.sha256} in {timings['total']:.2f}s")
    return result


def _timed(timings: Dict[str, float], name: str, start: float) -> None:
    timings[name] = round(time.monotonic() - start, 3)


def _build(req: BuildRequest, key: str, log: StepLog, work: Path, timings: Dict[str, float],
           toolchain: Toolchain) -> BuildResult:
    from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.klp import create_klp_module
    from ansible_collections.kpatch.livepatch.plugins.module_utils._target.modinfo import read_modinfo

    t = time.monotonic()
    if req.signing_key:
        check_signing(req, work, log)
    _timed(timings, "checks", t)
    with VmlinuxReads(req, log) as reads:
        t = time.monotonic()
        # The same flags for the header mapping's compiles as for the build below: kbuild then finds
        # the objects it compiled up to date instead of compiling them again.
        cflags = f"{FUNCTION_SECTIONS} -I{patch_include_dir(Path(req.cache_dir))}"
        compiled = (compile_oot(req, req.oot, log, work, cflags) if req.oot
                    else compile_kernel(req, log, work, toolchain.other_compiler, cflags, timings,
                                        compiler=toolchain.identity, debuginfo=reads.debuginfo))
        sizes = reads.struct_sizes()
    pairs, orig_dir, patched_dir = compiled.pairs, compiled.orig_dir, compiled.patched_dir
    out_dir = work / "output"
    out_dir.mkdir(parents=True)
    for adjusted in compiled.adjustments:
        log.note("hunk-adjusted", adjusted.describe())
    _timed(timings, "compile", t)
    t = time.monotonic()
    diffs = run_engine(req, pairs, orig_dir, patched_dir, out_dir, sizes, log)
    _timed(timings, "diff", t)
    t = time.monotonic()
    outputs = sorted(out_dir.glob("output-*.o"))
    config_text = Path(req.config).read_text(errors="replace")
    if objtool_runs_on_linked_module(config_text):
        with log.step("strip-objtool-output") as res:
            res.detail = " ".join(strip_objtool_output(outputs)) or "nothing to strip"
    linked = build_patch_module(Path(req.headers), outputs, req.module_name, work / "kmod", log,
                                replace=req.replace, jobs=req.jobs)
    final_dir = Path(req.cache_dir) / "modules" / key
    final_dir.mkdir(parents=True, exist_ok=True)
    klp_ko = work / f"{req.module_name}.ko"
    with log.step("create-klp-module") as res:
        conv = create_klp_module(str(linked), str(klp_ko), max_symbol_name(req.release))
        res.detail = (f"{conv.relocations} livepatch relocations, {conv.symbols} symbols, sections "
                      f"{' '.join(conv.sections) or '-'}; {conv.placeholders} placeholders removed, "
                      f"{conv.call_sites_dropped} call sites dropped")
    with log.step("check-undefined-symbols") as res:
        symvers = Path(req.headers) / "Module.symvers"
        made_from = {engine_output_path(out_dir, i, obj): obj for i, obj in enumerate(sorted(pairs))}
        resolved = check_undefined_symbols(klp_ko, {p: o for p, o in made_from.items() if p.is_file()},
                                           symvers if symvers.is_file() else None)
        res.detail = f"{resolved} undefined symbols, all exported"
    with log.step("check-objtool-sites") as res:
        sites = check_objtool_sites(klp_ko, config_text, compiled.source_root)
        res.detail = f"{sites.returns} returns, {sites.retpolines} retpoline calls listed; {sites.orc_entries} ORC entries"
    if req.signing_key:
        sign_module(req, klp_ko, log)
    ko = _publish(klp_ko, final_dir, req.module_name)
    _timed(timings, "module", t)
    info = read_modinfo(str(ko))
    if info.release != req.release:
        raise KbuildError(f"built module has vermagic {info.vermagic!r}, not for {req.release}: "
                          "the headers do not belong to this release")
    return BuildResult(module_path=str(ko), module_name=req.module_name, sha256=sha256_file(ko), vermagic=info.vermagic,
                       release=req.release, replace=req.replace, cached=False, objects=diffs, log=str(log.path),
                       cache_key=key, hunk_adjustments=[asdict(a) for a in compiled.adjustments],
                       skipped_files=[{"file": f, "reason": why} for f, why in sorted(compiled.skipped.items())])
