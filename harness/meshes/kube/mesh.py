"""The Mesh on a real Kubernetes cluster with Istio: kind (created by the suite) or an existing cluster.

Everything the suite creates lives in one namespace per run (``sticky-<random>``, sidecar injection on),
so runs never collide and cleanup is one delete. Manifests from ``manifests/`` are server-side applied
into it with the dynamic client. Convergence is read from the gateway's own Envoy (``pilot-agent
request GET ...`` exec'd in the gateway pod): after a change, the call returns once the gateway shows
the facts the local mesh's istiod translation predicts for the same manifests (lb policy, ring size,
hash policy, session filter and settings, override_host_status) and exactly the expected pod addresses.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.core import envoy_state, manifests
from harness.core.envoy_state import HostCounters
from harness.core.mesh import APP_NAME, APP_PORT, Mesh, MeshError, Pod
from harness.core.timeouts import poll
from harness.core.verdicts import KNOWN_DEFECTS, NEW_POD_STARVATION
from harness.istio_model import translator_for
from harness.istio_model.translation import GatewayConfig, SessionLabels
from harness.meshes.kube.config import KubeMeshConfig
from harness.meshes.kube.strategies import (
    ExecGatewayAdmin,
    GatewayAdmin,
    HelmIstiodControl,
    IstiodControl,
    config_dump_over_replicas,
    host_counters_over_replicas,
    pod_exec,
    serving_pods,
)

ISTIO_NAMESPACE = "istio-system"
GATEWAY_SELECTOR = "istio=ingressgateway"
FIELD_MANAGER = "sticky-session-conformance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"  # with FIELD_MANAGER: a namespace this suite created
RUN_HOST_DOMAIN = "sticky-session.test"  # each run routes <namespace>.sticky-session.test (.test is reserved)
DRAIN_GRACE_SECONDS = 45  # the Deployment's terminationGracePeriodSeconds: a draining pod keeps serving
DELETE_GRACE_SECONDS = 2  # delete_pod: the pod goes away promptly, as with `kubectl delete pod --grace-period=2`


def run_namespace() -> str:
    return f"sticky-{secrets.token_hex(3)}"


def run_host(namespace: str) -> str:
    """The host a run's Gateway and VirtualService serve (the probe sends it as the Host header): a route of
    its own, which another catch-all ``*`` route on the same gateway cannot take over."""
    return f"{namespace}.{RUN_HOST_DOMAIN}"


def scoped_to_host(obj: dict[str, Any], host: str | None) -> dict[str, Any]:
    """A copy of a manifest object with the catch-all ``*`` hosts of a Gateway's servers and a
    VirtualService replaced by ``host`` (None: unchanged). Istio merges the routes of every VirtualService
    for the same host on a gateway, oldest first, so two runs (or a stale namespace) both on ``*`` would
    share one route table and the older one would win; with distinct hosts each has its own virtual host."""
    copied: dict[str, Any] = json.loads(json.dumps(obj))
    if host is None:
        return copied
    spec = copied.get("spec") or {}
    if copied.get("kind") == "VirtualService" and spec.get("hosts") == ["*"]:
        spec["hosts"] = [host]
    if copied.get("kind") == "Gateway":
        for server in spec.get("servers") or []:
            if server.get("hosts") == ["*"]:
                server["hosts"] = [host]
    return copied


def with_app_image(obj: dict[str, Any], image: str | None) -> dict[str, Any]:
    """The app's Deployment with its container image replaced (None: unchanged); other objects as they are."""
    if image is None or obj.get("kind") != "Deployment" or obj.get("metadata", {}).get("name") != APP_NAME:
        return obj
    for container in obj["spec"]["template"]["spec"]["containers"]:
        container["image"] = image
    return obj


def expected_facts(config: GatewayConfig) -> dict[str, Any]:
    """The gateway facts the translation of the applied manifests predicts (same shape as a real dump)."""
    dump = {"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
         "dynamic_active_clusters": [{"cluster": cluster} for cluster in config.clusters]},
        {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
         "dynamic_route_configs": [{"route_config": route} for route in config.routes]},
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
         "dynamic_listeners": [{"active_state": {"listener": listener}} for listener in config.listeners]},
    ]}
    cluster = config.clusters[0]["name"] if config.clusters else ""
    return envoy_state.gateway_facts(dump, cluster)


