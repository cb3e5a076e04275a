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
from typing import Dict, List, Optional, Sequence

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.acquire import (
    SourceAcquisition,
    acquire_source,
    source_request,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.compiler import (
    check_compiler,
    host_compiler,
    kernel_compiler,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kmod import (
    build_patch_module,
    kmod_sources,
    module_name,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.modcheck import (
    check_objtool_sites,
    check_undefined_symbols,
    objtool_runs_on_linked_module,
    strip_objtool_output,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import (
    KbuildError,
    StepLog,
    run_logged,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.structsizes import special_struct_sizes
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.tree import (
    build_objects,
    changed_files,
    objects_for_sources,
    patched_tree,
    prepare_tree,
    sha256_file,
    source_identity,
)

# Bumped when the cache layout or the meaning of a cached result changes.
CACHE_FORMAT = 1
FUNCTION_SECTIONS = "-ffunction-sections -fdata-sections"
# Objects kpatch refuses for good reasons: lib/ objects may be archive members linked only when
# used, so a function there may not exist in vmlinux at all, or exist in several copies.
REFUSED_DIRS = ("lib/", "arch/x86/lib/")
# What follows ".ko" in a module file name: plain, or compressed the ways distros ship them.
MODULE_SUFFIXES = ("", ".xz", ".gz", ".zst")


class NoChangesError(KbuildError):
    """The patches change no function: nothing to live patch."""


@dataclass
class BuildRequest:
    """Everything one build needs; paths are on the build host."""

    patches: List[Path]
    release: str
    source_dir: Path
    config: Path
    vmlinux: Path
    headers: Path
    cache_dir: Path
    output_dir: Path
    name: Optional[str] = None
    replace: bool = True
    modules_dir: Optional[Path] = None
    jobs: int = 2
    skip_compiler_check: bool = False
    signing_key: Optional[Path] = None
    signing_cert: Optional[Path] = None
    # A patched header included by too many objects to compile them one by one needs one full
    # build of the cached tree (about 10 minutes for vmlinux on 2 cores, then cached); False
    # refuses such a patch instead.
    full_build_fallback: bool = True
    # Set when no source_dir was given: source_dir is then where acquire_source puts the tree.
    acquire: Optional[SourceAcquisition] = None

    @property
    def module_name(self) -> str:
        if self.name:
            return module_name(self.name)
        stem = Path(self.patches[0]).name
        for suffix in (".patch", ".diff"):
            stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
        return module_name(f"livepatch-{stem}")


@dataclass
class ObjectDiff:
    """What the engine found in one changed object."""

    object: str
    parent: str
    changed_functions: List[str] = field(default_factory=list)
    new_functions: List[str] = field(default_factory=list)
    klp_relocations: int = 0
    timings: Dict[str, float] = field(default_factory=dict)


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

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


# --------------------------------------------------------------------------- inputs and cache


def check_inputs(req: BuildRequest) -> None:
    """Every named input exists and the kernel can take live patches — before any work."""
    if not req.patches:
        raise KbuildError("no patch given")
    for patch in req.patches:
        if not Path(patch).is_file():
            raise KbuildError(f"patch {patch} does not exist")
    # patch(1) runs inside the tree: relative names must not depend on the caller's directory.
    req.patches = [Path(p).resolve() for p in req.patches]
    # An acquired source is fetched after these checks (and only when the module is not cached).
    source_check = (req.source_dir / "Makefile", f"kernel source tree {req.source_dir} (no Makefile there)")
    checks = [] if req.acquire else [source_check]
    checks += [(req.config, f"kernel config {req.config}"),
               (req.vmlinux, f"vmlinux with debug symbols {req.vmlinux} (install the kernel's debuginfo/-dbg package)"),
               (req.headers / "Makefile", f"kernel headers {req.headers} (no Makefile there)")]
    for path, what in checks:
        if not Path(path).exists():
            raise KbuildError(f"missing {what}")
    config = Path(req.config).read_text(errors="replace")
    if "CONFIG_LIVEPATCH=y" not in config:
        raise KbuildError(f"kernel {req.release} has no CONFIG_LIVEPATCH=y in {req.config}: it cannot load livepatch modules")
    if bool(req.signing_key) != bool(req.signing_cert):
        raise KbuildError("signing needs both signing_key and signing_cert")
    if req.signing_key:
        check_signing_inputs(req)


def _is_pkcs11(key: object) -> bool:
    return str(key).startswith("pkcs11:")


def sign_file_path(req: BuildRequest) -> Path:
    return Path(req.headers) / "scripts" / "sign-file"


def signature_hash(req: BuildRequest) -> str:
    """The kernel's module signature digest (``CONFIG_MODULE_SIG_HASH``), sha256 when not set."""
    for line in Path(req.config).read_text(errors="replace").splitlines():
        if line.startswith("CONFIG_MODULE_SIG_HASH="):
            return line.split("=", 1)[1].strip().strip('"') or "sha256"
    return "sha256"


def check_signing_inputs(req: BuildRequest) -> None:
    """The signing key, its certificate and the release's ``sign-file`` exist (no compile before this)."""
    sign_file = sign_file_path(req)
    if not sign_file.is_file():
        raise KbuildError(f"cannot sign: {sign_file} not found in the kernel headers {req.headers} "
                          "(Debian ships it in linux-kbuild-X.Y)")
    if not _is_pkcs11(req.signing_key) and not Path(str(req.signing_key)).is_file():
        raise KbuildError(f"signing_key {req.signing_key} does not exist (a PEM private key file or a pkcs11: URI)")
    if not Path(str(req.signing_cert)).is_file():
        raise KbuildError(f"signing_cert {req.signing_cert} does not exist (the X.509 certificate of signing_key, "
                          "PEM or DER)")


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
        "signed": _signing_identity(req),
        "compiler": build_compiler(req),
        "code": _code_identity(),
        "source": req.acquire.identity if req.acquire else source_identity(Path(req.source_dir)),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _signing_identity(req: BuildRequest) -> Optional[List[str]]:
    """Certificate and key of a signed build: a module signed with one key is never returned for another."""
    if not req.signing_key or not req.signing_cert:
        return None
    key = str(req.signing_key) if _is_pkcs11(req.signing_key) else sha256_file(Path(str(req.signing_key)))
    return [sha256_file(Path(str(req.signing_cert))), key, signature_hash(req)]


def build_compiler(req: BuildRequest) -> Optional[str]:
    """The host compiler when a build would use one other than the kernel's (skip_compiler_check), else None.

    Without the skip a build only ever runs with the kernel's compiler, which vmlinux already
    identifies; with it, objects from another compiler are different bytes and must not share a key.
    """
    if not req.skip_compiler_check:
        return None
    host = host_compiler()
    return None if host == kernel_compiler(Path(req.vmlinux)) else host


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


def parent_of(goal_kind: str, goal_module: Optional[str], obj: str) -> str:
    """The livepatch object an object's functions live in: vmlinux or the module's name."""
    if any(obj.startswith(d) for d in REFUSED_DIRS):
        raise KbuildError(f"{obj}: changes under {', '.join(REFUSED_DIRS)} are not supported (library objects "
                          "are linked only where used, so the patched function may not be in the kernel, or be there twice)")
    if goal_kind == "module" and goal_module:
        return goal_module.replace("-", "_")
    if goal_kind == "vmlinux":
        return "vmlinux"
    raise KbuildError(f"{obj}: cannot tell whether it links into vmlinux or a module ({goal_kind})")


def find_module_ko(modules_dir: Optional[Path], module: str, scratch: Path) -> Path:
    """The release's own ``<module>.ko`` (its symbol table is the parent for lookups).

    Distros ship modules compressed (Debian 6.12: ``.ko.xz``; others ``.ko.zst``/``.ko.gz``);
    a compressed one is unpacked into ``scratch`` and that plain copy is returned.
    """
    from ansible_collections.kpatch.livepatch.plugins.module_utils._target.modinfo import (
        ModinfoError,
        decompress_module,
    )

    if modules_dir is None or not Path(modules_dir).is_dir():
        raise KbuildError(f"the patch changes module {module}, but no modules directory was given "
                          f"(/lib/modules/<release> of the target kernel)")
    names = {module, module.replace("_", "-")}
    for path in sorted(Path(modules_dir).rglob("*.ko*")):
        base, _sep, suffix = path.name.partition(".ko")
        if base not in names or suffix not in MODULE_SUFFIXES:
            continue
        if not suffix:
            return path
        try:
            plain = decompress_module(str(path), path.read_bytes())
        except ModinfoError as exc:
            raise KbuildError(str(exc)) from exc
        scratch.mkdir(parents=True, exist_ok=True)
        dest = scratch / f"{base}.ko"
        dest.write_bytes(plain)
        return dest
    raise KbuildError(f"module {module}.ko (plain, .xz, .gz or .zst) not found under {modules_dir}")


def engine_output_path(out_dir: Path, index: int, obj: str) -> Path:
    """Where ``run_engine`` writes the output of the ``index``-th object (sorted order)."""
    return out_dir / f"output-{index}-{Path(obj).stem}.o"


def run_engine(req: BuildRequest, pairs: Dict[str, str], orig_dir: Path, patched_dir: Path,
               out_dir: Path, sizes: Dict[str, int], log: StepLog) -> List[ObjectDiff]:
    """Diff each original/patched object pair; return what changed, write outputs to ``out_dir``."""
    # Imported here: the engine needs pyelftools, which the module reports missing on its own.
    from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.diff import create_diff_object
    from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.lookup import load_parent_symtab

    symtabs: Dict[str, object] = {}
    symvers = Path(req.headers) / "Module.symvers"
    diffs: List[ObjectDiff] = []
    for index, (obj, parent) in enumerate(sorted(pairs.items())):
        with log.step("diff-object", obj) as res:
            if parent not in symtabs:
                source = (req.vmlinux if parent == "vmlinux"
                          else find_module_ko(req.modules_dir, parent, out_dir.parent / "parents"))
                symtabs[parent] = load_parent_symtab(str(source), parent)
            out = engine_output_path(out_dir, index, obj)
            result = create_diff_object(str(orig_dir / obj), str(patched_dir / obj), parent, symtabs[parent],
                                        str(symvers) if symvers.is_file() else None, req.module_name, str(out),
                                        struct_sizes=sizes)
            res.detail = (f"{obj}: changed {' '.join(result.changed_functions) or '-'}; "
                          f"new {' '.join(result.new_functions) or '-'}")
        if result.has_changes:
            diffs.append(ObjectDiff(obj, parent, result.changed_functions, result.new_functions,
                                    result.klp_relocations, result.timings))
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
        result = _build(req, key, log, work, timings)
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


def _build(req: BuildRequest, key: str, log: StepLog, work: Path, timings: Dict[str, float]) -> BuildResult:
    from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.klp import create_klp_module
    from ansible_collections.kpatch.livepatch.plugins.module_utils._target.modinfo import read_modinfo

    t = time.monotonic()
    with log.step("check-compiler") as res:
        compiler = check_compiler(Path(req.vmlinux), skip_compiler_check=req.skip_compiler_check)
        res.detail = compiler.host if compiler.matches else f"kernel '{compiler.kernel}', host '{compiler.host}' (skipped)"
    if req.signing_key:
        check_signing(req, work, log)
    with log.step("struct-sizes") as res:
        sizes = special_struct_sizes(Path(req.vmlinux), req.release, Path(req.cache_dir) / "structsizes",
                                     config=Path(req.config))
        res.detail = " ".join(f"{k}={v}" for k, v in sorted(sizes.items()))
    _timed(timings, "checks", t)
    t = time.monotonic()
    trees = Path(req.cache_dir) / "trees"
    if not compiler.matches:
        # The shared tree is configured for the kernel's compiler (CONFIG_CC_VERSION_TEXT): kbuild
        # would reconfigure it in place for another one. That compiler gets a tree of its own.
        trees = Path(req.cache_dir) / "trees-by-compiler" / hashlib.sha256(compiler.host.encode()).hexdigest()[:16]
        log.note("prepare-tree", f"compiler '{compiler.host}' is not the kernel's: tree under {trees}")
    tree = prepare_tree(Path(req.source_dir), Path(req.config), req.release, trees, log, jobs=req.jobs)
    _timed(timings, "prepare_tree", t)
    t = time.monotonic()
    files = sorted({f for p in req.patches for f in changed_files(Path(p)).all})
    # The same flags for the header mapping's compiles as for the build below: kbuild then finds
    # the objects it compiled up to date instead of compiling them again.
    cflags = f"{FUNCTION_SECTIONS} -I{patch_include_dir(Path(req.cache_dir))}"
    objmap = objects_for_sources(tree, files, extra_cflags=cflags, jobs=req.jobs,
                                 full_build_fallback=req.full_build_fallback)
    if objmap.undecided:
        raise KbuildError("cannot live patch: " + "; ".join(f"{f}: {why}" for f, why in sorted(objmap.undecided.items())))
    unmapped = [f for f in files if f.endswith(".h") and f not in objmap.header_basis]
    if unmapped:
        # Never build from a partial list: a header without a complete answer stops the build.
        raise KbuildError(f"cannot live patch: no complete list of the objects that include {', '.join(unmapped)}")
    for header, basis in sorted(objmap.header_basis.items()):
        log.note("header-objects", f"{header}: {' '.join(objmap.objects[header]) or '-'} ({basis})")
    pairs = {obj: parent_of(objmap.goals[obj].kind, objmap.goals[obj].module, obj) for obj in objmap.all_objects}
    if not pairs:
        raise NoChangesError(f"the patches touch no kernel object: {', '.join(files)}")
    orig_dir, patched_dir, out_dir = work / "orig", work / "patched", work / "output"
    out_dir.mkdir(parents=True)
    build_objects(tree, sorted(pairs), cflags, orig_dir, jobs=req.jobs)
    with patched_tree(tree, [Path(p) for p in req.patches]):
        build_objects(tree, sorted(pairs), cflags, patched_dir, jobs=req.jobs)
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
        conv = create_klp_module(str(linked), str(klp_ko))
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
        sites = check_objtool_sites(klp_ko, config_text, tree.root)
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
                       cache_key=key)


def debian_defaults(release: str, root: Path = Path("/")) -> Dict[str, Path]:
    """Where a Debian build host keeps a release's config, vmlinux, headers and modules."""
    return {
        "config": root / "boot" / f"config-{release}",
        "vmlinux": root / "usr" / "lib" / "debug" / "boot" / f"vmlinux-{release}",
        "headers": root / "usr" / "src" / f"linux-headers-{release}",
        "modules_dir": root / "lib" / "modules" / release,
    }


def default_config(boot_config: Path, headers: Path) -> Path:
    """``/boot/config-<release>``, else the headers' ``.config`` (the config the kernel was built with:
    Debian's adds only CONFIG_BUILD_SALT and the module-signing settings of its build)."""
    headers_config = Path(headers) / ".config"
    return headers_config if not Path(boot_config).is_file() and headers_config.is_file() else Path(boot_config)


def request_from_params(params: Dict[str, object], running_release: str) -> BuildRequest:
    """BuildRequest from the kpatch_build module's parameters, with Debian-style defaults."""
    release = str(params.get("release") or running_release)
    defaults = debian_defaults(release)

    def path_or(key: str, default: Optional[Path]) -> Optional[Path]:
        value = params.get(key)
        return Path(str(value)) if value else default

    headers = path_or("headers", defaults["headers"])
    cache_dir = path_or("cache_dir", Path("/var/cache/kpatch-build"))
    source = path_or("source_dir", None)
    acquire = None
    if source is None:  # the distro's own source of the exact package version, fetched into the cache
        acquire = source_request(release, cache_dir, str(params.get("package_version") or "") or None)  # type: ignore[arg-type]
        source = acquire.final_dir
    patches: Sequence[object] = params.get("patches") or []  # type: ignore[assignment]
    return BuildRequest(
        patches=[Path(str(p)) for p in patches], release=release, source_dir=source, acquire=acquire,
        config=path_or("config", default_config(defaults["config"], headers)),  # type: ignore[arg-type]
        vmlinux=path_or("vmlinux", defaults["vmlinux"]), headers=headers, cache_dir=cache_dir,  # type: ignore[arg-type]
        output_dir=path_or("output_dir", Path("/var/lib/kpatch-build/modules")), name=params.get("name") or None,  # type: ignore[arg-type]
        replace=bool(params.get("replace", True)), modules_dir=path_or("modules_dir", defaults["modules_dir"]),
        jobs=int(params.get("jobs") or 2), skip_compiler_check=bool(params.get("skip_compiler_check")),
        signing_key=path_or("signing_key", None), signing_cert=path_or("signing_cert", None),
        full_build_fallback=bool(params.get("full_build_fallback", True)),
    )
