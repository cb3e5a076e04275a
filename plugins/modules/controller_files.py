#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0 or later; by its "any later version" clause that includes
# version 3 (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Documentation of kpatch.livepatch.controller_files (an action plugin: plugins/action/controller_files.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: controller_files
short_description: Write files on the controller without a module run
version_added: 0.3.0
description:
  - Writes each file of O(files) on the Ansible controller from Ansible's own process, with no
    module run; the fleet playbooks write their summary, JUnit report, manifest and status
    report with it.
  - Parent directories are created. A file is replaced atomically (a temporary file in the same
    directory, then a rename), and only when its bytes or permissions differ.
  - Every entry is checked before the first file is written.
  - The files are always written on the controller, whatever host the task runs for.
author:
  - kpatch.livepatch contributors (@kpatch-livepatch)
options:
  files:
    description: The files to write.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Absolute path of the file on the controller.
        type: path
        required: true
      content:
        description: The file's text.
        type: str
        required: true
      mode:
        description: Permissions, as octal digits.
        type: str
        default: "0644"
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Reports what would be written and writes nothing.
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
    details: Runs on the controller only.
seealso:
  - module: ansible.builtin.copy
"""

EXAMPLES = r"""
- name: Write a report and its JUnit twin
  kpatch.livepatch.controller_files:
    files:
      - path: /var/tmp/rollout/summary.json
        content: "{{ summary | to_nice_json }}\n"
      - path: /var/tmp/rollout/summary.junit.xml
        content: "{{ summary | kpatch.livepatch.junit_report }}"
  run_once: true
"""

RETURN = r"""
written:
  description: The files whose bytes or permissions changed (in check mode, would change).
  returned: success
  type: list
  elements: str
paths:
  description: Every file of O(files), in order.
  returned: success
  type: list
  elements: str
"""
