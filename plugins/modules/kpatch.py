#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0 or later; by its "any later version" clause that includes
# version 3 (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Ansible module kpatch: declare one livepatch module's state on a host (load/unload/install)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kpatch
short_description: Load, unload, install and uninstall a kernel livepatch module
description:
  - Declares the state of one livepatch module (a C(.ko) built by C(kpatch-build) or this
    collection's builder) on a Linux host and reaches it idempotently, like the C(kpatch)
    utility's C(load), C(unload), C(install) and C(uninstall) commands.
  - Before any C(insmod) the module's vermagic must match the running kernel (for
    O(state=installed), the release it is installed for), it must be a livepatch module
    (C(livepatch=Y) in C(.modinfo)), and an optional expected O(sha256) must match.  A mismatch
    fails the task with nothing changed.
  - After C(insmod) the module waits for the patch transition.  Halfway through O(timeout) it
    signals the tasks that hold the transition up (through the kernel's C(signal) attribute
    where it exists, otherwise C(SIGSTOP)+C(SIGCONT) to stalled user processes; kernels since
    5.1 also signal on their own every 15 seconds).  If the transition still does not finish,
    it is reversed, the module removed, and the task fails listing the stalled tasks.
  - Loading an atomic-replace patch retires the patches loaded before it; their modules are
    removed and the result lists them in RV(replaced).  Non-replace patches stack.
  - Concurrent runs on one host serialise on a lock file in C(/run/lock).
  - The SHA-256 of the file each patch was loaded from is remembered in
    C(/run/kpatch-livepatch/loaded/) for the current boot, so that O(state=loaded) with a
    different build of an already loaded patch fails instead of reporting success.
  - When O(src) is on the controller, the action plugin sends it to the host first and, like
    M(ansible.builtin.copy), compares checksums first. An accepted file is kept in
    C(<install_dir>/.staging/<sha256>.ko), and a host that already has it is not sent it again.
    A refused file is not kept.
  - The host needs only Python's standard library and C(insmod)/C(rmmod) (kmod).
version_added: 0.1.0
author:
  - kpatch.livepatch contributors (@kpatch-livepatch)
