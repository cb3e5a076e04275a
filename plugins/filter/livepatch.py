# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Controller-side filters: the patch-module naming rule and the fleet playbooks' build bookkeeping.

``livepatch_module_name``: the one rule for a patch module's name (``_kbuild/kmod.py``: letters,
digits, '_' and '-', at most 48 characters; the kernel shows '-' as '_'), used by the builder and
the playbooks alike.  ``livepatch_desired``, ``livepatch_build_items`` and ``livepatch_module_index``:
what a host must have, which (module, release) pairs the build host builds, and the built modules
indexed by ``name@release`` — Python instead of Jinja loops, so they are unit-tested.
``livepatch_fetch_needed``: the built modules the controller does not hold yet.
``livepatch_state_read``: the setup stamp and the livepatch state out of the one shell command
that reads both on a target (``playbooks/tasks/gather-target.yml``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_native
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.module_utils.six.moves.collections_abc import Mapping

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kmod import (
    default_module_name,
    kernel_module_name,
    module_name,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.modinfo import sha256_of


def livepatch_module_name(value, kernel=False, from_patch=False):
    """``name | kpatch.livepatch.livepatch_module_name``; ``kernel=true``: as the kernel shows it;
    ``from_patch=true``: the default name for a patch file (``livepatch-<stem>``)."""
    try:
        name = default_module_name(to_native(value)) if from_patch else module_name(to_native(value))
        return kernel_module_name(name) if kernel else name
    except KbuildError as exc:
        raise AnsibleFilterError(to_native(exc))


def livepatch_desired(wanted, replace=True):
    """The modules a host must have: ``[{name, kname, patches (real paths), replace}]``."""
    out = []
    for entry in wanted or []:
        if not isinstance(entry, Mapping) or not entry.get("name"):
            raise AnsibleFilterError("every patch module needs a name: got %r" % (entry,))
        name = livepatch_module_name(entry["name"])
        out.append({"name": name, "kname": kernel_module_name(name),
                    "patches": [os.path.realpath(to_native(p)) for p in entry.get("patches") or []],
                    "replace": boolean(entry.get("replace", replace), strict=False)})
    return out


def livepatch_build_items(hosts):
    """One build per distinct (module, release) of the hosts (``[{kpatch_release, kpatch_desired}]``),
    in first-seen order; hosts whose release is unknown need none."""
    items = []
    for host in hosts or []:
        release = host.get("kpatch_release") if isinstance(host, Mapping) else None
        if not release:
            continue
        for desired in host.get("kpatch_desired") or []:
            item = {"name": desired["name"], "release": release, "patches": list(desired["patches"]),
                    "replace": desired["replace"]}
            if item not in items:
                items.append(item)
    return items


def _artifact_path(artifacts_dir, item):
    """Where the controller keeps the module built for ``item``: ``<artifacts_dir>/<release>/<name>.ko``."""
    return "%s/%s/%s.ko" % (artifacts_dir, item["release"], item["name"])


def livepatch_fetch_needed(results, artifacts_dir):
    """The successful builds whose module the controller does not hold yet with the built bytes
    (no file at its artifact path, or another sha256): the ones the fetch must bring."""
    needed = []
    for res in results or []:
        if res.get("failed"):
            continue
        try:
            held = sha256_of(_artifact_path(artifacts_dir, res["item"])) == res["sha256"]
        except OSError:
            held = False
        if not held:
            needed.append(res)
    return needed


def livepatch_module_index(results, artifacts_dir):
    """``name@release`` → what was built (file on the controller, sha256, vermagic ...) or why not."""
    index = {}
    for res in results or []:
        item = res["item"]
        key = "%s@%s" % (item["name"], item["release"])
        if res.get("failed"):
            why = res.get("msg") or "unknown error"
            index[key] = {"name": item["name"], "release": item["release"], "built": False,
                          "reason": "building %s for %s failed: %s" % (item["name"], item["release"], why)}
            continue
        index[key] = {"name": item["name"], "release": item["release"], "built": True,
                      "kname": kernel_module_name(res["module_name"]),
                      "file": _artifact_path(artifacts_dir, item),
                      "sha256": res["sha256"], "vermagic": res["vermagic"], "replace": res["replace"],
                      "patches": [os.path.basename(p) for p in item["patches"]]}
    return index


# The gather's raw read prints the setup stamp on a line of its own, after this prefix.
STAMP_PREFIX = "kpatch-stamp:"


def livepatch_state_read(stdout):
    """``{stamp, state}`` from the output of the gather's raw read: ``state`` is the facts
    kpatch_info returns (the JSON line of ``python3 -m kpatch_target.info``), or None when the
    host printed none (no current runtime) or none that parses (its Python failed: the module
    run that follows reports why)."""
    found = {"stamp": "", "state": None}
    # raw runs under a pseudo-terminal: lines end in \r\n, and stderr is mixed in.
    for line in to_native(stdout or "").splitlines():
        line = line.strip()
        if line.startswith(STAMP_PREFIX):
            found["stamp"] = line[len(STAMP_PREFIX):].strip()
        elif line.startswith("{"):
            try:
                state = json.loads(line)
            except ValueError:
                continue
            if isinstance(state, Mapping) and "release" in state and "installed" in state:
                found["state"] = state
    return found


class FilterModule(object):
    def filters(self):
        return {"livepatch_module_name": livepatch_module_name, "livepatch_desired": livepatch_desired,
                "livepatch_build_items": livepatch_build_items, "livepatch_module_index": livepatch_module_index,
                "livepatch_state_read": livepatch_state_read, "livepatch_fetch_needed": livepatch_fetch_needed}
