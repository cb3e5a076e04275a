"""The include scan behind patched-header mapping (``_kbuild/includes.py``, ``_kbuild/headers.py``).

Small synthetic kernel-shaped trees written to tmp_path; the scan runs the real ``grep``.  The
real 6.1 tree is covered in tests/integration/test_kbuild_headers.py.
"""

import os
from pathlib import Path

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.headers import (
    MAX_HEADER_CANDIDATES,
    header_candidates,
    opaque_objects,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.includes import (
    GRAPH_CACHE,
    load_include_graph,
    scan_includes,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.objects import (
    kbuild_variables,
    object_goal,
    objects_for_sources,
    read_config,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.prepared import STAMP_NAME, PreparedTree
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError, StepLog

CONFIG = "CONFIG_MODULES=y\nCONFIG_64BIT=y\nCONFIG_PROC_FS=y\nCONFIG_FOO=m\nCONFIG_MMU=y\n"


def write(root: Path, files: dict) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def closure_sources(root: Path, header: str) -> set:
    return {f for f in scan_includes(root).closure(header).files if f.endswith((".c", ".S"))}


# --------------------------------------------------------------------------- the scan


def test_includers_are_found_through_other_headers(tmp_path):
    root = write(tmp_path, {
        "include/linux/target.h": "static inline int target(void) { return 1; }\n",
        "include/linux/middle.h": "#ifndef M\n#define M\n#include <linux/target.h>\n#endif\n",
        "fs/a/local.h": '  #  include <linux/middle.h>  /* through two headers */\n',
        "fs/a/user.c": '#include "local.h"\nint f(void) { return target(); }\n',
        "fs/a/direct.c": "#include <linux/target.h>\n",
        "fs/a/other.c": "#include <linux/other.h>\n// #include <linux/target.h> in a comment line is not an include\n",
        "include/linux/other.h": "int other;\n",
    })
    graph = scan_includes(root)
    closure = graph.closure("include/linux/target.h")
    assert {"include/linux/middle.h", "fs/a/local.h", "fs/a/user.c", "fs/a/direct.c"} <= closure.files
    assert "fs/a/other.c" not in closure.files and not closure.everything
    assert graph.direct_includers("include/linux/target.h") == {"include/linux/middle.h", "fs/a/direct.c"}


def test_quoted_names_beside_the_includer_are_exact_angle_brackets_match_by_suffix(tmp_path):
    root = write(tmp_path, {
        "fs/proc/internal.h": "int proc_internal;\n",
        "fs/proc/meminfo.c": '#include "internal.h"\n',  # the file beside it: fs/proc/internal.h itself
        "mm/internal.h": "int mm_internal;\n",
        "mm/vmscan.c": '#include "internal.h"\n',  # beside it is mm/internal.h: never fs/proc's
        "fs/proc_namespace.c": '#include "proc/internal.h"\n',  # beside: fs/proc/internal.h
        "fs/other/x.c": '#include "internal.h"\n',  # nothing beside: an -I directory may hold it
        "drivers/y.c": "#include <internal.h>\n",  # angle brackets: any -I directory
        "drivers/z.c": "#include <linux/internal.h>\n",  # names a linux/internal.h: not fs/proc's
        "drivers/w.c": '#include "../fs/proc/internal.h"\n',  # relative path that resolves to it
    })
    sources = closure_sources(root, "fs/proc/internal.h")
    assert sources == {"fs/proc/meminfo.c", "fs/proc_namespace.c", "fs/other/x.c", "drivers/y.c", "drivers/w.c"}
    assert closure_sources(root, "mm/internal.h") == {"mm/vmscan.c", "fs/other/x.c", "drivers/y.c"}


def test_c_file_included_by_another_c_file_maps_to_the_includer(tmp_path):
    root = write(tmp_path, {
        ".config": CONFIG,
        "include/linux/target.h": "int t;\n",
        "kernel/sched/psi.c": "#include <linux/target.h>\nint psi;\n",
        "kernel/sched/build_utility.c": '#include "psi.c"\n',
        "kernel/sched/Makefile": "obj-y += build_utility.o\n",
    })
    graph = scan_includes(root)
    assert {"kernel/sched/psi.c", "kernel/sched/build_utility.c"} <= graph.closure("include/linux/target.h").files
    cands = header_candidates(root, graph, "include/linux/target.h", read_config(root))
    assert cands.objects == ["kernel/sched/build_utility.o"]
    assert "#included by another file" in cands.skipped["kernel/sched/psi.c"]


def test_computed_includes_forced_includes_symlinks_and_other_architectures(tmp_path):
    root = write(tmp_path, {
        "arch/x86/include/generated/asm/.keep": "",  # prepared for x86
        "include/linux/drbd_genl.h": "int genl;\n",
        "include/linux/drbd_genl_api.h": "#define GENL_MAGIC_INCLUDE_FILE <linux/drbd_genl.h>\n",
        "include/linux/genl_magic_func.h": "#include GENL_MAGIC_INCLUDE_FILE\n",
        "drivers/block/drbd/drbd_nl.c": "#include <linux/drbd_genl_api.h>\n#include <linux/genl_magic_func.h>\n",
        "drivers/misc/weird.c": "#include I(REQUEST_BEGIN)\n",  # cannot be resolved: may include anything
        "drivers/acpi/tables.c": "#ifdef CONFIG_ACPI_CUSTOM_DSDT\n#include CONFIG_ACPI_CUSTOM_DSDT_FILE\n#endif\n",
        "include/uapi/linux/input-event-codes.h": "#define KEY_A 30\n",
        "drivers/input/keys.c": "#include <dt-bindings/input/linux-event-codes.h>\n",
        "include/linux/compiler_types.h": "#include <linux/compiler_attributes.h>\n",
        "include/linux/compiler_attributes.h": "#define __always_inline inline\n",
        "scripts/Makefile.lib": "c_flags = -Wp,-MMD $(LINUXINCLUDE) \\\n  -include $(srctree)/include/linux/compiler_types.h\n",
        "arch/x86/include/asm/foo.h": "int x86_foo;\n",
        "arch/arm/include/asm/bar.h": "#include <asm/foo.h>\n",  # arm headers never reach an x86 compile
        "arch/arm/kernel/setup.c": "#include <asm/foo.h>\n",
        "arch/x86/kernel/setup.c": "#include <asm/foo.h>\n",
        "arch/x86/kernel/uses_bar.c": "#include <asm/bar.h>\n",
        "tools/include/linux/foo.h": "#include <asm/foo.h>\n",  # tools/ is not on a kernel -I
        "lib/uses_tools.c": "#include <linux/foo.h>\n",
    })
    os.makedirs(root / "include/dt-bindings/input")
    os.symlink("../../uapi/linux/input-event-codes.h", root / "include/dt-bindings/input/linux-event-codes.h")
    graph = scan_includes(root)
    assert graph.arch == "x86" and graph.wildcards == ["drivers/misc/weird.c"]
    genl = graph.closure("include/linux/drbd_genl.h").files
    assert "drivers/block/drbd/drbd_nl.c" in genl and "drivers/acpi/tables.c" not in genl
    assert "drivers/input/keys.c" in graph.closure("include/uapi/linux/input-event-codes.h").files
    forced = graph.closure("include/linux/compiler_attributes.h")
    assert "compiler_types.h" in forced.everything
    asm_foo = graph.closure("arch/x86/include/asm/foo.h").files
    assert {"arch/x86/kernel/setup.c", "drivers/misc/weird.c", "tools/include/linux/foo.h"} <= asm_foo
    # tools/include/linux/foo.h includes it, but no -I of a kernel compile reaches tools/include
    assert "lib/uses_tools.c" not in asm_foo
    # an x86 compile never reaches arch/arm/include; arm's own files are never compiled here
    assert "arch/x86/kernel/uses_bar.c" not in graph.closure("arch/arm/include/asm/bar.h").files
    assert graph.area("arch/arm/kernel/setup.c") == "arch/arm" and graph.area("arch/x86/kernel/setup.c") == ""


def test_graph_is_cached_per_preparation_stamp(tmp_path):
    root = write(tmp_path / "tree", {"a.c": '#include "a.h"\n', "a.h": "int a;\n", STAMP_NAME: '{"prepared_at": 1}'})
    (root / "arch/x86/include/generated").mkdir(parents=True)
    (root / "Makefile").write_text("KBUILD_CFLAGS += -I$(srctree)/tools/include -include $(srctree)/a.h\n")
    first = load_include_graph(root, tmp_path)
    assert not first.cached and (tmp_path / GRAPH_CACHE).is_file()
    assert (first.arch, first.open_dirs, first.forced) == ("x86", ["tools/include"], [("", "a.h")])
    (root / "b.c").write_text('#include "a.h"\n')
    again = load_include_graph(root, tmp_path)
    assert again.cached and again.includes == first.includes  # same stamp: the scan is not repeated
    same = ("arch", "open_dirs", "forced", "symlinks")
    assert [getattr(again, f) for f in same] == [getattr(first, f) for f in same]
    (root / STAMP_NAME).write_text('{"prepared_at": 2}')
    rescanned = load_include_graph(root, tmp_path)
    assert not rescanned.cached and "b.c" in rescanned.includes


# --------------------------------------------------------------------------- Makefiles


def test_makefile_evaluation_follows_make_semantics(tmp_path):
    root = write(tmp_path, {
        ".config": CONFIG,
        # fs/proc: a top-level := replaces the no-MMU list
        "fs/proc/Makefile": "obj-y += proc.o\nproc-y := nommu.o\nproc-$(CONFIG_MMU) := task_mmu.o\nproc-y += base.o\n"
                            "ifdef CONFIG_X\nproc-y := cond_a.o\nelse\nproc-y := cond_b.o\nendif\n",
        # kvm: objects of a subdirectory without a Makefile, listed by the parent
        "arch/x86/kvm/Makefile": "obj-$(CONFIG_FOO) += kvm-intel.o\nkvm-intel-y += vmx/vmx.o\n",
        # x86's 32/64-bit variants
        "arch/x86/kernel/Makefile": "obj-y += irq_$(BITS).o\n",
        # foo-objs is a variable of its own, not foo-y
        "fs/c/Makefile": "obj-m += c.o\nc-objs := a.o\nc-y := $(c-objs)\n",
        # a directory the parent enables only under a disabled option
        "drivers/Makefile": "obj-$(CONFIG_BAR) += bar/\n",
        "drivers/bar/Makefile": "obj-y += bar.o\n",
    })
    config = read_config(root)
    variables = dict(kbuild_variables(root / "fs/proc", config))
    assert variables["proc-y"] == ["task_mmu.o", "base.o", "cond_a.o", "cond_b.o"]
    objects = ("fs/proc/nommu.o", "fs/proc/task_mmu.o", "fs/proc/cond_a.o", "arch/x86/kvm/vmx/vmx.o",
               "arch/x86/kernel/irq_64.o", "arch/x86/kernel/irq_32.o", "drivers/bar/bar.o", "fs/c/a.o")
    goals = {o: object_goal(root, o, config) for o in objects}
    assert goals["fs/proc/nommu.o"].kind == "unlisted"
    assert goals["fs/proc/task_mmu.o"].kind == goals["fs/proc/cond_a.o"].kind == "vmlinux"
    assert (goals["arch/x86/kvm/vmx/vmx.o"].kind, goals["arch/x86/kvm/vmx/vmx.o"].module) == ("module", "kvm-intel")
    assert goals["arch/x86/kernel/irq_64.o"].kind == "vmlinux" and goals["arch/x86/kernel/irq_32.o"].kind == "unlisted"
    assert goals["drivers/bar/bar.o"].kind == "unconfigured" and "CONFIG_BAR" in goals["drivers/bar/bar.o"].reason
    assert (goals["fs/c/a.o"].kind, goals["fs/c/a.o"].module) == ("module", "c")


def test_objects_without_a_source_in_the_pristine_tree_are_opaque(tmp_path):
    root = write(tmp_path, {
        ".config": CONFIG,
        "crypto/Makefile": "obj-y += rsa.o rsapubkey.asn1.o\nobj-$(CONFIG_NOPE) += gone.asn1.o\n"
                           "obj-y += composite.o\ncomposite-y := rsa.o\n",
        "crypto/rsa.c": "int rsa;\n",
    })
    assert sorted(opaque_objects(root, read_config(root), None)) == ["crypto/rsapubkey.asn1.o"]


# --------------------------------------------------------------------------- decisions


def prepared(root: Path, log: Path) -> PreparedTree:
    return PreparedTree(root=root, source=root, release="6.1.0-test", make_vars=("LOCALVERSION=",),
                        config_sha256="", source_identity="", reused=True, seconds=0.0, log=StepLog(log))


def test_too_many_candidates_is_refused_without_building_anything(tmp_path):
    users = {f"drivers/d{i}/u.c": '#include <linux/popular.h>\nint u(void) { return 0; }\n'
             for i in range(MAX_HEADER_CANDIDATES + 1)}
    makefiles = {f"drivers/d{i}/Makefile": "obj-y += u.o\n" for i in range(MAX_HEADER_CANDIDATES + 1)}
    root = write(tmp_path / "tree", {".config": CONFIG, "include/linux/popular.h": "int p;\n", **users, **makefiles})
    tree = prepared(root, tmp_path / "build.log")
    with pytest.raises(KbuildError) as info:
        objects_for_sources(tree, ["include/linux/popular.h"], full_build_fallback=False)
    message = str(info.value)
    assert "include/linux/popular.h" in message and f"{MAX_HEADER_CANDIDATES + 1} candidate objects" in message
    assert "full_build_fallback is off" in message
    log = tree.log.path.read_text()
    assert "header-candidates" in log and "compile" not in log and "full-build" not in log
    assert not list(root.rglob("*.o")) and not (tmp_path / "build.log.out").exists()  # make never ran


def test_forced_header_is_refused_naming_the_forced_include(tmp_path):
    root = write(tmp_path / "tree", {
        ".config": CONFIG,
        "Makefile": "LINUXINCLUDE := -I$(srctree)/include -include $(srctree)/include/linux/kconfig.h\n",
        "include/linux/kconfig.h": "#include <generated/autoconf.h>\n",
        "include/generated/autoconf.h": "#define CONFIG_MMU 1\n",
    })
    with pytest.raises(KbuildError, match=r"include/generated/autoconf.h: every object includes it .*kconfig\.h"):
        objects_for_sources(prepared(root, tmp_path / "build.log"), ["include/generated/autoconf.h"])


# A stand-in for kbuild: single-object goals compiled by gcc, the dependency list written as a
# kbuild ``.<obj>.cmd`` record (``deps_<obj> := \`` then one dependency per line).
FAKE_KBUILD = """\
.PHONY: FORCE
%.o: %.c FORCE
\tgcc -nostdinc -c -MD -MF $(@D)/.$(@F).d -Iinclude -o $@ $<
\tsh mkcmd.sh $@
"""
MKCMD = """\
d=$(dirname "$1")/.$(basename "$1")
{ printf 'deps_%s := \\\\\n' "$1"
  sed -e 's/^[^:]*://' -e 's/\\\\$//' "$d.d" | tr ' ' '\\n' | grep -v '^$' | sed 's/$/ \\\\/'
  echo; } > "$d.cmd"
"""


def test_header_map_compiles_candidates_and_reads_their_records(tmp_path):
    root = write(tmp_path / "tree", {
        ".config": CONFIG, "Makefile": FAKE_KBUILD, "mkcmd.sh": MKCMD,
        "include/linux/target.h": "static inline int target(void) { return 1; }\n",
        "fs/a/Makefile": "obj-y += uses.o quoted.o\nobj-$(CONFIG_NOPE) += off.o\n",
        "fs/a/uses.c": "#include <linux/target.h>\nint uses(void) { return target(); }\n",
        "fs/a/quoted.c": '#if 0\n#include "target.h"\n#endif\nint quoted;\n',  # a candidate its record rules out
        "fs/a/off.c": "#include <linux/target.h>\n",  # unconfigured: never compiled
    })
    result = objects_for_sources(prepared(root, tmp_path / "build.log"), ["include/linux/target.h"])
    assert (root / "fs/a/.uses.o.cmd").read_text().splitlines()[:3] == [
        "deps_fs/a/uses.o := \\", "fs/a/uses.c \\", "include/linux/target.h \\"]
    assert result.objects["include/linux/target.h"] == ["fs/a/uses.o"]
    assert result.goals["fs/a/uses.o"].kind == "vmlinux"
    assert (root / "fs/a/quoted.o").is_file() and not (root / "fs/a/off.o").exists()
    assert "2 compiled candidates" in result.header_basis["include/linux/target.h"]
    log = (tmp_path / "build.log").read_text()
    for step in ("include-graph", "header-candidates", "opaque-objects", "compile-candidates", "header-users"):
        assert step in log, step
