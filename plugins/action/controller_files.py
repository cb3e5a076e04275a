# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Action plugin kpatch.livepatch.controller_files: write files on the controller, no module run.

The fleet playbooks render their records on the controller for the controller: the JSON
summary, its JUnit report, the sha256 manifest, the status report.  ``ansible.builtin.copy``
would run its ``stat`` module (and ``copy`` when the bytes differ) for each, a Python process
and a second or more on a loaded controller, on every run.  This plugin writes them from
Ansible's own worker process instead: the parent directory created, each file replaced
atomically, and only when its bytes differ.  The files are always the controller's, whatever
host the task runs for.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.module_utils.six import string_types
from ansible.plugins.action import ActionBase

from ansible_collections.kpatch.livepatch.plugins.module_utils._target.atomic import atomic_write, holds


def parse_mode(value):
    """``"0644"``, ``"644"`` or an int → the permission bits; anything else is refused."""
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    elif isinstance(value, string_types) and value.isdigit():
        mode = int(value, 8)
    else:
        raise AnsibleActionFail("mode must be octal digits such as '0644', got %r" % (value,))
    if mode > 0o7777:
        raise AnsibleActionFail("mode %r is not a file permission (at most 07777)" % (value,))
    return mode


def checked_files(files):
    """The ``files`` argument as ``[(path, bytes, mode)]``, every entry checked before any write."""
    if not isinstance(files, list) or not files:
        raise AnsibleActionFail("files must be a non-empty list of {path, content, mode}")
    out = []
    for entry in files:
        if not isinstance(entry, dict) or set(entry) - {"path", "content", "mode"}:
            raise AnsibleActionFail("each file is a dictionary of path, content and mode: got %r" % (entry,))
        path = entry.get("path")
        if not isinstance(path, string_types) or not os.path.isabs(path) or path.endswith("/"):
            raise AnsibleActionFail("path must be an absolute file name on the controller: got %r" % (path,))
        if not isinstance(entry.get("content"), string_types):
            raise AnsibleActionFail("%s: content must be a string" % path)
        out.append((path, to_bytes(entry["content"]), parse_mode(entry.get("mode", "0644"))))
    return out


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("files",))
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        try:
            files = checked_files(self._task.args.get("files"))
            changed = [(path, data, mode) for path, data, mode in files if not holds(path, data, mode)]
            if not self._task.check_mode:
                for path, data, mode in changed:
                    atomic_write(path, data, mode)
        except AnsibleActionFail as exc:
            result.update(failed=True, msg=to_text(exc))
            return result
        except OSError as exc:
            result.update(failed=True, msg="writing %s on the controller failed: %s" % (exc.filename, exc.strerror))
            return result
        result.update(changed=bool(changed), written=[path for path, _data, _mode in changed], paths=[path for path, _data, _mode in files])
        return result
