# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0 or later; by its "any later version" clause that includes
# version 3 (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""The target runtime as one archive, so a host receives it in one transfer.

The ``target`` role used to copy the files of ``module_utils/_target`` one by one: one
round trip each, most of a first apply under emulation.  This lookup packs them into one
zip (package ``kpatch_target``, importable straight from the archive through ``PYTHONPATH``)
on the controller.  The package mirrors ``module_utils``: ``kpatch_target/_target`` holds the
runtime and ``kpatch_target/_elf`` the standard-library ELF layer it imports (``.._elf``), and
a generated ``kpatch_target/boot.py`` keeps the service's entry point
``python3 -m kpatch_target.boot`` (and ``kpatch_target/info.py`` prints kpatch_info's facts).  The bytes depend only on the sources' names and contents (fixed
timestamps and modes, sorted entries), so ``ansible.builtin.copy`` sees the same checksum on
every run and transfers nothing when the host already has it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: target_runtime
author: kpatch.livepatch contributors (@kpatch-livepatch)
version_added: 0.2.0
short_description: Pack the target runtime into one reproducible archive on the controller
description:
  - Packs the collection's standard-library target runtime (C(plugins/module_utils/_target))
    into a zip holding the Python package C(kpatch_target) and returns the archive's path on
    the controller.
  - The archive is reproducible, so its checksum changes only when a source file does; it is
    written once per content into O(cache_dir) (atomically) and reused.
  - The boot service runs it as C(PYTHONPATH=<archive> python3 -m kpatch_target.boot).
options:
  cache_dir:
    description: Controller directory that keeps the archives, one file per content.
    type: path
    default: ~/.cache/kpatch-livepatch
  format:
    description:
      - V(path) returns the archive's path on the controller (for C(ansible.builtin.copy)).
      - V(base64) returns its bytes base64-encoded, for a role that writes it with one shell
        command (C(ansible.builtin.raw)) instead of the copy module's Python runs on the host.
    type: str
    choices: [path, base64]
    default: path
    version_added: 0.3.0
"""

EXAMPLES = r"""
- name: Install the target runtime in one transfer
  ansible.builtin.copy:
    src: "{{ lookup('kpatch.livepatch.target_runtime') }}"
    dest: /usr/lib/kpatch-livepatch/kpatch_target.zip
    mode: "0644"
"""

RETURN = r"""
_raw:
  description: The path of the archive on the controller, or its base64 text (one element).
  type: list
  elements: path
"""

import base64
import hashlib
import io
import os
import zipfile

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.kpatch.livepatch.plugins.module_utils._target.atomic import atomic_write, holds

PACKAGE = "kpatch_target"
MODULE_UTILS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils")
SOURCES = os.path.join(MODULE_UTILS, "_target")
# The part of the ELF layer the runtime imports (all standard library): the archive carries it.
ELF_LAYER = tuple(os.path.join(MODULE_UTILS, "_elf", name)
                  for name in ("__init__.py", "errors.py", "layout.py", "compressed.py", "record.py"))
GENERATED = {
    "__init__.py": b'"""kpatch.livepatch target runtime (module_utils/_target and the ELF layer it uses)."""\n',
    "boot.py": (b'"""``python3 -m kpatch_target.boot``: the boot service\'s entry point (runs _target.boot)."""\n'
                b"from kpatch_target._target.boot import main\n\n"
                b'if __name__ == "__main__":\n    raise SystemExit(main())\n'),
    # What apply-livepatch.yml runs on a host whose runtime is current instead of the kpatch_info module.
    "info.py": (b'"""``python3 -m kpatch_target.info [--install-dir DIR]``: the facts kpatch_info returns, one JSON line."""\n'
                b"import argparse\nimport json\n\nfrom kpatch_target._target.facts import gather_info\n\n"
                b'if __name__ == "__main__":\n'
                b'    PARSER = argparse.ArgumentParser(prog="python3 -m kpatch_target.info", description=__doc__)\n'
                b'    PARSER.add_argument("--install-dir", default="/var/lib/kpatch")\n'
                b"    print(json.dumps(gather_info(PARSER.parse_args().install_dir), sort_keys=True))\n"),
}
# zip's epoch is 1980; any fixed stamp makes the archive reproducible.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def runtime_sources(source_dir=SOURCES):
    """The runtime's ``*.py`` files, sorted by name (``__init__.py`` included)."""
    try:
        names = sorted(n for n in os.listdir(source_dir) if n.endswith(".py"))
    except OSError as exc:
        raise AnsibleLookupError("target runtime sources not readable at %s: %s" % (source_dir, exc))
    if "__init__.py" not in names or "boot.py" not in names:
        raise AnsibleLookupError("%s is not the target runtime package (no __init__.py or boot.py)" % source_dir)
    return [os.path.join(source_dir, n) for n in names]


def archive_members(paths, elf_layer=ELF_LAYER):
    """Archive name -> bytes: the runtime ``paths`` under ``_target/``, the ELF layer under ``_elf/``,
    and the generated package entry files, sorted by name."""
    members = {"%s/%s" % (PACKAGE, name): data for name, data in GENERATED.items()}
    for sub, group in (("_target", paths), ("_elf", elf_layer)):
        for path in group:
            try:
                with open(path, "rb") as fh:
                    members["%s/%s/%s" % (PACKAGE, sub, os.path.basename(path))] = fh.read()
            except OSError as exc:
                raise AnsibleLookupError("target runtime source %s not readable: %s" % (path, exc))
    return dict(sorted(members.items()))


def archive_bytes(paths):
    """A zip of the runtime ``paths`` (and the ELF layer) whose bytes depend only on names and contents."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in archive_members(paths).items():
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def publish(data, cache_dir):
    """Write ``data`` as ``kpatch_target-<sha256[:16]>.zip`` in ``cache_dir`` unless it is there."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    path = os.path.join(cache_dir, "%s-%s.zip" % (PACKAGE, digest))
    if not holds(path, data):
        atomic_write(path, data)  # atomic: a concurrent play never reads a half-written archive
    return path


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        cache_dir = os.path.expanduser(self.get_option("cache_dir"))
        try:
            data = archive_bytes(runtime_sources())
            if self.get_option("format") == "base64":
                return [base64.b64encode(data).decode("ascii")]
            return [publish(data, cache_dir)]
        except OSError as exc:
            raise AnsibleLookupError("cannot write the target runtime archive under %s: %s" % (cache_dir, exc))
