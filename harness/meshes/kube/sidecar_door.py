"""The sidecar front door on kind: the probe's requests leave through an injected client pod's sidecar.

Why the door exists and what every read through it checks is ``front_door.py``'s; the istiod mesh's
door (``harness/meshes/istiod/sidecar.py``) is the model. On kind the client is an ordinary workload whose
sidecar the real injector adds, configured by the cluster's real istiod:

- a Deployment ``sticky-client`` (one replica) in the run's namespace, which has ``istio-injection=enabled``:
  the istio-proxy container and the iptables set-up come from Istio's injector, as for the app. Its own
  container only idles; it runs the echo app's image (pre-loaded on the node, so also on a node without a
  registry; ``--app-image`` applies to it too) with a Python sleep, so the door needs no other image;
- the ``Sidecar`` resource (``front_door.sidecar_resource``) with ``bind: 0.0.0.0``. istiod accepts any IP
  there (validation.go validateSidecarEgressPortBindAndCaptureMode: ValidateIPAddress); ``captureMode: NONE``
  makes it a listener bound to a real port (listener.go buildSidecarOutboundListeners: bindToPort), and the
  wildcard clashes only with the proxy's own ports 15001/15006/15021/15090 (model/context.go
  conflictWithReservedListener). The listener is then ``0.0.0.0_5678``, the name an iptables-capture sidecar
  gives its listener for that port, with the same route configuration ``5678``. The pod IP would work too,
  but the Sidecar would have to follow every new client pod;
- the pod annotation ``traffic.sidecar.istio.io/excludeInboundPorts: "5678"``: the injected iptables rules
  capture every inbound port by default, which would hand the host's connections to the inbound listener
  (15006) and on to the client's own port 5678 through the sidecar's *inbound* path first;
- a NodePort Service ``sticky-client`` (node port ``SIDECAR_NODE_PORT`` to the pod's port 5678), which the kind
  config maps to a port on the host's loopback (``kind.render_kind_config``), as it maps the gateway's.

The probe sends ``Host: sticky-session-app.<ns>.svc.cluster.local:5678``, as an app calling the Service
would. Every admin page (config_dump, clusters, server_info) is read from the client's Envoy with
``pilot-agent request`` in its istio-proxy container, like the gateway's (``ExecGatewayAdmin``), and every
config_dump passes ``OutboundPathCheck``. The run's Gateway and VirtualService stay on the run's own host
(``KubeMesh.routed_host``): istiod's webhook refuses a host with a port, and they do not apply to sidecars.

What differs from an app calling through iptables capture: the app would connect to the Service's ClusterIP
and iptables would redirect it to the virtual outbound listener 15001, whose original-destination match
hands it to the ``0.0.0.0_5678`` listener; here the connection reaches that listener directly (through
kube-proxy's NodePort rules, so Envoy sees the node as the client). The listener's connection manager, the
route configuration and the cluster are what istiod builds for the sidecar-outbound class either way.

The client's sidecar is not restarted by the suite (``can_restart`` False), like kind's ingress gateway, so
the two doors meet the same data-plane defects the same way on the same cluster.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from harness.core import manifests
from harness.core.mesh import APP_PORT, MeshError
from harness.core.timeouts import Timeouts, poll
from harness.meshes.kube.front_door import (
    CLIENT_NAME,
    Apply,
    FrontDoor,
    OutboundPathCheck,
    service_host,
    sidecar_resource,
)
from harness.meshes.kube.kind import SIDECAR_NODE_PORT
from harness.meshes.kube.strategies import ExecGatewayAdmin, pod_exec, serving_pods

BIND = "0.0.0.0"  # noqa: S104 - the client pod's own listener, reached only through its NodePort
CLIENT_SELECTOR = f"app={CLIENT_NAME}"
EXCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/excludeInboundPorts"
# The client's own container: idle, ends at once on SIGTERM (as PID 1 it would otherwise ignore it).
IDLE_COMMAND = ["python3", "-c",
                "import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); signal.pause()"]

KNOWN_DIFFERENCES = [
    f"front door: the client Deployment {CLIENT_NAME}'s injected sidecar, its outbound listener bound to "
    f"{BIND}:{APP_PORT} by a Sidecar resource (captureMode NONE) and reached from the host through the NodePort "
    f"{SIDECAR_NODE_PORT} (port {APP_PORT} excluded from inbound capture); an app in that pod would reach the same "
    "outbound connection manager, routes and cluster through iptables and the virtual outbound listener 15001",
]


def app_image(override: str | None) -> str:
    """The echo app's image (its Deployment in manifests/, or ``--app-image``): already on every node."""
    if override:
        return override
    deployment = next(o for o in manifests.load("01-deployment.yml") if o["kind"] == "Deployment")
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def client_objects(image: str) -> list[dict[str, Any]]:
    """What the door applies in the run's namespace, in order: the Sidecar resource (so the client's first
    configuration already has the bound listener), the NodePort Service, the client Deployment."""
    labels = {"app": CLIENT_NAME}
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": CLIENT_NAME, "labels": labels},
        "spec": {"type": "NodePort", "selector": labels,
                 "ports": [{"name": "http", "port": APP_PORT, "targetPort": APP_PORT, "protocol": "TCP",
                            "nodePort": SIDECAR_NODE_PORT}]},
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": CLIENT_NAME, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels, "annotations": {EXCLUDE_INBOUND_PORTS: str(APP_PORT)}},
            "spec": {"terminationGracePeriodSeconds": 5, "containers": [{
                "name": "client", "image": image, "command": IDLE_COMMAND,
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
            }]},
        }},
    }
    return [sidecar_resource(BIND), service, deployment]


