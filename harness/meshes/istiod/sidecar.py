"""The sidecar front door on the istiod mesh: requests leave through a client workload's sidecar, east-west.

Most consistent-hash DestinationRules serve calls between services, which take a sidecar's *outbound*
configuration, not the ingress gateway's. This module gives the suite a client workload whose sidecar is
real: ``pilot-agent proxy sidecar`` (Istio's own agent in sidecar mode) running upstream Envoy, configured
over xDS by the same real istiod, as the pod ``sticky-client`` in the run's namespace.

How a host-side probe reaches the sidecar's outbound path without iptables, using only Istio's APIs:
- the proxy runs with interception mode NONE (``ISTIO_META_INTERCEPTION_MODE``), as Istio documents for
  workloads without traffic capture: istiod builds no virtual outbound/inbound listeners (nothing binds
  0.0.0.0:15001/15006 on this host) and no inbound listeners;
- a ``Sidecar`` resource selects the client (``workloadSelector``) and declares one egress listener on the
  Service's port 5678, ``captureMode: NONE``, ``bind`` to the client pod's own loopback address, hosts
  ``./*``: istiod then binds a real outbound listener there (listener.go buildSidecarOutboundListeners);
- the probe connects to that address and names the Service by its cluster name,
  ``sticky-session-app.<ns>.svc.cluster.local:5678``, as an app calling the Service would.

Routing is then the sidecar outbound class throughout: the outbound HCM (with the empty stateful_session
filter when the flag is on, listener_builder.go), the per-Service virtual host (with StatefulSessionPerRoute
for a labelled Service, httproute.go), its default route (hash policy from the DestinationRule,
route.go buildSidecarVirtualHostForService) and the ``outbound|5678||...`` cluster. ``OutboundPathCheck``
verifies that in every config_dump the suite reads from the sidecar, and the run's report records it. The
Sidecar resource, that check and the wiring into KubeMesh are shared with kind's door
(``harness/meshes/kube/front_door.py``; kind's client is an injected pod, ``harness/meshes/kube/sidecar_door.py``).

What differs from an app calling through iptables capture: there, the app connects to the Service's
ClusterIP, iptables redirects to the virtual outbound listener (15001), whose original-destination lookup
hands the connection to the ``0.0.0.0_5678`` listener's filter chain; its route configuration is named
``5678``. Here the listener is bound directly and named for its address, so original-destination matching
is not exercised; the HCM, the route configuration's virtual hosts, routes and clusters come from the same
istiod code (the egress listener's services), which is what session affinity depends on.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness import processes
from harness.core.mesh import APP_PORT, MeshError
from harness.meshes.istiod.istio import NODE_NAME, GatewayProcess
from harness.meshes.kube.front_door import (
    CLIENT_NAME,
    Apply,
    FrontDoor,
    OutboundPathCheck,
    service_host,
    sidecar_resource,
)

CLIENT_NODE = f"{NODE_NAME}-client"  # not the node agent's: the agent must not run the client as an app pod


class SidecarProcess(GatewayProcess):
    """``pilot-agent proxy sidecar`` as the injected istio-proxy container of the client pod starts it, with
    interception mode NONE (no iptables here), running the same upstream Envoy as the gateway."""

    def __init__(self, *args: Any, namespace: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.namespace = namespace
        self.log = self.workdir / "sidecar.log"

    def start(self, labels: dict[str, str], annotations: dict[str, str], mesh_config: str, discovery: str,
              service_account: str) -> None:
        self._start_args = (labels, annotations, mesh_config, discovery, service_account)
        etc = self.workdir / "etc" / "istio"
        (etc / "pod").mkdir(parents=True, exist_ok=True)
        (etc / "pod" / "labels").write_text("\n".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "\n")
        (etc / "pod" / "annotations").write_text("")
        (etc / "config").mkdir(parents=True, exist_ok=True)
        (etc / "config" / "mesh").write_text(mesh_config)
        template = self.workdir / "var" / "lib" / "istio" / "envoy" / "envoy_bootstrap_tmpl.json"
        template.parent.mkdir(parents=True, exist_ok=True)
        template.write_bytes(self.charts.bootstrap_template.read_bytes())
        env = self.agent_env(discovery=discovery, service_account=service_account,
                             proxy_config=self.proxy_config(mesh_config, annotations, discovery),
                             pod=CLIENT_NAME, namespace=self.namespace, app_containers="client", node=CLIENT_NODE,
                             interception="NONE", workload=CLIENT_NAME,
                             owner=f"kubernetes://apis/v1/namespaces/{self.namespace}/pods/{CLIENT_NAME}")
        argv = [str(self.binary), "proxy", "sidecar", "--domain", f"{self.namespace}.svc.cluster.local",
                "--proxyLogLevel=warning", "--proxyComponentLogLevel=misc:error", "--log_output_level=default:info"]
        self.process = processes.spawn(argv, self.log, env=env, cwd=self.workdir)


class ClientSidecar:
    """The client pod: its Pod object (so istiod knows the workload by its IP and labels), the Sidecar
    resource, and its sidecar process. Started once the run's namespace exists; stopped at close."""

    def __init__(self, stack: Any, namespace: str, address: str) -> None:
        self.stack = stack
        self.namespace = namespace
        self.address = address
        self.process: SidecarProcess | None = None
        self.check = OutboundPathCheck(namespace, address)
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"http://{self.address}:{APP_PORT}"

    @property
    def host(self) -> str:
        return service_host(self.namespace)

    def start(self, apply: Apply) -> None:
        """``apply``: server-side apply of one object into the run's namespace (the mesh's)."""
        from harness.meshes.istiod import build

        stack = self.stack
        apply(sidecar_resource(self.address))
        labels = {"app": CLIENT_NAME}
        self._create_pod(labels)
        pilot_agent = build.ensure(build.istio(stack.release.module_version), stack.progress)["pilot-agent"]
        self.process = SidecarProcess(pilot_agent, stack.envoy, stack.charts, stack.workdir / "client-sidecar",
                                      address=self.address, timeouts=stack.timeouts, namespace=self.namespace)
        self.process.start(labels, {}, stack.istiod.mesh_config, stack.istiod.xds_address, "default")
        self.process.wait_ready()
        stack.progress(f"client sidecar up: outbound listener {self.url}, Host {self.host}")

    def _create_pod(self, labels: dict[str, str]) -> None:
        from kubernetes import client

        core: Any = client.CoreV1Api(self.stack.api_client)
        core.create_namespaced_pod(self.namespace, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": CLIENT_NAME, "labels": labels},
            "spec": {"nodeName": CLIENT_NODE, "automountServiceAccountToken": False,
                     "containers": [{"name": "client", "image": "local/probe"},
                                    {"name": "istio-proxy", "image": "local/pilot-agent-and-envoy"}]},
        })
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        core.patch_namespaced_pod_status(CLIENT_NAME, self.namespace, {"status": {
            "phase": "Running", "hostIP": "127.0.0.1", "podIP": self.address, "podIPs": [{"ip": self.address}],
            "startTime": now,
            "conditions": [{"type": kind, "status": "True", "lastTransitionTime": now}
                           for kind in ("Initialized", "ContainersReady", "Ready", "PodScheduled")],
        }})

    def admin(self, path: str) -> str:
        if self.process is None:
            raise MeshError("the client sidecar is not running")
        self.process.check_alive()
        return self.check.checked(path, self.process.admin(path))

    def restart(self) -> None:
        assert self.process is not None
        started = time.monotonic()
        self.process.restart()
        self.restarts += 1
        self.stack.progress(f"client sidecar restarted in {time.monotonic() - started:.1f}s")

    def logs(self) -> dict[str, Path]:
        return {"client-sidecar": self.process.log} if self.process is not None else {}

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=0.0)
            self.process = None


