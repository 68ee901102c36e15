"""Opening the istiod mesh: the loopback stack driven by the same KubeMesh that drives kind and clusters.

Two things differ from a cluster, each a small strategy (``strategies.py``): the gateway's admin is
read over loopback, and istiod's environment changes by applying its chart-rendered Deployment (as
``helm upgrade`` would) and waiting for the rollout. Everything else (server-
side apply, the scale subresource, pod deletion, draining, rollout restart, convergence on EndpointSlices
and gateway facts) is KubeMesh's own code, running here against a real API server and a real istiod.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from harness.core.mesh import Mesh, MeshCapabilities
from harness.core.timeouts import Timeouts
from harness.meshes.istiod import build, releases
from harness.meshes.istiod.istio import KNOWN_DIFFERENCES
from harness.meshes.istiod.sidecar import sidecar_front_door
from harness.meshes.istiod.stack import IstiodStack
from harness.meshes.istiod.strategies import DeploymentIstiodControl, LoopbackGatewayAdmin
from harness.meshes.local.envoy import find_envoy
from harness.meshes.local.pods import AddressPool


def istiod_timeouts(timeouts: Timeouts) -> Timeouts:
    """Local processes start in milliseconds, but pushes go through a real istiod (debounce 100 ms,
    seconds after a restart) and pods through real controllers. Longer explicit overrides are kept."""
    return replace(timeouts, pod_ready=max(timeouts.pod_ready, 30.0),
                   config_converged=max(timeouts.config_converged, 30.0),
                   endpoints_converged=max(timeouts.endpoints_converged, 30.0),
                   deployment_rollout=min(timeouts.deployment_rollout, 120.0),
                   namespace_delete=min(timeouts.namespace_delete, 60.0))


def open_istiod_mesh(istio_version: str | None, envoy_bin: str | None, timeouts: Timeouts,
                     progress: Callable[[str], None], *, keep_workdir: bool = False,
                     diagnostics_dir: Path | None = None, front_door: str = "gateway") -> Mesh:
    """Start the mesh; if the app does not come up, diagnostics (events, istiod and gateway logs, the
    gateway's config_dump) go to ``diagnostics_dir`` before everything stops.

    ``front_door="sidecar"``: the probe's requests enter through a client workload's sidecar (its outbound
    listener, ``sidecar.py``) instead of the ingress gateway, and every convergence, counter and fact is
    read from that sidecar's Envoy."""
    from harness.meshes.istiod.node_agent import NodeAgent
    from harness.meshes.kube.config import KubeMeshConfig
    from harness.meshes.kube.mesh import KubeMesh, run_namespace

    release = releases.release(istio_version)
    timeouts = istiod_timeouts(timeouts)
    # pilot-agent runs Envoy from its own working directory: the path must be absolute.
    envoy = str(Path(find_envoy(envoy_bin)).resolve() if envoy_bin else build.envoy_binary(release.envoy, progress))
    stack = IstiodStack(release, envoy, timeouts, progress, keep_workdir=keep_workdir).start()
    agent: NodeAgent | None = None
    try:
        # Clients on loopback addresses of their own look like different source IPs to the gateway.
        clients = AddressPool(random.Random()).client_addresses(64)
        capabilities = MeshCapabilities(client_source_addresses=clients, known_differences=list(KNOWN_DIFFERENCES))
        namespace = run_namespace()
        agent = stack.node_agent(namespace)
        mesh = KubeMesh(stack.api_client, KubeMeshConfig(
            "istiod", stack.gateway_url, timeouts, capabilities, namespace=namespace,
            gateway_admin=LoopbackGatewayAdmin(stack), istiod_control=DeploymentIstiodControl(stack),
            front_door=sidecar_front_door(stack, namespace) if front_door == "sidecar" else None,
            poll_interval=0.01, poll_max_interval=0.1, diagnostics_dir=diagnostics_dir,
            delete_namespace_at_close=False,  # the API server and its etcd data go at close
            after_close=[agent.stop, stack.stop]))
        agent.start()
        return mesh.start()
    except BaseException:
        if agent is not None:
            agent.stop()
        stack.stop()
        raise
