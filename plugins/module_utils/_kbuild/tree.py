# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""The kernel-build fast path: prepare a configured tree once per release, build single objects.

``prepare_tree`` copies a pristine distro source tree into a per-release cache
(hard links: kbuild and our patching never write a tracked file in place — new
files are written beside and renamed over, and ``patching.py`` unshares every
file before a patch touches it), installs the distro config, pins the release
string and runs ``make olddefconfig modules_prepare``.  A stamp (config hash +
source identity + release) lets a later run reuse the tree in well under a
second.  ``build_objects`` then compiles only the objects a patch touches, with
the kernel's own flags plus ``extra_cflags`` (kbuild single-object targets and
``KCFLAGS``), and copies the results out.

The release string: Debian builds ``6.1.176`` sources as ``6.1.0-50-cloud-amd64``
by overriding the release on the make command line, which no ``localversion``
suffix can reproduce.  When the release extends the Makefile version (Fedora,
RHEL style) a ``localversion`` file carries the suffix; otherwise
``KERNELVERSION=<release>`` is passed to make.  Either way ``make -s
kernelrelease`` is checked to print the release, and ``LINUX_VERSION_CODE``
keeps the Makefile's real version as in the distro build.

Patch helpers live in ``patching.py`` and the source→object mapping in
``objects.py``; both are re-exported here for callers that want one import.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.compiler import host_compiler
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kconfig import KernelConfig, parse_config
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.objcache import clear as clear_object_cache
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prebuilt import (
    PrebuiltTools,
    find_prebuilt_tools,
    headers_source_dir,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prepared import (
    STAMP_FORMAT,
    STAMP_NAME,
    PreparedTree,
    tree_lock,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import (
    KbuildError,
    StepLog,
    as_steplog,
    run_logged,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.modinfo import sha256_of

# Kernel release strings are at most 64 bytes (``uts_len`` in the top Makefile).
MAX_RELEASE_LEN = 64
_RELEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]*$")
# Config symbols that legitimately differ between the distro's config and ours
# (they describe the compiler/tool versions of the build host, not the kernel).
_TOOL_SYMBOLS = re.compile(r"^CONFIG_(CC_VERSION_TEXT|GCC_VERSION|CLANG_VERSION|AS_VERSION|LD_VERSION|"
                           r"LLD_VERSION|PAHOLE_VERSION|RUSTC_VERSION|BINDGEN_VERSION|BUILD_SALT)=")


@dataclass(frozen=True)
class BuiltObject:
    """One object compiled by ``build_objects``: its tree-relative name and the copied file."""

    relpath: str
    path: Path
    size: int


# --------------------------------------------------------------------------- inputs


def validate_release(release: str) -> str:
    """Refuse release strings that kbuild would reject or that could escape a path."""
    if not release or not _RELEASE_RE.match(release) or len(release) > MAX_RELEASE_LEN:
        raise KbuildError(f"invalid kernel release {release!r}: expected e.g. '6.1.0-50-cloud-amd64' "
                          f"(letters, digits, '.', '_', '+', '~', '-'; at most {MAX_RELEASE_LEN} characters)")
    return release


def makefile_version(source_tree: Path) -> str:
    """``VERSION.PATCHLEVEL.SUBLEVEL EXTRAVERSION`` of a kernel tree, read from its top Makefile."""
    makefile = source_tree / "Makefile"
    if not makefile.is_file():
        raise KbuildError(f"{source_tree} is not a kernel source tree: {makefile} does not exist")
    fields: Dict[str, str] = {}
    for line in makefile.read_text(errors="replace").splitlines()[:12]:
        m = re.match(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=\s*(.*?)\s*$", line)
        if m:
            fields[m.group(1)] = m.group(2)
    if not fields.get("VERSION"):
        raise KbuildError(f"{makefile} has no VERSION line near the top: not a kernel top-level Makefile")
    version = fields["VERSION"]
    if fields.get("PATCHLEVEL"):
        version += "." + fields["PATCHLEVEL"]
        if fields.get("SUBLEVEL"):
            version += "." + fields["SUBLEVEL"]
    return version + fields.get("EXTRAVERSION", "")


def headers_version(headers: Optional[Path]) -> Optional[str]:
    """The kernel version of a headers directory (its own or its included top Makefile), or None."""
    if headers is None:
        return None
    try:
        return makefile_version(headers_source_dir(Path(headers)))
    except KbuildError:
        return None


def release_settings(kernelversion: str, release: str, conf_lv: str) -> Tuple[Tuple[str, ...], Optional[str]]:
    """How to make kbuild's release string equal ``release``: (make variables, localversion file text).

    ``conf_lv`` is the config's ``CONFIG_LOCALVERSION`` (``KernelConfig.localversion``).
    ``LOCALVERSION=`` (set but empty) is always passed: unset, kbuild would append
    a ``+`` for a tree it thinks is modified.
    """
    if conf_lv and not release.endswith(conf_lv):
        raise KbuildError(f"the config sets CONFIG_LOCALVERSION={conf_lv!r} but release {release!r} does not end "
                          "with it: this config does not belong to this release")
    base = release[: len(release) - len(conf_lv)] if conf_lv else release
    if base.startswith(kernelversion) and base != kernelversion:
        return ("LOCALVERSION=",), base[len(kernelversion):]
    if base == kernelversion:
        return ("LOCALVERSION=",), None
    return (f"KERNELVERSION={base}", "LOCALVERSION="), None


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file (the target side's reader: one implementation for both)."""
    return sha256_of(str(path))


def source_identity(source_tree: Path) -> str:
    """A cheap fingerprint of a pristine source tree: its path, version and top-level shape.

    Hashing every file would cost as much as the build; the cache key only needs
    to change when a different source is unpacked, which changes at least the
    path, the version or the stat of the top Makefile.
    """
    makefile = source_tree / "Makefile"
    st = makefile.stat()
    digest = hashlib.sha256()
    digest.update(str(source_tree.resolve()).encode())
    digest.update(makefile_version(source_tree).encode())
    digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    digest.update("\0".join(sorted(os.listdir(source_tree))).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- cache


def read_stamp(root: Path) -> Optional[dict]:
    try:
        return json.loads((root / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


def write_stamp(root: Path, stamp: dict) -> None:
    """Written last and atomically: a tree without a stamp is never trusted."""
    tmp = root / (STAMP_NAME + ".tmp")
    tmp.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, root / STAMP_NAME)


def stamp_matches(root: Path, wanted: dict) -> bool:
    """The cached tree was prepared from the same inputs and its .config was not touched since."""
    found = read_stamp(root)
    if not found or any(found.get(k) != v for k, v in wanted.items()):
        return False
    config = root / ".config"
    return config.is_file() and sha256_file(config) == found.get("final_config_sha256")


def same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b.parent if not b.exists() else b).st_dev


def copy_source(source_tree: Path, root: Path, log: StepLog) -> str:
    """Hard-link copy when possible (1 s for 80k files), else a reflink-or-real copy."""
    root.parent.mkdir(parents=True, exist_ok=True)
    method = "hardlink" if same_filesystem(source_tree, root.parent) else "copy"
    with log.step("copy-source", f"{method} {source_tree} -> {root}") as res:
        argv = ["cp", "-al" if method == "hardlink" else "-a", str(source_tree), str(root)]
        if method == "copy":
            argv.insert(1, "--reflink=auto")
        run_logged(log, argv, what="copying the kernel source")
        res.detail = f"{method} {source_tree} -> {root}"
    return method


# --------------------------------------------------------------------------- prepare


def config_differences(distro_config: str, final_config: str) -> List[str]:
    """Symbols whose setting olddefconfig changed, tool-version symbols excluded."""
    def settings(text: str) -> Dict[str, str]:
        return {k: v for k, v in parse_config(text).items() if not _TOOL_SYMBOLS.match(f"{k}=")}
    old, new = settings(distro_config), settings(final_config)
    return sorted(k for k in set(old) | set(new) if old.get(k, "n") != new.get(k, "n"))


def install_config(root: Path, config: Path, localversion: Optional[str]) -> None:
    """A real copy of the config (kbuild rewrites .config) and the localversion suffix, if any."""
    shutil.copyfile(config, root / ".config")
    lv = root / "localversion"
    if localversion is not None:
        lv.write_text(localversion + "\n")
    elif lv.exists():
        lv.unlink()


def check_release(tree: PreparedTree) -> None:
    """``make kernelrelease`` and UTS_RELEASE must both equal the distro release."""
    proc = run_logged(tree.log, ["make", "-s", "-C", str(tree.root), *tree.make_vars, "kernelrelease"],
                      what="make kernelrelease")
    printed = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if printed != tree.release:
        raise KbuildError(f"prepared tree {tree.root} reports kernelrelease {printed!r}, expected {tree.release!r}")
    uts = tree.root / "include" / "generated" / "utsrelease.h"
    if f'"{tree.release}"' not in uts.read_text():
        raise KbuildError(f"{uts} does not define UTS_RELEASE as {tree.release!r}: {uts.read_text().strip()}")


def prepare_tree(source_tree: Path, config: Path, release: str, workdir: Path,
                 log: Union[StepLog, Path, str], jobs: int = 2, compiler: Optional[str] = None,
                 headers: Optional[Path] = None) -> PreparedTree:
    """Return a configured build tree for ``release`` under ``workdir``, reusing a valid cached one.

    ``source_tree`` is never written.  The cached copy is ``workdir/<release>/tree``.  ``compiler``
    (the ``.comment`` identity of the compiler make runs; by default that of ``gcc`` on PATH) is
    part of the stamp: a tree prepared by another compiler is prepared again, not reused.
    ``headers``: the release's headers, whose objtool the tree then uses (``prebuilt.py``).
    """
    log = as_steplog(log)
    start = time.monotonic()
    source_tree, config, workdir = Path(source_tree), Path(config), Path(workdir)
    validate_release(release)
    kernelversion = makefile_version(source_tree)
    if not config.is_file():
        raise KbuildError(f"kernel config {config} does not exist")
    kconfig = KernelConfig.read(config)
    config_text = kconfig.text
    if kconfig.values.get("CONFIG_MODULES") != "y":
        raise KbuildError(f"{config} is not a kernel config with CONFIG_MODULES=y (livepatch modules need it)")
    make_vars, localversion = release_settings(kernelversion, release, kconfig.localversion)
    state_dir = workdir / release
    root = state_dir / "tree"
    prebuilt, prebuilt_why = find_prebuilt_tools(headers, kernelversion, headers_version(headers))
    wanted = {
        "format": STAMP_FORMAT,
        "release": release,
        "config_sha256": kconfig.sha256,
        "source_identity": source_identity(source_tree),
        "make_vars": list(make_vars),
        "compiler": compiler or host_compiler(),
        "prebuilt_objtool": prebuilt.digest if prebuilt else None,
    }
    with tree_lock(state_dir):
        tree = PreparedTree(root=root, source=source_tree, release=release, make_vars=make_vars,
                            config_sha256=wanted["config_sha256"], source_identity=wanted["source_identity"],
                            reused=False, seconds=0.0, log=log, prebuilt_tools=prebuilt is not None)
        from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.patching import (
            recover_interrupted_patch,
        )
        recover_interrupted_patch(tree)
        if stamp_matches(root, wanted):
            log.note("prepare-tree", f"reusing {root} (stamp matches: release, config, source, compiler)")
            return _finished(tree, start, reused=True)
        log.note("prebuilt-tools", prebuilt_why if prebuilt else f"building the tree's tools: {prebuilt_why}")
        _prepare_fresh(tree, source_tree, config, config_text, localversion, wanted, jobs, prebuilt)
        return _finished(tree, start, reused=False)


def _finished(tree: PreparedTree, start: float, reused: bool) -> PreparedTree:
    seconds = time.monotonic() - start
    tree.log.note("prepare-tree-done", f"{'warm' if reused else 'cold'} in {seconds:.2f}s: {tree.root}")
    return replace(tree, reused=reused, seconds=seconds)


def _prepare_fresh(tree: PreparedTree, source_tree: Path, config: Path, config_text: str,
                   localversion: Optional[str], wanted: dict, jobs: int,
                   prebuilt: Optional[PrebuiltTools] = None) -> None:
    log, root = tree.log, tree.root
    # Objects cached for the previous tree were compiled from what is about to be replaced.
    clear_object_cache(tree.state_dir)
    if root.exists():
        with log.step("remove-stale-tree", str(root)):
            shutil.rmtree(root)
    copy_source(source_tree, root, log)
    with log.step("install-config", f"{config} ({' '.join(tree.make_vars)}"
                  f"{', localversion ' + repr(localversion) if localversion else ''})"):
        install_config(root, config, localversion)
    if prebuilt:
        with log.step("install-prebuilt-tools", " ".join(sorted(prebuilt.objtool))):
            prebuilt.install(root)
    with log.step("olddefconfig") as res:
        run_logged(log, tree.make_argv(["olddefconfig"], jobs=jobs), what="make olddefconfig")
        changed = config_differences(config_text, (root / ".config").read_text(errors="replace"))
        res.detail = (f"{len(changed)} symbols changed: {' '.join(changed[:8])}{' ...' if len(changed) > 8 else ''}"
                      if changed else "config unchanged")
    with log.step("modules_prepare"):
        run_logged(log, tree.make_argv(["modules_prepare"], jobs=jobs), what="make modules_prepare")
    with log.step("check-release", tree.release):
        check_release(tree)
    write_stamp(root, {**wanted, "final_config_sha256": sha256_file(root / ".config"),
                       "source": str(source_tree), "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


# --------------------------------------------------------------------------- build


def validate_object_name(tree: PreparedTree, relpath: str) -> str:
    """A tree-relative ``.o`` whose C or assembly source exists in the tree."""
    rel = os.path.normpath(relpath)
    if os.path.isabs(rel) or rel.startswith("..") or not rel.endswith(".o"):
        raise KbuildError(f"object {relpath!r} must be a tree-relative path ending in .o, e.g. 'fs/proc/meminfo.o'")
    stem = rel[:-2]
    if not any((tree.root / (stem + ext)).is_file() for ext in (".c", ".S")):
        raise KbuildError(f"cannot build {rel}: neither {stem}.c nor {stem}.S exists in {tree.root}")
    return rel


def build_objects(tree: PreparedTree, objects: Sequence[str], extra_cflags: str, out_dir: Path,
                  jobs: int = 2) -> List[BuiltObject]:
    """Compile ``objects`` with the kernel's flags plus ``extra_cflags``; copy them into ``out_dir``.

    ``out_dir/<relpath>`` receives each object.  kbuild rebuilds an object whenever
    its source, a dependency or its command line changed, so calling this before
    and after applying a patch yields the original and the patched object.
    """
    if not objects:
        raise KbuildError("build_objects: no objects given")
    rels = [validate_object_name(tree, o) for o in objects]
    out_dir = Path(out_dir)
    with tree_lock(tree.state_dir), tree.log.step("build-objects", " ".join(rels)) as res:
        run_logged(tree.log, tree.make_argv(rels, jobs=jobs, extra=[f"KCFLAGS={extra_cflags}"]),
                   what=f"building {' '.join(rels)}")
        built = [_copy_out(tree, rel, out_dir) for rel in rels]
        res.detail = f"{' '.join(rels)} KCFLAGS={extra_cflags!r} -> {out_dir}"
    return built


def _copy_out(tree: PreparedTree, rel: str, out_dir: Path) -> BuiltObject:
    src = tree.root / rel
    if not src.is_file():
        raise KbuildError(f"make succeeded but {src} was not produced")
    dest = out_dir / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return BuiltObject(relpath=rel, path=dest, size=dest.stat().st_size)


# Convenience re-exports: one import for the whole fast path.
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.objects import (  # noqa: E402
    ObjectMap,
    objects_for_sources,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.patching import (  # noqa: E402
    PatchFiles,
    apply_patch,
    changed_files,
    patched_tree,
    reverse_patch,
)

__all__ = [
    "BuiltObject", "KbuildError", "ObjectMap", "PatchFiles", "PreparedTree", "StepLog",
    "apply_patch", "build_objects", "changed_files", "objects_for_sources", "patched_tree",
    "prepare_tree", "reverse_patch",
]
