"""Build identity and input checks of ``_kbuild/pipeline.py``: signing inputs and the compiler.

The request points at small stand-in files (a config, a "vmlinux" that is an object gcc compiled
here, headers with a ``scripts/sign-file``); nothing is built.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.compiler import host_compiler
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.request import (
    BuildRequest,
    check_inputs,
    distro_defaults,
    request_from_params,
    signature_hash,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.results import build_compiler, cache_key
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError


@pytest.fixture
def req(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "Makefile").write_text("VERSION = 6\n")
    (tmp_path / "headers" / "scripts").mkdir(parents=True)
    (tmp_path / "headers" / "Makefile").write_text("")
    (tmp_path / "headers" / "scripts" / "sign-file").write_text("#!/bin/sh\n")
    (tmp_path / "config").write_text('CONFIG_MODULES=y\nCONFIG_LIVEPATCH=y\nCONFIG_MODULE_SIG_HASH="sha512"\n')
    (tmp_path / "p.patch").write_text("--- a/x.c\n+++ b/x.c\n")
    for name in ("key-a.pem", "key-b.pem", "cert-a.pem", "cert-b.pem"):
        (tmp_path / name).write_text(f"stand-in {name}\n")
    vmlinux = tmp_path / "vmlinux"
    if shutil.which("gcc"):
        (tmp_path / "k.c").write_text("int k(void) { return 1; }\n")
        subprocess.run(["gcc", "-c", "-o", str(vmlinux), str(tmp_path / "k.c")], check=True)
    else:
        vmlinux.write_bytes(b"")
    return BuildRequest(patches=[tmp_path / "p.patch"], release="6.1.0-50-cloud-amd64", source_dir=tmp_path / "src",
                        config=tmp_path / "config", vmlinux=vmlinux, headers=tmp_path / "headers",
                        cache_dir=tmp_path / "cache", output_dir=tmp_path / "out", name="livepatch-x")


def signed(req, key="key-a.pem", cert="cert-a.pem"):
    base = req.patches[0].parent
    return replace(req, signing_key=base / key, signing_cert=base / cert)


def test_the_signing_key_is_part_of_the_build_identity(req):
    keys = {cache_key(req), cache_key(signed(req)), cache_key(signed(req, key="key-b.pem")),
            cache_key(signed(req, cert="cert-b.pem"))}
    assert len(keys) == 4
    assert cache_key(signed(req)) == cache_key(signed(req))


def test_signing_inputs_are_checked_before_any_work(req):
    check_inputs(signed(req))
    base = req.patches[0].parent
    cases = {
        "key without cert": (replace(req, signing_key=base / "key-a.pem"), r"needs both signing_key and signing_cert"),
        "missing key": (signed(req, key="nope.pem"), r"signing_key .*nope\.pem does not exist"),
        "missing cert": (signed(req, cert="nope.pem"), r"signing_cert .*nope\.pem does not exist"),
    }
    for what, (request, pattern) in cases.items():
        with pytest.raises(KbuildError, match=pattern):
            check_inputs(request)
        assert not (base / "cache").exists(), what
    (base / "headers" / "scripts" / "sign-file").unlink()
    with pytest.raises(KbuildError, match=r"cannot sign: .*scripts/sign-file not found"):
        check_inputs(signed(req))


def test_a_pkcs11_key_is_not_a_file(req):
    request = replace(signed(req), signing_key="pkcs11:token=kernel;object=signing")
    check_inputs(request)
    assert cache_key(request) != cache_key(signed(req))


def test_signature_hash_follows_the_kernel_config(req):
    assert signature_hash(req) == "sha512"
    req.config.write_text("CONFIG_LIVEPATCH=y\n")
    assert signature_hash(req) == "sha256"


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("objcopy") is None, reason="needs gcc and objcopy")
def test_a_skipped_compiler_check_keys_the_build_on_the_host_compiler(req, tmp_path):
    # The stand-in vmlinux was compiled by this gcc: skipping a check that passes changes nothing.
    assert build_compiler(req) is None
    assert build_compiler(replace(req, skip_compiler_check=True)) is None
    assert cache_key(replace(req, skip_compiler_check=True)) == cache_key(req)
    data = tmp_path / "comment.bin"
    data.write_bytes(b"\0GCC: (GNU) 11.4.1 20231218 (Red Hat 11.4.1-3)\0")
    other = tmp_path / "vmlinux-other"
    subprocess.run(["objcopy", "--remove-section", ".comment", "--add-section", f".comment={data}", str(req.vmlinux),
                    str(other)], check=True)
    foreign = replace(req, vmlinux=other, toolchain_root="never")
    assert build_compiler(foreign) is None
    assert build_compiler(replace(foreign, skip_compiler_check=True)) == host_compiler()
    assert cache_key(replace(foreign, skip_compiler_check=True)) != cache_key(foreign)
    # With a toolchain root (a Debian release, the default "auto"), the kernel's own compiler
    # builds it: the key is the one of a host that has that compiler.
    rooted = replace(foreign, toolchain_root="auto", skip_compiler_check=True)
    assert req.release.startswith("6.1.0-") and build_compiler(rooted) is None


def test_fuzz_is_checked_with_the_inputs_and_keys_the_build(req):
    assert cache_key(replace(req, fuzz=1)) != cache_key(req)
    with pytest.raises(KbuildError, match="fuzz must be 0, 1 or 2"):
        check_inputs(replace(req, fuzz=3))


def os_release_root(tmp_path, distro_id, version):
    (tmp_path / "etc").mkdir(parents=True, exist_ok=True)
    (tmp_path / "etc" / "os-release").write_text(f"ID={distro_id}\nVERSION_ID=\"{version}\"\n")
    return tmp_path


def test_default_paths_come_from_the_host_distributions_plan(tmp_path):
    rpm = distro_defaults("5.14.0-362.8.1.el9_3.x86_64", os_release_root(tmp_path / "rocky", "rocky", "9.3"))
    root = tmp_path / "rocky"
    assert rpm["headers"] == root / "usr/src/kernels/5.14.0-362.8.1.el9_3.x86_64"
    assert rpm["vmlinux"] == root / "usr/lib/debug/lib/modules/5.14.0-362.8.1.el9_3.x86_64/vmlinux"
    deb = distro_defaults("6.1.0-50-cloud-amd64", os_release_root(tmp_path / "deb", "debian", "12"))
    root = tmp_path / "deb"
    assert deb["headers"] == root / "usr/src/linux-headers-6.1.0-50-cloud-amd64"
    assert deb["vmlinux"] == root / "usr/lib/debug/boot/vmlinux-6.1.0-50-cloud-amd64"
    assert deb["debug_modules_dir"] == root / "usr/lib/debug/lib/modules/6.1.0-50-cloud-amd64"
    assert deb["modules_dir"] == root / "lib/modules/6.1.0-50-cloud-amd64"
    with pytest.raises(KbuildError, match="distribution 'arch' is not supported"):
        distro_defaults("6.1.0-50-cloud-amd64", os_release_root(tmp_path / "arch", "arch", ""))


def test_explicit_paths_need_no_distribution_and_keep_their_values(tmp_path):
    params = {"patches": ["/p.patch"], "release": "6.1.0-50-cloud-amd64", "source_dir": str(tmp_path),
              "config": "/c", "vmlinux": "/v", "headers": "/h", "modules_dir": "/m", "fuzz": 2}
    req = request_from_params(params, "ignored")
    assert (str(req.config), str(req.vmlinux), str(req.headers), str(req.modules_dir)) == ("/c", "/v", "/h", "/m")
    assert req.fuzz == 2 and req.oot is None
