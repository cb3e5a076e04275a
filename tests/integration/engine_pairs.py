"""Original/patched object pairs built from the real Debian kernel tree, for engine tests and the bench.

The tree is prepared once per release by ``_kbuild.tree.prepare_tree`` (cached); each pair is
built with kbuild's single-object targets and ``-ffunction-sections -fdata-sections`` before and
inside ``patched_tree`` (which restores the pristine tree on every exit path).  Pairs are cached
per patch text so a test session compiles each object at most twice.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.tree import (
    build_objects,
    patched_tree,
    prepare_tree,
)
from tests.testbed.kernels import KernelArtifacts, cache_root, fetch_kernel

ENGINE_CFLAGS = "-ffunction-sections -fdata-sections"
SHEPHERD_HEAD = "static void vmstat_shepherd(struct work_struct *w)\n{\n\tint cpu;\n\n\tcpus_read_lock();"


def armed_shepherd(tag: str) -> str:
    """vmstat_shepherd arming, once, a kmalloc'd delayed work on itself (20 s) and, when that work
    runs, naming the build that armed it and the build that runs it (the live patch)."""
    return ("struct lp_armed_work { struct delayed_work dw; char by[8]; };\n\n"
            "static void vmstat_shepherd(struct work_struct *w)\n{\n\tint cpu;\n\tstatic bool lp_armed;\n\n"
            "\tif (w != &shepherd.work) {\n"
            "\t\tstruct lp_armed_work *a = container_of(to_delayed_work(w), struct lp_armed_work, dw);\n\n"
            f"\t\tpr_info(\"lp_armed: work armed by %s ran in {tag}\\n\", a->by);\n"
            "\t\tkfree(a);\n\t\treturn;\n\t}\n"
            "\tif (!lp_armed) {\n"
            "\t\tstruct lp_armed_work *a = kzalloc(sizeof(*a), GFP_KERNEL);\n\n"
            "\t\tif (a) {\n\t\t\tlp_armed = true;\n"
            f"\t\t\tstrscpy(a->by, \"{tag}\", sizeof(a->by));\n"
            "\t\t\tINIT_DELAYED_WORK(&a->dw, vmstat_shepherd);\n"
            "\t\t\tschedule_delayed_work(&a->dw, 20 * HZ);\n"
            f"\t\t\tpr_info(\"lp_armed: armed by {tag}\\n\");\n"
            "\t\t}\n\t}\n\tcpus_read_lock();")


# S1: kpatch's own sample change; S2/S3: one-line changes in other hot files.
SUBSTITUTIONS: Dict[str, Tuple[str, str, str]] = {
    "meminfo": ("fs/proc/meminfo.c", '"VmallocChunk:   "', '"VMALLOCCHUNK:   "'),
    "dev_valid_name": ("net/core/dev.c", "if (*name == '/' || *name == ':' || isspace(*name))",
                       "if (*name == '/' || *name == ':' || *name == '@' || isspace(*name))"),
    "dev_remove_pack": ("net/core/dev.c", 'pr_warn("dev_remove_pack: %p not found\\n", pt);',
                        'pr_warn("dev_remove_pack: packet type %p not found\\n", pt);'),
    # the hot path of __dev_remove_pack grows: its unchanged .cold part jumps back to a moved label
    "dev_remove_pack_parent": ("net/core/dev.c", "\t\t\tlist_del_rcu(&pt->list);\n\t\t\tgoto out;",
                               "\t\t\tlist_del_rcu(&pt->list);\n\t\t\tsmp_mb();\n\t\t\tgoto out;"),
    # inlined into 7 callers, some with retpoline calls (objtool ran at compile time on 6.1)
    "sysctl_head_grab": ("fs/proc/proc_sysctl.c", "\tBUG_ON(!head);\n\tspin_lock(&sysctl_lock);",
                         "\tBUG_ON(!head);\n\tpr_info(\"sysctl_head_grab %p\\n\", head);\n\tspin_lock(&sysctl_lock);"),
    "sched_core": ("kernel/sched/core.c", 'pr_info("task:%-15.15s state:%c", p->comm',
                   'pr_info("task:%-15.15s state=%c", p->comm'),
    "ext4_inode": ("fs/ext4/inode.c", '"iget: bogus i_mode (%o)"', '"iget: bogus inode mode (%o)"'),
    # hot-path changes in two more big objects (no .cold part: kpatch's own tool refuses a changed
    # one), for bench/bench_cdo_ratio.py to compare the two tools on
    "sched_idle_cpu": ("kernel/sched/core.c", "\tif (rq->ttwu_pending)\n\t\treturn 0;\n#endif\n\n\treturn 1;",
                       "\tif (rq->ttwu_pending || !rq->nr_switches)\n\t\treturn 0;\n#endif\n\n\treturn 1;"),
    "ext4_statfs": ("fs/ext4/super.c", "\tbuf->f_namelen = EXT4_NAME_LEN;", "\tbuf->f_namelen = EXT4_NAME_LEN - 1;"),
    "binfmt_misc": ("fs/binfmt_misc.c", 'char *s = enabled ? "enabled\\n" : "disabled\\n";',
                    'char *s = enabled ? "ENABLED\\n" : "DISABLED\\n";'),
    # #19 item 2: the changed vmstat_shepherd arms a heap work item on itself (its address taken by
    # patched code); two builds told apart by their tag, for the atomic-replace proof
    "armed_work_a": ("mm/vmstat.c", SHEPHERD_HEAD, armed_shepherd("A")),
    "armed_work_b": ("mm/vmstat.c", SHEPHERD_HEAD, armed_shepherd("B")),
    # lines added at the top: every __LINE__ below moves, no function changes
    "lineshift_sched": ("kernel/sched/core.c", "// SPDX-License-Identifier: GPL-2.0-only\n",
                        "// SPDX-License-Identifier: GPL-2.0-only\n/* shifted */\n\n"),
    "lineshift_dev": ("net/core/dev.c", "// SPDX-License-Identifier: GPL-2.0-or-later\n",
                      "// SPDX-License-Identifier: GPL-2.0-or-later\n/* shifted */\n\n"),
    # btrfs: gcc cross-jumps the shared tail of btrfs_abort_transaction() calls;
    # xfs: xfs_corruption_error() gets __LINE__ pushed as its 7th argument
    "lineshift_btrfs": ("fs/btrfs/inode.c", "// SPDX-License-Identifier: GPL-2.0\n",
                        "// SPDX-License-Identifier: GPL-2.0\n/* shifted */\n\n"),
    "lineshift_xfs": ("fs/xfs/xfs_inode.c", "// SPDX-License-Identifier: GPL-2.0\n",
                      "// SPDX-License-Identifier: GPL-2.0\n/* shifted */\n\n"),
}


@dataclass
class ObjectPair:
    name: str
    relobj: str
    orig: Path
    patched: Path


def work_root() -> Path:
    return cache_root() / "kbuild-trees"


def make_patch(tree_root: Path, relsrc: str, old: str, new: str, dest: Path) -> Path:
    """A -p1 unified diff replacing exactly one occurrence of ``old`` by ``new``."""
    import difflib
    text = (tree_root / relsrc).read_text()
    if text.count(old) != 1:
        raise AssertionError(f"{relsrc}: expected exactly one {old!r}, found {text.count(old)}")
    patched = text.replace(old, new)
    diff = difflib.unified_diff(text.splitlines(True), patched.splitlines(True), f"a/{relsrc}", f"b/{relsrc}")
    dest.write_text("".join(diff))
    return dest


def build_pair(name: str, artifacts: KernelArtifacts = None) -> ObjectPair:
    artifacts = artifacts or fetch_kernel()
    relsrc, old, new = SUBSTITUTIONS[name]
    relobj = relsrc[:-2] + ".o"
    tree = prepare_tree(artifacts.source_tree(), artifacts.config, artifacts.release, work_root(),
                        work_root() / "engine-build.log")
    key = hashlib.sha256(f"{artifacts.release}|{relsrc}|{old}|{new}|{ENGINE_CFLAGS}".encode()).hexdigest()[:16]
    out = work_root() / "engine-pairs" / f"{name}-{key}"
    orig, patched = out / "orig" / relobj, out / "patched" / relobj
    if orig.is_file() and patched.is_file():
        return ObjectPair(name, relobj, orig, patched)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    patch = make_patch(tree.root, relsrc, old, new, tmp / f"{name}.patch")
    build_objects(tree, [relobj], ENGINE_CFLAGS, tmp / "orig")
    with patched_tree(tree, [patch]):
        build_objects(tree, [relobj], ENGINE_CFLAGS, tmp / "patched")
    build_objects(tree, [relobj], ENGINE_CFLAGS, tmp / "rebuilt")  # leave the tree's object pristine too
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return ObjectPair(name, relobj, orig, patched)
