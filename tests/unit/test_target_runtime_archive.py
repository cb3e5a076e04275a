"""The target runtime archive: reproducible bytes, importable as ``kpatch_target``, atomic publishing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from ansible.errors import AnsibleLookupError

from ansible_collections.kpatch.livepatch.plugins.lookup.target_runtime import (
    ELF_LAYER, SOURCES, archive_bytes, publish, runtime_sources)


def copy_sources(dest: Path) -> Path:
    dest.mkdir()
    for path in runtime_sources():
        shutil.copy(path, dest)
    return dest


def test_archive_holds_every_runtime_file_under_the_package(tmp_path: Path) -> None:
    names = sorted(p.name for p in Path(SOURCES).glob("*.py"))
    assert "loader.py" in names
    archive = Path(publish(archive_bytes(runtime_sources()), str(tmp_path)))
    elf = sorted(Path(p).name for p in ELF_LAYER)
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == sorted([f"kpatch_target/_target/{n}" for n in names]
                                               + [f"kpatch_target/_elf/{n}" for n in elf]
                                               + ["kpatch_target/__init__.py", "kpatch_target/boot.py",
                                                  "kpatch_target/info.py"])
        for n in names:
            assert zf.read(f"kpatch_target/_target/{n}") == (Path(SOURCES) / n).read_bytes()
        for path in ELF_LAYER:
            assert zf.read(f"kpatch_target/_elf/{Path(path).name}") == Path(path).read_bytes()


def test_archive_carries_every_module_the_runtime_imports(tmp_path: Path) -> None:
    """Each runtime module imports from the archive alone (-I: no collection on the path), and the
    ELF layer in it reads a real module's .modinfo: nothing the runtime imports was left out."""
    archive = publish(archive_bytes(runtime_sources()), str(tmp_path / "cache"))
    modules = [Path(p).stem for p in runtime_sources() if not p.endswith("__init__.py")]
    obj = tmp_path / "plain.o"
    subprocess.run(["gcc", "-c", "-x", "c", "-", "-o", str(obj)], input=b"int x;\n", check=True)
    code = ("import importlib, sys; sys.path.insert(0, sys.argv[1]);"
            " [importlib.import_module('kpatch_target._target.' + m) for m in sys.argv[3:]];"
            " from kpatch_target._target.modinfo import ModinfoError, read_modinfo\n"
            "try:\n    read_modinfo(sys.argv[2])\nexcept ModinfoError as exc:\n    print(exc)")
    proc = subprocess.run([sys.executable, "-B", "-I", "-c", code, archive, str(obj), *modules],
                          capture_output=True, text=True, check=False, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "no .modinfo section" in proc.stdout


def test_bytes_depend_only_on_names_and_contents(tmp_path: Path) -> None:
    first = archive_bytes(runtime_sources())
    copy = copy_sources(tmp_path / "copy")
    # Other mtimes and modes: the same archive.
    for path in copy.iterdir():
        path.touch()
        path.chmod(0o600)
    assert archive_bytes(runtime_sources(str(copy))) == first
    (copy / "boot.py").write_text((copy / "boot.py").read_text() + "\n# changed\n")
    assert archive_bytes(runtime_sources(str(copy))) != first


def test_boot_service_command_runs_from_the_archive(tmp_path: Path) -> None:
    archive = publish(archive_bytes(runtime_sources()), str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-B", "-I", "-c",
                           "import sys; sys.path.insert(0, sys.argv[1]); import runpy;"
                           " sys.argv = ['boot', '--help']; runpy.run_module('kpatch_target.boot', run_name='__main__')",
                           archive], capture_output=True, text=True, check=False, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "kpatch_target.boot" in proc.stdout
    assert "--install-dir" in proc.stdout


def test_publish_reuses_the_same_content_and_leaves_no_temporary(tmp_path: Path) -> None:
    data = archive_bytes(runtime_sources())
    cache = tmp_path / "cache"
    first = Path(publish(data, str(cache)))
    stamp = first.stat().st_mtime_ns
    assert Path(publish(data, str(cache))) == first
    assert first.stat().st_mtime_ns == stamp
    # A damaged cached file with the right name is rewritten, not trusted.
    first.write_bytes(b"damaged")
    assert Path(publish(data, str(cache))).read_bytes() == data
    assert sorted(p.name for p in cache.iterdir()) == [first.name]


def test_not_a_runtime_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "other.py").write_text("x = 1\n")
    with pytest.raises(AnsibleLookupError, match="not the target runtime package"):
        runtime_sources(str(tmp_path))
    with pytest.raises(AnsibleLookupError, match="not readable"):
        runtime_sources(str(tmp_path / "missing"))


def test_base64_format_is_the_archive_the_role_writes_with_one_shell_command(tmp_path: Path) -> None:
    """format=base64 through Ansible, decoded by base64(1) as on the host: the published archive's bytes."""
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "b64.txt"
    play = tmp_path / "play.yml"
    play.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.copy:\n"
        f"        content: \"{{{{ lookup('kpatch.livepatch.target_runtime', format='base64', cache_dir='{tmp_path}') }}}}\"\n"
        f"        dest: {out}\n        mode: '0644'\n")
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           "-e", f"ansible_python_interpreter={sys.executable}", str(play)],
                          cwd=repo, capture_output=True, text=True, check=False, timeout=300,
                          env={**os.environ, "ANSIBLE_CONFIG": str(repo / "ansible.cfg")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = out.read_text()
    decoded = subprocess.run(["base64", "-d"], input=text.encode(), capture_output=True, check=True).stdout
    assert decoded == archive_bytes(runtime_sources())
    # Sent as one argument of the shell command: well under the kernel's 128 KiB per argument.
    assert len(text) < 96 * 1024, len(text)


def test_info_command_prints_the_facts_kpatch_info_returns(tmp_path: Path) -> None:
    """``python3 -m kpatch_target.info`` from the archive alone gives gather_info's facts (what the
    apply playbook reads instead of running kpatch_info on a host whose runtime is current)."""
    from ansible_collections.kpatch.livepatch.plugins.module_utils._target.facts import gather_info  # pylint: disable=import-outside-toplevel

    archive = publish(archive_bytes(runtime_sources()), str(tmp_path / "cache"))
    install = tmp_path / "install"
    (install / os.uname().release).mkdir(parents=True)
    (install / os.uname().release / "not_a_module.ko").write_bytes(b"not ELF")
    proc = subprocess.run([sys.executable, "-B", "-I", "-c",
                           "import sys; sys.path.insert(0, sys.argv[1]); import runpy;"
                           " sys.argv = ['info', '--install-dir', sys.argv[2]];"
                           " runpy.run_module('kpatch_target.info', run_name='__main__')",
                           archive, str(install)], capture_output=True, text=True, check=False, cwd=tmp_path,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    facts = json.loads(proc.stdout)
    assert facts == json.loads(json.dumps(gather_info(str(install))))
    assert [r["name"] for r in facts["installed"]] == ["not_a_module"] and facts["installed"][0]["error"]
