# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Link the diff engine's output object(s) and the ``kmod/`` hook into a live patch module.

The collection's ``kmod/`` directory is a template (Kbuild, Makefile, linker
script, hook and headers).  ``build_patch_module`` copies it with the objects
into a fresh directory and runs kbuild against a kernel's headers
(``make -C <headers> M=<dir>``), which gives the module the headers' vermagic.
"""

from __future__ import annotations

import contextvars
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Union

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.errors import ElfFormatError
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.layout import EHDR_SIZE, identify
from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import ET_REL
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import (
    KbuildError,
    StepLog,
    as_steplog,
    run_logged,
)

KMOD_FILES = ("Kbuild", "Makefile", "kpatch.lds", "livepatch-patch-hook.c", "kpatch-patch.h",
              "kpatch-macros.h", "kpatch-syscall.h")
# MODULE_NAME_LEN is 56 with the NUL; kpatch keeps names to 48 characters, and so do we.
MAX_MODULE_NAME = 48


def default_kmod_dir() -> Optional[Path]:
    """``kmod/`` at the collection root when it is on disk (a checkout or an installed collection).

    Inside an Ansible module payload only module_utils travel: there the ``kpatch_build``
    action plugin sends ``kmod/`` to the host and passes its copy as ``kmod_dir``.
    """
    candidate = Path(__file__).resolve().parents[3] / "kmod"
    return candidate if candidate.is_dir() else None


def resolve_kmod_dir(kmod_dir: Optional[Path] = None) -> Path:
    """``kmod_dir``, else the collection's own ``kmod/``; an error when neither is there."""
    found = Path(kmod_dir) if kmod_dir else default_kmod_dir()
    if found is None:
        raise KbuildError("the patch-module hook sources (the collection's kmod/ directory) are not on this "
                          "host: run kpatch_build as an Ansible task (its action plugin sends them) or "
                          "pass kmod_dir")
    if not found.is_dir():
        raise KbuildError(f"kmod_dir {found} is not a directory")
    return found


def kmod_sources(kmod_dir: Optional[Path] = None) -> Dict[str, bytes]:
    """File name → contents of the hook template in ``kmod_dir`` (default: the collection's ``kmod/``)."""
    found = resolve_kmod_dir(kmod_dir)
    missing = [f for f in KMOD_FILES if not (found / f).is_file()]
    if missing:
        raise KbuildError(f"kmod template {found} lacks {', '.join(missing)}")
    return {f: (found / f).read_bytes() for f in KMOD_FILES}


def module_name(name: str) -> str:
    """A valid module name: letters, digits, '_' and '-' (others become '-'), at most 48 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", name)[:MAX_MODULE_NAME]
    if not cleaned or not re.search(r"[A-Za-z0-9]", cleaned):
        raise KbuildError(f"module name {name!r} has no usable characters")
    return cleaned


def default_module_name(first_patch: Union[str, Path]) -> str:
    """``livepatch-<stem of the first patch>``: the module's name when the build names none."""
    stem = Path(first_patch).name
    for suffix in (".patch", ".diff"):
        stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
    return module_name(f"livepatch-{stem}")


def kernel_module_name(name: str) -> str:
    """The name the kernel shows (``/sys/module``, ``/sys/kernel/livepatch``): '-' becomes '_'."""
    return module_name(name).replace("-", "_")


def _check_object(path: Path) -> None:
    if not path.is_file():
        raise KbuildError(f"engine output object {path} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(EHDR_SIZE)
    # The module link needs relocatable objects (e_type ET_REL).
    try:
        relocatable = identify(head, str(path)).e_type == ET_REL
    except ElfFormatError:
        relocatable = False
    if not relocatable:
        raise KbuildError(f"{path} is not a relocatable ELF object (.o)")


def _check_headers(headers: Path) -> None:
    if not (headers / "Makefile").is_file():
        raise KbuildError(f"{headers} is not a kernel headers/build directory (no Makefile)")


def _stage(build_dir: Path, sources: Mapping[str, bytes]) -> None:
    """A fresh ``build_dir`` holding the hook's files."""
    if build_dir.exists():
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True)
    for f, data in sources.items():
        (build_dir / f).write_bytes(data)


