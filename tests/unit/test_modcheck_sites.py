"""The objtool site check reads an instruction's start the way objtool lists it.

With -mindirect-branch-cs-prefix (kernels 6.0+) calls to the r8-r15 retpoline thunks carry a CS
segment prefix (``2e e8 rel32``, "cs call") and objtool lists the site at the prefix, one byte
before the opcode.  Sources are gcc-compiled with the kernel's tables written in inline asm.
"""

from __future__ import annotations

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kconfig import KernelConfig
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.modcheck import (
    ModuleCheckError,
    check_objtool_sites,
)

from tests.unit.engine_cc import compile_c

CONFIG = KernelConfig.parse("CONFIG_RETPOLINE=y\n")
LISTED = r"""
extern void __x86_indirect_thunk_r15(void);
void calls_through_r15(void)
{
    asm volatile("1: .byte 0x2e\n\tcall __x86_indirect_thunk_r15\n"
                 ".pushsection .retpoline_sites,\"a\"\n.long 1b - .\n.popsection");
}
"""


def test_cs_prefixed_call_listed_at_its_prefix_passes(tmp_path):
    obj = compile_c(LISTED, tmp_path)
    assert check_objtool_sites(obj, CONFIG).retpolines == 1


def test_cs_prefixed_call_not_listed_is_refused(tmp_path):
    unlisted = LISTED.replace('".pushsection .retpoline_sites,\\"a\\"\\n.long 1b - .\\n.popsection"', '""')
    assert unlisted != LISTED
    obj = compile_c(unlisted, tmp_path)
    with pytest.raises(ModuleCheckError, match=r"indirect call through __x86_indirect_thunk_r15 not listed"):
        check_objtool_sites(obj, CONFIG)
