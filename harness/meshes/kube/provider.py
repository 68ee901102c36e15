"""The kind and existing-cluster meshes' providers: their options, checks and openers.

pytest-kind already registers --cluster-name, --keep-cluster, --kubeconfig, --kind-image, --kind-bin and
--kind-kubectl-bin; they are used as they are, not redefined.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from harness.core.manifests import PROJECT_ROOT
from harness.core.mesh import Mesh, MeshCapabilities, MeshError
from harness.core.provider import MeshProvider, OptionGroup, progress, start_diagnostics_dir
from harness.core.timeouts import Timeouts
from harness.meshes.kube.install_options import (
    ENV_APP_IMAGE,
    ENV_CHART_REPO,
    ENV_HUB,
    ENV_VALUES,
    InstallOptionError,
    InstallOptions,
)

OBSERVABILITY_HELMFILE = PROJECT_ROOT / "observability" / "helmfile.yaml"
TELEMETRY_MANIFEST = PROJECT_ROOT / "observability" / "telemetry-session-tag.yml"
INSTALL_OPTIONS = pytest.StashKey[InstallOptions]()


def add_istio_version_option(group: OptionGroup) -> None:
    """The Istio version a Kubernetes mesh installs (kind) or builds (istiod)."""
    group.addoption("--istio-version", default=None,
                    help="Istio version: the chart version for --mesh kind (default: the one pinned in "
                    "helmfile.yaml), the Istio release built for --mesh istiod")


def _add_install_options(group: OptionGroup, *, kind: bool) -> None:
    """Where Istio's charts and the app's image come from; kind also chooses Istio's hub and values."""
    group.addoption("--istio-chart-repo", default=None, metavar="URL",
                    help=f"kind/cluster: Helm repository of Istio's charts instead of helmfile.yaml's (a mirror; "
                    f"also ${ENV_CHART_REPO})")
    group.addoption("--app-image", default=None, metavar="IMAGE",
                    help=f"kind/cluster: the echo app's image instead of python:3.12-slim (also ${ENV_APP_IMAGE})")
    if kind:
        group.addoption("--istio-hub", default=None, metavar="HUB",
                        help=f"kind: Istio's global.hub for istiod and the proxies it injects (also ${ENV_HUB})")
        group.addoption("--istio-values", action="append", default=[], metavar="[RELEASE=]FILE",
                        help=f"kind: a values file over helm/values/ for a release of helmfile.yaml (plain FILE: "
                        f"istiod), repeatable, later wins; recorded in the report as a known difference (also "
                        f"${ENV_VALUES}, ':'-separated)")


def _check_install_options(config: pytest.Config, mesh: str) -> None:
    """The install options are checked before anything starts: one line on the first problem."""
    from harness.meshes.kube import helmfile, install_options

    try:
        config.stash[INSTALL_OPTIONS] = install_options.from_sources(
            chart_repo=config.getoption("--istio-chart-repo"),
            hub=config.getoption("--istio-hub") if mesh == "kind" else None,
            app_image=config.getoption("--app-image"),
            values=config.getoption("--istio-values") if mesh == "kind" else [],
            releases=helmfile.release_names(),
            environ=os.environ if mesh == "kind" else {name: os.environ[name] for name in
                                                        (ENV_CHART_REPO, ENV_APP_IMAGE) if name in os.environ})
    except (InstallOptionError, MeshError) as error:
        raise pytest.UsageError(str(error)) from None


def _check_kubeconfig(config: pytest.Config, mesh: str) -> None:
    """A ``--kubeconfig`` (or, for an existing cluster, ``KUBECONFIG``) that is not a kubeconfig: one line."""
    kubeconfig = config.getoption("--kubeconfig", default=None)
    if kubeconfig:
        problem = kubeconfig_problem(Path(kubeconfig))
        if problem:
            raise pytest.UsageError(f"--kubeconfig {kubeconfig}: {problem}")
    elif mesh == "cluster":
        for name in filter(None, os.environ.get("KUBECONFIG", "").split(os.pathsep)):
            problem = kubeconfig_problem(Path(name))
            if problem:
                raise pytest.UsageError(f"KUBECONFIG {name}: {problem}")


