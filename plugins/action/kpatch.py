# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Action plugin for kpatch.livepatch.kpatch: ship a controller-side ``src`` to the host.

Like ``copy``, it checksums first: accepted files are kept on the host as
``<install_dir>/.staging/<sha256>.ko``, and when that file already holds the same bytes nothing
is sent and the module runs on it.  Otherwise the file is sent to the remote temporary
directory and the module runs on that copy; only when the module succeeded (and not in check
mode) is the copy kept in the staging directory.  A refused file therefore leaves nothing on
the host.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shlex

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

from ansible_collections.kpatch.livepatch.plugins.module_utils._target.modinfo import sha256_of

MODULE = "kpatch.livepatch.kpatch"
DEFAULT_INSTALL_DIR = "/var/lib/kpatch"


class ActionModule(ActionBase):
    TRANSFERS_FILES = True

    # Both host-side steps are one shell command each, not a Python module run: on a slow or
    # emulated host a module run costs seconds, and the kpatch module itself is the one run needed.
    def _remote_sha256(self, path):
        """The staged file's sha256 (sha256sum), or None when the host does not have it."""
        res = self._low_level_execute_command("sha256sum %s 2>/dev/null || true" % shlex.quote(path))
        words = to_text(res.get("stdout", "")).split()
        return words[0] if words and len(words[0]) == 64 else None

    def _send(self, local, staged):
        """Transfer the file into the remote temporary directory; returns its remote path."""
        tmp_src = self._connection._shell.join_path(self._connection._shell.tmpdir,
                                                    os.path.basename(staged))
        self._transfer_file(local, tmp_src)
        self._fixup_perms2((self._connection._shell.tmpdir, tmp_src))
        return tmp_src

    def _keep(self, tmp_src, staged):
        """Keep an accepted file in the staging cache so that later runs skip the transfer.

        Copied beside its final name and renamed: a staged file is whole or absent (and a later
        run checks its sha256 before using it anyway).
        """
        directory = os.path.dirname(staged)
        # The remote shell's PID ($$) in the temporary name: two runs keeping the same file at
        # once never rename each other's copy.
        part = os.path.join(directory, ".%s.part" % os.path.basename(staged))
        res = self._low_level_execute_command(
            'mkdir -p -m 0700 {d} && part={part}.$$ && cp {src} "$part" && chmod 0600 "$part" && '
            'mv -f "$part" {dest}'.format(d=shlex.quote(directory), src=shlex.quote(tmp_src), part=shlex.quote(part),
                                          dest=shlex.quote(staged)))
        if res.get("rc") != 0:
            raise AnsibleActionFail("cannot keep %s in %s: %s" % (tmp_src, staged,
                                                                  to_text(res.get("stderr", "")).strip()))

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        try:
            send = local = None
            if args.get("src") and not self._remote_bool(args.get("remote_src")):
                try:
                    local = self._find_needle("files", args["src"])
                except AnsibleError as exc:
                    raise AnsibleActionFail(to_text(exc))
                digest = sha256_of(local)
                staged = "%s/.staging/%s.ko" % (args.get("install_dir") or DEFAULT_INSTALL_DIR,
                                                digest)
                if self._remote_sha256(staged) == digest:
                    args.update(src=staged, remote_src=True)
                else:
                    # Not cached: the module checks the copy in the temporary directory first,
                    # so that a refused file (wrong kernel, wrong sha256) leaves nothing behind.
                    send = self._send(local, staged)
                    args.update(src=send, remote_src=True)
                result.update(staged=staged, transferred=send is not None)
            module_result = self._execute_module(module_name=MODULE, module_args=args,
                                                 task_vars=task_vars)
            if module_result.get("failed") and send and local:
                # The module saw the transferred copy; the user knows the file by its own name.
                module_result["msg"] = to_text(module_result.get("msg", "")).replace(
                    send, "%s (sent as %s)" % (self._task.args["src"], os.path.basename(send)))
            result.update(module_result)
            if send and not module_result.get("failed") and not self._task.check_mode:
                self._keep(send, result["staged"])
        except AnsibleActionFail as exc:
            result.update(failed=True, msg=to_text(exc))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    @staticmethod
    def _remote_bool(value):
        return boolean(value if value is not None else False, strict=False)
