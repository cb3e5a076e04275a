"""Pure helpers of ``_kbuild/tree.py`` and the Makefile evaluation of ``_kbuild/objects.py``.

The real-tree behaviour (prepare, build, patch on Debian's 6.1 source) is in
tests/integration/test_kbuild_tree.py; these cover the decisions on small inputs.
"""

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.objects import object_goal, objects_for_sources
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError, StepLog
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.tree import (
    config_differences,
    makefile_version,
    release_settings,
    validate_release,
)
from tests.unit.kbuild_trees import make_tree


def test_debian_release_overrides_kernelversion():
    # 6.1.176 sources are released as 6.1.0-50-cloud-amd64: no suffix can turn one into the other
    assert release_settings("6.1.176", "6.1.0-50-cloud-amd64", "") == (
        ("KERNELVERSION=6.1.0-50-cloud-amd64", "LOCALVERSION="), None)


def test_rpm_style_release_uses_localversion_file():
    assert release_settings("5.14.0", "5.14.0-362.8.1.el9_3.x86_64", "") == (
        ("LOCALVERSION=",), "-362.8.1.el9_3.x86_64")


def test_config_localversion_is_accounted_for():
    vars_, lv = release_settings("6.5.6", "6.5.6-300.fc39.x86_64+debug", "+debug")
    assert (vars_, lv) == (("LOCALVERSION=",), "-300.fc39.x86_64")
    with pytest.raises(KbuildError, match="does not end with it"):
        release_settings("6.5.6", "6.5.6-300.fc39.x86_64", "-rt")


def test_release_equal_to_makefile_version():
    assert release_settings("6.1.176", "6.1.176", "") == (("LOCALVERSION=",), None)


@pytest.mark.parametrize("bad", ["", "6.1 0", "../6.1", "x" * 65, "-6.1"])
def test_invalid_releases(bad):
    with pytest.raises(KbuildError, match="invalid kernel release"):
        validate_release(bad)


def test_makefile_version(tmp_path):
    (tmp_path / "Makefile").write_text("# SPDX\nVERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 107\nEXTRAVERSION = -rc1\n")
    assert makefile_version(tmp_path) == "6.12.107-rc1"
    with pytest.raises(KbuildError, match="not a kernel source tree"):
        makefile_version(tmp_path / "nowhere")


def test_config_differences_ignores_tool_versions():
    distro = "CONFIG_GCC_VERSION=120200\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\n"
    final = "CONFIG_GCC_VERSION=130100\nCONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=\"\"\n"
    assert config_differences(distro, final) == ["CONFIG_B", "CONFIG_C", "CONFIG_D"]


# --------------------------------------------------------------------------- Makefile evaluation

MAKEFILE = """\
obj-$(CONFIG_FOO) += foo.o
obj-$(CONFIG_BAR) += bar.o
obj-y += always.o \\
         cont.o
obj-$(CONFIG_NOPE) += gone.o
lib-y += lib1.o
obj-$(CONFIG_COMP) += comp.o
comp-y := comp_main.o
comp-$(CONFIG_EXTRA) += comp_extra.o
obj-$(if $(CONFIG_WEIRD),y) += weird.o
obj-$(subst m,y,$(CONFIG_BAR)) += substituted.o
"""
CONFIG = "CONFIG_MODULES=y\nCONFIG_FOO=y\nCONFIG_BAR=m\nCONFIG_COMP=m\nCONFIG_EXTRA=y\n"


@pytest.fixture
def kdir(tmp_path):
    d = tmp_path / "drivers" / "x"
    d.mkdir(parents=True)
    (d / "Makefile").write_text(MAKEFILE)
    (tmp_path / ".config").write_text(CONFIG)
    return tmp_path


