"""Ports of the 6.1 corpus edits to Debian's 6.12 kernel, where the source differs.

Only the edits whose text changed between the two kernels are replaced here; every other 6.1
edit applies to 6.12 unchanged (``corpus_patches.apply_edits`` insists on an exact, unique
match, so a drifted context fails loudly rather than silently).
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


def port_6_12(specs: Dict[str, List[Edit]]) -> Dict[str, List[Edit]]:
    ported = dict(specs)
    ported.update(PORTS_6_12)
    return ported
