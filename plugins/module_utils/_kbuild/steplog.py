# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""The build log, the command runner and the error type shared by the ``_kbuild`` helpers.

A build writes two files: the step log (one line per step with its wall time and
outcome, readable at a glance) and, next to it with ``.out`` appended, the full
output of every command run.  A failing command raises ``KbuildError`` whose
message names the step, the command and the tail of its output, so an Ansible
module can pass it to ``fail_json`` unchanged.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

# How much of a failing command's output goes into the exception message.
ERROR_TAIL_LINES = 25
# Variables kbuild or make take from the environment that change what is compiled, with which
# flags, into which tree, or how make runs (a calling make's MAKEFLAGS: its -i, -k or -n, its
# jobserver descriptors).  A livepatch must be compiled exactly as the running
# kernel was, and the build's caches are keyed by its inputs, not by the environment: these never
# reach a build's commands.  KBUILD_SIGN_PIN (the signing key's passphrase) is not among them.
KBUILD_ENVIRONMENT = frozenset((
    "KCPPFLAGS", "KAFLAGS", "KCFLAGS", "KRUSTFLAGS", "AFLAGS_MODULE", "AFLAGS_KERNEL", "CFLAGS_MODULE",
    "CFLAGS_KERNEL", "RUSTFLAGS_MODULE", "RUSTFLAGS_KERNEL", "LDFLAGS_MODULE", "USERCFLAGS", "USERLDFLAGS",
    "HOSTCFLAGS", "HOSTCXXFLAGS", "HOSTLDFLAGS", "HOSTLDLIBS", "HOSTRUSTFLAGS", "ARCH", "SUBARCH",
    "CROSS_COMPILE", "LLVM", "LLVM_IAS", "KBUILD_OUTPUT", "KBUILD_ABS_SRCTREE", "KBUILD_EXTRA_SYMBOLS",
    "KBUILD_EXTRA_WARN", "KBUILD_KCONFIG", "KCONFIG_CONFIG", "KBUILD_MODPOST_WARN", "KBUILD_MODPOST_NOFINAL",
    "MAKEFLAGS", "MFLAGS", "GNUMAKEFLAGS", "MAKEFILES", "MAKELEVEL", "MAKEOVERRIDES"))
# A build may run one command in a background thread (the patch hook, kmod.start_hook_object):
# each line and each command's output reaches the log whole.
_LOG_LOCK = threading.Lock()


class KbuildError(Exception):
    """A kernel build step failed; the message says which step, why, and where the log is."""


@dataclass
class StepLog:
    """Append-only log of build steps; ``path.out`` receives command output."""

    path: Path
    lines: List[str] = field(default_factory=list)
    # Seconds per stage (a named group of steps, ``stage``): the build result's timings.
    stages: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def output_path(self) -> Path:
        return self.path.with_name(self.path.name + ".out")

    def write(self, step: str, status: str, seconds: float, detail: str = "") -> None:
        """Record one step: time of day, step name, status, duration, detail."""
        line = f"{time.strftime('%H:%M:%S')} {step:<24} {status:<6} {seconds:8.2f}s {detail}".rstrip()
        with _LOG_LOCK, open(self.path, "a", encoding="utf-8") as fh:
            self.lines.append(line)
            fh.write(line + "\n")

    def note(self, step: str, detail: str) -> None:
        """A step that took no measurable time (a decision, a cache hit)."""
        self.write(step, "info", 0.0, detail)

    @contextmanager
    def step(self, name: str, detail: str = "") -> Iterator["StepResult"]:
        """Time a block; log ``ok`` or ``FAILED`` (with the exception text) when it ends."""
        result = StepResult(detail)
        start = time.monotonic()
        try:
            yield result
        except BaseException as exc:
            self.write(name, "FAILED", time.monotonic() - start, _first_line(str(exc)) or type(exc).__name__)
            raise
        self.write(name, "ok", time.monotonic() - start, result.detail)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a group of steps; its seconds are added to ``stages[name]`` however it ends."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.stages[name] = round(self.stages.get(name, 0.0) + time.monotonic() - start, 3)

    def append_output(self, header: str, text: str) -> None:
        with _LOG_LOCK, open(self.output_path, "a", encoding="utf-8", errors="replace") as fh:
            fh.write(f"===== {time.strftime('%H:%M:%S')} {header}\n{text}")
            if text and not text.endswith("\n"):
                fh.write("\n")


@dataclass
class StepResult:
    """Lets the body of ``StepLog.step`` set the detail written when the step succeeds."""

    detail: str = ""


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def as_steplog(log: Union[StepLog, Path, str]) -> StepLog:
    """Accept a StepLog or a path to create one at."""
    return log if isinstance(log, StepLog) else StepLog(Path(log))


# While a build runs its kbuild commands inside a toolchain root (toolroot.py), every command of
# run_logged goes through this wrapper: (argv, cwd) -> the argv that runs it there.
CommandWrapper = Callable[[Sequence[str], Optional[Path]], List[str]]
_WRAPPER: ContextVar[Optional[CommandWrapper]] = ContextVar("kpatch_command_wrapper", default=None)


@contextmanager
def commands_through(wrapper: Optional[CommandWrapper]) -> Iterator[None]:
    """Run every ``run_logged`` command of the block through ``wrapper`` (None: directly)."""
    token = _WRAPPER.set(wrapper)
    try:
        yield
    finally:
        _WRAPPER.reset(token)


def run_logged(log: StepLog, argv: Sequence[str], cwd: Optional[Path] = None,
               env: Optional[Mapping[str, str]] = None, what: str = "",
               stdin_path: Optional[Path] = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command, copy its output into the log's ``.out`` file, raise KbuildError on failure."""
    full_env = {key: value for key, value in os.environ.items() if key not in KBUILD_ENVIRONMENT}
    # A deterministic, untranslated output keeps the parsing of make/patch messages reliable.
    full_env.update({"LC_ALL": "C", "LANG": "C"})
    if env:
        full_env.update(env)
    wrapper = _WRAPPER.get()
    command = wrapper(argv, cwd) if wrapper else list(argv)
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    try:
        proc = subprocess.run(command, cwd=cwd, env=full_env, stdin=stdin, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace", check=False)
    except FileNotFoundError as exc:
        raise KbuildError(f"{what or argv[0]}: command not found: {argv[0]} ({exc})") from exc
    finally:
        if stdin_path:
            stdin.close()
    log.append_output(f"$ {' '.join(argv)} (cwd={cwd}) -> rc={proc.returncode}", proc.stdout)
    if check and proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-ERROR_TAIL_LINES:])
        raise KbuildError(f"{what or argv[0]} failed (exit {proc.returncode}): {' '.join(argv)}\n"
                          f"{tail}\nfull output: {log.output_path}")
    return proc
