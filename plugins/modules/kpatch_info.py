#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0 or later; by its "any later version" clause that includes
# version 3 (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Ansible module kpatch_info: report a host's livepatch state as query-friendly facts."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kpatch_info
short_description: Report loaded and installed livepatch modules, taint and stalled tasks
description:
  - Reads C(/sys/kernel/livepatch), C(/sys/module), C(/proc/sys/kernel/tainted), the tasks'
    C(patch_state) and the install directory, and returns them as lists of dictionaries, so a
    fleet report can filter them with the collection's own jmespath filter,
    C(kpatch.livepatch.jmespath).
  - Changes nothing; needs only Python's standard library on the host.
version_added: 0.1.0
author:
  - kpatch.livepatch contributors (@kpatch-livepatch)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - kpatch.livepatch.install_dir
attributes:
  check_mode:
    support: full
    details: The module only reads; check mode runs it unchanged.
  diff_mode:
    support: N/A
    details: The module changes nothing.
  platform:
    support: full
    platforms: linux
notes:
  - Kernel stacks of stalled tasks (C(/proc/<pid>/stack)) are only readable as root.
seealso:
  - module: kpatch.livepatch.kpatch
"""

EXAMPLES = r"""
- name: Gather livepatch facts
  kpatch.livepatch.kpatch_info:
  register: lp

- name: Names of the patches that are enabled and settled
  ansible.builtin.debug:
    msg: "{{ lp.patches | kpatch.livepatch.jmespath('[?enabled && !transition].name') }}"

- name: Fail when the kernel is tainted by anything but livepatch and out-of-tree modules
  ansible.builtin.assert:
    that: lp.taint.names | difference(['livepatch', 'oot_module', 'unsigned_module']) | length == 0
"""

RETURN = r"""
release:
  description: The running kernel release.
  returned: always
  type: str
  sample: 6.1.0-50-cloud-amd64
livepatch_supported:
  description: The kernel has livepatch support (C(/sys/kernel/livepatch) exists).
  returned: always
  type: bool
patches:
  description:
    - One entry per patch the kernel knows, plus livepatch modules still loaded whose patch was
      disabled or replaced (those show C(enabled=false), no objects).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Patch (module) name.
      type: str
    enabled:
      description: The patch is enabled (during a transition, the target state).
      type: bool
    transition:
      description: A transition of this patch is in progress.
      type: bool
    replace:
      description: Atomic-replace patch; null where the kernel does not expose it (before 6.14).
      type: bool
    objects:
      description: Objects the patch changes.
      type: list
      elements: dict
      contains:
        name:
          description: C(vmlinux) or the name of a module.
          type: str
        patched:
          description: The object is loaded and its functions are patched.
          type: bool
        functions:
          description: The patched functions of the object.
          type: list
          elements: dict
          contains:
            name:
              description: Function name.
              type: str
            sympos:
              description: Position of the symbol among same-named local symbols (C(0) when unique).
              type: int
    module_loaded:
      description: The module is loaded.
      type: bool
    srcversion:
      description: The loaded module's srcversion.
      type: str
    module_taint:
      description: The module's taint letters from C(/sys/module/<name>/taint).
      type: str
    loaded_sha256:
      description: SHA-256 of the file the patch was loaded from, when M(kpatch.livepatch.kpatch)
        or the boot service loaded it during this boot; else null.
      type: str
    installed_path:
      description: The installed file for the running kernel, if any.
      type: str
installed:
  description: One entry per installed module file, for every kernel release.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Module name.
      type: str
    release:
      description: Kernel release directory it is installed under.
      type: str
    path:
      description: File path.
      type: str
    sha256:
      description: SHA-256 of the file.
      type: str
    vermagic:
      description: The module's vermagic, null when unreadable (see C(error)).
      type: str
    srcversion:
      description: The module's srcversion.
      type: str
    for_running_kernel:
      description: Installed for the running kernel.
      type: bool
    loaded:
      description: Loaded in the running kernel.
      type: bool
    error:
      description: Why the file could not be read, else null.
      type: str
taint:
  description: The kernel taint mask decoded.
  returned: always
  type: dict
  sample: {"mask": 45056, "letters": "OEK", "names": ["oot_module", "unsigned_module", "livepatch"],
           "flags": [{"bit": 12, "letter": "O", "name": "oot_module"}]}
stalled_tasks:
  description: Tasks holding up a running transition.
  returned: always
  type: list
  elements: dict
  contains:
    pid:
      description: Thread-group id (the process).
      type: int
    tid:
      description: Thread id.
      type: int
    comm:
      description: The task's command name.
      type: str
    patch_state:
      description: The task's C(patch_state) (C(-1) undefined, C(0) unpatched, C(1) patched).
      type: int
    kthread:
      description: The task is a kernel thread (these cannot be signalled).
      type: bool
    stack:
      description: Kernel stack lines from C(/proc/<pid>/task/<tid>/stack); empty when unreadable (not root).
      type: list
      elements: str
    patch:
      description: The patch whose transition the task holds up.
      type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kpatch.livepatch.plugins.module_utils._target.facts import gather_info


def main():
    module = AnsibleModule(
        argument_spec=dict(install_dir=dict(type="path", default="/var/lib/kpatch")),
        supports_check_mode=True,
    )
    try:
        info = gather_info(module.params["install_dir"])
    except OSError as exc:
        module.fail_json(msg="reading the host's livepatch state failed: %s" % exc)
    module.exit_json(changed=False, **info)


if __name__ == "__main__":
    main()