class LoopbackSidecarAdmin:
    """KubeMesh's view of the front door's Envoy when it is the client sidecar: its admin API on loopback.
    Every convergence, counter and fact the tests rely on is then read from the sidecar."""

    def __init__(self, sidecar: ClientSidecar) -> None:
        self.sidecar = sidecar

    def replicas(self) -> list[str]:
        return ["client-sidecar"]

    def get(self, replica: str, path: str) -> str:
        return self.sidecar.admin(path)

    can_restart = True

    def restart(self) -> None:
        """A fresh Envoy builds its load balancer from the current endpoints (see KubeMesh's starved-pod
        restart, which applies to whichever Envoy is the front door)."""
        self.sidecar.restart()


SIDECAR_KNOWN_DIFFERENCES = [
    "front door: the client sidecar (pilot-agent proxy sidecar, interception mode NONE) and a Sidecar resource "
    "binding its outbound listener for port 5678 to the client pod's loopback address (captureMode NONE); an "
    "injected app reaches the same outbound HCM, routes and cluster through iptables and the virtual outbound "
    "listener 15001 instead",
]


def sidecar_front_door(stack: Any, namespace: str) -> FrontDoor:
    """The front door through a client sidecar on the istiod stack: the probe's URL and Host, and the Envoy
    whose admin every convergence and counter reads, become the sidecar's."""
    address = stack.gateway_address.rsplit(".", 1)[0] + ".12"  # the stack's own block: .10 istiod, .11 gateway
    sidecar = ClientSidecar(stack, namespace, address)

    def run_figures() -> dict[str, Any]:
        return sidecar.check.run_figures(**({"sidecar_restarts": sidecar.restarts} if sidecar.restarts else {}))

    return FrontDoor("sidecar", sidecar.url, sidecar.host, LoopbackSidecarAdmin(sidecar),
                     list(SIDECAR_KNOWN_DIFFERENCES), sidecar.start, sidecar.stop, run_figures)
