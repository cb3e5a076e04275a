"""Taint decoding without a kernel tree: this machine's own mask, the edges of the decoder.

The table itself is checked against the kernel source's taint_flags[] in
tests/integration/test_target_taint_kernel.py.
"""

from __future__ import annotations

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._target.taint import (
    decode_taint, read_taint, taint_letters)


def test_read_taint_of_this_machine_round_trips():
    with open("/proc/sys/kernel/tainted") as fh:
        mask = int(fh.read())
    info = read_taint()
    assert info["mask"] == mask
    assert sum(1 << f["bit"] for f in info["flags"]) == mask
    assert info["names"] == [f["name"] for f in info["flags"]]


def test_no_bits_unknown_bits_and_bad_masks(tmp_path):
    assert decode_taint(0) == [] and taint_letters(0) == ""
    unknown = decode_taint(1 << 40)
    assert [(f.bit, f.name, f.letter) for f in unknown] == [(40, "bit_40", "?")]
    with pytest.raises(ValueError):
        decode_taint(-1)
    saved = tmp_path / "tainted"
    saved.write_text(f"{(1 << 12) | (1 << 40)}\n")
    info = read_taint(str(saved))
    assert info["mask"] == (1 << 12) | (1 << 40) and [f["bit"] for f in info["flags"]] == [12, 40]
