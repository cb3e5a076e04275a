"""7.2's config has CONFIG_RUST=y, but the toolchain root has no rustc/bindgen: ``olddefconfig``
turns Rust off in the prepared tree.  No C object the corpus builds may differ because of it.

The proof is made on the real prepared 7.2 tree with the kernel's gcc-16 (in its toolchain root):
each corpus source file is preprocessed with the exact kbuild command of its object twice, once
with the tree's ``autoconf.h`` and once with one that carries the distribution config's Rust
settings (CONFIG_RUST=y, the rustc/bindgen versions, ...).  The same compiler, flags and
preprocessed text make the same object.  Kbuild's C flags do not depend on CONFIG_RUST on this
config (only the kCFI block does, and CONFIG_CFI is off; CONFIG_RUST selects
EXTENDED_MODVERSIONS only with MODVERSIONS, which is off): the test checks both premises.
``lib/vsprintf.c``, which tests IS_ENABLED(CONFIG_RUST), shows that the comparison sees a difference.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.patching import changed_files
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.pipeline import (
    FUNCTION_SECTIONS,
    patch_include_dir,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prepared import tree_lock
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.tree import build_objects
from tests.integration.corpus import build_cache, load_corpus, release_tree
from tests.integration.corpus_patches import R72
from tests.testbed.kernels import fetch_kernel

pytestmark = pytest.mark.integration

# The symbols that follow from Rust being available; the other settings olddefconfig changes
# (signing key, compiler text) are the build's own and not this question.
RUST_SYMBOL = re.compile(r"^CONFIG_\w*(RUST|BINDGEN|NOVA_CORE)\w*$")
CONTROL = "lib/vsprintf.c"


def config_settings(text: str) -> Dict[str, str]:
    """``CONFIG_X`` -> its value (``n`` for "is not set")."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(CONFIG_\w+)=(.*)$", line) or re.match(r"^# (CONFIG_\w+) is not set$", line)
        if m:
            out[m.group(1)] = m.group(2) if m.lastindex == 2 else "n"
    return out


def with_settings(autoconf: str, settings: Dict[str, str]) -> str:
    """``autoconf.h`` text with ``settings`` (symbol -> Kconfig value) written as Kconfig writes them."""
    names = set(settings) | {f"{name}_MODULE" for name in settings}
    kept = [line for line in autoconf.splitlines() if not (line.startswith("#define ") and line.split()[1] in names)]
    for name, value in sorted(settings.items()):
        if value == "y":
            kept.append(f"#define {name} 1")
        elif value == "m":
            kept.append(f"#define {name}_MODULE 1")
        elif value != "n":
            kept.append(f"#define {name} {value}")
    return "\n".join(kept) + "\n"


def preprocess_argv(tree_root: Path, obj: str, output: Path, include_first: Path) -> List[str]:
    """The object's saved kbuild compile command, made to preprocess into ``output``."""
    cmd_file = tree_root / Path(obj).parent / f".{Path(obj).name}.cmd"
    saved = re.search(r"^savedcmd_\S+ := (.*)$", cmd_file.read_text(), re.M)
    assert saved, f"{cmd_file} has no savedcmd line"
    words = shlex.split(saved.group(1))
    # The compile only: objtool and other post-processing follow it after ";" or "&&".
    ends = [i for i, w in enumerate(words) if w in (";", "&&") or w.endswith(";")]
    words = words[:ends[0]] if ends else words
    assert "-c" in words and "-o" in words, saved.group(1)
    argv: List[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word == "-o":
            skip = True
            continue
        if word == "-c" or word.startswith("-Wp,-MMD"):
            continue
        argv.append(word)
    # First on the search path: <generated/autoconf.h> (included by kconfig.h) is found here.
    # -P: no line markers, which would name the two autoconf.h files' different paths.
    return [argv[0], f"-I{include_first}", *argv[1:], "-E", "-P", "-o", str(output)]


@pytest.fixture(scope="module")
def kernel_7_2():
    return fetch_kernel(R72)


def corpus_objects(release: str) -> List[str]:
    sources = {f for cp in load_corpus(release) for f in changed_files(cp.patch).all if f.endswith(".c")}
    return sorted(s[:-2] + ".o" for s in sources)


def rust_dependent(tree, toolchain, objects: List[str], rust: Dict[str, str], work: Path) -> List[str]:
    """The objects whose preprocessed source differs with ``rust``'s settings in ``autoconf.h``."""
    missing = [o for o in objects if not (tree.root / Path(o).parent / f".{Path(o).name}.cmd").is_file()]
    if missing:
        # The corpus builds' flags, so that their next build finds these objects up to date.
        build_objects(tree, missing, f"{FUNCTION_SECTIONS} -I{patch_include_dir(build_cache())}",
                      build_cache() / "rust-config" / R72)
    alt = work / "rust-on"
    (alt / "generated").mkdir(parents=True)
    autoconf = (tree.root / "include" / "generated" / "autoconf.h").read_text()
    (alt / "generated" / "autoconf.h").write_text(with_settings(autoconf, rust))
    off = work / "rust-off"  # empty: the tree's own autoconf.h is found
    off.mkdir()

    def preprocessed(obj: str, include_first: Path) -> bytes:
        out = work / f"{obj.replace('/', '_')}.{include_first.name}.i"
        argv = preprocess_argv(tree.root, obj, out, include_first)
        if toolchain.root is not None:
            argv = toolchain.root.wrap(argv, tree.root, [tree.root, work])
        proc = subprocess.run(argv, cwd=tree.root, capture_output=True, text=True, check=False, timeout=300)
        assert proc.returncode == 0, f"{obj}: {proc.stderr[-2000:]}"
        return out.read_bytes()

    return [o for o in objects if preprocessed(o, off) != preprocessed(o, alt)]


def test_rust_off_in_the_tree_changes_no_corpus_object(kernel_7_2, tmp_path):
    distro = config_settings(Path(kernel_7_2.config).read_text())
    assert distro.get("CONFIG_RUST") == "y", "the 7.2 config no longer enables Rust: this test has nothing to prove"
    # Premises for "C flags do not depend on CONFIG_RUST" (top Makefile, init/Kconfig).
    assert distro.get("CONFIG_CFI", "n") == "n" and distro.get("CONFIG_MODVERSIONS", "n") == "n"
    objects = corpus_objects(R72)
    assert len(objects) >= 20, objects
    control = CONTROL[:-2] + ".o"
    with release_tree(kernel_7_2, "rust-config") as (tree, toolchain):
        # The tree lock: corpus builds apply their patches to this tree's sources while they run.
        with tree_lock(tree.state_dir):
            final = config_settings((tree.root / ".config").read_text())
            rust = {k: v for k, v in distro.items() if RUST_SYMBOL.match(k) and final.get(k, "n") != v}
            assert rust.get("CONFIG_RUST") == "y" and final.get("CONFIG_RUST", "n") == "n", rust
            differing = rust_dependent(tree, toolchain, [control, *objects], rust, tmp_path)
    assert differing[:1] == [control], \
        f"{CONTROL} tests IS_ENABLED(CONFIG_RUST): the Rust autoconf.h did not reach the compiler"
    assert differing[1:] == [], f"objects whose preprocessed source depends on the Rust settings: {differing[1:]}"
