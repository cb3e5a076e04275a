# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Apply source patches to a prepared tree and guarantee the tree is pristine again afterwards.

``patched_tree`` is the one way callers should patch: it journals every file a
patch names (a copy on disk plus a manifest, outside the tree) before touching
anything, checks each patch with ``patch --dry-run`` first, and on every exit
path — success, exception, Ctrl-C, SIGTERM/SIGHUP — restores the journaled
bytes and checks them against the pristine source.  A process killed with
SIGKILL leaves the journal behind; the next ``prepare_tree`` or
``patched_tree`` on the same tree replays it before doing anything else.

Restored files get a fresh mtime on purpose: kbuild then rebuilds the objects
compiled from the patched text instead of trusting them.

A patch applies exactly by default (fuzz 0: every context line must match; GNU patch
may still place a hunk at an offset).  ``fuzz`` 1-2 lets hunks whose outer context
lines drifted apply, as kpatch-build's plain ``patch`` does; every hunk placed at an
offset or with fuzz is reported (``HunkAdjustment``), so the user can check it.

Files are "unshared" (copied and renamed over themselves) before a patch edits
them, so a hard-linked cache can never write through to the pristine source.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prepared import PreparedTree, tree_lock
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError, run_logged

JOURNAL_DIR = "patch-journal"
MAX_FUZZ = 2  # GNU patch's own default and kpatch-build's: more would ignore most of a hunk's context
SOURCE_SUFFIXES = (".c",)
HEADER_SUFFIXES = (".h",)
ASSEMBLY_SUFFIXES = (".S", ".s")


class PatchInterrupted(KbuildError):
    """SIGTERM/SIGHUP arrived while the tree was patched (the tree has been restored)."""


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class PatchFiles:
    """The files a unified diff touches (tree-relative, ``-p1`` stripped), sorted by kind."""

    patch: Path
    sources: Tuple[str, ...]
    headers: Tuple[str, ...]
    assembly: Tuple[str, ...]
    other: Tuple[str, ...]
    created: Tuple[str, ...]
    deleted: Tuple[str, ...]

    @property
    def all(self) -> Tuple[str, ...]:
        return tuple(sorted(set(self.sources + self.headers + self.assembly + self.other)))


def _diff_path(raw: str, patch: Path, lineno: int) -> Optional[str]:
    """Tree-relative path of a ``---``/``+++`` operand (``None`` for /dev/null)."""
    name = raw.split("\t", 1)[0].strip()
    if name.startswith('"') and name.endswith('"'):
        name = name[1:-1]
    if name == "/dev/null":
        return None
    parts = name.split("/", 1)
    if len(parts) != 2 or not parts[1]:
        raise KbuildError(f"{patch}:{lineno}: path {name!r} has no leading directory to strip (-p1 expected, "
                          "as in 'a/fs/proc/meminfo.c')")
    rel = os.path.normpath(parts[1])
    if os.path.isabs(rel) or rel == ".." or rel.startswith("../"):
        raise KbuildError(f"{patch}:{lineno}: path {name!r} points outside the kernel tree")
    return rel


