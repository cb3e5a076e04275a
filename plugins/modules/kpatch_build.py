#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0 or later; by its "any later version" clause that includes
# version 3 (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Ansible module kpatch_build: build a livepatch module from source patches on a build host."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kpatch_build
short_description: Build a livepatch kernel module from source patches
version_added: "0.1.0"
description:
  - Turns one or more kernel source patches into a livepatch module (C(.ko)) for one kernel release,
    on a build host.
  - The fast path compiles only the objects the patches change, unpatched and patched, with
    C(-ffunction-sections -fdata-sections) in a source tree prepared once per release (cached), diffs them
    with the collection's ELF diff engine, links the result with the patch-module hook against the
    release's headers and converts it to livepatch format. No full kernel build is needed, except once per
    release for a patched header that too many objects include (see O(full_build_fallback)).
  - The kernel source tree is left pristine on every exit path, and a failed build leaves no module behind.
  - The same inputs again return the cached module with C(changed=false).
  - Patches to loadable modules are supported; the module's own C(.ko) under O(modules_dir) gives its symbols.
  - Which object a changed file builds, and whether it links into vmlinux or which module, is read from the
    distribution's debuginfo first - the compile units of O(vmlinux) (scanned once per release, about 20 seconds
    for Debian's 6.1 kernel, then cached under O(cache_dir)), those of the debug modules under
    O(debug_modules_dir), C(modules.order) and C(modules.builtin) - and from the tree's kbuild Makefiles only
    where those give no answer. The build log says which decided.
  - Files of a patch from which this kernel builds no object (a driver its config leaves out, documentation,
    C(tools/)) are skipped and returned in RV(skipped_files); the rest of the patch is built. One fix can then
    serve every kernel flavour of a fleet. A patch is refused when nothing is left to patch.
author:
  - kpatch.livepatch contributors (@kpatch-livepatch)
