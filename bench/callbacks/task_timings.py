# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Ansible callback for bench/bench_fleet.py: wall time of every task, written as JSON lines.

Enabled with ``ANSIBLE_CALLBACK_PLUGINS=bench/callbacks ANSIBLE_CALLBACKS_ENABLED=task_timings``;
``KPATCH_TASK_TIMINGS`` names the output file.  A task's time runs from its start to the start of
the next task (or the end of the run), as the profile_tasks callback of ansible.posix measures it,
which is not installed here.
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_timings
type: aggregate
short_description: per-task wall time as JSON lines (bench)
description: Writes one JSON line per task (play, task, seconds) to KPATCH_TASK_TIMINGS.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_timings"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._play = ""
        self._current = None
        self._rows = []

    def _close(self):
        if self._current is not None:
            play, name, start = self._current
            self._rows.append({"play": play, "task": name, "seconds": round(time.monotonic() - start, 2)})
            self._current = None

    def v2_playbook_on_play_start(self, play):
        self._close()
        self._play = play.get_name()

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self._current = (self._play, task.get_name(), time.monotonic())

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_stats(self, stats):
        self._close()
        path = os.environ.get("KPATCH_TASK_TIMINGS")
        if path:
            with open(path, "a", encoding="utf-8") as handle:
                for row in self._rows:
                    handle.write(json.dumps(row) + "\n")
