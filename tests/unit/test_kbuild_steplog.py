"""_kbuild/steplog.run_logged: the environment a build's commands see."""

from __future__ import annotations

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import (
    KBUILD_ENVIRONMENT,
    StepLog,
    run_logged,
)

MAKEFILE = ('all:\n\t@echo "ran KCPPFLAGS=[$(KCPPFLAGS)] ARCH=[$(ARCH)] OUT=[$(KBUILD_OUTPUT)] '
            'PIN=[$(KBUILD_SIGN_PIN)] MINE=[$(MINE)]"\n')


def test_kbuild_variables_from_the_environment_never_reach_make(tmp_path, monkeypatch):
    """A CI job's ``make -n`` (MAKEFLAGS=n), stray flags, another ARCH or output tree: make runs its
    recipe, with none of them; the signing passphrase and the caller's own variables still pass."""
    (tmp_path / "Makefile").write_text(MAKEFILE)
    for key, value in {"MAKEFLAGS": "n", "KCPPFLAGS": "-DSTRAY", "ARCH": "arm64", "KBUILD_OUTPUT": "/elsewhere",
                       "KBUILD_SIGN_PIN": "secret"}.items():
        monkeypatch.setenv(key, value)
    proc = run_logged(StepLog(tmp_path / "build.log"), ["make", "-C", str(tmp_path)], env={"MINE": "kept"})
    assert "ran KCPPFLAGS=[] ARCH=[] OUT=[] PIN=[secret] MINE=[kept]" in proc.stdout.splitlines(), proc.stdout


def test_the_scrubbed_variables_are_kbuilds_and_makes():
    """The list is what it says: kbuild's documented flag, toolchain and tree variables and make's own."""
    assert {"KCFLAGS", "KCPPFLAGS", "KAFLAGS", "CROSS_COMPILE", "LLVM", "KBUILD_OUTPUT", "MAKEFLAGS"} <= KBUILD_ENVIRONMENT
    assert not {"PATH", "HOME", "LC_ALL", "KBUILD_SIGN_PIN", "TMPDIR"} & KBUILD_ENVIRONMENT
