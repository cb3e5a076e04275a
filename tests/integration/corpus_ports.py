"""Ports of the 6.1 corpus edits to newer kernels (Debian's 6.12s, sid's 7.2), where the source differs.

Only the edits whose text changed are replaced here; every other 6.1 edit applies unchanged
(``corpus_patches.apply_edits`` insists on an exact, unique match, so a drifted context fails
loudly rather than silently).  Both 6.12 kernels (Debian 12's backport and Debian 13's) take
the same ports; 7.2 takes those and its own.
"""

from __future__ import annotations

from typing import Dict, List

from tests.integration.corpus_patches import Edit

# name -> the edits that replace the 6.1 ones for 6.12
PORTS_6_12: Dict[str, List[Edit]] = {
    # 6.12 prints sysfs attributes with sysfs_emit().
    "23-sysfs-kexec-loaded": [Edit(
        "kernel/ksysfs.c",
        '\treturn sysfs_emit(buf, "%d\\n", !!kexec_image);',
        '\treturn sysfs_emit(buf, "%d kpatch\\n", !!kexec_image);')],
    # arch/x86/entry/thunk_64.S became thunk.S.
    "93-refuse-assembly": [Edit(
        "arch/x86/entry/thunk.S",
        "#include <linux/linkage.h>\n",
        "#include <linux/linkage.h>\n/* kpatch corpus: an assembly change */\n\t.p2align 4\n")],
}

# name -> the edits that replace the 6.12 ones for 7.2 (same intent, the 7.2 source)
PORTS_7_2: Dict[str, List[Edit]] = {
    # filldir64 compares the record length with ctx->count (the count moved into dir_context).
    "15-user-copy-filldir": [Edit(
        "fs/readdir.c",
        "\tbuf->error = verify_dirent_name(name, namlen);\n"
        "\tif (unlikely(buf->error))\n\t\treturn false;\n"
        "\tbuf->error = -EINVAL;\t/* only used if we fail.. */\n"
        "\tif (reclen > ctx->count)\n\t\treturn false;\n"
        "\tprev_reclen = buf->prev_reclen;",
        "\tbuf->error = verify_dirent_name(name, namlen);\n"
        "\tif (unlikely(buf->error))\n\t\treturn false;\n"
        "\t/* kpatch corpus: entries named kpatch-hidden are not listed */\n"
        "\tif (namlen == 13 && !memcmp(name, \"kpatch-hidden\", 13))\n\t\treturn true;\n"
        "\tbuf->error = -EINVAL;\t/* only used if we fail.. */\n"
        "\tif (reclen > ctx->count)\n\t\treturn false;\n"
        "\tprev_reclen = buf->prev_reclen;")],
    # __set_task_comm copies the name with memcpy + memset instead of strscpy_pad.
    "17-tracepoint-set-comm": [Edit(
        "fs/exec.c",
        "\ttrace_task_rename(tsk, buf);\n\tmemcpy(tsk->comm, buf, len);\n"
        "\tmemset(&tsk->comm[len], 0, sizeof(tsk->comm) - len);\n",
        "\ttrace_task_rename(tsk, buf);\n\tmemcpy(tsk->comm, buf, len);\n"
        "\tmemset(&tsk->comm[len], 0, sizeof(tsk->comm) - len);\n"
        "\tif (exec && !strcmp(tsk->comm, \"head\"))\n"
        "\t\tstrscpy_pad(tsk->comm, \"head-kpatch\", sizeof(tsk->comm));\n")],
    # /proc/filesystems is served from a cached string (the list walk is only the fallback).
    "20-address-taken-filesystems": [Edit(
        "fs/filesystems.c",
        "\t\t\t\tseq_write(m, fss->string, fss->len);\n\t\t\t\treturn 0;",
        "\t\t\t\tseq_write(m, fss->string, fss->len);\n"
        "\t\t\t\tseq_puts(m, \"nodev\\tkpatchfs\\n\");\n\t\t\t\treturn 0;")],
    # __get_task_comm is gone (get_task_comm is a macro around strscpy_pad).  path_noexec is the
    # 7.2 function of fs/exec.c called from all over the kernel (exec, mmap, open, LSM hooks);
    # it is near the top of the file, so its added lines move nearly every __LINE__ below.
    "21-many-callers-get-comm": [Edit(
        "fs/exec.c",
        "\treturn (path->mnt->mnt_flags & MNT_NOEXEC) ||\n",
        "\t/*\n\t * kpatch corpus: a file named kpatch-noexec is on a noexec mount\n"
        "\t * as far as exec and mmap are concerned; these added lines move\n"
        "\t * every __LINE__ below.\n\t */\n"
        "\tif (!strcmp(path->dentry->d_name.name, \"kpatch-noexec\"))\n\t\treturn true;\n"
        "\treturn (path->mnt->mnt_flags & MNT_NOEXEC) ||\n")],
    # The kexec attributes moved to /sys/kernel/kexec/ (kernel/kexec_core.c); /sys/kernel/kexec_loaded
    # is a compatibility link to kexec/loaded.
    "23-sysfs-kexec-loaded": [Edit(
        "kernel/kexec_core.c",
        '\treturn sysfs_emit(buf, "%d\\n", !!kexec_image);',
        '\treturn sysfs_emit(buf, "%d kpatch\\n", !!kexec_image);')],
}


def port_6_12(specs: Dict[str, List[Edit]]) -> Dict[str, List[Edit]]:
    ported = dict(specs)
    ported.update(PORTS_6_12)
    return ported


def port_7_2(specs: Dict[str, List[Edit]]) -> Dict[str, List[Edit]]:
    ported = port_6_12(specs)
    ported.update(PORTS_7_2)
    return ported
