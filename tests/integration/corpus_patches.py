"""Source edits behind the patch corpus, and the diff(1) run that turns them into ``.patch`` files.

Every corpus patch under ``tests/integration/patches/<release>/`` is generated here from the
release's pristine Debian source (``fetch_kernel(release).source_tree()``): each edit names a
file, an exact text that must occur exactly once in it, and its replacement.  The edited copy
is compared with the pristine one by ``diff -u``, so hunks are never typed by hand, and an edit
whose text no longer matches (a different kernel) fails loudly instead of producing a patch that
does not apply.  The ``.check``/``.expect`` sidecars next to each patch are written by hand.

Regenerate:  .venv/bin/python -m tests.integration.corpus_patches [release ...]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

PATCH_ROOT = Path(__file__).resolve().parent / "patches"
R61 = "6.1.0-50-cloud-amd64"
R612 = "6.12.107+deb12-cloud-amd64"
R612_DEB13 = "6.12.117+deb13-cloud-amd64"
R72 = "7.2.13+deb14-cloud-amd64"


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` (which must occur exactly once in ``path``) with ``new``."""

    path: str
    old: str
    new: str


class EditError(ValueError):
    """An edit does not fit the source it is applied to."""


# --------------------------------------------------------------------------- shared snippets

MACROS_AFTER_PROC_INCLUDES = '#include "kpatch-macros.h"\n'

SHADOW_CODE = '''
/* kpatch corpus: a per-task read counter kept in a shadow variable */
#define KPATCH_CORPUS_LIMITS_ID 0x6b700701UL

static int kpatch_corpus_limits_pre_patch(patch_object *obj)
{
\tpr_info("kpatch-corpus shadow: pre_patch\\n");
\treturn 0;
}
KPATCH_PRE_PATCH_CALLBACK(kpatch_corpus_limits_pre_patch);

static void kpatch_corpus_limits_post_unpatch(patch_object *obj)
{
\tklp_shadow_free_all(KPATCH_CORPUS_LIMITS_ID, NULL);
\tpr_info("kpatch-corpus shadow: post_unpatch, shadows freed\\n");
}
KPATCH_POST_UNPATCH_CALLBACK(kpatch_corpus_limits_post_unpatch);

static int proc_pid_limits('''

SHADOW_USE = '''\t}

\treads = klp_shadow_get_or_alloc(task, KPATCH_CORPUS_LIMITS_ID, sizeof(*reads),
\t\t\t\t\tGFP_KERNEL, NULL, NULL);
\tif (reads)
\t\tseq_printf(m, "Kpatch shadow reads       %lu\\n", ++*reads);

\treturn 0;
}'''

CALLBACKS_CODE = '''
/* kpatch corpus: a patch made of callbacks only */
static void kpatch_corpus_cb_post_patch(patch_object *obj)
{
\tpr_info("kpatch-corpus callbacks: post_patch %s\\n", obj->name ? obj->name : "vmlinux");
}
KPATCH_POST_PATCH_CALLBACK(kpatch_corpus_cb_post_patch);

static void kpatch_corpus_cb_pre_unpatch(patch_object *obj)
{
\tpr_info("kpatch-corpus callbacks: pre_unpatch %s\\n", obj->name ? obj->name : "vmlinux");
}
KPATCH_PRE_UNPATCH_CALLBACK(kpatch_corpus_cb_pre_unpatch);

static int __init proc_cmdline_init(void)'''


