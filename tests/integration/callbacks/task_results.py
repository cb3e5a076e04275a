# -*- coding: utf-8 -*-
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Test-only Ansible callback: append every task result as one JSON line to a file.

ansible-core ships no JSON stdout callback (that lives in ansible.posix), and the tests need
each task's full result (``msg``, ``stalled_tasks``, ``diff``...).  Enable it with
``ANSIBLE_CALLBACK_PLUGINS=<this dir> ANSIBLE_CALLBACKS_ENABLED=task_results`` and name the file
in ``KPATCH_TASK_RESULTS``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: task_results
type: notification
short_description: Write each task result as a JSON line (tests only)
description:
  - Appends C({"task", "host", "status", "result"}) per task result to the file named by the
    C(KPATCH_TASK_RESULTS) environment variable.
requirements:
  - enabled in configuration
"""

import json
import os

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "task_results"
    CALLBACK_NEEDS_ENABLED = True

    def _record(self, result, status):
        path = os.environ.get("KPATCH_TASK_RESULTS")
        if not path:
            return
        row = {"task": result.task_name, "host": result._host.get_name(), "status": status,
               "result": result._result}
        with open(path, "a") as handle:
            handle.write(json.dumps(row, default=str) + "\n")

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")