def changed_files(patch: Path) -> PatchFiles:
    """Parse a unified diff (plain or git) and classify the files it changes."""
    patch = Path(patch)
    if not patch.is_file():
        raise KbuildError(f"patch file {patch} does not exist")
    lines = patch.read_text(errors="replace").splitlines()
    touched: Dict[str, str] = {}  # path -> "modified" | "created" | "deleted"
    for i, line in enumerate(lines):
        if not (line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")):
            continue
        old = _diff_path(line[4:], patch, i + 1)
        new = _diff_path(lines[i + 1][4:], patch, i + 2)
        if old is None and new is None:
            raise KbuildError(f"{patch}:{i + 1}: both sides of the diff are /dev/null")
        if old is None:
            touched[new] = "created"
        elif new is None:
            touched[old] = "deleted"
        else:
            touched.setdefault(old, "modified")
            touched.setdefault(new, "modified")
    if not touched:
        raise KbuildError(f"patch {patch} changes no files: it is not a unified diff ('--- a/...', '+++ b/...')")
    paths = sorted(touched)
    return PatchFiles(
        patch=patch,
        sources=tuple(p for p in paths if p.endswith(SOURCE_SUFFIXES)),
        headers=tuple(p for p in paths if p.endswith(HEADER_SUFFIXES)),
        assembly=tuple(p for p in paths if p.endswith(ASSEMBLY_SUFFIXES)),
        other=tuple(p for p in paths if not p.endswith(SOURCE_SUFFIXES + HEADER_SUFFIXES + ASSEMBLY_SUFFIXES)),
        created=tuple(p for p in paths if touched[p] == "created"),
        deleted=tuple(p for p in paths if touched[p] == "deleted"),
    )


@dataclass(frozen=True)
class HunkAdjustment:
    """A hunk that did not apply at its stated line with all its context: where and how it went in."""

    patch: str
    file: str
    hunk: int
    line: int  # where the hunk was applied
    offset: int  # lines from where the patch said
    fuzz: int  # context lines ignored

    def describe(self) -> str:
        how = [f"offset {self.offset:+d}"] if self.offset else []
        how += [f"fuzz {self.fuzz}"] if self.fuzz else []
        return f"{Path(self.patch).name}: {self.file} hunk #{self.hunk} at line {self.line} ({', '.join(how)})"


@dataclass(frozen=True)
class AppliedPatch:
    """One patch as applied: the files it touches and the hunks that needed an offset or fuzz."""

    files: PatchFiles
    adjustments: Tuple[HunkAdjustment, ...] = ()


_FILE_RE = re.compile(r"^(?:checking|patching) file (.+?)\s*$")
_PROBLEM_RE = re.compile(r"^(Hunk #\d+ FAILED at \d+.*|Reversed \(or previously applied\) patch detected.*|"
                         r"can't find file to patch.*|No file to patch.*|.*malformed patch.*|"
                         r"Only garbage was found in the patch input\.|File .* is not a regular file.*)$")


_SUCCEEDED_RE = re.compile(r"^Hunk #(\d+) succeeded at (\d+)(?: with fuzz (\d+))?(?: \(offset (-?\d+) lines?\))?\.")


def _lines_by_file(output: str) -> Iterator[Tuple[str, str]]:
    """``(file, line)`` for each line of GNU patch output, the file being the one it was checking."""
    current = "?"
    for line in output.splitlines():
        m = _FILE_RE.match(line)
        if m:
            current = m.group(1).strip("'")
            continue
        yield current, line.strip()


def hunk_adjustments(output: str, patch: Path) -> List[HunkAdjustment]:
    """The hunks GNU patch reports as applied at an offset or with fuzz (exact hunks print nothing)."""
    found: List[HunkAdjustment] = []
    for current, line in _lines_by_file(output):
        m = _SUCCEEDED_RE.match(line)
        if m:
            found.append(HunkAdjustment(patch=str(patch), file=current, hunk=int(m.group(1)), line=int(m.group(2)),
                                        offset=int(m.group(4) or 0), fuzz=int(m.group(3) or 0)))
    return found


def describe_patch_failure(output: str) -> str:
    """Turn GNU patch output into 'file: hunk #N FAILED at L' lines."""
    problems = [f"{current}: {m.group(1)}" for current, m in
                ((current, _PROBLEM_RE.match(line)) for current, line in _lines_by_file(output)) if m]
    return "; ".join(problems) if problems else output.strip()[-600:]


# --------------------------------------------------------------------------- patch(1)


def _patch_argv(patch: Path, root: Path, fuzz: int, reverse: bool, dry_run: bool) -> List[str]:
    argv = ["patch", "-p1", "--batch", "--forward" if not reverse else "--reverse", f"--fuzz={int(fuzz)}",
            "--no-backup-if-mismatch", "--reject-file=-", "-d", str(root), "-i", str(patch)]
    return argv + (["--dry-run"] if dry_run else [])


def check_fuzz(fuzz: int) -> int:
    """``fuzz`` as an int in 0..MAX_FUZZ, else KbuildError."""
    if isinstance(fuzz, bool) or not isinstance(fuzz, int) or not 0 <= fuzz <= MAX_FUZZ:
        raise KbuildError(f"fuzz must be 0, 1 or {MAX_FUZZ} (context lines a hunk may ignore), not {fuzz!r}")
    return fuzz


def _fuzz_hint(tree: PreparedTree, patch: Path, fuzz: int, reverse: bool) -> str:
    """' (it applies with fuzz N: ...)' when more fuzz would apply the patch; nothing is written."""
    for more in range(fuzz + 1, MAX_FUZZ + 1):
        if run_logged(tree.log, _patch_argv(patch, tree.root, more, reverse, True), check=False).returncode == 0:
            return f" (it applies with fuzz {more}: set fuzz to {more} after checking the hunks by hand)"
    return ""


def _run_patch(tree: PreparedTree, patch: Path, fuzz: int, reverse: bool) -> List[HunkAdjustment]:
    """Dry run, then the real run; a dry-run failure leaves the tree untouched."""
    verb = "reverse" if reverse else "apply"
    fuzz = check_fuzz(fuzz)
    dry = run_logged(tree.log, _patch_argv(patch, tree.root, fuzz, reverse, True), check=False)
    if dry.returncode != 0:
        raise KbuildError(f"patch {patch} does not {verb} cleanly to {tree.root} (fuzz {fuzz}): "
                          f"{describe_patch_failure(dry.stdout)}{_fuzz_hint(tree, patch, fuzz, reverse)}")
    real = run_logged(tree.log, _patch_argv(patch, tree.root, fuzz, reverse, False), check=False)
    if real.returncode != 0:
        raise KbuildError(f"patch {patch} failed to {verb} after a clean dry run: {describe_patch_failure(real.stdout)}")
    return hunk_adjustments(real.stdout, patch)


def unshare(path: Path) -> None:
    """Give a (possibly hard-linked) file its own inode, same bytes and mtime."""
    if path.is_file() and path.stat().st_nlink > 1:
        tmp = path.with_name(path.name + ".kpatch-unshare")
        shutil.copy2(path, tmp)
        os.replace(tmp, path)


def apply_patch(tree: PreparedTree, patch: Path, fuzz: int = 0) -> AppliedPatch:
    """Apply one patch (dry run first).  Use inside ``patched_tree``, which guarantees the restore."""
    files = changed_files(patch)
    with tree.log.step("apply-patch", f"{patch} ({len(files.all)} files, fuzz {fuzz})") as res:
        for rel in files.all:
            unshare(tree.root / rel)
        adjustments = _run_patch(tree, Path(patch), fuzz, reverse=False)
        res.detail = "; ".join(a.describe() for a in adjustments) or "every hunk exact"
    return AppliedPatch(files, tuple(adjustments))


def reverse_patch(tree: PreparedTree, patch: Path, fuzz: int = 0) -> PatchFiles:
    """Reverse one applied patch with ``patch -R`` (dry run first)."""
    files = changed_files(patch)
    with tree.log.step("reverse-patch", str(patch)):
        for rel in files.all:
            unshare(tree.root / rel)
        _run_patch(tree, Path(patch), fuzz, reverse=True)
    return files


# --------------------------------------------------------------------------- journal


def journal_dir(tree: PreparedTree) -> Path:
    return tree.state_dir / JOURNAL_DIR


def _check_inside(tree: PreparedTree, rel: str) -> Path:
    path = (tree.root / rel)
    if os.path.commonpath([os.path.realpath(path.parent), os.path.realpath(tree.root)]) != os.path.realpath(tree.root):
        raise KbuildError(f"patch path {rel} resolves outside the tree {tree.root}")
    return path


def write_journal(tree: PreparedTree, patches: Sequence[Path], files: Sequence[str]) -> None:
    """Copy every file the patches name, then (atomically, last) the manifest."""
    jdir = journal_dir(tree)
    shutil.rmtree(jdir, ignore_errors=True)
    (jdir / "files").mkdir(parents=True)
    existed: Dict[str, bool] = {}
    new_dirs: List[str] = []
    for rel in files:
        path = _check_inside(tree, rel)
        existed[rel] = path.is_file()
        if existed[rel]:
            _check_pristine(tree, rel, path.read_bytes(), when="before patching")
            backup = jdir / "files" / rel
            backup.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, backup)
        parent = Path(rel).parent
        while str(parent) not in (".", "") and not (tree.root / parent).exists():
            new_dirs.append(str(parent))
            parent = parent.parent
    manifest = {"tree": str(tree.root), "patches": [str(p) for p in patches], "files": existed,
                "new_dirs": sorted(set(new_dirs), key=len, reverse=True)}
    tmp = jdir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, jdir / "manifest.json")