def api_client_from(kubeconfig: str | None) -> Any:
    """A kubernetes ApiClient for a kubeconfig file (None: $KUBECONFIG or ~/.kube/config, current context)."""
    from kubernetes import config as kube_config

    return kube_config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]


class KubeMesh(Mesh):
    def __init__(self, api_client: Any, config: KubeMeshConfig) -> None:
        from kubernetes import client, dynamic

        self.config = config
        self.name = config.name
        self.api_client = api_client
        # The client's models make every field Optional; this thin adapter treats them as Any and lets a
        # missing field fail loudly at run time instead of narrowing each one.
        self.core: Any = client.CoreV1Api(api_client)
        self.apps: Any = client.AppsV1Api(api_client)
        self.discovery: Any = client.DiscoveryV1Api(api_client)
        self.dynamic: Any = dynamic.DynamicClient(api_client)  # type: ignore[no-untyped-call]
        self.timeouts = config.timeouts
        self.istio = config.istio
        self.capabilities = config.capabilities
        self.namespace = config.namespace or run_namespace()
        self.gateway_admin: GatewayAdmin = config.gateway_admin or ExecGatewayAdmin(
            self._gateway_pods, lambda pod, command: self._exec(ISTIO_NAMESPACE, pod, "istio-proxy", command))
        self.istiod_control: IstiodControl | None = config.istiod_control or (
            HelmIstiodControl(config.istio) if config.istio else None)
        self._gateway_url = config.gateway_url
        # This run's own host for its Gateway and VirtualService (None: their ``*``), and the Host the probe
        # sends (None: the URL's): the same through the gateway; through a sidecar door the probe names the
        # Service instead.
        self.routed_host = run_host(self.namespace) if config.own_host else None
        self.gateway_host = self.routed_host
        self.after_close = list(config.after_close)
        door = config.front_door
        if door is not None:  # the probe's URL and Host, and the Envoy every read goes to, become the door's
            self.front_door = door.name
            self._gateway_url, self.gateway_host, self.gateway_admin = door.url, door.host, door.admin
            self.capabilities.known_differences.extend(door.known_differences)
            self.after_close.insert(0, door.stop)
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.istiod_env: dict[str, str] = {}
        self.data_plane_target = config.istio.version if config.istio else ""
        self.baseline_istiod_env = self.istiod_control.baseline_env() if self.istiod_control else {}
        self.istiod_env.update(self.baseline_istiod_env)
        self.closed = False
        self._pods_at_gateway_start: set[str] = set()
        self.gateway_restarts = 0
        # Where a run's time goes (the report's run section; harness/report/estimate.py is calibrated on it):
        # set-up steps by name, istiod environment changes, closing, and the mesh's whole life from
        # ``started_at``.
        self.setup_seconds = dict(config.setup_seconds)
        self.istiod_env_seconds = 0.0
        self.close_seconds: float | None = None
        self.started_at = config.started_at

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> KubeMesh:
        """Run the preparations (e.g. installing Istio), remove this suite's stale namespaces, create the run's
        namespace and bring the app to its baseline. When any of it fails: diagnostics first (into
        ``diagnostics_dir``), then everything is removed (``close``), then one ``MeshError`` says what failed
        and where the diagnostics are; Ctrl-C removes everything too."""
        from kubernetes import client

        try:
            for prepare in self.config.preparations:
                started = time.monotonic()
                prepare()
                self.setup_seconds[getattr(prepare, "__name__", "preparation")] = time.monotonic() - started
            started = time.monotonic()
            self.delete_stale_namespaces()
            self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
                name=self.namespace, labels={"istio-injection": "enabled", MANAGED_BY_LABEL: FIELD_MANAGER})))
            self.core.create_namespaced_config_map(self.namespace, client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=APP_NAME),
                data={"echo_server.py": manifests.APP_SOURCE.read_text()}))
            for extra in self.config.extra_manifests:
                for obj in manifests.load(extra):
                    self._server_side_apply(obj)
            if self.config.front_door is not None:
                door_started = time.monotonic()
                self.config.front_door.start(self._server_side_apply)
                self.setup_seconds["client_sidecar"] = time.monotonic() - door_started
            self.reset()
            self._note_gateway_replicas()
            self.setup_seconds["app_start"] = time.monotonic() - started
        except KeyboardInterrupt:
            self.close()
            raise
        except Exception as error:
            raise self._failed_start(error) from error
        return self

    def _failed_start(self, error: Exception) -> MeshError:
        """Diagnostics, then cleanup, then the message that stops the run."""
        what = str(error) if isinstance(error, MeshError) else f"{type(error).__name__}: {error}"
        notes = []
        if self.config.diagnostics_dir is not None:
            try:
                written = self.collect_diagnostics(self.config.diagnostics_dir)
                notes.append(f"diagnostics ({', '.join(p.name for p in written)}) in {self.config.diagnostics_dir}")
            except Exception as problem:
                notes.append(f"collecting diagnostics failed: {problem}")
        try:
            self.close()
            notes.append("everything it created is removed")
        except Exception as problem:
            notes.append(f"cleaning up failed too: {problem}")
        return MeshError(f"the {self.name} mesh did not start: {what}\n" + "; ".join(notes))

    def delete_stale_namespaces(self) -> list[str]:
        """Delete namespaces this suite created in earlier runs (its managed-by label) that are at least
        ``stale_namespace_age`` seconds old: an interrupted run's app and routes. Not waited for."""
        from kubernetes.client.exceptions import ApiException

        if self.config.stale_namespace_age is None:
            return []
        now = dt.datetime.now(dt.UTC)
        deleted = []
        for namespace in self.core.list_namespace(label_selector=f"{MANAGED_BY_LABEL}={FIELD_MANAGER}").items:
            meta = namespace.metadata
            if meta.name == self.namespace or meta.deletion_timestamp is not None:
                continue
            if (now - meta.creation_timestamp).total_seconds() < self.config.stale_namespace_age:
                continue
            try:
                self.core.delete_namespace(meta.name)
            except ApiException as error:
                if error.status != 404:
                    raise
            deleted.append(str(meta.name))
        return deleted

    def _note_gateway_replicas(self) -> None:
        replicas = self.gateway_admin.replicas()
        if len(replicas) > 1:
            self.capabilities.known_differences.append(
                f"the ingress gateway runs {len(replicas)} replicas: per-host counters are summed over them and "
                "every convergence waits for all of them; each replica balances on its own in-flight requests, "
                "so LEAST_REQUEST shares differ from one Envoy's")

    def reset(self) -> None:
        for key in [k for k in self.objects if k[0] == "DestinationRule"]:
            self._delete_object(self.objects.pop(key))
        self._finish_terminations()
        for manifest in manifests.BASE_MANIFESTS:
            self._apply_objects(manifests.load(manifest))
        self._converge()
        self._restart_starved_gateway()

    def _restart_starved_gateway(self) -> None:
        """Every test starts with all pods taking traffic. Where the data plane may starve pods it learnt
        of while they were starting (the known defect ``new-pod-starvation``), a mesh that can restart its
        gateway does so when the baseline holds pods this gateway has not seen from its start: a fresh
        Envoy builds its load balancer from the full, ready endpoint set. Tests that add pods themselves
        still meet the starvation, and report it (``adds_pods``)."""
        if not self.gateway_admin.can_restart:
            return
        pods = {pod.name for pod in self.pods()}
        if pods <= self._pods_at_gateway_start:
            return
        if KNOWN_DEFECTS[NEW_POD_STARVATION].applies(self):
            self.gateway_admin.restart()
            self.gateway_restarts += 1
            self._converge()
        self._pods_at_gateway_start = pods

    def run_figures(self) -> dict[str, Any]:
        restarts = {"gateway_restarts": self.gateway_restarts} if self.gateway_restarts else {}
        door = self.config.front_door
        extra = door.run_figures() if door is not None else {}
        figures = {**super().run_figures(), **restarts, **extra}
        if self.istiod_env_changes:
            figures["operation_seconds"]["istiod_env_changes"] = round(self.istiod_env_seconds, 1)
        figures["setup_seconds"] = {name: round(seconds, 1) for name, seconds in self.setup_seconds.items()}
        if self.close_seconds is not None:
            figures["close_seconds"] = round(self.close_seconds, 1)
        figures["mesh_seconds"] = round(time.monotonic() - self.started_at, 1)
        return figures

    def _finish_terminations(self) -> None:
        """Pods a test left terminating (a drain, a scale-down with the 30 s preStop) finish now: as far as
        the next test is concerned their grace period is over, and a draining endpoint they leave in the
        gateway would otherwise take part in the next test."""
        from kubernetes.client.exceptions import ApiException

        for pod in self.core.list_namespaced_pod(self.namespace, label_selector=f"app={APP_NAME}").items:
            if pod.metadata.deletion_timestamp is not None:
                try:
                    self.core.delete_namespaced_pod(pod.metadata.name, self.namespace, grace_period_seconds=0)
                except ApiException as error:
                    if error.status != 404:
                        raise

    def close(self) -> None:
        """istiod back to the values it was found with (a shared one; kind reinstalls at its next start), the
        run's namespace deleted, then ``after_close`` (e.g. the kind cluster deleted). Every step runs even
        when an earlier one fails; the failures are raised together at the end."""
        if self.closed:
            return
        self.closed = True
        started = time.monotonic()
        try:
            self._close_steps()
        finally:
            self.close_seconds = time.monotonic() - started

    def _close_steps(self) -> None:
        steps: list[tuple[str, Callable[[], None]]] = []
        control = self.istiod_control
        if self.config.restore_istiod_at_close and control is not None and self.capabilities.can_set_istiod_env:
            steps.append(("restoring istiod", control.restore))
        if self.config.delete_namespace_at_close:
            steps.append((f"deleting namespace {self.namespace}", self._delete_namespace))
        steps += [("cleanup", callback) for callback in self.after_close]
        failures = []
        for what, step in steps:
            try:
                step()
            except Exception as error:
                failures.append(f"{what}: {type(error).__name__}: {error}")
        if failures:
            raise MeshError(f"closing the {self.name} mesh: " + "; ".join(failures))

    def _delete_namespace(self) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.delete_namespace(self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
        for attempt in poll(self.timeouts.namespace_delete, f"namespace {self.namespace} deleted", interval=1.0,
                            max_interval=5.0):
            with attempt:
                try:
                    self.core.read_namespace(self.namespace)
                except ApiException as error:
                    if error.status == 404:
                        return
                    raise
                raise AssertionError("still terminating")

    # -- reading -------------------------------------------------------------------------------
    @property
    def gateway_url(self) -> str:
        return self._gateway_url

    def pods(self) -> list[Pod]:
        listed = self.core.list_namespaced_pod(self.namespace, label_selector=f"app={APP_NAME}")
        pods = []
        for pod in listed.items:
            ready = any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
            if ready and pod.metadata.deletion_timestamp is None and pod.status.pod_ip:
                pods.append(Pod(pod.metadata.name, pod.status.pod_ip, APP_PORT))
        return sorted(pods, key=lambda p: p.name)

    def versions(self) -> dict[str, str]:
        """Envoy from the gateway's ``server_info``, Istio from the istiod release or image, Kubernetes from the
        API server. A failure here is a ``MeshError`` (conftest then closes the mesh and stops the run)."""
        from kubernetes import client

        try:
            server_info = json.loads(self._gateway_admin("server_info"))
            kubernetes = client.VersionApi(self.api_client).get_code().git_version
            istio = self._istio_version()
        except (OSError, ValueError, AssertionError) as error:
            raise MeshError(f"cannot read the versions of the {self.name} mesh: {error}") from error
        return {"envoy": envoy_state.server_version(server_info), "istio": istio, "kubernetes": kubernetes}

    def _istio_version(self) -> str:
        from harness.meshes.kube.installed import istio_version_from_image

        if self.istiod_control is not None:
            return self.istiod_control.version
        deployments = self.apps.list_namespaced_deployment(ISTIO_NAMESPACE, label_selector="app=istiod").items
        images = [d.spec.template.spec.containers[0].image for d in deployments]
        return next((v for v in map(istio_version_from_image, images) if v), "unknown")

    def config_dump(self, resource: str | None = None) -> dict[str, Any]:
        """The gateway's config_dump; with several replicas, once they all show the same app facts."""
        path = "config_dump" + (f"?resource={resource}" if resource else "")
        try:
            cluster: str | None = self._cluster()
        except MeshError:
            cluster = None  # nothing applied yet to compare replicas on
        return config_dump_over_replicas(self.gateway_admin, path, cluster)

    def host_counters(self) -> dict[str, HostCounters]:
        """The app's hosts at the gateway, counters summed over its replicas (which must agree on the hosts)."""
        return host_counters_over_replicas(self.gateway_admin, self._cluster())

    def request_totals(self) -> dict[str, int]:
        if not self.capabilities.metrics_source:
            return super().request_totals()
        from harness.meshes.kube import prometheus

        pod = self._first_pod(prometheus.MONITORING_NAMESPACE, prometheus.PROMETHEUS_SELECTOR)
        command = prometheus.query_command(prometheus.requests_by_pod_query(self.namespace))
        response = self._exec(prometheus.MONITORING_NAMESPACE, pod, "prometheus-server", command)
        return prometheus.parse_totals(response, {p.name: p.address for p in self.pods()})

    # -- changes -------------------------------------------------------------------------------
    def apply(self, manifest: str | Path) -> None:
        self._apply_objects(manifests.load(manifest))
        self._converge()

    def delete(self, manifest: str | Path) -> None:
        for obj in manifests.load(manifest):
            self.objects.pop(manifests.object_key(obj), None)
            self._delete_object(obj)
        self._converge()

    def set_istiod_env(self, name: str, value: str | None) -> None:
        if self.istiod_env.get(name) == value:
            return
        started = time.monotonic()
        self._set_env(name, value)
        self.istiod_env_changes += 1
        self._converge()
        self.istiod_env_seconds += time.monotonic() - started

    def scale(self, replicas: int) -> list[Pod]:
        self.apps.patch_namespaced_deployment_scale(APP_NAME, self.namespace, {"spec": {"replicas": replicas}})
        self.objects[("Deployment", APP_NAME)]["spec"]["replicas"] = replicas
        self._converge()
        return self.pods()

    def delete_pod(self, name: str) -> Pod:
        before = {pod.name for pod in self.pods()}
        ip = self.core.read_namespaced_pod(name, self.namespace).status.pod_ip
        self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=DELETE_GRACE_SECONDS)
        self._converge(gone={name}, gone_addresses={f"{ip}:{APP_PORT}"} if ip else set())
        replacements = [pod for pod in self.pods() if pod.name not in before]
        if len(replacements) != 1:
            raise MeshError(f"deleting {name} brought {len(replacements)} replacement pods, expected 1")
        return replacements[0]

    def start_draining(self, name: str) -> None:
        """Delete the pod with its full grace period: the preStop hook keeps it serving while it drains."""
        address = next((p.address for p in self.pods() if p.name == name), None)
        if address is None:
            raise MeshError(f"no ready pod {name}")
        self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=DRAIN_GRACE_SECONDS)
        keeps_draining = self._session_kind() == "cookie"
        what = "DRAINING" if keeps_draining else "removed"
        for attempt in poll(self.timeouts.endpoints_converged, f"gateway shows {address} {what}"):
            with attempt:
                hosts = self.host_counters()
                if keeps_draining:
                    assert address in hosts, "draining endpoint dropped"
                    assert envoy_state.eds_status(hosts[address]) == "DRAINING", hosts[address].health_flags
                else:
                    assert address not in hosts, "terminating endpoint still routed"

    def restart_rollout(self) -> list[Pod]:
        old_pods = self.pods()
        old = {pod.name for pod in old_pods}
        stamp = dt.datetime.now(dt.UTC).isoformat()
        self.apps.patch_namespaced_deployment(APP_NAME, self.namespace, {"spec": {"template": {"metadata": {
            "annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}})
        self._converge(gone=old, gone_addresses={pod.address for pod in old_pods})
        return self.pods()

    def upgrade_data_plane(self, target: str) -> None:
        if self.istiod_control is None:
            raise MeshError("the cluster mesh never upgrades a shared Istio; use --mesh kind")
        self.istiod_control.upgrade_to(target)
        self.data_plane_target = target
        self._converge()

    # -- internals -----------------------------------------------------------------------------
    def _set_env(self, name: str, value: str | None) -> None:
        if not self.capabilities.can_set_istiod_env or self.istiod_control is None:
            raise MeshError(self.capabilities.reason_no_istiod_env or "istiod's environment cannot be changed here")
        self.istiod_control.set_env(name, value)
        if value is None:
            self.istiod_env.pop(name, None)
        else:
            self.istiod_env[name] = value

    def _apply_objects(self, objects: list[dict[str, Any]]) -> None:
        """Apply objects the tests track (their translation predicts what the gateway must show)."""
        for obj in objects:
            self._server_side_apply(obj)
            self.objects[manifests.object_key(obj)] = obj

    def _server_side_apply(self, obj: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        body = with_app_image(scoped_to_host(obj, self.routed_host), self.config.app_image)
        body["metadata"]["namespace"] = self.namespace
        resource = self.dynamic.resources.get(api_version=body["apiVersion"], kind=body["kind"])
        # Right after an istiod rollout, istiod's validating webhook can fail to answer for a moment (the
        # Service's endpoints follow the new pod): the API server then refuses Istio objects with "failed
        # calling webhook". That is the control plane converging, not the object being invalid: retried,
        # bounded by the named timeout admission_webhook. An answer from the webhook (valid or not) is final.
        for attempt in poll(self.timeouts.admission_webhook, f"istiod's admission webhook for {body['kind']}",
                            interval=0.2, max_interval=2.0):
            with attempt:
                try:
                    self.dynamic.server_side_apply(resource, body=body, namespace=self.namespace,
                                                   field_manager=FIELD_MANAGER, force_conflicts=True)
                except ApiException as error:
                    if error.status == 500 and "failed calling webhook" in str(error.body or ""):
                        raise AssertionError(f"webhook not answering: {str(error.body)[:300]}") from None
                    raise

    def _delete_object(self, obj: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        resource = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        try:
            self.dynamic.delete(resource, name=obj["metadata"]["name"], namespace=self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise

    def _translation(self) -> GatewayConfig:
        # Only the facts matter here, not where a listener would bind.
        translator = translator_for(self.front_door, self.namespace, "127.0.0.1", 8080, {"rds": {}, "eds": {}})
        return translator.translate(self.objects, self.istiod_env, {})

    def _cluster(self) -> str:
        clusters = self._translation().clusters
        if len(clusters) != 1:
            raise MeshError(f"expected one app cluster, the manifests give {len(clusters)}")
        return str(clusters[0]["name"])

    def _session_kind(self) -> str | None:
        service = self.objects.get(("Service", APP_NAME), {})
        labels = SessionLabels.from_env(self.istiod_env).setting(service.get("metadata", {}).get("labels") or {})
        return labels.kind if labels else None

    def _converge(self, gone: set[str] = frozenset(),  # type: ignore[assignment]
                  gone_addresses: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Wait for the Deployment, its EndpointSlices and the gateway's Envoy to agree with what was applied.
        ``gone_addresses``: pods that were deleted must have left the gateway entirely (also as DRAINING)."""
        replicas = int(self.objects[("Deployment", APP_NAME)]["spec"].get("replicas", 1))
        for attempt in poll(self.timeouts.deployment_rollout, f"{replicas} ready pods of {APP_NAME}",
                            interval=self.config.poll_interval, max_interval=self.config.poll_max_interval):
            with attempt:
                status = self.apps.read_namespaced_deployment_status(APP_NAME, self.namespace).status
                assert (status.ready_replicas or 0) == replicas, f"ready {status.ready_replicas}"
                assert (status.updated_replicas or 0) == replicas, f"updated {status.updated_replicas}"
                assert (status.replicas or 0) == replicas, f"replicas {status.replicas} (old ones still there)"
                pods = self.pods()
                assert len(pods) == replicas, f"{len(pods)} ready pods"
                assert not gone & {p.name for p in pods}, "a deleted pod is still listed"
        expected_addresses = {pod.address for pod in self.pods()}
        expected = expected_facts(self._translation())
        cluster = self._cluster()
        for attempt in poll(self.timeouts.endpoints_converged, "EndpointSlices ready for exactly the pods",
                            interval=self.config.poll_interval, max_interval=self.config.poll_max_interval):
            with attempt:
                slices = self.discovery.list_namespaced_endpoint_slice(
                    self.namespace, label_selector=f"kubernetes.io/service-name={APP_NAME}")
                ready = {f"{address}:{APP_PORT}" for s in slices.items for e in (s.endpoints or [])
                         if e.conditions and e.conditions.ready for address in e.addresses}
                assert ready == expected_addresses, f"EndpointSlices list {sorted(ready)}"
        # Deleted pods that drain (cookie sessions keep terminating endpoints) leave within their grace period.
        bound = self.timeouts.config_converged + (DRAIN_GRACE_SECONDS if gone_addresses else 0)
        for attempt in poll(bound, "gateway Envoy shows the applied config and pods",
                            interval=self.config.poll_interval, max_interval=self.config.poll_max_interval):
            with attempt:
                facts = envoy_state.gateway_facts(self.config_dump(), cluster)
                assert facts == expected, f"gateway shows {facts}, expected {expected}"
                counters = self.host_counters()
                lingering = gone_addresses & set(counters)
                assert not lingering, f"deleted pods still at the gateway: {sorted(lingering)}"
                hosts = envoy_state.hosts_taking_new_sessions(counters)
                assert hosts == expected_addresses, f"gateway hosts {sorted(hosts)}"

    def _gateway_pods(self) -> list[str]:
        """Every gateway replica that serves: running, ready, not terminating (sorted by name)."""
        serving = serving_pods(self.core, ISTIO_NAMESPACE, GATEWAY_SELECTOR)
        if not serving:
            raise MeshError(f"no running, ready ingress gateway pod ({GATEWAY_SELECTOR}) in {ISTIO_NAMESPACE}")
        return serving

    def _gateway_pod(self) -> str:
        return self._gateway_pods()[0]

    def _gateway_admin(self, path: str) -> str:
        """An admin page of the gateway's Envoy, read inside its pod (the admin port is not exposed)."""
        return self.gateway_admin.get(self.gateway_admin.replicas()[0], path)

    def _exec(self, namespace: str, pod: str, container: str, command: list[str]) -> str:
        """stdout of a command that exited 0; ``ExecFailed`` (an OSError, which polls retry) otherwise."""
        return pod_exec(self.core, namespace, pod, container, command)

    # -- diagnostics ---------------------------------------------------------------------------
    def collect_diagnostics(self, directory: Path) -> list[Path]:
        """Events, istiod and gateway logs and the gateway's config_dump, for a failed test."""
        directory.mkdir(parents=True, exist_ok=True)
        written = []

        def save(name: str, produce: Any) -> None:
            try:
                text = produce()
            except Exception as error:
                text = f"could not collect {name}: {error}"
            path = directory / name
            path.write_text(text if isinstance(text, str) else json.dumps(text, indent=1, default=str))
            written.append(path)

        save("events.txt", lambda: "\n".join(
            f"{e.last_timestamp} {e.type} {e.involved_object.kind}/{e.involved_object.name}: {e.reason} {e.message}"
            for e in self.core.list_namespaced_event(self.namespace).items))
        save("istiod.log", lambda: self.core.read_namespaced_pod_log(
            self._first_pod(ISTIO_NAMESPACE, "app=istiod"), ISTIO_NAMESPACE, tail_lines=2000))
        save("gateway.log", lambda: self.core.read_namespaced_pod_log(
            self._gateway_pod(), ISTIO_NAMESPACE, tail_lines=2000))
        save("gateway-config_dump.json", lambda: self._gateway_admin("config_dump"))
        save("gateway-clusters.json", lambda: self._gateway_admin("clusters?format=json"))
        return written

    def _first_pod(self, namespace: str, selector: str) -> str:
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        if not pods:
            raise MeshError(f"no pod {selector} in {namespace}")
        return str(pods[0].metadata.name)
