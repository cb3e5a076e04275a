"""Build the kernel modules the target-side tests load: real kbuild output, made at test time.

- ``livepatch_sample``: the kernel's own samples/livepatch/livepatch-sample.c (patches
  ``cmdline_proc_show``: /proc/cmdline then reads "this has been live patched").
- ``livepatch_replace``: the same sample turned into an atomic-replace patch with its own text.
- ``kpatch_stall_target`` + ``livepatch_stall``: our fixture whose transition stalls on purpose.
- ``livepatch_otherrel``: the sample with its vermagic rewritten to another release (same
  length, so the ELF layout is intact), to be refused.
- ``livepatch_tampered``: the sample with one .modinfo byte changed (sha256 mismatch).
- ``sample_v2``: the sample with another message under the same module name (a different build).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.testbed.kbuild import build_external_module, copy_sample
from tests.testbed.kernels import KernelArtifacts, TestbedError

KMODS = Path(__file__).resolve().parent
SAMPLE_TEXT = "this has been live patched"
REPLACE_TEXT = "replaced by livepatch_replace"


@dataclass(frozen=True)
class TestModules:
    sample: Path
    replace: Path
    stall_target: Path
    stall_patch: Path
    other_release: Path
    tampered: Path
    other_release_name: str
    sample_v2: Path  # same module name as sample, different code


def _replace_source(sample: str) -> str:
    """The sample with ``.replace = true`` and its own message, so the two are told apart."""
    text, count = re.subn(r"(static struct klp_patch patch = \{\n)", r"\1\t.replace = true,\n", sample)
    if count != 1 or SAMPLE_TEXT not in text:
        raise TestbedError("livepatch-sample.c changed shape: cannot derive the replace variant")
    return text.replace(SAMPLE_TEXT, REPLACE_TEXT)


def rewrite_vermagic(src: Path, dest: Path, release: str, new_release: str) -> None:
    """Copy a module with ``vermagic=<release>`` rewritten (same length keeps offsets valid)."""
    if len(new_release) != len(release):
        raise ValueError("the new release must have the same length as the old one")
    data = src.read_bytes()
    old = f"vermagic={release} ".encode()
    if data.count(old) != 1:
        raise TestbedError(f"{src}: expected exactly one '{old.decode()}' string")
    dest.write_bytes(data.replace(old, f"vermagic={new_release} ".encode()))


def other_release_of(release: str) -> str:
    """A plausible different release of the same length: bump the ABI number (6.1.0-50 → -51)."""
    match = re.match(r"^(\d+\.\d+\.\d+-)(\d+)(.*)$", release)
    if match:
        abi = int(match.group(2))
        bumped = str(abi + 1 if len(str(abi + 1)) == len(match.group(2)) else abi - 1)
        return match.group(1) + bumped + match.group(3)
    return release[:-1] + ("x" if release[-1] != "x" else "y")


def build_test_modules(art: KernelArtifacts, workdir: Path) -> TestModules:
    sample_src = copy_sample(art, "samples/livepatch/livepatch-sample.c")
    sample = build_external_module(art, workdir / "sample", {"livepatch-sample.c": sample_src},
                                   "livepatch-sample")
    replace = build_external_module(art, workdir / "replace",
                                    {"livepatch-replace.c": _replace_source(sample_src)},
                                    "livepatch-replace")
    stall_target = build_external_module(
        art, workdir / "stall_target",
        {"kpatch_stall_target.c": (KMODS / "kpatch_stall_target.c").read_text()},
        "kpatch_stall_target")
    stall_patch = build_external_module(
        art, workdir / "stall_patch", {"livepatch_stall.c": (KMODS / "livepatch_stall.c").read_text()},
        "livepatch_stall")
    sample_v2 = build_external_module(
        art, workdir / "sample_v2",
        {"livepatch-sample.c": sample_src.replace(SAMPLE_TEXT, SAMPLE_TEXT + " (v2)")},
        "livepatch-sample")
    other_name = other_release_of(art.release)
    other = workdir / "livepatch-otherrel.ko"
    rewrite_vermagic(sample, other, art.release, other_name)
    tampered = workdir / "livepatch-tampered.ko"
    data = bytearray(sample.read_bytes())
    at = data.find(b"license=GPL")
    if at < 0:
        raise TestbedError(f"{sample}: no license=GPL in .modinfo to tamper with")
    data[at + len("license=")] = ord("g")
    tampered.write_bytes(bytes(data))
    return TestModules(sample=sample, replace=replace, stall_target=stall_target,
                       stall_patch=stall_patch, other_release=other, tampered=tampered,
                       other_release_name=other_name, sample_v2=sample_v2)


_CACHE: dict = {}


def cached_test_modules(release: str = "") -> "tuple[KernelArtifacts, TestModules]":
    """Build once per test process (in a temporary directory) and reuse."""
    import tempfile
    from tests.testbed.kernels import DEFAULT_RELEASE, fetch_kernel
    release = release or DEFAULT_RELEASE
    if release not in _CACHE:
        art = fetch_kernel(release, with_dbg=False)
        workdir = Path(tempfile.mkdtemp(prefix="kpatch-test-kmods-"))
        _CACHE[release] = (art, build_test_modules(art, workdir))
    return _CACHE[release]


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys
    from tests.testbed.kernels import fetch_kernel
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/kpatch-test-kmods")
    if out.exists():
        shutil.rmtree(out)
    print(build_test_modules(fetch_kernel(with_dbg=False), out))