def kubeconfig_problem(path: Path) -> str:
    """Why ``path`` is not a kubeconfig ("" when it looks like one)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        return f"cannot read it ({error.strerror})"
    except yaml.YAMLError:
        return "not YAML, so not a kubeconfig"
    if not isinstance(data, dict) or data.get("kind", "Config") != "Config" or not isinstance(
            data.get("clusters"), list):
        return "not a kubeconfig (no `kind: Config` with a `clusters` list)"
    return ""


def install_options_of(config: pytest.Config) -> InstallOptions:
    return config.stash.get(INSTALL_OPTIONS, InstallOptions())


class KindProvider(MeshProvider):
    """A kind cluster the suite creates (or reuses with --keep-cluster), with Istio installed by Helm."""

    name = "kind"

    def add_options(self, group: OptionGroup) -> None:
        add_istio_version_option(group)
        group.addoption("--monitoring", action="store_true",
                        help="kind: also install Prometheus and Grafana (observability/helmfile.yaml) and check "
                        "per-pod metrics against what clients saw")
        _add_install_options(group, kind=True)

    def check_options(self, config: pytest.Config) -> None:
        _check_kubeconfig(config, self.name)
        _check_install_options(config, self.name)

    def versions_from_options(self, config: pytest.Config) -> dict[str, str]:
        return {"envoy": "", "istio": str(config.getoption("--istio-version") or ""), "kubernetes": ""}

    def open(self, config: pytest.Config, timeouts: Timeouts) -> Mesh:
        return _open_kind(config, timeouts.for_cluster())


class ClusterProvider(MeshProvider):
    """The current kubeconfig's cluster, Istio already installed: the suite changes only its own namespace
    (and istiod's environment, with --allow-istiod-restart)."""

    name = "cluster"
    missing_front_doors: ClassVar[Mapping[str, str]] = {
        "sidecar": "the cluster mesh has no sidecar front door: kind's (harness/meshes/kube/sidecar_door.py) "
                   "reaches its client pod through a NodePort that kind maps to the host's loopback; a shared "
                   "cluster has no such mapping, and the suite does not expose a workload of its own there (run "
                   "--mesh kind or istiod --front-door sidecar)"}

    def add_options(self, group: OptionGroup) -> None:
        group.addoption("--allow-istiod-restart", action="store_true",
                        help="--mesh cluster: allow changing istiod's environment by helm upgrade (restarts a "
                        "shared control plane); without it, tests that need a flag change are skipped")
        group.addoption("--gateway-url", default=None,
                        help="--mesh cluster: the ingress gateway's URL (default: its LoadBalancer address)")
        _add_install_options(group, kind=False)

    def check_options(self, config: pytest.Config) -> None:
        _check_kubeconfig(config, self.name)
        _check_install_options(config, self.name)

    def versions_from_options(self, config: pytest.Config) -> dict[str, str]:
        return {"envoy": "", "istio": "", "kubernetes": ""}

    def open(self, config: pytest.Config, timeouts: Timeouts) -> Mesh:
        return _open_existing(config, timeouts.for_cluster())


def _open_kind(config: pytest.Config, timeouts: Timeouts) -> Mesh:
    from kubernetes.client import CoreV1Api

    from harness.meshes.kube.config import KubeMeshConfig
    from harness.meshes.kube.helmfile import default_istio_version
    from harness.meshes.kube.istio import IstioHelm
    from harness.meshes.kube.kind import KindLifecycle, cgroup_note, docker_cgroup_version
    from harness.meshes.kube.mesh import KubeMesh, api_client_from, run_namespace
    from harness.meshes.kube.prerequisites import check_kind_prerequisites
    from harness.meshes.kube.sidecar_door import kind_sidecar_door
    from harness.meshes.kube.supported import support_note

    check_kind_prerequisites()
    options = install_options_of(config)
    version = config.getoption("--istio-version") or default_istio_version()
    note = support_note(version)
    if note:
        progress(config, note)
    cgroup_version = docker_cgroup_version()
    progress(config, cgroup_note(cgroup_version))
    lifecycle = KindLifecycle(config.getoption("--cluster-name"), keep=config.getoption("--keep-cluster"),
                              image=config.getoption("--kind-image"), cgroup_v1=cgroup_version == "1")
    progress(config, f"creating or reusing kind cluster {lifecycle.name} (first time: about 1 minute)")
    try:
        created = time.monotonic()
        state = lifecycle.up()
        kind_seconds = time.monotonic() - created
        istio = IstioHelm(lifecycle.kubeconfig, version, timeouts.helm_install,
                          progress=lambda message: progress(config, message), options=options)
        capabilities = MeshCapabilities(known_differences=options.known_differences())
        monitoring = bool(config.getoption("--monitoring"))
        if monitoring:
            capabilities.metrics_source = "Prometheus istio_requests_total by pod (reporter=destination)"

        def install_istio() -> None:
            progress(config, f"installing Istio {version}"
                             f"{f' from {options.chart_repo}' if options.chart_repo else ''} "
                             "with Helm: base, istiod, gateway (about 1-2 minutes)")
            istio.install()
            lifecycle.remember_istio(version)

        def install_monitoring() -> None:
            progress(config, "installing Prometheus and Grafana (observability/helmfile.yaml, about 1 minute)")
            IstioHelm(lifecycle.kubeconfig, None, timeouts.helm_install, helmfile=OBSERVABILITY_HELMFILE).install()

        api_client = api_client_from(str(lifecycle.kubeconfig))
        namespace = run_namespace()
        door = None
        if config.getoption("--front-door") == "sidecar":
            door = kind_sidecar_door(CoreV1Api(api_client), namespace, timeouts, image=options.app_image,
                                     host_port=state.sidecar_host_port,
                                     progress=lambda message: progress(config, message))
        mesh = KubeMesh(api_client, KubeMeshConfig(
            "kind", f"http://127.0.0.1:{state.host_port}", timeouts, capabilities, istio=istio, own_host=True,
            namespace=namespace, front_door=door,
            app_image=options.app_image, diagnostics_dir=start_diagnostics_dir(config),
            stale_namespace_age=0.0,  # the suite's own cluster: every earlier run's namespace is stale
            restore_istiod_at_close=False,  # the next start installs helmfile.yaml's values again
            preparations=[install_istio, install_monitoring] if monitoring else [install_istio],
            extra_manifests=[TELEMETRY_MANIFEST] if monitoring else [],
            after_close=[lifecycle.close],
            started_at=created, setup_seconds={"kind_create": kind_seconds}))  # 0 s when a kept cluster is reused
    except BaseException:
        lifecycle.close()
        raise
    progress(config, f"deploying the app in namespace {mesh.namespace} (about 30 seconds)")
    return mesh.start()  # on failure: diagnostics, then the namespace and the cluster go, then a MeshError


STALE_NAMESPACE_AGE = 12 * 3600.0  # a shared cluster: only namespaces older than any run are left-overs


def _open_existing(config: pytest.Config, timeouts: Timeouts) -> Mesh:
    from kubernetes import config as kube_config
    from kubernetes.client import AppsV1Api, CoreV1Api
    from kubernetes.client.exceptions import ApiException

    from harness.meshes.kube import installed
    from harness.meshes.kube.config import KubeMeshConfig
    from harness.meshes.kube.istio import IstioHelm
    from harness.meshes.kube.mesh import GATEWAY_SELECTOR, ISTIO_NAMESPACE, KubeMesh, api_client_from
    from harness.meshes.kube.strategies import FoundIstiodControl, HelmIstiodControl, IstiodControl

    kubeconfig = config.getoption("--kubeconfig")
    try:
        api_client = api_client_from(kubeconfig)
        core = CoreV1Api(api_client)
        deployments = AppsV1Api(api_client).list_namespaced_deployment(
            ISTIO_NAMESPACE, label_selector=installed.ISTIOD_SELECTOR).items
        revision = installed.gateway_revision(core, ISTIO_NAMESPACE, GATEWAY_SELECTOR)
    except kube_config.ConfigException as error:
        raise MeshError(f"no usable kubeconfig ({error}); point --kubeconfig or KUBECONFIG at your cluster") from None
    except ApiException as error:
        raise MeshError(f"cannot reach the cluster: {error.reason}") from None
    istiod = installed.choose_istiod(deployments, revision)
    image = str(istiod.spec.template.spec.containers[0].image)
    version = installed.istio_version_from_image(image) or f"unknown (image {image})"
    allowed = bool(config.getoption("--allow-istiod-restart"))
    reason = "" if allowed else ("changing istiod's environment restarts a shared control plane; pass "
                                 "--allow-istiod-restart to allow it")
    istio: IstioHelm | None = None
    control: IstiodControl
    if allowed:
        istio = _istiod_release(config, Path(kubeconfig) if kubeconfig else None, istiod.metadata.name, revision,
                                timeouts)
        control = HelmIstiodControl(istio)
    else:
        control = FoundIstiodControl(version, installed.deployment_env(istiod), reason)
        progress(config, f"using the current cluster: Istio {version} ({istiod.metadata.name})")
    capabilities = MeshCapabilities(can_set_istiod_env=allowed, reason_no_istiod_env=reason)
    gateway_url = config.getoption("--gateway-url") or _load_balancer_url(core, ISTIO_NAMESPACE)
    mesh = KubeMesh(api_client, KubeMeshConfig(
        "cluster", gateway_url, timeouts, capabilities, istio=istio, istiod_control=control, own_host=True,
        app_image=install_options_of(config).app_image, diagnostics_dir=start_diagnostics_dir(config),
        stale_namespace_age=STALE_NAMESPACE_AGE))
    return mesh.start()


def _istiod_release(config: pytest.Config, kubeconfig: Path | None, deployment: str, revision: str,
                    timeouts: Timeouts) -> Any:
    """The Helm release of the istiod that serves the gateway, ready to be upgraded (or a MeshError saying
    why not: no Helm, an install Helm does not manage, a release left pending, a chart that cannot be had)."""
    from harness.meshes.kube import installed
    from harness.meshes.kube.istio import PENDING, IstioHelm, pending_message
    from harness.meshes.kube.mesh import ISTIO_NAMESPACE
    from harness.meshes.kube.prerequisites import HELM, missing_tools

    missing = missing_tools([HELM])
    if missing:
        raise MeshError("--allow-istiod-restart changes istiod by helm upgrade:\n" + "\n".join(missing))
    helm = IstioHelm(kubeconfig, None, timeouts.helm_install, plan=[])
    release = installed.find_istiod_release(helm.client(), ISTIO_NAMESPACE, revision)
    if release is None:
        raise MeshError(installed.not_helm_message(deployment, ISTIO_NAMESPACE))
    if release.status in PENDING:
        raise MeshError(pending_message(release))
    istio = IstioHelm.for_installed(kubeconfig, release, timeouts.helm_install,
                                    progress=lambda message: progress(config, message),
                                    repo_url=install_options_of(config).chart_repo)
    istio.check_chart(istio.istiod)
    progress(config, f"using the current cluster: Istio {release.chart_version}, Helm release {release.name} "
                     f"(revision {release.revision}, {release.status})")
    return istio


def _load_balancer_url(core: Any, namespace: str) -> str:
    service = core.read_namespaced_service("istio-ingressgateway", namespace)
    ingress = (service.status.load_balancer.ingress or []) if service.status.load_balancer else []
    if not ingress:
        raise MeshError("the istio-ingressgateway Service has no external address; pass --gateway-url")
    host = ingress[0].ip or ingress[0].hostname
    return f"http://{host}:80"
