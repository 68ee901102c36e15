"""The two places where meshes on Kubernetes differ, as small named strategies KubeMesh is given.

- ``GatewayAdmin``: how the gateway Envoy's admin pages are read (kind/cluster: ``pilot-agent request``
  exec'd in each gateway pod; the istiod mesh: HTTP on loopback).
- ``IstiodControl``: how istiod's environment is read and changed (kind/cluster: ``helm upgrade`` of the
  istiod release; the istiod mesh: a restart of the istiod process with its new environment).
Everything else a KubeMesh does is the same code on every Kubernetes.

Also here: running a command in a pod with its exit status read (``pod_exec``), and reading a gateway
that runs more than one replica (``host_counters_over_replicas``, ``config_dump_over_replicas``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from harness.core import envoy_state
from harness.core.envoy_state import HostCounters
from harness.core.mesh import MeshError
from harness.meshes.kube.installed import relevant_flags
from harness.meshes.kube.istio import IstioHelm


class GatewayAdmin(Protocol):
    """How the gateway Envoy's admin pages are read."""

    def replicas(self) -> list[str]:
        """One name per gateway replica (a pod name, or "local")."""
        ...

    def get(self, replica: str, path: str) -> str:
        """An admin page's body, e.g. ``config_dump`` or ``clusters?format=json``."""
        ...

    # Whether the suite may restart this gateway (only one the mesh itself started).
    can_restart: bool

    def restart(self) -> None:
        """Restart the gateway so its Envoy builds its load balancer from the current endpoints."""
        ...


class IstiodControl(Protocol):
    """How istiod's environment is read and changed."""

    version: str

    def baseline_env(self) -> dict[str, str]:
        """istiod's flags as found at start: the baseline the translation must assume."""
        ...

    def set_env(self, name: str, value: str | None) -> None:
        """Set a flag (None: back to the baseline) and return once the new istiod serves."""
        ...

    def restore(self) -> None:
        """At close: istiod exactly as found."""
        ...

    def upgrade_to(self, version: str) -> None:
        """Move the control and data plane to another Istio version."""
        ...


def serving_pods(core: Any, namespace: str, selector: str) -> list[str]:
    """The pods of ``selector`` that serve: running, ready, not terminating (names, sorted)."""
    pods = core.list_namespaced_pod(namespace, label_selector=selector)
    return sorted(str(p.metadata.name) for p in pods.items
                  if p.status.phase == "Running" and p.metadata.deletion_timestamp is None
                  and any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or [])))


# -- running a command in a pod -------------------------------------------------------------------
class ExecFailed(OSError):  # an OSError, so every poll retries it
    """A command run in a pod did not give its output: the exec could not connect (the pod is going
    away, the API server or kubelet hiccupped), the command exited non-zero (Envoy's admin not up yet),
    or it printed nothing. All are worth retrying while a wait lasts."""


EXEC_TIMEOUT = 60.0  # one `pilot-agent request` (a config_dump of a busy gateway takes seconds)
GET_ATTEMPTS = 3  # quick retries inside one read, before a caller's own poll takes over


def exec_status(raw: str) -> tuple[bool, str]:
    """``(succeeded, why)`` from the exec status channel: a ``metav1.Status`` as JSON (the kubelet sends
    ``{"status": "Success"}``, or ``Failure`` with ``reason: NonZeroExitCode`` and the exit code as
    ``details.causes[0].message``). Nothing at all means the stream ended before the command did."""
    if not raw.strip():
        return False, "the exec stream ended without an exit status"
    try:
        status: dict[str, Any] = json.loads(raw)
    except ValueError:
        return False, f"unreadable exec status {raw[:200]!r}"
    if status.get("status") == "Success":
        return True, ""
    causes = (status.get("details") or {}).get("causes") or []
    codes = [c.get("message") for c in causes if c.get("reason") == "ExitCode"]
    if status.get("reason") == "NonZeroExitCode" and codes:
        return False, f"exit code {codes[0]}"
    return False, str(status.get("message") or status.get("reason") or status)