def _check_pristine(tree: PreparedTree, rel: str, data: Optional[bytes], when: str) -> None:
    """Compare a tree file (``None``: absent) with the pristine source copy."""
    pristine = tree.source / rel
    expected = pristine.read_bytes() if pristine.is_file() else None
    if data != expected:
        state = "is missing" if data is None else ("should not exist" if expected is None else "differs")
        raise KbuildError(f"{tree.root / rel} {state} compared with the pristine source {pristine} {when}; "
                          f"the cached tree is dirty: remove {tree.state_dir} to rebuild it")


def restore_journal(tree: PreparedTree) -> List[str]:
    """Put back every journaled file (fresh mtime), delete created ones, verify, drop the journal."""
    jdir = journal_dir(tree)
    manifest_path = jdir / "manifest.json"
    if not manifest_path.is_file():
        # Interrupted while writing the journal: nothing in the tree was touched yet.
        shutil.rmtree(jdir, ignore_errors=True)
        return []
    manifest = json.loads(manifest_path.read_text())
    restored = []
    for rel, existed in manifest["files"].items():
        path = _check_inside(tree, rel)
        if existed:
            tmp = path.with_name(path.name + ".kpatch-restore")
            shutil.copyfile(jdir / "files" / rel, tmp)
            os.replace(tmp, path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        restored.append(rel)
    for rel in manifest.get("new_dirs", []):
        try:
            (tree.root / rel).rmdir()
        except OSError:
            pass
    for rel, existed in manifest["files"].items():
        path = tree.root / rel
        _check_pristine(tree, rel, path.read_bytes() if path.is_file() else None, when="after restoring")
    shutil.rmtree(jdir)
    return restored


def recover_interrupted_patch(tree: PreparedTree) -> None:
    """Replay a journal a killed process left behind (logged); no-op when there is none."""
    if journal_dir(tree).exists():
        with tree.log.step("recover-interrupted", f"journal in {journal_dir(tree)}") as res:
            restored = restore_journal(tree)
            res.detail = f"restored {len(restored)} files: {' '.join(restored[:6])}"


# --------------------------------------------------------------------------- context manager


@contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into an exception so ``finally`` blocks run (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise PatchInterrupted(f"interrupted by signal {signal.Signals(signum).name} while the tree was patched")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGTERM/SIGHUP/SIGINT back while restoring; a pending one is delivered afterwards."""
    sigs = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def patched_tree(tree: PreparedTree, patches: Sequence[Path], fuzz: int = 0) -> Iterator[List[AppliedPatch]]:
    """Apply ``patches`` in order for the duration of the block; the tree is pristine afterwards."""
    check_fuzz(fuzz)
    patches = [Path(p) for p in patches]
    if not patches:
        raise KbuildError("patched_tree: no patches given")
    parsed = [changed_files(p) for p in patches]
    files = sorted({rel for pf in parsed for rel in pf.all})
    with tree_lock(tree.state_dir):
        recover_interrupted_patch(tree)
        with _signals_raise():
            with tree.log.step("journal", f"{len(files)} files"):
                write_journal(tree, patches, files)
            try:
                yield [apply_patch(tree, patch, fuzz) for patch in patches]
            finally:
                with _signals_blocked(), tree.log.step("restore-pristine", f"{len(files)} files"):
                    restore_journal(tree)