def _specs_6_1() -> Dict[str, List[Edit]]:
    """The 6.1 corpus: name → edits.  Names starting 9x are patches that must be refused."""
    return {
        "01-string-loadavg": [Edit(
            "fs/proc/loadavg.c",
            'seq_printf(m, "%lu.%02lu %lu.%02lu %lu.%02lu %u/%d %d\\n",',
            'seq_printf(m, "%lu.%02lu %lu.%02lu %lu.%02lu %u/%d %d kpatch\\n",')],
        "02-new-function-uptime": [Edit(
            "fs/proc/uptime.c",
            "static int uptime_proc_show(struct seq_file *m, void *v)\n{",
            "noinline void kpatch_corpus_uptime_note(struct seq_file *m)\n{\n"
            "\tseq_puts(m, \"kpatch-new-function\\n\");\n}\n\n"
            "static int uptime_proc_show(struct seq_file *m, void *v)\n{"), Edit(
            "fs/proc/uptime.c",
            "\t\t\t(idle.tv_nsec / (NSEC_PER_SEC / 100)));\n\treturn 0;",
            "\t\t\t(idle.tv_nsec / (NSEC_PER_SEC / 100)));\n\tkpatch_corpus_uptime_note(m);\n\treturn 0;")],
        "03-static-helper-version": [Edit(
            "fs/proc/version.c",
            "static int version_proc_show(struct seq_file *m, void *v)\n{",
            "static noinline void version_kpatch_note(struct seq_file *m)\n{\n"
            "\tseq_printf(m, \"kpatch-static-helper %s\\n\", utsname()->machine);\n}\n\n"
            "static int version_proc_show(struct seq_file *m, void *v)\n{"), Edit(
            "fs/proc/version.c",
            "\t\tutsname()->version);\n\treturn 0;",
            "\t\tutsname()->version);\n\tversion_kpatch_note(m);\n\treturn 0;")],
        "04-static-local-drop-caches": [Edit(
            "fs/drop_caches.c",
            "\t\tstatic int stfu;\n",
            "\t\tstatic int stfu;\n\t\tstatic int kpatch_drops;\n"), Edit(
            "fs/drop_caches.c",
            '\t\t\tpr_info("%s (%d): drop_caches: %d\\n",\n'
            "\t\t\t\tcurrent->comm, task_pid_nr(current),\n"
            "\t\t\t\tsysctl_drop_caches);",
            '\t\t\tpr_info("%s (%d): drop_caches: %d kpatch-drops=%d\\n",\n'
            "\t\t\t\tcurrent->comm, task_pid_nr(current),\n"
            "\t\t\t\tsysctl_drop_caches, ++kpatch_drops);")],
        "05-cold-sysrq-help": [Edit(
            "drivers/tty/sysrq.c",
            '\t\tpr_info("HELP : ");',
            '\t\tpr_info("HELP (kpatch-cold) : ");')],
        "06-isra-sysinfo": [Edit(
            "kernel/sys.c",
            "\tinfo->uptime = tp.tv_sec + (tp.tv_nsec ? 1 : 0);",
            "\tinfo->uptime = tp.tv_sec + (tp.tv_nsec ? 1 : 0);\n"
            "\t/* kpatch corpus: a visible mark on sysinfo(2)'s uptime */\n"
            "\tinfo->uptime += 1000L * 24 * 60 * 60;")],
        "07-isra-oom-adj": [Edit(
            "fs/proc/base.c",
            "static int __set_oom_adj(struct file *file, int oom_adj, bool legacy)\n{",
            "static int __set_oom_adj(struct file *file, int oom_adj, bool legacy)\n{\n"
            "\t/* kpatch corpus: 123 is stored as 321 */\n"
            "\tif (!legacy && oom_adj == 123)\n\t\toom_adj = 321;")],
        "08-inline-task-state": [Edit(
            "fs/proc/array.c",
            "\treturn task_state_array[task_state_index(tsk)];",
            "\tunsigned int index = task_state_index(tsk);\n\n"
            "\tif (index == 0)\n\t\treturn \"R (running, kpatch)\";\n"
            "\treturn task_state_array[index];")],
        "09-header-loadavg": [Edit(
            "include/linux/sched/loadavg.h",
            "#define LOAD_INT(x) ((x) >> FSHIFT)",
            "#define LOAD_INT(x) (((x) >> FSHIFT) + 40)")],
        "10-shadow-limits": [Edit(
            "fs/proc/base.c",
            '#include "../../lib/kstrtox.h"\n',
            '#include "../../lib/kstrtox.h"\n' + MACROS_AFTER_PROC_INCLUDES), Edit(
            "fs/proc/base.c",
            "\nstatic int proc_pid_limits(",
            SHADOW_CODE), Edit(
            "fs/proc/base.c",
            "\tunsigned int i;\n\tunsigned long flags;\n\n\tstruct rlimit rlim[RLIM_NLIMITS];",
            "\tunsigned int i;\n\tunsigned long flags;\n\tunsigned long *reads;\n\n\tstruct rlimit rlim[RLIM_NLIMITS];"), Edit(
            "fs/proc/base.c",
            "\t\t\tseq_putc(m, '\\n');\n\t}\n\n\treturn 0;\n}",
            "\t\t\tseq_putc(m, '\\n');\n" + SHADOW_USE)],
        "11-callbacks-only": [Edit(
            "fs/proc/cmdline.c",
            "#include <linux/seq_file.h>\n",
            "#include <linux/seq_file.h>\n" + MACROS_AFTER_PROC_INCLUDES), Edit(
            "fs/proc/cmdline.c",
            "\nstatic int __init proc_cmdline_init(void)",
            CALLBACKS_CODE)],
        "12-module-loop": [Edit(
            "drivers/block/loop.c",
            "\t\tbuf[ret++] = '\\n';\n\t\tbuf[ret] = 0;\n\t}\n\n\treturn ret;\n}\n\nstatic ssize_t loop_attr_offset_show",
            "\t\tmemcpy(buf + ret, \" (kpatch)\", 9);\n\t\tret += 9;\n"
            "\t\tbuf[ret++] = '\\n';\n\t\tbuf[ret] = 0;\n\t}\n\n\treturn ret;\n}\n\nstatic ssize_t loop_attr_offset_show")],
        "13-syscall-uname": [Edit(
            "kernel/sys.c",
            '#include "uid16.h"\n',
            '#include "uid16.h"\n' + MACROS_AFTER_PROC_INCLUDES), Edit(
            "kernel/sys.c",
            "SYSCALL_DEFINE1(newuname, struct new_utsname __user *, name)\n{\n"
            "\tstruct new_utsname tmp;\n\n\tdown_read(&uts_sem);\n"
            "\tmemcpy(&tmp, utsname(), sizeof(tmp));\n\tup_read(&uts_sem);\n",
            "KPATCH_SYSCALL_DEFINE1(newuname, struct new_utsname __user *, name)\n{\n"
            "\tstruct new_utsname tmp;\n\n\tdown_read(&uts_sem);\n"
            "\tmemcpy(&tmp, utsname(), sizeof(tmp));\n\tup_read(&uts_sem);\n"
            "\tstrscpy(tmp.machine, \"x86_64-kpatch\", sizeof(tmp.machine));\n")],
        "14-bug-on-register-fs": [Edit(
            "fs/filesystems.c",
            "\tBUG_ON(strchr(fs->name, '.'));\n",
            "\tBUG_ON(strchr(fs->name, '.'));\n"
            "\tpr_info(\"kpatch-corpus: register_filesystem %s\\n\", fs->name);\n")],
        "15-user-copy-filldir": [Edit(
            "fs/readdir.c",
            "\tint prev_reclen;\n\n\tbuf->error = verify_dirent_name(name, namlen);\n"
            "\tif (unlikely(buf->error))\n\t\treturn false;\n"
            "\tbuf->error = -EINVAL;\t/* only used if we fail.. */\n"
            "\tif (reclen > buf->count)\n\t\treturn false;\n"
            "\tprev_reclen = buf->prev_reclen;",
            "\tint prev_reclen;\n\n\tbuf->error = verify_dirent_name(name, namlen);\n"
            "\tif (unlikely(buf->error))\n\t\treturn false;\n"
            "\t/* kpatch corpus: entries named kpatch-hidden are not listed */\n"
            "\tif (namlen == 13 && !memcmp(name, \"kpatch-hidden\", 13))\n\t\treturn true;\n"
            "\tbuf->error = -EINVAL;\t/* only used if we fail.. */\n"
            "\tif (reclen > buf->count)\n\t\treturn false;\n"
            "\tprev_reclen = buf->prev_reclen;")],
        "16-static-branch-random": [Edit(
            "drivers/char/random.c",
            "\tret = wait_for_random_bytes();\n\tif (ret != 0)\n\t\treturn ret;\n"
            "\treturn get_random_bytes_user(iter);",
            "\tret = wait_for_random_bytes();\n\tif (ret != 0)\n\t\treturn ret;\n"
            "\t/* kpatch corpus: a 6-byte read of /dev/random returns a marker */\n"
            "\tif (iov_iter_count(iter) == 6)\n\t\treturn copy_to_iter(\"kpatch\", 6, iter);\n"
            "\treturn get_random_bytes_user(iter);")],
        "17-tracepoint-set-comm": [Edit(
            "fs/exec.c",
            "\ttrace_task_rename(tsk, buf);\n\tstrscpy_pad(tsk->comm, buf, sizeof(tsk->comm));\n",
            "\ttrace_task_rename(tsk, buf);\n\tstrscpy_pad(tsk->comm, buf, sizeof(tsk->comm));\n"
            "\tif (exec && !strcmp(tsk->comm, \"head\"))\n"
            "\t\tstrscpy_pad(tsk->comm, \"head-kpatch\", sizeof(tsk->comm));\n")],
        "18-printk-taint": [Edit(
            "kernel/panic.c",
            "\tset_bit(flag, &tainted_mask);\n",
            "\tset_bit(flag, &tainted_mask);\n"
            "\tif (flag == TAINT_USER)\n\t\tpr_info(\"kpatch-corpus: user taint requested\\n\");\n")],
        "19-alternatives-cpuinfo": [Edit(
            "arch/x86/kernel/cpu/proc.c",
            '\tseq_puts(m, "power management:");',
            "\tif (static_cpu_has(X86_FEATURE_XMM2))\n"
            "\t\tseq_puts(m, \"kpatch_alt\\t: sse2\\n\");\n"
            '\tseq_puts(m, "power management:");')],
        "20-address-taken-filesystems": [Edit(
            "fs/filesystems.c",
            "\t\ttmp = tmp->next;\n\t}\n\tread_unlock(&file_systems_lock);\n\treturn 0;",
            "\t\ttmp = tmp->next;\n\t}\n\tread_unlock(&file_systems_lock);\n"
            "\tseq_puts(m, \"nodev\\tkpatchfs\\n\");\n\treturn 0;")],
        "21-many-callers-get-comm": [Edit(
            "fs/exec.c",
            "\t/* Always NUL terminated and zero-padded */\n\tstrscpy_pad(buf, tsk->comm, buf_size);\n",
            "\t/* Always NUL terminated and zero-padded */\n\tstrscpy_pad(buf, tsk->comm, buf_size);\n"
            "\t/*\n\t * kpatch corpus: readers of the name of a task called \"tail\"\n"
            "\t * see a marker; these added lines move every __LINE__ below.\n\t */\n"
            "\tif (!strcmp(buf, \"tail\"))\n\t\tstrscpy_pad(buf, \"tail-kpatch\", buf_size);\n")],
        "22-string-execdomains": [Edit(
            "kernel/exec_domain.c",
            'seq_puts(m, "0-0\\tLinux           \\t[kernel]\\n");',
            'seq_puts(m, "0-0\\tLinux-kpatch    \\t[kernel]\\n");')],
        "23-sysfs-kexec-loaded": [Edit(
            "kernel/ksysfs.c",
            '\treturn sprintf(buf, "%d\\n", !!kexec_image);',
            '\treturn sprintf(buf, "%d kpatch\\n", !!kexec_image);')],
        "24-string-partitions": [Edit(
            "block/genhd.c",
            'seq_puts(seqf, "major minor  #blocks  name\\n\\n");',
            'seq_puts(seqf, "major minor  #blocks  name  (kpatch)\\n\\n");')],
        "25-modules-list": [Edit(
            "kernel/module/procfs.c",
            '\tseq_printf(m, "%s %u", mod->name, size);',
            '\tseq_printf(m, "%s %u", mod->name, size);\n\tseq_puts(m, " [kpatch]");')],
        # ---- patches that must be refused
        "90-refuse-init": [Edit(
            "fs/proc/loadavg.c",
            'proc_create_single("loadavg", 0, NULL, loadavg_proc_show);',
            'proc_create_single("loadavg2", 0, NULL, loadavg_proc_show);')],
        "91-refuse-static-data": [Edit(
            "fs/locks.c",
            "static int lease_break_time = 45;",
            "static int lease_break_time = 90;")],
        "92-refuse-lib": [Edit(
            "lib/kstrtox.c",
            "int kstrtobool(const char *s, bool *res)\n{",
            "int kstrtobool(const char *s, bool *res)\n{\n\tif (!s)\n\t\treturn -EINVAL;")],
        "93-refuse-assembly": [Edit(
            "arch/x86/entry/thunk_64.S",
            "#include <linux/linkage.h>\n",
            "#include <linux/linkage.h>\n/* kpatch corpus: an assembly change */\n\t.p2align 4\n")],
        "94-refuse-static-local-removed": [Edit(
            "fs/stat.c",
            "\tif (warncount > 0) {\n\t\twarncount--;\n"
            "\t\tprintk(KERN_WARNING \"VFS: Warning: %s using old stat() call. Recompile your binary.\\n\",\n"
            "\t\t\tcurrent->comm);\n"
            "\t} else if (warncount < 0) {\n\t\t/* it's laughable, but... */\n\t\twarncount = 0;\n\t}\n\n",
            "")],
        "95-refuse-module-jump-label": [Edit(
            "net/netfilter/nf_tables_core.c",
            "\tif (static_branch_unlikely(&nft_counters_enabled))\n",
            "\tif (static_branch_unlikely(&nft_counters_enabled) && pkt->skb->len)\n")],
    }