@dataclass
class HookObject:
    """The hook compiled by kbuild in the module's directory while the build does other work.

    The link's kbuild run then finds ``livepatch-patch-hook.o`` up to date by its own rule (the
    recorded command line is the one it would run), so the module's bytes are kbuild's either way;
    an early compile that failed is simply done again by the link, which reports the error.
    """

    build_dir: Path
    name: str
    replace: bool
    sources: Mapping[str, bytes]
    thread: threading.Thread
    error: Optional[Exception] = None

    def wait(self) -> None:
        self.thread.join()


def start_hook_object(headers: Path, name: str, workdir: Path, log: StepLog, replace: bool,
                      sources: Mapping[str, bytes]) -> HookObject:
    """Stage ``workdir/<name>`` and compile the hook there in the background (``HookObject``)."""
    name, headers = module_name(name), Path(headers)
    _check_headers(headers)
    build_dir = Path(workdir) / name
    _stage(build_dir, sources)

    def compile_hook() -> None:
        try:
            with log.step("compile-hook", f"{build_dir.name}/livepatch-patch-hook.o (while the objects are built)"):
                run_logged(log, ["make", "-C", str(build_dir), f"KDIR={headers}", f"KPATCH_NAME={name}",
                                 f"KLP_REPLACE={1 if replace else 0}", "hook"], what="compiling the patch hook")
        except Exception as exc:  # pylint: disable=broad-except  # the link compiles it again and reports
            hook.error = exc

    # The thread runs in a copy of this context: a toolchain root's command wrapper applies there too.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(compile_hook,),
                              name=f"hook-{name}", daemon=True)
    hook = HookObject(build_dir, name, replace, sources, thread)
    thread.start()
    return hook


def build_patch_module(headers: Path, objects: Sequence[Path], name: str, workdir: Path,
                       log: Union[StepLog, Path, str], replace: bool = True, jobs: int = 2,
                       kmod_dir: Optional[Path] = None, sources: Optional[Mapping[str, bytes]] = None,
                       hook: Optional[HookObject] = None) -> Path:
    """Build ``<name>.ko`` in ``workdir/<name>`` from ``objects``; return its path.

    ``sources``: the hook's files already read (``kmod_sources``); else they are read from ``kmod_dir``.
    ``hook``: the directory staged and its hook compiled ahead by ``start_hook_object``.
    """
    log = as_steplog(log)
    name = module_name(name)
    headers, workdir = Path(headers), Path(workdir)
    _check_headers(headers)
    sources = kmod_sources(kmod_dir) if sources is None else sources
    if not objects:
        raise KbuildError("no engine output objects to link into the patch module")
    names = [Path(o).name for o in objects]
    if len(set(names)) != len(names) or any(n in ("livepatch-patch-hook.o", f"{name}.o") for n in names):
        raise KbuildError(f"engine output object names must be distinct and not clash with the hook: {names}")
    build_dir = workdir / name
    with log.step("build-patch-module", f"{name}.ko from {' '.join(names)}") as res:
        if hook is not None:
            hook.wait()
            if (hook.build_dir, hook.name, hook.replace, dict(hook.sources)) != (build_dir, name, replace, dict(sources)):
                raise KbuildError(f"internal error: the hook compiled ahead in {hook.build_dir} is not for {name}.ko")
            if hook.error is not None:
                log.note("compile-hook", f"compiled ahead failed ({hook.error}); kbuild compiles it with the module")
        else:
            _stage(build_dir, sources)
        for obj in objects:
            _check_object(Path(obj))
            shutil.copyfile(obj, build_dir / Path(obj).name)
        run_logged(log, ["make", "-C", str(build_dir), f"-j{max(1, int(jobs))}", f"KDIR={headers}",
                         f"KPATCH_NAME={name}", f"KPATCH_OBJECTS={' '.join(names)}",
                         f"KLP_REPLACE={1 if replace else 0}"], what=f"building {name}.ko")
        ko = build_dir / f"{name}.ko"
        if not ko.is_file():
            raise KbuildError(f"kbuild finished but {ko} was not produced")
        res.detail = f"{ko} ({ko.stat().st_size} bytes, replace={replace})"
    return ko
