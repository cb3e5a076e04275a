"""tools/create-diff-object: kpatch's argument order, exit codes, printed lines and --json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.unit.engine_cc import TEST_STRUCT_SIZES, make_case

TOOL = Path(__file__).resolve().parents[2] / "tools" / "create-diff-object"
SRC = "int alpha(int x) { return x + 1; }\nint beta(int x) { return x * 2; }\n"
SIZE_ENV = {"BUG_STRUCT_SIZE": "12", "EX_STRUCT_SIZE": "12", "ALT_STRUCT_SIZE": "12", "JUMP_STRUCT_SIZE": "16",
            "PARA_STRUCT_SIZE": "16", "ORC_STRUCT_SIZE": "6", "STATIC_CALL_STRUCT_SIZE": "8",
            "PRINTK_INDEX_STRUCT_SIZE": "44", "PATH": "/usr/bin:/bin"}


def run_tool(case, *extra):
    argv = [sys.executable, str(TOOL), str(case.orig), str(case.patched), "vmlinux", str(case.parent),
            str(case.symvers), "test_patch", str(case.out), "--json", str(case.root / "summary.json"), *extra]
    proc = subprocess.run(argv, capture_output=True, text=True, env=SIZE_ENV, check=False)
    summary = json.loads((case.root / "summary.json").read_text())
    return proc, summary


def test_changes_exit_zero_and_print_kpatch_lines(tmp_path):
    case = make_case(tmp_path, SRC, SRC.replace("x + 1", "x + 5") + "int gamma(int x) { return x - 9; }\n")
    proc, summary = run_tool(case)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["x.o: changed function: alpha", "x.o: new function: gamma"]
    assert summary["status"] == "changed" and summary["changed_functions"] == ["alpha"]
    assert summary["new_functions"] == ["gamma"] and summary["output_size"] == case.out.stat().st_size
    assert set(summary["timings"]) >= {"read", "compare", "write"}


def test_no_changes_exit_three(tmp_path):
    case = make_case(tmp_path, SRC, SRC)
    proc, summary = run_tool(case)
    assert proc.returncode == 3 and "no changed functions" in proc.stdout
    assert summary["status"] == "no_changes" and not case.out.exists()


def test_rejection_exit_two_with_message(tmp_path):
    src = "int tunable = 5;\nint read_tunable(void) { return tunable; }\n"
    case = make_case(tmp_path, src, src.replace("= 5", "= 6"))
    proc, summary = run_tool(case)
    assert proc.returncode == 2
    assert "ERROR: data section .data.tunable changed" in proc.stderr
    assert summary["status"] == "rejected" and "tunable" in summary["error"] and not case.out.exists()


def test_unreadable_input_exit_one(tmp_path):
    case = make_case(tmp_path, SRC, SRC)
    case.patched.write_bytes(b"not an ELF file at all")
    proc, summary = run_tool(case)
    assert proc.returncode == 1 and "x.o" in proc.stderr
    assert summary["status"] == "error"


def test_struct_size_option_overrides_environment(tmp_path):
    case = make_case(tmp_path, SRC, SRC.replace("x + 1", "x + 5"))
    proc, _summary = run_tool(case, "--struct-size", "BUG=12")
    assert proc.returncode == 0
    proc = subprocess.run([sys.executable, str(TOOL), "a", "b", "c", "d", "e", "f", "g", "--struct-size", "NOPE=1"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "bad --struct-size 'NOPE=1'" in proc.stderr
    assert TEST_STRUCT_SIZES["BUG"] == 12


def test_bad_command_lines_exit_one_with_the_usage(tmp_path):
    """Usage errors exit 1 (the documented status for bad usage), never 2 (which means rejected)."""
    for argv, message in ((["a", "b"], "2 arguments given, 7 expected"),
                          (["a", "b", "c", "d", "e", "f", "g", "--bogus"], "unknown option --bogus"),
                          (["a", "b", "c", "d", "e", "f", "g", "--json"], "--json needs a value")):
        proc = subprocess.run([sys.executable, str(TOOL), *argv], capture_output=True, text=True, check=False)
        assert proc.returncode == 1 and message in proc.stderr and proc.stderr.startswith("usage: ")
    case = make_case(tmp_path, SRC, SRC.replace("x + 1", "x + 5"))
    proc = subprocess.run([sys.executable, str(TOOL), str(case.orig), str(case.patched), "vmlinux", str(case.parent),
                           str(case.symvers), "test_patch", str(case.out), "--json=" + str(tmp_path / "s.json"),
                           "--struct-size=BUG=12"], capture_output=True, text=True, env=SIZE_ENV, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "s.json").read_text())["status"] == "changed"


def test_runs_through_its_own_first_line_isolated_from_pythonpath(tmp_path):
    """Executed directly (``#!/usr/bin/env -S python3 -I -S``) the tool gives the same output as under
    the test's interpreter, and a PYTHONPATH shadowing a standard module it imports cannot reach it."""
    case = make_case(tmp_path, SRC, SRC.replace("x + 1", "x + 5"))
    proc, _summary = run_tool(case)
    assert proc.returncode == 0, proc.stderr
    expected = case.out.read_bytes()
    case.out.unlink()
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "struct.py").write_text("raise ImportError('PYTHONPATH reached create-diff-object')\n")
    direct = subprocess.run([str(TOOL), str(case.orig), str(case.patched), "vmlinux", str(case.parent),
                             str(case.symvers), "test_patch", str(case.out)], capture_output=True, text=True,
                            env={**SIZE_ENV, "PYTHONPATH": str(shadow)}, check=False)
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout == proc.stdout and case.out.read_bytes() == expected


# What a run of the tool never imports (each is milliseconds of every start, paid once per object):
# typing (annotations are strings), importlib.util (the reader's pyelftools flag is computed only
# when asked for), pyelftools, dataclasses and its inspect (_elf/record.py), re and enum
# (_engine/names.py, model.Status), contextlib, and array and collections (struct and memoryview).
START_UP_FREE = {"typing", "importlib.util", "elftools", "dataclasses", "inspect", "re", "enum", "contextlib",
                 "array", "collections", "functools"}


def test_a_whole_run_imports_nothing_off_its_start_up_path(tmp_path):
    """The engine's start-up, paid once per object: a full run (read, every pass, write) under
    ``python -I -S`` imports none of ``START_UP_FREE``."""
    case = make_case(tmp_path, SRC, SRC.replace("x + 1", "x + 5"))
    script = (
        "import sys\n"
        "path = %r\n"
        "tool = {'__name__': 'create_diff_object', '__file__': path}\n"
        "exec(compile(open(path).read(), path, 'exec'), tool)\n"
        "assert tool['main'](sys.argv[1:]) == 0\n"  # main itself: the __main__ block ends with os._exit
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n" % str(TOOL))
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", script, str(case.orig), str(case.patched), "vmlinux",
                           str(case.parent), str(case.symvers), "test_patch", str(case.out)],
                          capture_output=True, text=True, env=SIZE_ENV, check=False)
    assert proc.returncode == 0 and case.out.is_file(), proc.stderr
    modules = set(proc.stderr.split())
    assert "ansible_collections.kpatch.livepatch.plugins.module_utils._elf.writer" in modules  # it did write
    assert not modules & START_UP_FREE, sorted(modules & START_UP_FREE)