class ExecSidecarAdmin:
    """KubeMesh's view of the front door's Envoy when it is the client's sidecar: ``pilot-agent request`` in
    the client pod's istio-proxy container, every config_dump checked for the outbound path."""

    can_restart = False  # like kind's gateway: the doors are compared on the same terms

    def __init__(self, core: Any, namespace: str, check: OutboundPathCheck) -> None:
        self.core = core
        self.namespace = namespace
        self.check = check
        self.exec = ExecGatewayAdmin(self.replicas, lambda pod, command: pod_exec(
            core, namespace, pod, "istio-proxy", command))

    def replicas(self) -> list[str]:
        pods = serving_pods(self.core, self.namespace, CLIENT_SELECTOR)
        if not pods:
            raise MeshError(f"no running, ready client pod ({CLIENT_SELECTOR}) in {self.namespace}")
        return pods

    def get(self, replica: str, path: str) -> str:
        return self.check.checked(path, self.exec.get(replica, path))

    def restart(self) -> None:
        raise MeshError("the suite does not restart the client sidecar on kind (nor kind's gateway)")


class KindClientSidecar:
    """The client workload: applied once the run's namespace exists; it goes with the namespace."""

    def __init__(self, core: Any, namespace: str, timeouts: Timeouts, *, image: str | None, host_port: int,
                 progress: Callable[[str], None]) -> None:
        self.core = core
        self.namespace = namespace
        self.timeouts = timeouts
        self.image = image  # --app-image, else the echo app's own
        self.progress = progress
        self.check = OutboundPathCheck(namespace, BIND)
        self.admin = ExecSidecarAdmin(core, namespace, self.check)
        self.url = f"http://127.0.0.1:{host_port}"
        self.host = service_host(namespace)

    def start(self, apply: Apply) -> None:
        for obj in client_objects(app_image(self.image)):
            self._apply(apply, obj)
        for attempt in poll(self.timeouts.deployment_rollout, f"the client {CLIENT_NAME} ready, with its sidecar",
                            interval=0.5, max_interval=2.0):
            with attempt:
                assert serving_pods(self.core, self.namespace, CLIENT_SELECTOR), "no running, ready client pod"
        for attempt in poll(self.timeouts.config_converged, f"the client's Envoy listening at {BIND}:{APP_PORT}",
                            interval=0.5, max_interval=2.0):
            with attempt:
                pod = self.admin.replicas()[0]
                dump = self.admin.get(pod, "config_dump?resource=dynamic_listeners")
                assert self.check.listener(json.loads(dump)) is not None, "no bound listener yet"
        self.progress(f"client sidecar up: {self.url} -> {pod}'s outbound listener {BIND}:{APP_PORT}, "
                      f"Host {self.host}")

    def _apply(self, apply: Apply, obj: dict[str, Any]) -> None:
        """Server-side apply; a node port still held by the namespace of an interrupted earlier run (deleted
        at start, not waited for) is waited out."""
        from kubernetes.client.exceptions import ApiException

        for attempt in poll(self.timeouts.namespace_delete, f"node port {SIDECAR_NODE_PORT} free",
                            interval=1.0, max_interval=5.0):
            with attempt:
                try:
                    apply(obj)
                except ApiException as error:
                    if error.status == 422 and "already allocated" in str(error.body or ""):
                        raise AssertionError(f"node port {SIDECAR_NODE_PORT} held by another Service") from None
                    raise

    def run_figures(self) -> dict[str, Any]:
        return self.check.run_figures(client=f"Deployment {CLIENT_NAME}, injected sidecar", node_port=SIDECAR_NODE_PORT)


def kind_sidecar_door(core: Any, namespace: str, timeouts: Timeouts, *, image: str | None, host_port: int,
                      progress: Callable[[str], None]) -> FrontDoor:
    """The kind mesh's sidecar door; ``host_port`` is where the kind config maps the door's NodePort on the
    host's loopback (0: a kept cluster created before that mapping existed). The client goes with the run's
    namespace, so stopping the door is nothing more."""
    if not host_port:
        raise MeshError(f"this kept kind cluster was created without the sidecar door's port mapping (node port "
                        f"{SIDECAR_NODE_PORT}); delete it (kind delete cluster --name <name>) or pass another "
                        "--cluster-name")
    client = KindClientSidecar(core, namespace, timeouts, image=image, host_port=host_port, progress=progress)
    return FrontDoor("sidecar", client.url, client.host, client.admin, list(KNOWN_DIFFERENCES), client.start,
                     lambda: None, client.run_figures)
