# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Load and unload livepatch modules safely: insmod/rmmod, transition waits, reversal, locking.

A load is insmod plus a wait for the patch's transition.  When tasks hold the transition up,
they are signalled once; when it still does not finish before the timeout, the transition is
reversed and the module removed, so the host ends as it started, and the stalled tasks are
reported.  ``force`` instead forces the transition, which the kernel documents as dangerous
(the module can then never be removed).  One host-wide lock serialises concurrent runs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from .leftovers import aside_path, temp_path
from .modinfo import ModInfo, ModinfoError, is_module_name, normalize_module_name, read_modinfo, sha256_of
from .stalled import StalledTask, find_stalled_tasks, nudge_user_tasks
from .sysfs import (LIVEPATCH_ROOT, SysfsError, disable_patch, force_transition, list_patches,
                    read_module, read_patch, signal_via_sysfs, transition_in_progress)

DEFAULT_INSTALL_DIR = "/var/lib/kpatch"
# Which file each loaded patch came from (sha256), on tmpfs so that it dies with the boot.
# The kernel keeps no hash of a module, and sample-style modules have no srcversion, so this
# is how a different build under the same name is recognised.
RECORD_DIR = "/run/kpatch-livepatch/loaded"
# Patches whose transition was forced this boot: the kernel never drops a forced patch's module
# reference (klp_free_patch_finish skips module_put), so their modules stay until reboot.
FORCED_DIR = "/run/kpatch-livepatch/forced"
LOCK_PATHS = ("/run/lock/kpatch-livepatch.lock", "/run/kpatch-livepatch.lock")
POLL_SECONDS = 0.2


class LoaderError(RuntimeError):
    """A load, unload or file operation failed; ``stalled`` lists blocking tasks if any."""

    def __init__(self, msg: str, stalled: Optional[List[StalledTask]] = None,
                 reverted: bool = False) -> None:
        super().__init__(msg)
        self.stalled = stalled or []
        self.reverted = reverted


@dataclass
class TransitionOutcome:
    complete: bool
    waited: float
    signalled: List[str] = field(default_factory=list)
    stalled: List[StalledTask] = field(default_factory=list)


@dataclass
class LoadResult:
    name: str
    replaced: List[str] = field(default_factory=list)
    forced: bool = False
    transition: Optional[TransitionOutcome] = None


# ---------------------------------------------------------------- lock


class HostLock:
    """Exclusive flock on one file per host; waits up to ``timeout`` seconds for it."""

    def __init__(self, timeout: float, paths: tuple = LOCK_PATHS) -> None:
        self.timeout = timeout
        self.paths = paths
        self._handle = None
        self.path: Optional[str] = None

    def _open(self):
        for path in self.paths:
            if os.path.isdir(os.path.dirname(path)):
                self.path = path
                return open(path, "a+")
        raise LoaderError(f"no directory for the lock file among {', '.join(self.paths)}")

    def __enter__(self) -> "HostLock":
        self._handle = self._open()
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    self._handle.close()
                    raise LoaderError(f"another kpatch run holds {self.path}; gave up after "
                                      f"{self.timeout:.0f}s") from exc
                time.sleep(POLL_SECONDS)

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


# ---------------------------------------------------------------- load records


def record_loaded(name: str, sha256: str, record_dir: str = RECORD_DIR) -> None:
    if not os.path.isdir(os.path.dirname(os.path.dirname(record_dir))):
        return  # no /run on this host: nothing to remember with
    os.makedirs(record_dir, mode=0o755, exist_ok=True)
    tmp = os.path.join(record_dir, f".{name}.tmp")
    with open(tmp, "w", encoding="ascii") as handle:
        handle.write(sha256 + "\n")
    os.replace(tmp, os.path.join(record_dir, name))


def forget_loaded(name: str, record_dir: str = RECORD_DIR) -> None:
    try:
        os.unlink(os.path.join(record_dir, name))
    except FileNotFoundError:
        pass


def loaded_records(record_dir: str = RECORD_DIR) -> dict:
    """module name → sha256 of the file it was loaded from (by this tool, this boot)."""
    records = {}
    if os.path.isdir(record_dir):
        for name in os.listdir(record_dir):
            if not name.startswith("."):
                with open(os.path.join(record_dir, name), "r", encoding="ascii") as handle:
                    records[name] = handle.read().strip()
    return records


# ---------------------------------------------------------------- commands


