"""Everything the istiod mesh runs, started in order and stopped in reverse: one object to own it all.

Order: this mesh's own loopback addresses (``addresses.py``) -> Kubernetes control plane -> Istio's CRDs
and istiod's objects from its charts, its Deployment included -> istiod's pod run as a process, waited
for as a rollout -> the gateway's Service and pod object and pilot-agent with Envoy (the node agent comes
after, from ``node_agent``). ``stop`` undoes it all,
also after a failed start, so nothing outlives a run (processes, etcd data, temp dirs).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.core.mesh import MeshError
from harness.core.timeouts import Timeouts, poll
from harness.meshes.istiod import build
from harness.meshes.istiod.addresses import claim_addresses, free_port
from harness.meshes.istiod.control_plane import KubeControlPlane
from harness.meshes.istiod.istio import (
    GATEWAY_NOT_APPLIED,
    GATEWAY_POD,
    GATEWAY_RELEASE,
    ISTIO_NAMESPACE,
    NODE_NAME,
    NOT_APPLIED,
    UPSTREAM_ENVOY_ENV,
    GatewayProcess,
    IstioCharts,
    IstiodProcess,
    find,
)
from harness.meshes.istiod.istiod_pods import IstiodPods
from harness.meshes.istiod.kubelet_api import LogSource
from harness.meshes.istiod.node_agent import NodeAgent
from harness.meshes.istiod.releases import IstioRelease

FIELD_MANAGER = "sticky-session-conformance"


class IstiodStack:
    def __init__(self, release: IstioRelease, envoy: str, timeouts: Timeouts,
                 progress: Callable[[str], None], *, keep_workdir: bool = False) -> None:
        self.release = release
        self.envoy = envoy
        self.timeouts = timeouts
        self.progress = progress
        self.keep_workdir = keep_workdir
        self.workdir = Path(tempfile.mkdtemp(prefix="sticky-istiod-mesh-"))
        self.kube = KubeControlPlane(timeouts, progress)
        self.api_client: Any = None
        self.istiod: IstiodProcess | None = None
        self.istiod_pods: IstiodPods | None = None
        self.gateway: GatewayProcess | None = None
        self.charts: IstioCharts | None = None
        self.gateway_port = 0
        # Loopback addresses of this mesh's own, claimed until stop (addresses.py): istiod's, and the
        # gateway pod's IP.
        self.addresses = claim_addresses()
        self.istiod_address = self.addresses.istiod
        self.gateway_address = self.addresses.gateway
        self.env_changes = 0
        self.gateway_restarts = 0  # resyncs where the data plane may have starved new pods
        self.stopped = False

    # -- start -----------------------------------------------------------------------------------
    def start(self) -> IstiodStack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        started = time.monotonic()
        istio_bins = build.ensure(build.istio(self.release.module_version), self.progress)
        helm = build.helm_binary(self.progress)
        self.charts = IstioCharts(build.istio_sources(self.release.module_version, self.progress), helm)
        self.kube.start()
        self.api_client = self.kube.api_client()
        self._apply_all([obj for obj in self.charts.base() if obj["kind"] not in NOT_APPLIED])
        self._wait_crds()
        self._ensure_namespace(ISTIO_NAMESPACE)
        self.istiod = IstiodProcess(istio_bins["pilot-discovery"], self.charts, self.kube.kubeconfig,
                                    self.workdir / "istiod", address=self.istiod_address, timeouts=self.timeouts)
        self.istiod_pods = IstiodPods(self.api_client, self.istiod, NODE_NAME, self.timeouts, self.progress).start()
        self._apply_all([obj for obj in self.istiod.rendered(self.istiod_env({})) if obj["kind"] not in NOT_APPLIED])
        self.istiod_pods.wait_rollout(self.timeouts.istiod_start)
        self._start_gateway(istio_bins["pilot-agent"])
        self.progress(f"istiod mesh up in {time.monotonic() - started:.1f}s: Kubernetes "
                      f"{self.kube.kubernetes_version}, Istio {self.release.label}, gateway at {self.gateway_url}")

    @staticmethod
    def istiod_env(flags: dict[str, str]) -> dict[str, str]:
        """istiod's environment: Istio's switches for upstream Envoy, then the suite's flags."""
        return {**UPSTREAM_ENVOY_ENV, **flags}

    def _apply_all(self, objects: list[dict[str, Any]]) -> None:
        from kubernetes import dynamic

        client: Any = dynamic.DynamicClient(self.api_client)  # type: ignore[no-untyped-call]
        for obj in objects:
            resource = client.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            if resource.namespaced:
                obj["metadata"]["namespace"] = obj["metadata"].get("namespace") or ISTIO_NAMESPACE
                self._ensure_namespace(obj["metadata"]["namespace"])
            client.server_side_apply(resource, body=obj, namespace=obj["metadata"].get("namespace"),
                                     field_manager=FIELD_MANAGER, force_conflicts=True)

    def _ensure_namespace(self, name: str) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            client.CoreV1Api(self.api_client).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
                name=name)))
        except ApiException as error:
            if error.status != 409:
                raise

    def _wait_crds(self) -> None:
        from kubernetes import client

        api: Any = client.ApiextensionsV1Api(self.api_client)
        for attempt in poll(self.timeouts.control_plane_start, "Istio's CRDs established", interval=0.05):
            with attempt:
                pending = [crd.metadata.name for crd in api.list_custom_resource_definition().items
                           if not any(c.type == "Established" and c.status == "True"
                                      for c in (crd.status.conditions or []))]
                assert not pending, f"not established: {pending[:3]}"

    def _start_gateway(self, pilot_agent: Path) -> None:
        """The gateway chart's Service and pod identity, then pilot-agent + Envoy as that pod."""
        from kubernetes import client

        assert self.charts is not None
        assert self.istiod is not None
        self.gateway = GatewayProcess(pilot_agent, self.envoy, self.charts, self.workdir / "gateway",
                                      address=self.gateway_address, timeouts=self.timeouts)
        objects = self.charts.gateway()
        self.gateway_port = free_port()
        gateway_service(find(objects, "Service", GATEWAY_RELEASE), self.gateway_port, self.gateway.envoy_status_port)
        self._apply_all([obj for obj in objects if obj["kind"] not in GATEWAY_NOT_APPLIED])
        template = find(objects, "Deployment", GATEWAY_RELEASE)["spec"]["template"]
        labels = dict(template["metadata"].get("labels") or {})
        annotations = dict(template["metadata"].get("annotations") or {})
        account = template["spec"].get("serviceAccountName") or GATEWAY_RELEASE
        core: Any = client.CoreV1Api(self.api_client)
        core.create_namespaced_pod(ISTIO_NAMESPACE, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": GATEWAY_POD, "labels": labels, "annotations": annotations},
            "spec": {"nodeName": NODE_NAME, "serviceAccountName": account, "automountServiceAccountToken": False,
                     "containers": [{"name": "istio-proxy", "image": "local/pilot-agent-and-envoy",
                                     "ports": [{"containerPort": self.gateway_port, "name": "http2"}]}]},
        })
        self._set_gateway_status(ready=False)
        self.gateway.start(labels, annotations, self.istiod.mesh_config, self.istiod.xds_address, account)
        self.gateway.wait_ready()
        self._set_gateway_status(ready=True)
        # What a cloud load balancer's controller writes: the address clients reach the gateway at.
        core.patch_namespaced_service_status(GATEWAY_RELEASE, ISTIO_NAMESPACE, {"status": {"loadBalancer": {
            "ingress": [{"ip": self.gateway_address}]}}})

    def _set_gateway_status(self, ready: bool) -> None:
        from kubernetes import client

        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        state = "True" if ready else "False"
        client.CoreV1Api(self.api_client).patch_namespaced_pod_status(GATEWAY_POD, ISTIO_NAMESPACE, {"status": {
            "phase": "Running", "hostIP": "127.0.0.1", "podIP": self.gateway_address,
            "podIPs": [{"ip": self.gateway_address}], "startTime": now,
            "conditions": [{"type": kind, "status": state, "lastTransitionTime": now}
                           for kind in ("Initialized", "ContainersReady", "Ready", "PodScheduled")],
            "containerStatuses": [{"name": "istio-proxy", "image": "local/pilot-agent-and-envoy", "imageID": "",
                                   "ready": ready, "started": True, "restartCount": 0,
                                   "state": {"running": {"startedAt": now}}}],
        }})

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host_port}"

    @property
    def gateway_host_port(self) -> str:
        """``GATEWAY_URL`` as the seed builds it: ``$INGRESS_HOST:$INGRESS_PORT``, no scheme."""
        return f"{self.gateway_address}:{self.gateway_port}"

    def restart_gateway(self) -> None:
        """The gateway pod restarted: its Envoy starts from a full push of the current endpoints."""
        assert self.gateway is not None
        started = time.monotonic()
        self._set_gateway_status(ready=False)
        self.gateway.restart()
        self._set_gateway_status(ready=True)
        self.gateway_restarts += 1
        self.progress(f"gateway restarted in {time.monotonic() - started:.1f}s")

    # -- istiod's environment ----------------------------------------------------------------------
    def set_istiod_flags(self, flags: dict[str, str]) -> None:
        """istiod's Deployment as the chart renders it with these flags (what ``helm upgrade --set
        pilot.env...`` does), then wait for its rollout, as on kind. Unchanged flags change nothing."""
        assert self.istiod is not None
        assert self.istiod_pods is not None
        started = time.monotonic()
        before = self.istiod_pods.deployment()["metadata"].get("generation")
        self._apply_all([obj for obj in self.istiod.rendered(self.istiod_env(flags)) if obj["kind"] not in NOT_APPLIED])
        after = self.istiod_pods.wait_rollout(self.timeouts.istiod_rollout)
        if after["metadata"].get("generation") != before:
            self.env_changes += 1
            self.progress(f"istiod's Deployment rolled out with {flags or 'no flags'} in "
                          f"{time.monotonic() - started:.1f}s")

    # -- the node ------------------------------------------------------------------------------------
    def node_agent(self, namespace: str | None) -> NodeAgent:
        """The node agent for the app's pods (``namespace``; None: every namespace but the system ones),
        with the kubelet API serving ``kubectl logs`` for its pods, istiod's and the gateway's. Not started."""
        return NodeAgent(self.api_client, NODE_NAME, self.workdir / "pods", self.timeouts, namespace=namespace,
                         other_logs=self.system_pod_logs)

    def system_pod_logs(self, namespace: str, pod: str, container: str) -> LogSource | None:
        """istiod's pods (each its section of istiod's log) and the gateway pod, for the kubelet API."""
        if namespace != ISTIO_NAMESPACE:
            return None
        if pod == GATEWAY_POD and self.gateway is not None:
            gateway = self.gateway
            return LogSource(gateway.log, running=lambda: gateway.running)
        if self.istiod is not None and self.istiod_pods is not None and pod.startswith("istiod"):
            istiod, pods = self.istiod, self.istiod_pods
            section = {"on": False}

            def keep(line: str) -> bool:
                if line.startswith("--- istiod start as pod "):
                    section["on"] = line.split()[5].rstrip(",") == pod
                    return False
                return section["on"]

            return LogSource(istiod.log, keep=keep, running=lambda: pods.running_pod == pod and istiod.running)
        return None

    # -- stop --------------------------------------------------------------------------------------
    def check_alive(self) -> None:
        for component in (self.istiod_pods, self.gateway):
            if component is not None:
                component.check_alive()
        self.kube.check_alive()

    def logs(self) -> dict[str, Path]:
        found = dict(self.kube.logs())
        if self.istiod is not None:
            found["istiod"] = self.istiod.log
        if self.gateway is not None:
            found["gateway"] = self.gateway.log
        return found

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        errors: list[str] = []
        steps: list[Callable[[], None]] = [
            # Nothing is in flight at the end: no drain (pilot-agent would take its 5 s drain duration).
            functools.partial(self.gateway.stop, grace=0.0) if self.gateway else lambda: None,
            self.istiod_pods.stop if self.istiod_pods else (self.istiod.stop if self.istiod else lambda: None),
            lambda: self.kube.stop(keep_workdir=self.keep_workdir),
        ]
        for step in steps:
            try:
                step()
            except Exception as error:
                errors.append(str(error))
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.addresses.release()
        if errors:
            raise MeshError(f"stopping the istiod mesh: {'; '.join(errors)}")


def gateway_service(service: dict[str, Any], port: int, status_port: int) -> None:
    """The gateway chart's Service as this mesh serves it: the ``http2`` port is the port the gateway
    answers on (so the seed's ``INGRESS_PORT`` line gives it), port 80 stays as a second entry with that
    target (istiod resolves a Gateway server's port 80 through the Service's port 80 to its targetPort),
    status-port targets the health listener, and no node ports are allocated (nothing would serve them).
    The type stays LoadBalancer, whose status carries the address (``status.loadBalancer.ingress``)."""
    ports = []
    for declared in service["spec"]["ports"]:
        entry = {key: value for key, value in declared.items() if key != "nodePort"}
        if entry.get("name") == "http2":
            ports.append({**entry, "name": "http-80", "port": 80, "targetPort": port})
            entry.update(port=port, targetPort=port)
        elif entry.get("name") == "status-port":
            entry["targetPort"] = status_port
        ports.append(entry)
    if not any(entry.get("name") == "http2" for entry in ports):
        raise MeshError(f"the gateway chart's Service has no http2 port: {service['spec']['ports']}")
    service["spec"]["ports"] = ports
    service["spec"]["type"] = "LoadBalancer"
    service["spec"]["allocateLoadBalancerNodePorts"] = False
