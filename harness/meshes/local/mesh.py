"""The local mesh: real Envoy as the ingress gateway, echo pods as processes, istiod's translation in-process.

State lives here the way it lives in Kubernetes: the applied objects, istiod's environment, the pods.
After every change the whole gateway configuration is translated again, the changed xDS types are
published, and the call returns once Envoy reports the new versions and exactly the expected hosts.
"""

from __future__ import annotations

import random
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.core import envoy_state, manifests
from harness.core.envoy_state import HostCounters
from harness.core.mesh import APP_NAME, APP_PORT, Mesh, MeshCapabilities, MeshError, Pod
from harness.core.timeouts import Timeouts, poll
from harness.istio_model import translator_for
from harness.istio_model.translation import PINNED_ISTIO, Endpoint, GatewayConfig
from harness.meshes.local.envoy import EnvoyGateway, envoy_version, find_envoy
from harness.meshes.local.pods import PodSet

NAMESPACE = "default"
SUPPORTED_KINDS = {"Deployment", "Service", "Gateway", "VirtualService", "DestinationRule"}


def free_port(address: str = "127.0.0.1") -> int:
    """A port the kernel just handed out on ``address`` (so parallel runs do not collide)."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


class LocalMesh(Mesh):
    name = "local"

    def __init__(self, envoy_binary: str, timeouts: Timeouts, seed: int | None = None,
                 keep_workdir: bool = False, front_door: str = "gateway") -> None:
        self.timeouts = timeouts
        self.keep_workdir = keep_workdir
        self.workdir = Path(tempfile.mkdtemp(prefix="sticky-local-mesh-"))
        self.rng = random.Random(seed)
        self.listen_address = "127.0.0.1"
        self.listen_port = free_port(self.listen_address)
        self.gateway = EnvoyGateway(envoy_binary, self.workdir, timeouts)
        self.envoy_version = envoy_version(envoy_binary)
        self.data_plane_target = envoy_binary
        self.translator = translator_for(
            front_door, NAMESPACE, self.listen_address, self.listen_port,
            {"rds": self.gateway.xds.config_source("rds"), "eds": self.gateway.xds.config_source("eds")},
        )
        # Through the sidecar door the one Envoy plays the client's sidecar: the probe names the Service.
        self.front_door = front_door
        if front_door == "sidecar":
            self.gateway_host = f"{APP_NAME}.{NAMESPACE}.svc.cluster.local:{APP_PORT}"
        self.pod_set = PodSet(self.workdir, timeouts, self.rng)
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.istiod_env: dict[str, str] = {}
        self.capabilities = MeshCapabilities(
            client_source_addresses=self.pod_set.addresses.client_addresses(64),
            metrics_source="gateway Envoy per-endpoint Prometheus series (envoy_cluster_endpoint_rq_total)",
            real_istiod=False, shares_boot_clock=True,
            # A loopback address that is no pod: this machine never sends traffic off loopback.
            outside_address="127.255.255.254:22",
        )
        self.last_convergence_seconds = 0.0
        self._unconfirmed: dict[str, str] = {}
        self.closed = False

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> LocalMesh:
        try:
            # Publish the baseline before Envoy starts, so its first read of the files has it.
            self._load_baseline()
            self._publish()
            self.gateway.start()
            self._converge()
        except BaseException:
            self.close()
            raise
        return self

    def reset(self) -> None:
        self._load_baseline()
        self._converge()

    def _load_baseline(self) -> None:
        # Pods a test left terminating finish terminating (their grace period is over, as far as the
        # next test is concerned), and pods whose process a test killed are replaced (Kubernetes would
        # have noticed by now); no traffic flows between tests.
        self.pod_set.stop([name for name, entry in self.pod_set.pods.items()
                           if entry.draining or entry.process.poll() is not None])
        self.objects = {}
        for manifest in manifests.BASE_MANIFESTS:
            for obj in manifests.load(manifest):
                self._store(obj)
        self._reconcile_pods()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.gateway.stop()
        finally:
            self.pod_set.stop_all()
            if not self.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    # -- reading -------------------------------------------------------------------------------
    @property
    def gateway_url(self) -> str:
        return f"http://{self.listen_address}:{self.listen_port}"

    def pods(self) -> list[Pod]:
        return self.pod_set.serving()

    def versions(self) -> dict[str, str]:
        # No Istio runs here: the gateway config is a translation of what the pinned release's istiod sends.
        return {"envoy": self.envoy_version, "istio": "local", "translation_of_istio": PINNED_ISTIO,
                "kubernetes": ""}

    def config_dump(self, resource: str | None = None) -> dict[str, Any]:
        return self.gateway.require_admin().config_dump(resource)

    def host_counters(self) -> dict[str, HostCounters]:
        return self.gateway.require_admin().host_counters(self._app_cluster())

    def request_totals(self) -> dict[str, int]:
        return self.gateway.require_admin().endpoint_request_totals(self._app_cluster())

    # -- changes -------------------------------------------------------------------------------
    def apply(self, manifest: str | Path) -> None:
        objects = manifests.load(manifest)
        for obj in objects:
            self._store(obj)
        self._reconcile_pods()
        self._converge()

    def delete(self, manifest: str | Path) -> None:
        for obj in manifests.load(manifest):
            self.objects.pop(manifests.object_key(obj), None)
        self._reconcile_pods()
        self._converge()

    def set_istiod_env(self, name: str, value: str | None) -> None:
        if self.istiod_env.get(name) == value:
            return
        if value is None:
            self.istiod_env.pop(name, None)
        else:
            self.istiod_env[name] = value
        self.istiod_env_changes += 1
        self._converge()

    def scale(self, replicas: int) -> list[Pod]:
        if replicas < 0:
            raise MeshError(f"cannot scale to {replicas} replicas")
        self._deployment()["spec"]["replicas"] = replicas
        self._reconcile_pods()
        self._converge()
        return self.pods()

    def delete_pod(self, name: str) -> Pod:
        before = {pod.name for pod in self.pods()}
        self._terminate([name])
        self._reconcile_pods()
        self._converge()
        replacement = [pod for pod in self.pods() if pod.name not in before]
        if len(replacement) != 1:
            raise MeshError(f"deleting {name} brought {len(replacement)} replacements, expected 1")
        return replacement[0]

    def start_draining(self, name: str) -> None:
        self.pod_set.mark_draining(name)
        self._converge()

    def kill_pod_process(self, name: str) -> None:
        """SIGKILL the pod's process and change nothing else: its endpoint stays in EDS as HEALTHY, so the
        gateway keeps routing to an address that refuses connections (the next reset replaces the pod)."""
        entry = self.pod_set.get(name)
        entry.process.kill()
        entry.process.wait(self.timeouts.process_exit)

    def add_pods_announced_unready(self, count: int) -> list[Pod]:
        deployment = self._deployment()
        deployment["spec"]["replicas"] = int(deployment["spec"].get("replicas", 1)) + count
        new = self.pod_set.start(count)
        for pod in new:
            self.pod_set.get(pod.name).unready = True
        self._converge()  # Envoy lists them UNHEALTHY: the membership change
        for pod in new:
            self.pod_set.get(pod.name).unready = False
        self._converge()  # Envoy lists them HEALTHY: the health-only update
        return new

    def restart_rollout(self) -> list[Pod]:
        """Surge all new pods first and route to them, then terminate the old ones gracefully."""
        old = [pod.name for pod in self.pods()]
        self.pod_set.new_template()
        self.pod_set.start(len(old))
        self._converge()
        self._terminate(old)
        return self.pods()

    def upgrade_data_plane(self, target: str) -> None:
        binary = find_envoy(target)
        version = envoy_version(binary)
        self.gateway.restart(binary)
        self.envoy_version = version
        self.data_plane_target = binary
        current = {kind: str(self.gateway.xds.versions[kind]) for kind in ("lds", "cds", "rds")}
        self._unconfirmed = current
        self._converge()

    def _terminate(self, names: list[str]) -> None:
        """Kubernetes' graceful termination: the endpoint turns draining (kept in EDS for the cookie
        label only), then leaves the endpoint set, and only then does the process get SIGTERM, so
        requests routed to it before it left are answered (the Deployment's preStop hook gives the
        same order on a cluster)."""
        for name in names:
            self.pod_set.mark_draining(name)
        self._converge()
        for name in names:
            self.pod_set.get(name).leaving = True
        self._converge()
        self.pod_set.stop(names)

    # -- internals -----------------------------------------------------------------------------
    def _store(self, obj: dict[str, Any]) -> None:
        kind = obj["kind"]
        if kind not in SUPPORTED_KINDS:
            raise MeshError(f"the local mesh does not handle kind {kind}; it handles {sorted(SUPPORTED_KINDS)}")
        namespace = obj["metadata"].get("namespace", NAMESPACE)
        if namespace != NAMESPACE:
            raise MeshError(f"{kind} {obj['metadata']['name']}: the local mesh has one namespace ({NAMESPACE})")
        self.objects[manifests.object_key(obj)] = obj

    def _deployment(self) -> dict[str, Any]:
        deployment = self.objects.get(("Deployment", APP_NAME))
        if deployment is None:
            raise MeshError(f"Deployment {APP_NAME} is not applied")
        return deployment

    def _reconcile_pods(self) -> None:
        """Like the ReplicaSet controller: start or stop serving pods until the replica count matches.

        Surplus pods terminate gracefully (``_terminate``): their endpoints leave the gateway before their
        processes stop, as the Deployment's preStop hook orders it on a cluster. Stopping first would send
        requests the gateway still routes to a removed pod to a closed port. On a route with a consistent
        hash istiod's retry policy has no ``previous_hosts`` predicate, so the retries pick the same host
        and those requests fail with 503; they do not move to a surviving pod (only routes without a hash
        retry on another pod). ``kill_pod_process`` makes that case on purpose, and
        e2e/test_translation_edges.py measures it.
        """
        deployment = self.objects.get(("Deployment", APP_NAME))
        wanted = int(deployment["spec"].get("replicas", 1)) if deployment else 0
        serving = self.pod_set.serving()
        if len(serving) < wanted:
            self.pod_set.start(wanted - len(serving))
        elif len(serving) > wanted:
            # The ReplicaSet controller removes the newest pods first.
            surplus = [pod.name for pod in serving[wanted:]]
            if self.gateway.process is None:
                self.pod_set.stop(surplus)
            else:
                self._terminate(surplus)

    def _endpoints(self) -> dict[str, list[Endpoint]]:
        if ("Deployment", APP_NAME) not in self.objects:
            return {}
        return {
            APP_NAME: [Endpoint(p.pod.ip, p.pod.port, p.draining, p.unready) for p in self.pod_set.pods.values()
                       if not p.leaving],
        }

    def _publish(self) -> tuple[GatewayConfig, dict[str, str], dict[str, int]]:
        config = self._translate()
        resources = {"lds": config.listeners, "cds": config.clusters, "rds": config.routes, "eds": config.endpoints}
        waiting = self.gateway.publish(resources)
        if self.gateway.process is None:
            self._unconfirmed = waiting  # confirmed by the first _converge once Envoy runs
        return config, waiting, {kind: len(items) for kind, items in resources.items()}

    def _app_cluster(self) -> str:
        clusters = [str(c["name"]) for c in self._translate().clusters]
        if len(clusters) != 1:
            raise MeshError(f"expected one app cluster at the gateway, found {clusters}")
        return clusters[0]

    def _translate(self) -> GatewayConfig:
        return self.translator.translate(self.objects, self.istiod_env, self._endpoints())

    def _converge(self) -> None:
        """Publish the translated config and wait until Envoy shows it and routes to exactly those hosts."""
        started = time.monotonic()
        config, waiting, counts = self._publish()
        if self._unconfirmed:
            waiting = {**self._unconfirmed, **waiting}
            self._unconfirmed = {}
        self.gateway.wait_for_versions(waiting, counts)
        admin = self.gateway.require_admin()
        for assignment in config.endpoints:
            expected = {
                f"{ep['endpoint']['address']['socket_address']['address']}:"
                f"{ep['endpoint']['address']['socket_address']['port_value']}": ep["health_status"]
                for group in assignment["endpoints"] for ep in group["lb_endpoints"]
            }
            cluster = assignment["cluster_name"]
            for attempt in poll(self.timeouts.endpoints_converged, f"gateway hosts of {cluster} = {expected}"):
                with attempt:
                    hosts = admin.host_counters(cluster)
                    seen = {address: envoy_state.eds_status(h) for address, h in hosts.items()}
                    assert seen == expected, f"Envoy has {seen}"
        self.last_convergence_seconds = time.monotonic() - started