options:
  name:
    description:
      - Name of the patch module as the kernel knows it (C(-) and C(_) are equivalent).
      - Required when O(src) is not given.  With O(src), it must match the module's name.
    type: str
  src:
    description:
      - Path of the C(.ko) file, on the controller (default) or on the host (O(remote_src=true)).
      - Needed to load or install a module that is not installed yet.
    type: path
  remote_src:
    description:
      - O(src) is a path on the managed host rather than on the controller.
    type: bool
    default: false
  sha256:
    description:
      - Expected SHA-256 of the module file (hex).  A different file is refused before loading.
    type: str
  state:
    description:
      - V(loaded) - inserted, enabled and its transition complete.
      - V(unloaded) - disabled, its transition complete, and removed.  An installed file stays.
      - V(installed) - copied to C(<install_dir>/<release>/<name>.ko), where the C(target) role's
        boot service loads it at every boot; also loaded now when O(load=true) and O(release)
        is the running kernel.
      - V(absent) - unloaded and uninstalled.
    type: str
    choices: [loaded, unloaded, installed, absent]
    default: loaded
  load:
    description:
      - With O(state=installed), also load the module now (only when O(release) is the running
        kernel).
    type: bool
    default: true
  release:
    description:
      - Kernel release the module is installed for (O(state=installed) or O(state=absent)).
      - Defaults to the running kernel.  O(state=loaded) always acts on the running kernel.
    type: str
  timeout:
    description:
      - Seconds to wait for a patch transition (and for its reversal) to finish.
    type: int
    default: 60
  force:
    description:
      - B(Dangerous.) When a transition does not finish within O(timeout), force it instead of
        reversing it.  Forcing marks every task as switched even though some may still run the
        old code, which can crash the kernel or corrupt data unless the patch's author confirmed
        it is safe; the module can then never be removed, and the kernel is tainted.
    type: bool
    default: false
  metrics_file:
    description:
      - Prometheus node-exporter textfile (C(*.prom), absolute path) to rewrite after the task,
        with the host's livepatch state (patches loaded, enabled, in transition; installed
        modules; stalled tasks; taint flags; the time of the last change).
      - Rewritten atomically after every run that is not in check mode, also when the task
        fails; the last-change time moves only when the task changed something.
      - The boot service of the P(kpatch.livepatch.target#role) role refreshes the same file at boot.
    type: path
    version_added: 0.2.0
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
  - kpatch.livepatch.install_dir
attributes:
  check_mode:
    support: full
    details: Reports the steps it would take (RV(actions)) and changes nothing.
  diff_mode:
    support: full
    details: Shows the sets of loaded patches and installed modules before and after.
  platform:
    support: full
    platforms: linux
  action:
    support: full
    details: The action plugin sends a controller-side O(src) to the host, skipping it when the host already has it.
  async:
    support: none
  bypass_host_loop:
    support: none
notes:
  - Requires root on the host.
seealso:
  - module: kpatch.livepatch.kpatch_info
  - name: Livepatch documentation
    description: The kernel's livepatch consistency model and sysfs interface.
    link: https://docs.kernel.org/livepatch/livepatch.html
"""

EXAMPLES = r"""
- name: Load a patch module built on the controller
  kpatch.livepatch.kpatch:
    src: build/livepatch-cve-2024-1234.ko
    sha256: "{{ lookup('file', 'build/livepatch-cve-2024-1234.ko.sha256') }}"
    state: loaded

- name: Install it so that it is loaded again after every reboot
  kpatch.livepatch.kpatch:
    src: build/livepatch-cve-2024-1234.ko
    state: installed

- name: Install for a kernel that will run after the next reboot, without loading
  kpatch.livepatch.kpatch:
    src: /srv/patches/6.1.0-50/livepatch_fix.ko
    remote_src: true
    release: 6.1.0-50-cloud-amd64
    state: installed

- name: Take the patch out of the running kernel
  kpatch.livepatch.kpatch:
    name: livepatch_cve_2024_1234
    state: unloaded

- name: Remove it everywhere
  kpatch.livepatch.kpatch:
    name: livepatch_cve_2024_1234
    state: absent
"""

RETURN = r"""
name:
  description: The patch module's name as the kernel knows it.
  returned: always
  type: str
  sample: livepatch_sample
release:
  description: The kernel release acted on.
  returned: always
  type: str
  sample: 6.1.0-50-cloud-amd64
actions:
  description: The steps taken (in check mode, the steps that would be taken).
  returned: always
  type: list
  elements: str
  sample: ["load livepatch_sample from /var/lib/kpatch/.staging/ab12.ko"]
undone:
  description:
    - Installed paths put back as they were because a later step of the task failed (for
      O(state=installed), a load that failed or was reversed leaves no new file for the boot
      service to load, and a file it replaced is restored).
  returned: when a step after an install failed
  type: list
  elements: str
  sample: ["/var/lib/kpatch/6.1.0-50-cloud-amd64/livepatch_stall.ko"]
leftovers_removed:
  description:
    - Temporary and kept-aside files of an install that a killed run left under O(install_dir)
      (C(<name>.ko.tmp.<pid>), C(<name>.ko.prev.<pid>)), removed by this run while it held the host
      lock.  The boot service never loads them; an installed C(.ko) is always whole (atomic rename).
  returned: when not in check mode
  type: list
  elements: str
  sample: ["/var/lib/kpatch/6.1.0-50-cloud-amd64/livepatch_sample.ko.tmp.4242"]
replaced:
  description: Patches an atomic-replace load retired (and whose modules were removed).
  returned: always
  type: list
  elements: str
  sample: [livepatch_old]
loaded:
  description: Enabled patches after the task.
  returned: always
  type: list
  elements: str
installed:
  description: Installed modules after the task, per kernel release.
  returned: always
  type: dict
  sample: {"6.1.0-50-cloud-amd64": ["livepatch_sample"]}
stalled_tasks:
  description: Tasks that held up a transition that timed out.
  returned: on a stalled transition
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
      description: Kernel stack lines from C(/proc/<pid>/task/<tid>/stack); empty when unreadable.
      type: list
      elements: str
reverted:
  description: A stalled transition was reversed, leaving the kernel as it was.
  returned: always
  type: bool
forced:
  description: A stalled transition was forced (O(force=true)).
  returned: always
  type: bool
staged:
  description: Where the host keeps the controller's O(src) (after a successful run).
  returned: when O(src) is on the controller
  type: str
  sample: /var/lib/kpatch/.staging/0a1b2c.ko
transferred:
  description: The file was sent to the host (false when the host already had the same bytes).
  returned: when O(src) is on the controller
  type: bool
transition_seconds:
  description: Seconds spent waiting for transitions.
  returned: always
  type: float
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kpatch.livepatch.plugins.module_utils._target.executor import refresh_metrics
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.metrics import check_metrics_path
from ansible_collections.kpatch.livepatch.plugins.module_utils._target.task import (
    TaskFailure, TaskRequest, run_task)

ARGUMENT_SPEC = dict(
    name=dict(type="str"),
    src=dict(type="path"),
    remote_src=dict(type="bool", default=False),
    sha256=dict(type="str"),
    state=dict(type="str", default="loaded", choices=["loaded", "unloaded", "installed", "absent"]),
    load=dict(type="bool", default=True),
    release=dict(type="str"),
    timeout=dict(type="int", default=60),
    force=dict(type="bool", default=False),
    install_dir=dict(type="path", default="/var/lib/kpatch"),
    metrics_file=dict(type="path"),
)


def request_from_params(params):
    """The task's request; remote_src and metrics_file are the action plugin's and main's business."""
    return TaskRequest(state=params["state"], name=params["name"], src=params["src"],
                       sha256=params["sha256"], load=params["load"], release=params["release"],
                       timeout=params["timeout"], force=params["force"],
                       install_dir=params["install_dir"])


def _refresh_metrics(module, changed):
    """Rewrite the textfile metrics after a real run; a failure to write is a warning, not a failed task."""
    path = module.params["metrics_file"]
    if path and not module.check_mode:
        problem = refresh_metrics(path, module.params["install_dir"], changed)
        if problem:
            module.warn(problem)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if module.params["metrics_file"]:
        try:
            check_metrics_path(module.params["metrics_file"])
        except ValueError as exc:
            module.fail_json(msg=str(exc), changed=False)
    try:
        result = run_task(request_from_params(module.params), check_mode=module.check_mode,
                          diff=module._diff)
    except TaskFailure as exc:
        extra = dict(changed=False)
        extra.update(exc.extra)
        _refresh_metrics(module, bool(extra.get("changed")))
        module.fail_json(msg=str(exc), **extra)
    _refresh_metrics(module, result["changed"])
    if result["forced"]:
        module.warn("a stalled transition was forced; the patch module can no longer be removed")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
