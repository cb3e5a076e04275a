# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""What one kpatch_build build is asked to do: the request, its defaults and its input checks.

The defaults for the kernel's config, vmlinux, headers and module directories come from the
build host's distribution plan (``distro.py``); every input is checked before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.acquire import (
    SourceAcquisition,
    detect_distro,
    source_request,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.distro import plan_for
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kconfig import KernelConfig
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.kmod import default_module_name, kmod_sources, module_name
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.oot import OotModule, check_oot_inputs
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.patching import check_fuzz
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError


@dataclass
class BuildRequest:
    """Everything one build needs; paths are on the build host."""

    patches: List[Path]
    release: str
    source_dir: Path
    config: Path
    vmlinux: Path
    headers: Path
    cache_dir: Path
    output_dir: Path
    name: Optional[str] = None
    replace: bool = True
    modules_dir: Optional[Path] = None
    jobs: int = 2
    skip_compiler_check: bool = False
    signing_key: Optional[Path] = None
    signing_cert: Optional[Path] = None
    # A patched header included by too many objects to compile them one by one needs one full
    # build of the cached tree (about 10 minutes for vmlinux on 2 cores, then cached); False
    # refuses such a patch instead.
    full_build_fallback: bool = True
    # Set when no source_dir was given: source_dir is then where acquire_source puts the tree.
    acquire: Optional[SourceAcquisition] = None
    # Context lines a hunk may ignore (GNU patch --fuzz); 0 applies exactly.
    fuzz: int = 0
    # The distro's debug modules (/usr/lib/debug/lib/modules/<release>): their compile units say
    # which module an object links into.  None: modules.order and the Makefiles decide.
    debug_modules_dir: Optional[Path] = None
    # An out-of-tree module to patch instead of the kernel: its built .ko and its source directory.
    oot_module: Optional[Path] = None
    oot_module_src: Optional[Path] = None
    # When the host's compiler is not the kernel's: "auto" compiles in a toolchain root of the
    # kernel's own suite with exactly its compiler (toolroot.py); "never" refuses (or, with
    # skip_compiler_check, uses the host's).  The mirror defaults to the host's Debian archive.
    toolchain_root: str = "auto"
    toolchain_root_mirror: Optional[str] = None
    # The hook sources (kmod/); None: the collection's own (the action plugin passes its copy).
    kmod_dir: Optional[Path] = None
    # The hook's files as first read (``hook_sources``); carried by ``replace`` to the checked request.
    hook_files: Optional[Dict[str, bytes]] = field(default=None, repr=False, compare=False)

    @property
    def hook_sources(self) -> Dict[str, bytes]:
        """The hook's files (``kmod_sources``), read once: the checks, the cache key, the patch
        headers and the module link all see the same bytes."""
        if self.hook_files is None:
            self.hook_files = kmod_sources(self.kmod_dir)
        return self.hook_files

    @property
    def kernel_config(self) -> KernelConfig:
        """The distro's config of the release, parsed once per build."""
        return KernelConfig.read(Path(self.config))

    @property
    def oot(self) -> Optional[OotModule]:
        return OotModule(Path(self.oot_module), Path(self.oot_module_src)) if self.oot_module else None

    @property
    def module_name(self) -> str:
        return module_name(self.name) if self.name else default_module_name(self.patches[0])


# --------------------------------------------------------------------------- inputs


def check_inputs(req: BuildRequest) -> BuildRequest:
    """Every named input exists and the kernel can take live patches — before any work.

    Returns the request to build: the same, with the patches' paths made absolute.
    """
    if not req.patches:
        raise KbuildError("no patch given")
    for patch in req.patches:
        if not Path(patch).is_file():
            raise KbuildError(f"patch {patch} does not exist")
    # patch(1) runs inside the tree: relative names must not depend on the caller's directory.
    req = replace(req, patches=[Path(p).resolve() for p in req.patches])
    if bool(req.oot_module) != bool(req.oot_module_src):
        raise KbuildError("an out-of-tree module needs both oot_module (its .ko) and oot_module_src (its source)")
    if req.oot:
        check_oot_inputs(req.oot)
    # An acquired source is fetched after these checks (and only when the module is not cached);
    # an out-of-tree module is built from its own source against the headers.
    source_check = (req.source_dir / "Makefile", f"kernel source tree {req.source_dir} (no Makefile there)")
    checks = [] if req.acquire or req.oot else [source_check]
    checks += [(req.config, f"kernel config {req.config}"),
               (req.vmlinux, f"vmlinux with debug symbols {req.vmlinux} (install the kernel's debuginfo/-dbg package)"),
               (req.headers / "Makefile", f"kernel headers {req.headers} (no Makefile there)")]
    for path, what in checks:
        if not Path(path).exists():
            raise KbuildError(f"missing {what}")
    if req.kernel_config.values.get("CONFIG_LIVEPATCH") != "y":
        raise KbuildError(f"kernel {req.release} has no CONFIG_LIVEPATCH=y in {req.config}: it cannot load livepatch modules")
    check_fuzz(req.fuzz)
    # The hook's files are all there before any work; read once here, the build uses these bytes.
    req = replace(req, hook_files=kmod_sources(req.kmod_dir))
    if bool(req.signing_key) != bool(req.signing_cert):
        raise KbuildError("signing needs both signing_key and signing_cert")
    if req.signing_key:
        check_signing_inputs(req)
    return req


def is_pkcs11(key: object) -> bool:
    return str(key).startswith("pkcs11:")


def sign_file_path(req: BuildRequest) -> Path:
    return Path(req.headers) / "scripts" / "sign-file"


