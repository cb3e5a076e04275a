# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""What a build produced, and the cache that returns it for the same inputs again.

``cache_key`` names a build by everything that decides its bytes (patches, release, config,
vmlinux, module name, replace, fuzz, signing, compiler, the collection's own code and the hook,
the source); ``cached_result`` returns a finished build's result only while its module still has
the recorded hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.compiler import (
    host_compiler,
    kernel_compiler,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.oot import oot_identity
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.request import (
    BuildRequest,
    is_pkcs11,
    signature_hash,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.toolchain import uses_toolchain_root
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.tree import sha256_file, source_identity

# Bumped when the cache layout or the meaning of a cached result changes.
CACHE_FORMAT = 1


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


def _code_identity(hook: Mapping[str, bytes]) -> str:
    """Hash of the engine, build and hook sources: a new collection version rebuilds modules."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    files = sorted(list(here.parent.glob("_elf/*.py")) + list(here.parent.glob("_engine/*.py"))
                   + list(here.glob("*.py")))
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for name, data in sorted(hook.items()):
        digest.update(name.encode() + b"\0" + data)
    return digest.hexdigest()


def cache_key(req: BuildRequest) -> str:
    """Identity of a build: the same key means the same module bytes would come out."""
    vm = os.stat(req.vmlinux)
    parts = {
        "format": CACHE_FORMAT,
        "patches": [sha256_file(Path(p)) for p in req.patches],
        "release": req.release,
        "config": req.kernel_config.sha256,
        "vmlinux": [vm.st_size, int(vm.st_mtime)],
        "name": req.module_name,
        "replace": req.replace,
        "fuzz": req.fuzz,
        "signed": _signing_identity(req),
        "compiler": build_compiler(req),
        "code": _code_identity(req.hook_sources),
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