@pytest.mark.parametrize("obj, kind, module", [
    ("foo.o", "vmlinux", None),
    ("bar.o", "module", "bar"),
    ("cont.o", "vmlinux", None),
    ("lib1.o", "vmlinux", None),
    ("comp_main.o", "module", "comp"),
    ("comp_extra.o", "module", "comp"),
    ("gone.o", "unconfigured", None),
    ("never.o", "unlisted", None),
    ("substituted.o", "vmlinux", None),
])
def test_object_goal(kdir, obj, kind, module):
    goal = object_goal(kdir, f"drivers/x/{obj}")
    assert (goal.kind, goal.module) == (kind, module), goal.reason


def test_object_goal_undecidable_expression(kdir):
    goal = object_goal(kdir, "drivers/x/weird.o")
    assert goal.kind == "undecided"
    assert "cannot be evaluated without running make" in goal.reason


def test_objects_for_sources_on_small_tree(tmp_path):
    tree = make_tree(tmp_path)
    (tree.root / ".config").write_text("CONFIG_MODULES=y\n")
    (tree.root / "fs/proc/included.c").write_text("int included;\n")
    (tree.root / "fs/proc/meminfo.c").unlink()
    (tree.root / "fs/proc/meminfo.c").write_text('#include "included.c"\n')
    result = objects_for_sources(tree, ["fs/proc/meminfo.c", "fs/proc/included.c", "include/linux/mm.h",
                                        "arch/x86/lib/memcpy_64.S", "fs/proc/Makefile", "fs/proc/missing.c"])
    # no file of the tree includes mm.h: the complete answer is "no object", not "cannot be decided"
    # a .c compiled only as part of another (kbuild's unity builds) maps to the including object
    assert result.objects == {"fs/proc/meminfo.c": ["fs/proc/meminfo.o"], "fs/proc/included.c": ["fs/proc/meminfo.o"],
                              "include/linux/mm.h": []}
    assert result.goals["fs/proc/meminfo.o"].kind == "vmlinux"
    assert "fs/proc/included.c" not in result.undecided
    assert "include/linux/mm.h" not in result.undecided and "0 compiled" in result.header_basis["include/linux/mm.h"]
    assert "assembly" in result.undecided["arch/x86/lib/memcpy_64.S"]
    assert "build-system" in result.undecided["fs/proc/Makefile"]
    assert "does not exist" in result.undecided["fs/proc/missing.c"]
    assert isinstance(tree.log, StepLog) and "objects-for-sources" in tree.log.path.read_text()


# --------------------------------------------------------------------------- cache stamp


def test_stamp_invalidated_by_input_or_config_edit(tmp_path):
    from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.tree import (
        sha256_file,
        stamp_matches,
        write_stamp,
    )

    root = tmp_path / "tree"
    root.mkdir()
    (root / ".config").write_text("CONFIG_MODULES=y\n")
    wanted = {"format": 1, "release": "6.1.0-50-cloud-amd64", "config_sha256": "abc", "source_identity": "src"}
    assert not stamp_matches(root, wanted)  # no stamp yet: never trusted
    write_stamp(root, {**wanted, "final_config_sha256": sha256_file(root / ".config")})
    assert stamp_matches(root, wanted)
    assert not stamp_matches(root, {**wanted, "config_sha256": "other"})
    assert not stamp_matches(root, {**wanted, "source_identity": "other source"})
    (root / ".config").write_text("CONFIG_MODULES=y\nCONFIG_EDITED=y\n")
    assert not stamp_matches(root, wanted)


def test_included_source_whose_includer_is_not_built_is_refused(tmp_path):
    tree = make_tree(tmp_path)
    (tree.root / ".config").write_text("CONFIG_MODULES=y\n")
    (tree.root / "fs/proc/included.c").write_text("int included;\n")
    (tree.root / "fs/proc/unbuilt.c").write_text('#include "included.c"\n')
    result = objects_for_sources(tree, ["fs/proc/included.c"])
    assert "fs/proc/included.c" not in result.objects
    assert ("#included by fs/proc/unbuilt.c, and none is known to be built: unbuilt.o is not named in "
            "fs/proc/Makefile") in result.undecided["fs/proc/included.c"]