requirements:
  - pyelftools on the build host
  - gcc of the same version that built the kernel, make, bison, flex, libelf headers
  - the exact kernel source (or the distribution's package tools to fetch it), config, headers and vmlinux with
    debug symbols of the release
options:
  patches:
    description: Unified diffs (C(-p1), as C(git diff) writes them) against the kernel source, applied in order.
    type: list
    elements: path
    required: true
  release:
    description: Kernel release to build for (C(uname -r) of the targets). Defaults to the build host's running kernel.
    type: str
  source_dir:
    description:
      - The pristine, unpacked kernel source of exactly that release (for Debian, the C(linux-source-X.Y)
        package of the image's version). It is never written; a cached copy under O(cache_dir) is prepared.
      - When omitted, the build host's distribution (C(/etc/os-release)) gets its own source of the release at
        the exact package version (see O(package_version)) with the commands the P(kpatch.livepatch.debuginfo#role)
        role uses (Debian C(apt-get download linux-source-X.Y=<version>), Ubuntu C(apt-get source), RPM
        distributions the kernel SRPM and C(rpmbuild -bp)). It is unpacked into a temporary directory, its
        C(Makefile) version checked, and renamed to C(<cache_dir>/sources/<release>-<package_version>), where
        later builds reuse it without a download. A failed fetch leaves nothing behind.
      - Only fetched when the module is not already cached; check mode reports what would be fetched.
    type: path
  package_version:
    description:
      - Package version of the release's kernel (Debian C(6.1.176-1) for C(6.1.0-50-cloud-amd64)), whose source
        is fetched when O(source_dir) is omitted. The release string does not contain it.
      - Defaults to the version of the release's image package installed on the build host
        (C(dpkg-query -W linux-image-<release>)); when that is not installed the build fails and asks for it;
        the newest version the package manager knows is never assumed. RPM releases carry their version.
    type: str
  config:
    description:
      - Kernel config of the release. Defaults to C(/boot/config-<release>), or when that does not exist to the
        C(.config) of O(headers).
    type: path
  vmlinux:
    description:
      - vmlinux with debug symbols; its compile units say which objects link into the kernel image.
      - Defaults to the build host's distribution's debuginfo path (Debian and Ubuntu
        C(/usr/lib/debug/boot/vmlinux-<release>), RPM distributions C(/usr/lib/debug/lib/modules/<release>/vmlinux)).
    type: path
  headers:
    description:
      - The release's kbuild headers directory. Defaults to the distribution's (Debian and Ubuntu
        C(/usr/src/linux-headers-<release>), RPM distributions C(/usr/src/kernels/<release>)).
    type: path
  modules_dir:
    description:
      - The release's module directory, for patches to loadable modules (their C(.ko) gives the symbols) and for
        C(modules.order) and C(modules.builtin). Defaults to C(/lib/modules/<release>).
    type: path
  debug_modules_dir:
    description:
      - The release's modules with debug information, from the distribution's debuginfo package; the compile
        units of a C(.ko) name the objects linked into that module.
      - Defaults to C(/usr/lib/debug/lib/modules/<release>) (Debian C(-dbg), Ubuntu C(-dbgsym), RPM
        C(kernel-debuginfo)). When absent, C(modules.order) and the kbuild Makefiles decide.
    type: path
  oot_module:
    description:
      - An out-of-tree module to patch instead of the kernel (a vendor driver, ZFS ...), as the built C(.ko) that
        the targets load, plain or compressed. Its symbol table is the parent of every changed function, and
        livepatch applies the patch whenever the module is loaded, before or after the patch module.
      - The patches are relative to O(oot_module_src) (C(-p1)); only C(.c) files can be changed.
      - O(source_dir) is not needed; the module's objects are compiled against O(headers).
    type: path
  oot_module_src:
    description:
      - The directory O(oot_module) was built from (its C(Kbuild) or C(Makefile), as for
        C(make -C <headers> M=<dir>)). It is copied and never written; only the objects the patches change are
        compiled, unpatched and patched, with the module's own Kbuild.
    type: path
  fuzz:
    description:
      - Context lines a hunk may ignore when a patch is applied (GNU C(patch --fuzz)).
      - The default C(0) applies patches exactly. kpatch-build applies patches with GNU patch's default fuzz
        (C(2)); set C(1) or C(2) for patches written for it, and check the hunks reported in RV(hunk_adjustments).
      - The source tree is restored to its pristine state after the build either way.
    type: int
    choices: [0, 1, 2]
    default: 0
  name:
    description:
      - Name of the patch module. Defaults to C(livepatch-<first patch file name without .patch>).
        Characters the kernel does not allow in module names become C(-).
    type: str
  replace:
    description:
      - Build an atomic-replace (cumulative) module, which retires every livepatch loaded before it.
      - When false, the module stacks on earlier ones.
    type: bool
    default: true
  jobs:
    description: Parallel compile jobs.
    type: int
    default: 2
  output_dir:
    description: Where the finished module is placed.
    type: path
    default: /var/lib/kpatch-build/modules
  cache_dir:
    description: Prepared source trees, struct sizes, build logs and finished modules, reused across builds.
    type: path
    default: /var/cache/kpatch-build
  signing_key:
    description:
      - Private key (PEM file, or a C(pkcs11:) URI) to sign the module with the release's C(scripts/sign-file)
        from O(headers), with the kernel's C(CONFIG_MODULE_SIG_HASH). Needs O(signing_cert).
      - The key, the certificate and C(sign-file) are checked, and a scratch file is signed, before anything is
        compiled. A passphrase is read from the C(KBUILD_SIGN_PIN) environment variable, as by kbuild.
    type: path
  signing_cert:
    description: X.509 certificate (PEM or DER) matching O(signing_key); it identifies the signer in the signature.
    type: path
  toolchain_root:
    description:
      - What to do when the host's gcc is not the compiler recorded in vmlinux's C(.comment).
      - V(auto) compiles in a toolchain root for a Debian kernel (suite from the release's C(+debN),
        e.g. C(7.2.13+deb14) is sid, built with gcc-16; releases without it are bookworm's) -
        C(debootstrap --variant=minbase) of that suite with exactly the kernel's gcc and kbuild's tools,
        made once per (suite, compiler) under O(cache_dir)C(/toolroots), verified against C(.comment), and
        reused. Every kbuild command of the build (tree preparation, compiles, the module link, signing)
        runs inside it, with the build's directories bound at their own paths in a private mount
        namespace; the diff engine runs on the host. A root whose compiler is not exactly the kernel's
        fails the build; it needs root, C(debootstrap), C(unshare) and C(chroot) on the build host.
      - For an RPM-family kernel (C(.fcN) or C(.elN) in the release) the root is C(dnf --installroot) of
        the kernel's own release (C(--releasever) from the tag) with exactly its Red Hat gcc
        (C(gcc-X.Y.Z-N.<tag>*), read from C(.comment)), from the build host's own repositories; it needs
        C(dnf) instead of C(debootstrap).
      - V(never) refuses a different compiler (or uses it with O(skip_compiler_check)).
    type: str
    choices: [auto, never]
    default: auto
    version_added: 0.2.0
  toolchain_root_mirror:
    description:
      - Debian archive for toolchain roots; default the first Debian archive of the build host's own apt sources.
    type: str
    version_added: 0.2.0
  skip_compiler_check:
    description:
      - Build even when the host's gcc is not the one recorded in vmlinux's C(.comment) and no toolchain
        root is made (O(toolchain_root=never), or a kernel that is not Debian's).
      - Dangerous; code compiled by another compiler may not match the running kernel.
      - A compiler other than the kernel's gets its own prepared tree (under C(cache_dir/trees-by-compiler)),
        so the shared tree stays configured for the kernel's compiler; its modules are cached apart.
    type: bool
    default: false
  full_build_fallback:
    description:
      - A patched header is mapped to every object that includes it by compiling, unpatched, each object
        that could include it and reading kbuild's dependency records. When more than 150 objects could
        include it (e.g. C(include/linux/mm.h)), the cached source tree is fully built once instead
        (C(make vmlinux modules), about 10 minutes for vmlinux alone on 2 cores; later builds for the
        release reuse it).
      - When false, such a patch fails with a message naming the header and the number of candidate
        objects, and nothing is built. A partial list of objects is never used.
    type: bool
    default: true
  kmod_dir:
    description:
      - Directory on the build host with the patch-module hook sources (C(Kbuild), C(Makefile), C(kpatch.lds),
        C(livepatch-patch-hook.c) and the C(kpatch-*.h) headers patches may include).
      - When omitted, the action plugin sends the collection's own C(kmod/) directory to the build host for the
        task and passes that copy. Set it only to build with a modified hook.
    type: path
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  platform:
    support: full
    platforms: linux
    details: The diff engine handles x86_64 kernels.
  check_mode:
    support: full
    description: Reports whether a build would happen (cache miss) and what it would produce; builds nothing.
  diff_mode:
    support: none
    description: A build creates a new file; there is no before and after to show.
  action:
    support: full
    details: The action plugin sends the collection's C(kmod/) hook sources to the build host (unless O(kmod_dir) is set).
  async:
    support: none
  bypass_host_loop:
    support: none
notes:
  - Each build writes a log with one line per step and its wall time; its path is returned as RV(log).
"""

EXAMPLES = r"""
- name: Build the meminfo example for the targets' kernel
  kpatch.livepatch.kpatch_build:
    patches:
      - /srv/patches/meminfo-string.patch
    release: 6.1.0-50-cloud-amd64
    source_dir: /var/cache/kpatch-build/src/linux-source-6.1
  register: built

- name: Same, fetching Debian's own source of the image's exact version into the cache
  kpatch.livepatch.kpatch_build:
    patches: [/srv/patches/meminfo-string.patch]
    release: 6.1.0-50-cloud-amd64
    package_version: 6.1.176-1  # dpkg-query -W linux-image-6.1.0-50-cloud-amd64 on a target

- name: Two fixes as one cumulative module for a host with its own layout
  kpatch.livepatch.kpatch_build:
    patches: [/srv/patches/cve-1.patch, /srv/patches/cve-2.patch]
    name: livepatch-2026-11
    release: "{{ target_release }}"
    source_dir: /srv/src/linux-6.1
    vmlinux: /srv/debug/vmlinux-{{ target_release }}
    headers: /srv/headers/linux-headers-{{ target_release }}
    jobs: 4
"""

RETURN = r"""
module_path:
  description: Path of the finished module on the build host.
  returned: success
  type: str
  sample: /var/lib/kpatch-build/modules/livepatch-meminfo-string.ko
module_name:
  description: Module name (the file name without C(.ko)).
  returned: success
  type: str
  sample: livepatch-meminfo-string
sha256:
  description: SHA-256 of the module file.
  returned: success
  type: str
vermagic:
  description: The module's vermagic; its first word is the release.
  returned: success
  type: str
  sample: "6.1.0-50-cloud-amd64 SMP preempt mod_unload modversions "
release:
  description: Kernel release the module is for.
  returned: always
  type: str
replace:
  description: Whether the module is an atomic-replace module.
  returned: success
  type: bool
cached:
  description: True when the module came from the cache (no build ran).
  returned: success
  type: bool
objects:
  description: Per changed object, the parent (vmlinux or module) and the changed and new functions.
  returned: success
  type: list
  elements: dict
  contains:
    object:
      description: The changed object file, relative to the source tree.
      type: str
    parent:
      description: What the object links into, C(vmlinux) or a module name.
      type: str
    changed_functions:
      description: Functions whose code the patches change.
      type: list
      elements: str
    new_functions:
      description: Functions the patches add.
      type: list
      elements: str
    klp_relocations:
      description: Livepatch relocations the engine wrote for references to unexported symbols.
      type: int
    timings:
      description: Wall time of each engine step for this object, in seconds.
      type: dict
    inert_sites:
      description:
        - Tracepoint, dynamic-debug and tracepoint static-call sites of the changed functions whose key
          lives in a module; their entries are left out, so each stays in its default state (the tracepoint
          does not fire, the debug message is not printed) while the patch is live. One line each, naming
          the kind, the key, the function and the module.
        - Any other jump label or static call keyed in a module makes the build fail instead.
      type: list
      elements: str
  sample: [{"object": "fs/proc/meminfo.o", "parent": "vmlinux", "changed_functions": ["meminfo_proc_show"],
            "new_functions": [], "klp_relocations": 46, "inert_sites": []}]
timings:
  description: Wall time of each build stage in seconds.
  returned: success
  type: dict
log:
  description: The build log (one line per step); the full command output is next to it with C(.out) appended.
  returned: success
  type: str
cache_key:
  description: Identity of the build inputs (the source by its package version when it was fetched).
  returned: always
  type: str
source_dir:
  description: Where the kernel source came from; under C(<cache_dir>/sources) when the module fetched it.
  returned: always
  type: str
  sample: /var/cache/kpatch-build/sources/6.1.0-50-cloud-amd64-6.1.176-1
skipped_files:
  description:
    - Changed files from which this kernel builds no object, each with the reason; they were not patched.
  returned: success
  type: list
  elements: dict
  sample: [{"file": "drivers/input/joydev.c", "reason": "drivers/input/joydev.o is not built by this kernel
            (joydev.o is not enabled by this config in drivers/input/Makefile; no compile unit of
            vmlinux-6.1.0-50-cloud-amd64 is built from drivers/input/joydev.c; decided by Makefile and vmlinux DWARF)"}]
hunk_adjustments:
  description:
    - Each hunk that did not apply at its own line with all its context, at an offset or with fuzz (see
      O(fuzz)). Empty when every hunk applied exactly.
  returned: success
  type: list
  elements: dict
  sample: [{"patch": "/srv/patches/cve-1.patch", "file": "kernel/sys.c", "hunk": 2, "line": 1290, "offset": 12,
            "fuzz": 1}]
source_acquisition:
  description: In check mode without O(source_dir), what a build would fetch (nothing is downloaded).
  returned: check mode, when O(source_dir) is omitted
  type: dict
  sample: {"source_dir": "/var/cache/kpatch-build/sources/6.1.0-50-cloud-amd64-6.1.176-1",
           "package_version": "6.1.176-1", "packages": ["linux-source-6.1=6.1.176-1"], "present": false,
           "commands": ["apt-get download linux-source-6.1=6.1.176-1", "sh -c dpkg-deb --fsys-tarfile ..."]}
"""

import os
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.reader import (
        HAS_PYELFTOOLS,
        PYELFTOOLS_IMPORT_ERROR,
    )
    from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.pipeline import build_livepatch, plan
    from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.request import request_from_params
    from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError
    from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.verify import PatchRejected
    IMPORT_ERROR = None
except ImportError:  # pragma: no cover - reported through fail_json below
    IMPORT_ERROR = traceback.format_exc()
    HAS_PYELFTOOLS = False
    PYELFTOOLS_IMPORT_ERROR = None

ARGUMENT_SPEC = dict(
    patches=dict(type="list", elements="path", required=True),
    release=dict(type="str"),
    source_dir=dict(type="path"),
    package_version=dict(type="str"),
    config=dict(type="path"),
    vmlinux=dict(type="path"),
    headers=dict(type="path"),
    modules_dir=dict(type="path"),
    debug_modules_dir=dict(type="path"),
    fuzz=dict(type="int", default=0, choices=[0, 1, 2]),
    oot_module=dict(type="path"),
    oot_module_src=dict(type="path"),
    name=dict(type="str"),
    replace=dict(type="bool", default=True),
    jobs=dict(type="int", default=2),
    output_dir=dict(type="path", default="/var/lib/kpatch-build/modules"),
    cache_dir=dict(type="path", default="/var/cache/kpatch-build"),
    signing_key=dict(type="path"),
    signing_cert=dict(type="path", no_log=False),
    skip_compiler_check=dict(type="bool", default=False),
    toolchain_root=dict(type="str", default="auto", choices=["auto", "never"]),
    toolchain_root_mirror=dict(type="str"),
    full_build_fallback=dict(type="bool", default=True),
    kmod_dir=dict(type="path"),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           required_together=[("signing_key", "signing_cert"), ("oot_module", "oot_module_src")],
                           mutually_exclusive=[("source_dir", "package_version")])
    if IMPORT_ERROR:
        module.fail_json(msg="kpatch.livepatch build helpers failed to import", exception=IMPORT_ERROR)
    if not HAS_PYELFTOOLS:
        module.fail_json(msg=missing_required_lib("pyelftools"), exception=PYELFTOOLS_IMPORT_ERROR)
    try:
        req = request_from_params(module.params, os.uname()[2])
        if module.check_mode:
            planned = plan(req)
            module.exit_json(changed=not planned["cached"], release=req.release, **planned)
        result = build_livepatch(req)
    except PatchRejected as exc:
        module.fail_json(msg="the engine rejected the patch: %s" % exc)
    except (KbuildError, OSError, ValueError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=not result.cached, **result.as_dict())


if __name__ == "__main__":
    main()