def signature_hash(req: BuildRequest) -> str:
    """The kernel's module signature digest (``CONFIG_MODULE_SIG_HASH``), sha256 when not set."""
    return req.kernel_config.signature_hash


def check_signing_inputs(req: BuildRequest) -> None:
    """The signing key, its certificate and the release's ``sign-file`` exist (no compile before this)."""
    sign_file = sign_file_path(req)
    if not sign_file.is_file():
        raise KbuildError(f"cannot sign: {sign_file} not found in the kernel headers {req.headers} "
                          "(Debian ships it in linux-kbuild-X.Y)")
    if not is_pkcs11(req.signing_key) and not Path(str(req.signing_key)).is_file():
        raise KbuildError(f"signing_key {req.signing_key} does not exist (a PEM private key file or a pkcs11: URI)")
    if not Path(str(req.signing_cert)).is_file():
        raise KbuildError(f"signing_cert {req.signing_cert} does not exist (the X.509 certificate of signing_key, "
                          "PEM or DER)")


# --------------------------------------------------------------------------- defaults


def distro_defaults(release: str, root: Path = Path("/")) -> Dict[str, Path]:
    """Where the build host's distribution keeps a release's config, vmlinux, headers and modules.

    From the per-distro plan (``distro.plan_for``), so an RPM host gets ``/usr/src/kernels/<release>``
    and ``/usr/lib/debug/lib/modules/<release>/vmlinux``, a Debian host its own paths.
    """
    distro, version = detect_distro(root)
    layout = plan_for(distro, version, release)
    return {
        "config": root / layout.config_path.lstrip("/"),
        "vmlinux": root / layout.vmlinux_path.lstrip("/"),
        "headers": root / layout.headers_path.lstrip("/"),
        "modules_dir": root / layout.modules_path.lstrip("/"),
        "debug_modules_dir": root / layout.debug_modules_path.lstrip("/"),
    }


def default_config(boot_config: Path, headers: Path) -> Path:
    """``/boot/config-<release>``, else the headers' ``.config`` (the config the kernel was built with:
    Debian's adds only CONFIG_BUILD_SALT and the module-signing settings of its build)."""
    headers_config = Path(headers) / ".config"
    return headers_config if not Path(boot_config).is_file() and headers_config.is_file() else Path(boot_config)


_DEFAULTED = ("config", "vmlinux", "headers", "modules_dir")


def _host_defaults(params: Dict[str, object], release: str) -> Dict[str, Path]:
    """The distro's paths for what ``params`` leaves out; none needed when every path is given."""
    if all(params.get(key) for key in _DEFAULTED):
        try:  # only the optional debug modules are left to default
            return {"debug_modules_dir": distro_defaults(release)["debug_modules_dir"]}
        except KbuildError:
            return {}
    try:
        return distro_defaults(release)
    except KbuildError as exc:
        missing = ", ".join(key for key in _DEFAULTED if not params.get(key))
        raise KbuildError(f"no default for {missing}: {exc}; pass {missing}") from exc


def request_from_params(params: Dict[str, object], running_release: str) -> BuildRequest:
    """BuildRequest from the kpatch_build module's parameters, with the host distribution's defaults."""
    release = str(params.get("release") or running_release)
    defaults = _host_defaults(params, release)

    def path_or(key: str, default: Optional[Path]) -> Optional[Path]:
        value = params.get(key)
        return Path(str(value)) if value else default

    headers = path_or("headers", defaults.get("headers"))
    cache_dir = path_or("cache_dir", Path("/var/cache/kpatch-build"))
    oot_src = path_or("oot_module_src", None)
    source = path_or("source_dir", oot_src)  # an out-of-tree module needs no kernel source
    acquire = None
    if source is None:  # the distro's own source of the exact package version, fetched into the cache
        acquire = source_request(release, cache_dir, str(params.get("package_version") or "") or None)  # type: ignore[arg-type]
        source = acquire.final_dir
    patches: Sequence[object] = params.get("patches") or []  # type: ignore[assignment]
    boot_config = defaults.get("config")
    config = path_or("config", default_config(boot_config, headers) if boot_config and headers else None)
    return BuildRequest(
        patches=[Path(str(p)) for p in patches], release=release, source_dir=source, acquire=acquire,
        config=config,  # type: ignore[arg-type]
        vmlinux=path_or("vmlinux", defaults.get("vmlinux")), headers=headers, cache_dir=cache_dir,  # type: ignore[arg-type]
        output_dir=path_or("output_dir", Path("/var/lib/kpatch-build/modules")), name=params.get("name") or None,  # type: ignore[arg-type]
        replace=bool(params.get("replace", True)), modules_dir=path_or("modules_dir", defaults.get("modules_dir")),
        jobs=int(params.get("jobs") or 2), skip_compiler_check=bool(params.get("skip_compiler_check")),
        signing_key=path_or("signing_key", None), signing_cert=path_or("signing_cert", None),
        full_build_fallback=bool(params.get("full_build_fallback", True)),
        fuzz=int(params.get("fuzz") or 0),  # type: ignore[call-overload]
        debug_modules_dir=path_or("debug_modules_dir", defaults.get("debug_modules_dir")),
        oot_module=path_or("oot_module", None), oot_module_src=oot_src,
        toolchain_root=str(params.get("toolchain_root") or "auto"),
        toolchain_root_mirror=str(params["toolchain_root_mirror"]) if params.get("toolchain_root_mirror") else None,
        kmod_dir=path_or("kmod_dir", None),
    )