def pod_exec(core: Any, namespace: str, pod: str, container: str, command: list[str], *,
             timeout: float = EXEC_TIMEOUT) -> str:
    """A command's stdout, read to the end, once its exit status says it succeeded; ``ExecFailed`` otherwise.

    ``kubernetes.stream`` with its defaults returns whatever arrived, ignores the exit status, and turns a
    refused connection into ``ApiException(status=0)``; this reads the status channel instead."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.stream import stream
    from kubernetes.stream.ws_client import ERROR_CHANNEL, STDERR_CHANNEL, STDOUT_CHANNEL

    where = f"`{' '.join(command)}` in {namespace}/{pod}"
    try:
        client = stream(core.connect_get_namespaced_pod_exec, pod, namespace, command=command,
                        container=container, stderr=True, stdin=False, stdout=True, tty=False,
                        _preload_content=False)
    except ApiException as error:
        raise ExecFailed(f"{where}: could not start ({error.status or 'no HTTP status'}: "
                         f"{str(error.reason).strip()[:300]})") from None
    try:
        client.run_forever(timeout=timeout)
        finished = not client.is_open()
        stdout = str(client.read_channel(STDOUT_CHANNEL))
        stderr = str(client.read_channel(STDERR_CHANNEL))
        status = str(client.read_channel(ERROR_CHANNEL))
    except Exception as error:  # the websocket broke mid-stream
        raise ExecFailed(f"{where}: the stream broke ({type(error).__name__}: {error})") from None
    finally:
        client.close()
    if not finished:
        raise ExecFailed(f"{where}: no exit within {timeout:g}s")
    succeeded, why = exec_status(status)
    if not succeeded:
        detail = stderr.strip().splitlines()[-1:] or [""]
        raise ExecFailed(f"{where}: {why}" + (f" ({detail[0][:300]})" if detail[0] else ""))
    if not stdout.strip():
        raise ExecFailed(f"{where}: succeeded but printed nothing")
    return stdout


class ExecGatewayAdmin:
    """``pilot-agent request GET <path>`` in each gateway pod (the admin port is not exposed)."""

    def __init__(self, pods: Callable[[], list[str]], exec_in_pod: Callable[[str, list[str]], str],
                 attempts: int = GET_ATTEMPTS, pause: float = 1.0) -> None:
        self._pods = pods
        self._exec = exec_in_pod
        self.attempts = attempts
        self.pause = pause

    def replicas(self) -> list[str]:
        return self._pods()

    def get(self, replica: str, path: str) -> str:
        """The page, retried a few times when the exec fails; the last ``ExecFailed`` (an OSError, which
        every poll retries) when it keeps failing."""
        last: ExecFailed | None = None
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.pause * attempt)
            try:
                return self._exec(replica, ["pilot-agent", "request", "GET", path])
            except ExecFailed as error:
                last = error
        assert last is not None
        raise last

    can_restart = False  # a cluster's gateway is its operator's

    def restart(self) -> None:
        raise MeshError("the suite does not restart a cluster's ingress gateway")


# -- a gateway with more than one replica ---------------------------------------------------------
class GatewayReplicasDisagree(AssertionError):
    """The gateway's replicas do not show the same thing yet (a poll waits for them to agree)."""


def combine_host_counters(per_replica: Mapping[str, dict[str, HostCounters]]) -> dict[str, HostCounters]:
    """One view of the app's hosts over every replica: the same hosts with the same EDS health on each
    (``GatewayReplicasDisagree`` otherwise), request counters summed (what all the replicas sent)."""
    views = list(per_replica.items())
    if not views:
        return {}
    first_name, first = views[0]
    shape = {address: envoy_state.eds_status(host) for address, host in first.items()}
    for name, hosts in views[1:]:
        other = {address: envoy_state.eds_status(host) for address, host in hosts.items()}
        if other != shape:
            raise GatewayReplicasDisagree(f"gateway replicas disagree on the app's hosts: {first_name} shows "
                                          f"{sorted(shape.items())}, {name} shows {sorted(other.items())}")
    return {address: HostCounters(address=address,
                                  rq_total=sum(hosts[address].rq_total for _, hosts in views),
                                  rq_active=sum(hosts[address].rq_active for _, hosts in views),
                                  health_flags=host.health_flags)
            for address, host in first.items()}


def host_counters_over_replicas(admin: GatewayAdmin, cluster: str) -> dict[str, HostCounters]:
    """The app cluster's hosts as every gateway replica sees them, counters summed."""
    return combine_host_counters({
        replica: envoy_state.host_counters(json.loads(admin.get(replica, "clusters?format=json")), cluster)
        for replica in admin.replicas()})


def config_dump_over_replicas(admin: GatewayAdmin, path: str, cluster: str | None) -> dict[str, Any]:
    """The first replica's config_dump, once every replica shows the same facts for the app's cluster
    (``GatewayReplicasDisagree`` until then), so a wait on it covers every replica."""
    replicas = admin.replicas()
    dumps: dict[str, dict[str, Any]] = {replica: json.loads(admin.get(replica, path)) for replica in replicas}
    first_name, first = next(iter(dumps.items()))
    if cluster is not None and len(dumps) > 1:
        facts = envoy_state.gateway_facts(first, cluster)
        for name, dump in dumps.items():
            other = envoy_state.gateway_facts(dump, cluster)
            if other != facts:
                raise GatewayReplicasDisagree(f"gateway replicas disagree on {cluster}: {first_name} shows "
                                              f"{facts}, {name} shows {other}")
    return first


# -- istiod's environment -------------------------------------------------------------------------
class HelmIstiodControl:
    """istiod's flags as ``pilot.env`` values of its Helm release, on top of the values it was found with."""

    def __init__(self, istio: IstioHelm) -> None:
        self.istio = istio
        self.version = istio.version

    def baseline_env(self) -> dict[str, str]:
        return relevant_flags(self.istio.baseline_env())

    def set_env(self, name: str, value: str | None) -> None:
        self.istio.set_env(name, value)

    def restore(self) -> None:
        self.istio.restore()

    def upgrade_to(self, version: str) -> None:
        self.istio.upgrade_to(version)
        self.version = self.istio.version


class FoundIstiodControl:
    """An istiod the suite may not change (a shared cluster without --allow-istiod-restart, or one Helm
    does not manage): its flags as its Deployment runs them are the baseline, nothing more."""

    def __init__(self, version: str, env: dict[str, str], reason: str) -> None:
        self.version = version
        self.env = relevant_flags(env)
        self.reason = reason

    def baseline_env(self) -> dict[str, str]:
        return dict(self.env)

    def set_env(self, name: str, value: str | None) -> None:
        raise MeshError(self.reason)

    def restore(self) -> None:
        """Nothing was changed."""

    def upgrade_to(self, version: str) -> None:
        raise MeshError(self.reason)