def _tool(name: str) -> str:
    # Ansible may run with a PATH lacking sbin directories.
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        raise LoaderError(f"'{name}' not found on this host (install kmod)")
    return found


def _run(argv: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def insmod(path: str) -> None:
    proc = _run([_tool("insmod"), path])
    if proc.returncode != 0:
        raise LoaderError(f"insmod {path} failed: {(proc.stderr or proc.stdout).strip()}")


def rmmod(name: str, retry_for: float = 10.0) -> None:
    """Remove a module; retries while the kernel still drops its last reference asynchronously."""
    deadline = time.monotonic() + retry_for
    while True:
        proc = _run([_tool("rmmod"), name])
        if proc.returncode == 0 or read_module(name) is None:
            return
        if time.monotonic() > deadline:
            raise LoaderError(f"rmmod {name} failed: {(proc.stderr or proc.stdout).strip()}")
        time.sleep(POLL_SECONDS)


# ---------------------------------------------------------------- transitions


def _target_state(name: str, root: str) -> Optional[int]:
    patch = read_patch(name, root)
    return None if patch is None else int(patch.enabled)


def signal_stalled(name: str, root: str = LIVEPATCH_ROOT) -> List[str]:
    """Nudge the tasks holding up ``name``; says what was done (for the result)."""
    if signal_via_sysfs(name, root):
        return [f"wrote 1 to {root}/{name}/signal"]
    target = _target_state(name, root)
    if target is None:
        return []
    pids = nudge_user_tasks(find_stalled_tasks(target, with_stacks=False))
    return [f"SIGSTOP+SIGCONT pid {pid}" for pid in pids]


def wait_for_transition(name: str, timeout: float, signal_after: Optional[float] = None,
                        root: str = LIVEPATCH_ROOT,
                        clock: Callable[[], float] = time.monotonic) -> TransitionOutcome:
    """Wait until ``name`` is settled (not in transition, or freed); signal once midway."""
    start = clock()
    outcome = TransitionOutcome(complete=False, waited=0.0)
    signal_at = timeout / 2 if signal_after is None else signal_after
    while True:
        patch = read_patch(name, root)
        outcome.waited = clock() - start
        if patch is None or not patch.transition:
            outcome.complete = True
            return outcome
        if outcome.waited >= signal_at and not outcome.signalled:
            outcome.signalled = signal_stalled(name, root) or ["no user task to signal"]
        if outcome.waited >= timeout:
            outcome.stalled = find_stalled_tasks(int(patch.enabled))
            return outcome
        time.sleep(POLL_SECONDS)


def wait_for_idle(timeout: float, root: str = LIVEPATCH_ROOT) -> None:
    """The kernel runs one transition at a time; wait for someone else's to finish."""
    deadline = time.monotonic() + timeout
    while True:
        busy = transition_in_progress(root)
        if busy is None:
            return
        if time.monotonic() > deadline:
            raise LoaderError(f"patch {busy} is still in transition after {timeout:.0f}s; "
                              "no new transition can start")
        time.sleep(POLL_SECONDS)


def _reverse(name: str, timeout: float, root: str) -> bool:
    """Reverse the patch's in-flight transition (writing the opposite of its target)."""
    patch = read_patch(name, root)
    if patch is None or not patch.transition:
        return True
    path = os.path.join(root, name, "enabled")
    with open(path, "w", encoding="ascii") as handle:
        handle.write("0" if patch.enabled else "1")
    return wait_for_transition(name, timeout, signal_after=0.0, root=root).complete


def _describe(stalled: List[StalledTask]) -> str:
    shown = ", ".join(f"{t.comm}[{t.pid}]" for t in stalled[:5])
    more = f" and {len(stalled) - 5} more" if len(stalled) > 5 else ""
    return shown + more if stalled else "no task reported"


def _handle_stall(name: str, outcome: TransitionOutcome, force: bool, timeout: float,
                  root: str, verb: str) -> bool:
    """A stalled transition: force it (returns True) or reverse it and raise."""
    if force:
        # The kernel marks every patch present, not only this one, as forced.
        forced = [p.name for p in list_patches(root)]
        force_transition(name, root)
        for patch_name in forced:
            record_loaded(patch_name, "forced", FORCED_DIR)
        if wait_for_transition(name, timeout, signal_after=timeout, root=root).complete:
            return True
        raise LoaderError(f"{verb} of {name}: forced transition did not complete",
                          stalled=outcome.stalled)
    if _reverse(name, timeout, root):
        cleanup = ""
        if read_patch(name, root) is None and read_module(name) is not None:
            rmmod(name)
            cleanup = " and the module removed"
        raise LoaderError(
            f"{verb} of {name} did not finish within {timeout:.0f}s: stalled tasks "
            f"{_describe(outcome.stalled)}; the transition was reversed{cleanup}",
            stalled=outcome.stalled, reverted=True)
    raise LoaderError(f"{verb} of {name} stalled ({_describe(outcome.stalled)}) and reversing "
                      "it stalled too; the patch is left in transition", stalled=outcome.stalled)


def load_module(path: str, name: str, timeout: float, force: bool = False,
                root: str = LIVEPATCH_ROOT) -> LoadResult:
    """insmod a livepatch module and see its transition through (or undo it)."""
    wait_for_idle(timeout, root)
    before = {p.name for p in list_patches(root) if p.enabled}
    digest = sha256_of(path)
    insmod(path)
    if read_patch(name, root) is None:
        raise LoaderError(f"insmod {path} succeeded but {root}/{name} did not appear: "
                          "not a livepatch module, or its module name differs")
    outcome = wait_for_transition(name, timeout, root=root)
    result = LoadResult(name=name, transition=outcome)
    if not outcome.complete:
        result.forced = _handle_stall(name, outcome, force, timeout, root, "load")
    record_loaded(name, digest)
    result.replaced = retire_replaced(before - {name}, root)
    return result


def finish_enable(name: str, timeout: float, force: bool = False,
                  root: str = LIVEPATCH_ROOT) -> TransitionOutcome:
    """A patch found mid-enable (a run killed in its wait, or the boot service): see it through.

    Stalled past ``timeout``, it is forced or reversed exactly like a load of ours would be,
    so no run leaves a host in a transition that nobody waits for.
    """
    outcome = wait_for_transition(name, timeout, root=root)
    if not outcome.complete:
        _handle_stall(name, outcome, force, timeout, root, "load")
    return outcome


def retire_replaced(previous: set, root: str = LIVEPATCH_ROOT) -> List[str]:
    """Patches that an atomic-replace load retired: their sysfs entries are gone; rmmod them."""
    replaced = []
    for old in sorted(previous):
        if read_patch(old, root) is None:
            replaced.append(old)
            forget_loaded(old)
            if read_module(old) is not None:
                rmmod(old)
    return replaced


def unload_module(name: str, timeout: float, force: bool = False,
                  root: str = LIVEPATCH_ROOT) -> Optional[TransitionOutcome]:
    """Disable the patch, wait for it to settle, rmmod it.  Idempotent."""
    outcome = None
    patch = read_patch(name, root)
    if patch is not None:
        if patch.transition and patch.enabled:
            # Someone is enabling it right now: let that finish before turning it around.
            wait_for_transition(name, timeout, root=root)
            patch = read_patch(name, root)
    if patch is not None and patch.enabled:
        wait_for_idle(timeout, root)
        try:
            disable_patch(name, root)
        except SysfsError as exc:
            raise LoaderError(str(exc)) from exc
        outcome = wait_for_transition(name, timeout, root=root)
        if not outcome.complete:
            _handle_stall(name, outcome, force, timeout, root, "unload")
    elif patch is not None:  # a disable already running
        outcome = wait_for_transition(name, timeout, root=root)
        if not outcome.complete:
            _handle_stall(name, outcome, force, timeout, root, "unload")
    if read_module(name) is not None:
        if name in loaded_records(FORCED_DIR):
            # Disabled, and as unloaded as the kernel allows: the module stays until reboot.
            forget_loaded(name)
            return outcome
        rmmod(name)
    forget_loaded(name)
    return outcome


# ---------------------------------------------------------------- installed files


# A kernel release as uname -r shows it (the kernel's limit is 64 bytes): a path component never
# made from anything else.
_RELEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$")


def check_release(release: str) -> str:
    """``release`` if it is a kernel release name, else LoaderError naming it."""
    if not _RELEASE_RE.fullmatch(release or "") or ".." in release:
        raise LoaderError(f"{release!r} is not a kernel release name (letters, digits and . _ + ~ -, "
                          "as uname -r prints it)")
    return release


def release_dir(release: str, install_dir: str = DEFAULT_INSTALL_DIR) -> str:
    return os.path.join(install_dir, check_release(release))


def installed_path(name: str, release: str, install_dir: str = DEFAULT_INSTALL_DIR) -> str:
    if not is_module_name(name):
        raise LoaderError(f"{name!r} is not a kernel module name")
    return os.path.join(release_dir(release, install_dir), f"{name}.ko")


class InstallJournal:
    """Installs that are undone when a later step of the same task fails.

    ``state=installed`` installs the file and then loads it; when the load fails, the host must
    be as it was, or the boot service would load the refused module at the next boot.  A file
    the install replaced is kept aside (hard link, same directory) until ``commit``.
    """

    def __init__(self) -> None:
        self._done: List[tuple] = []

    def install(self, src: str, dest: str) -> None:
        backup = None
        if os.path.exists(dest):
            backup = aside_path(dest)
            try:
                if os.path.lexists(backup):
                    os.unlink(backup)
                os.link(dest, backup)
            except OSError as exc:
                raise LoaderError(f"cannot keep {dest} aside before replacing it: {exc.strerror or exc}") from exc
        try:
            install_file(src, dest)
        except BaseException:
            if backup:
                os.unlink(backup)
            raise
        self._done.append((dest, backup))

    def rollback(self) -> List[str]:
        """Undo every install, newest first; the paths restored or removed."""
        undone = []
        for dest, backup in reversed(self._done):
            if backup:
                os.replace(backup, dest)
            elif os.path.exists(dest):
                os.unlink(dest)
            undone.append(dest)
        self._done = []
        return undone

    def commit(self) -> None:
        for _dest, backup in self._done:
            if backup and os.path.lexists(backup):
                os.unlink(backup)
        self._done = []


def list_installed(install_dir: str = DEFAULT_INSTALL_DIR) -> dict:
    """release → {module name → path} for every ``<install_dir>/<release>/*.ko``."""
    found: dict = {}
    if not os.path.isdir(install_dir):
        return found
    for release in sorted(os.listdir(install_dir)):
        rdir = os.path.join(install_dir, release)
        if not _RELEASE_RE.fullmatch(release) or not os.path.isdir(rdir):
            continue  # .staging and other bookkeeping
        for entry in sorted(os.listdir(rdir)):
            # Only files this tool could have installed: a stray "a b.ko" is no module of ours.
            # Keyed by the kernel's name, as sysfs shows it: a hand-placed a-b.ko is module a_b.
            if entry.endswith(".ko") and is_module_name(entry[:-3]):
                found.setdefault(release, {})[normalize_module_name(entry[:-3])] = os.path.join(rdir, entry)
    return found


def install_file(src: str, dest: str) -> None:
    """Copy ``src`` to ``dest`` atomically (temp file in the same directory, then rename).

    A failure (no space, read-only file system) leaves ``dest`` as it was and raises LoaderError
    naming the directory and the reason.
    """
    tmp = temp_path(dest)
    try:
        os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except OSError as exc:
        reason = "no space left" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise LoaderError(f"cannot install {dest}: {reason} in {os.path.dirname(dest)}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    parent = os.path.dirname(path)
    try:
        os.rmdir(parent)  # drop the release directory once empty
    except OSError:
        pass


# ---------------------------------------------------------------- validation


def reference_vermagic(release: str, modules_root: str = "/lib/modules") -> Optional[str]:
    """The vermagic of an in-tree module of ``release``, or None when none is found."""
    base = os.path.join(modules_root, release, "kernel")
    for dirpath, _dirs, files in os.walk(base):
        for entry in sorted(files):
            if entry.endswith((".ko", ".ko.xz", ".ko.gz")):
                try:
                    return read_modinfo(os.path.join(dirpath, entry)).vermagic
                except ModinfoError:
                    continue
    return None


def validate_module(info: ModInfo, release: str, sha256: Optional[str] = None,
                    reference: Optional[str] = None) -> None:
    """Refuse a module built for another kernel, not a livepatch, or not the expected bytes."""
    if sha256:
        actual = sha256_of(info.path)
        if actual.lower() != sha256.lower():
            raise LoaderError(f"{info.path}: sha256 {actual} does not match the expected {sha256}")
    if not info.livepatch:
        raise LoaderError(f"{info.path}: module {info.name} is not a livepatch module "
                          "(.modinfo has no livepatch=Y)")
    if info.release != release:
        raise LoaderError(f"{info.path}: module {info.name} was built for kernel {info.release} "
                          f"(vermagic '{info.vermagic}'), not for {release}")
    if reference is not None and reference.split() != info.vermagic.split():
        raise LoaderError(f"{info.path}: vermagic '{info.vermagic}' differs from the kernel's "
                          f"'{reference}'")
