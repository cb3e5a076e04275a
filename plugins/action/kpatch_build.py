# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Action plugin for kpatch.livepatch.kpatch_build: send the hook sources (kmod/) to the build host.

Ansible's module payload carries module_utils, not the collection's other files; the patch
module's hook (Kbuild, Makefile, linker script, C and headers) lives in ``kmod/`` at the
collection root, the one copy of it.  Unless the task names its own ``kmod_dir``, the files are
put into a ``kmod`` directory inside the task's remote temporary directory, the module runs with
``kmod_dir`` set to it, and the directory goes with the temporary directory afterwards.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

MODULE = "kpatch.livepatch.kpatch_build"
# The collection root is two directories above plugins/action/.
KMOD_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "kmod")


def kmod_files(kmod_dir=KMOD_DIR):
    """The regular files of the controller's kmod/ directory, sorted by name."""
    if not os.path.isdir(kmod_dir):
        raise AnsibleActionFail("the collection's hook sources are missing: %s is not a directory" % kmod_dir)
    names = sorted(n for n in os.listdir(kmod_dir) if os.path.isfile(os.path.join(kmod_dir, n)))
    if not names:
        raise AnsibleActionFail("the collection's hook source directory %s is empty" % kmod_dir)
    return [(name, os.path.join(kmod_dir, name)) for name in names]


class ActionModule(ActionBase):
    TRANSFERS_FILES = True

    def _send_kmod(self):
        """Copy kmod/ into the remote temporary directory; returns the remote directory."""
        shell = self._connection._shell
        remote_dir = shell.join_path(shell.tmpdir, "kmod")
        # As the connection user, like the temporary directory itself; _fixup_perms2 then lets a
        # become user read it.
        res = self._low_level_execute_command("mkdir -m 0700 %s" % shell.quote(remote_dir), sudoable=False)
        if res.get("rc") != 0:
            raise AnsibleActionFail("cannot create %s on the build host: %s" % (remote_dir, to_text(res.get("stderr"))))
        sent = [remote_dir]
        for name, local in kmod_files():
            remote = shell.join_path(remote_dir, name)
            self._transfer_file(local, remote)
            sent.append(remote)
        self._fixup_perms2(sent)
        return remote_dir

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        try:
            if not args.get("kmod_dir"):
                args["kmod_dir"] = self._send_kmod()
            result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars))
        except AnsibleActionFail as exc:
            result.update(failed=True, msg=to_text(exc))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