def specs_for(release: str) -> Dict[str, List[Edit]]:
    """The edits for ``release``: the 6.1 set, with ports where the 6.12 or 7.2 source differs."""
    specs = _specs_6_1()
    if release == R61:
        return specs
    from tests.integration.corpus_ports import port_6_12, port_7_2
    if release in (R612, R612_DEB13):
        return port_6_12(specs)
    if release == R72:
        return port_7_2(specs)
    raise EditError(f"no corpus for release {release}")


# --------------------------------------------------------------------------- generation


def apply_edits(text: str, path: str, edits: Sequence[Edit]) -> str:
    for edit in edits:
        count = text.count(edit.old)
        if count != 1:
            raise EditError(f"{path}: the text to replace occurs {count} times (needs exactly 1):\n{edit.old}")
        text = text.replace(edit.old, edit.new)
    return text


def make_patch(source: Path, edits: Sequence[Edit]) -> str:
    """A -p1 unified diff of the edited files against the pristine ``source`` tree."""
    by_file: Dict[str, List[Edit]] = {}
    for edit in edits:
        by_file.setdefault(edit.path, []).append(edit)
    chunks: List[str] = []
    with tempfile.TemporaryDirectory(prefix="kpatch-corpus-") as tmp:
        root = Path(tmp)
        for rel, file_edits in sorted(by_file.items()):
            original = (source / rel).read_text()
            changed = apply_edits(original, rel, file_edits)
            for side, text in (("a", original), ("b", changed)):
                dest = root / side / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(text)
            proc = subprocess.run(["diff", "-u", f"a/{rel}", f"b/{rel}"], cwd=root, capture_output=True, text=True,
                                  check=False)
            if proc.returncode != 1:
                raise EditError(f"diff of {rel} failed or found no change: {proc.stderr.strip()}")
            # Timestamps in the --- / +++ lines would make every regeneration a change.
            lines = proc.stdout.splitlines(keepends=True)
            lines[0], lines[1] = f"--- a/{rel}\n", f"+++ b/{rel}\n"
            chunks.append("".join(lines))
    return "".join(chunks)


def generate(release: str, source: Path) -> List[Tuple[str, Path]]:
    out_dir = PATCH_ROOT / release
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, edits in sorted(specs_for(release).items()):
        dest = out_dir / f"{name}.patch"
        dest.write_text(make_patch(source, edits))
        written.append((name, dest))
    return written


def main(argv: Sequence[str]) -> int:
    from tests.testbed.kernels import fetch_kernel

    for release in argv or [R61]:
        source = fetch_kernel(release).source_tree()
        for name, dest in generate(release, source):
            print(f"{release}: {dest.relative_to(PATCH_ROOT.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
