"""``sympos`` as the kernel counts it, proven in the booted Debian 6.1 kernel (kernel safety, item 5).

``net/ipv6/calipso.c`` has static ``calipso_doi_remove`` and ``calipso_doi_putdef``; NetLabel's
``net/netlabel/netlabel_calipso.c`` defines globals of the same names.  The livepatch core finds a
patched function and every livepatch relocation's symbol by counting all kallsyms entries of the
name, globals included: counted over locals only, both would get sympos 0 and the kernel would
refuse the patch as ambiguous (or, with a wrong position, bind the global).  The patch below changes
the static ``calipso_doi_remove`` (which calls the static ``calipso_doi_putdef``); the module must
load, its function must appear under ``<name>,<sympos>`` in sysfs, and each sympos must designate
the local entry (type ``t``) in the booted kernel's own ``/proc/kallsyms``.
"""

import difflib
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_build_kpatch_build import build, env, vm  # noqa: F401  pylint: disable=unused-import

pytestmark = pytest.mark.integration

REL = "net/ipv6/calipso.c"


def calipso_patch(source: Path, dest: Path) -> Path:
    text = (source / REL).read_text()
    start = text.index("static int calipso_doi_remove(")
    at = text.index('" calipso_doi=%u res=%u"', start)
    changed = text[:at] + '" calipso_doi=%u res=%u kpatch=1"' + text[at + len('" calipso_doi=%u res=%u"'):]
    dest.write_text("".join(difflib.unified_diff(text.splitlines(True), changed.splitlines(True),
                                                 f"a/{REL}", f"b/{REL}")))
    return dest


def klp_symbols(ko: Path) -> dict:
    out = subprocess.run(["readelf", "-sW", str(ko)], capture_output=True, text=True, check=True).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"\.klp\.sym\.vmlinux\.(\w+),(\d+)", out)}


def test_sympos_counts_globals_as_the_kernel_does(env, tmp_path):  # noqa: F811
    patch = calipso_patch(Path(env["args"]["source_dir"]), tmp_path / "calipso.patch")
    run = build(env, [patch], "livepatch-calipso")
    assert not run.failed, run.output
    assert [(o["object"], o["changed_functions"]) for o in run.result["objects"]] == \
        [("net/ipv6/calipso.o", ["calipso_doi_remove"])]
    ko = Path(run.result["module_path"])
    relocated = klp_symbols(ko)
    assert relocated.get("calipso_doi_putdef", 0) > 0, relocated  # a local with a global twin: never 0
    out = vm(env, {"/work/p.ko": ko}, r"""
insmod /work/p.ko || exit 10
wait_transition livepatch_calipso
ls /sys/kernel/livepatch/livepatch_calipso/vmlinux
echo "--- kallsyms"
grep -E ' (calipso_doi_remove|calipso_doi_putdef)$' /proc/kallsyms | cut -d' ' -f2-
unload livepatch_calipso
""")
    funcs, kallsyms = out.split("--- kallsyms")
    entry = re.search(r"calipso_doi_remove,(\d+)", funcs)
    assert entry, funcs
    kinds = {}
    for line in kallsyms.split("\n"):
        if line.strip():
            kind, name = line.split()
            kinds.setdefault(name, []).append(kind)
    # Both names are one global (T) and one local (t) in this kernel: the case the rule is about.
    assert sorted(kinds["calipso_doi_remove"]) == sorted(kinds["calipso_doi_putdef"]) == ["T", "t"], kinds
    # The kernel counts every entry of the name in kallsyms order: the position must be the local one.
    assert kinds["calipso_doi_remove"][int(entry.group(1)) - 1] == "t", (entry.group(0), kinds)
    assert kinds["calipso_doi_putdef"][relocated["calipso_doi_putdef"] - 1] == "t", (relocated, kinds)
