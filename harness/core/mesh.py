"""The Mesh interface: everything a conformance test may do to a mesh, and nothing about how.

Tests in ``e2e/`` talk only to this interface, so the same file runs against the local mesh (real Envoy,
local pods), a kind cluster or an existing cluster. Every mutating operation returns only once the
gateway's Envoy shows the change (polled, bounded by the named timeouts in ``harness.core.timeouts``), so a
test can send traffic right after it without sleeping.
"""

from __future__ import annotations

import abc
import collections
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core import envoy_state
from harness.core.envoy_state import HostCounters
from harness.core.timeouts import Timeouts, poll

PERSISTENT_SESSION_FLAG = "PILOT_ENABLE_PERSISTENT_SESSION_FILTER"
APP_NAME = "sticky-session-app"
APP_PORT = 5678


class MeshError(RuntimeError):
    """A mesh could not do what was asked; the message says what and how to fix it."""


@dataclass(frozen=True)
class Pod:
    """One app pod as the gateway sees it."""

    name: str
    ip: str
    port: int = APP_PORT

    @property
    def address(self) -> str:
        """``ip:port``, the form Envoy uses for a host (and the stateful-session value encodes)."""
        return f"{self.ip}:{self.port}"


@dataclass
class MeshCapabilities:
    """What this mesh can do beyond the common interface; tests skip with a reason when one is missing."""

    # Client source addresses the probe can bind to be seen as different clients (source-IP hashing).
    client_source_addresses: list[str] = field(default_factory=list)
    # Where per-pod request metrics come from ("" when this mesh has no metrics pipeline).
    metrics_source: str = ""
    # Whether istiod's environment may be changed (an existing shared cluster may forbid it).
    can_set_istiod_env: bool = True
    reason_no_istiod_env: str = ""
    # The proxy's configuration comes from a real istiod (False: the local mesh's translation).
    real_istiod: bool = True
    # The gateway's boot clock is the test's own (the local mesh), so a monotonic expiry can be computed.
    shares_boot_clock: bool = False
    # An address:port that is no pod of the app, safe to name in a session value (never sent traffic).
    outside_address: str = "10.0.0.1:22"
    # How this mesh knowingly differs from a production install (recorded in the report).
    known_differences: list[str] = field(default_factory=list)


# The operations a test asks of a mesh that cost time on a cluster (rollouts, pod starts, drains, pushes):
# every mesh counts them, so a fast local run tells how long a kind run of the same tests takes.
COUNTED_OPERATIONS = ("reset", "apply", "delete", "scale", "delete_pod", "start_draining", "restart_rollout",
                      "upgrade_data_plane")


def _counted(name: str, method: Any) -> Any:
    @functools.wraps(method)
    def counting(self: Mesh, *args: Any, **kwargs: Any) -> Any:
        outermost = not self._counting
        self._counting = True
        started = time.monotonic()
        try:
            if outermost:
                self.operations[name] += 1
            return method(self, *args, **kwargs)
        finally:
            if outermost:
                self._counting = False
                self.operation_seconds[name] += time.monotonic() - started
    return counting


class Mesh(abc.ABC):
    """A mesh with the app deployed behind an ingress gateway."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in COUNTED_OPERATIONS:
            if name in cls.__dict__:
                setattr(cls, name, _counted(name, cls.__dict__[name]))

    @property
    def operations(self) -> collections.Counter[str]:
        """How many times each of ``COUNTED_OPERATIONS`` was asked of this mesh (calls inside another
        counted operation are part of it)."""
        counter: collections.Counter[str] | None = self.__dict__.get("_operations")
        if counter is None:
            counter = self.__dict__["_operations"] = collections.Counter()
        return counter

    @property
    def operation_seconds(self) -> collections.defaultdict[str, float]:
        """Wall time spent in each of ``COUNTED_OPERATIONS`` (what the kind-run estimate is calibrated on)."""
        seconds: collections.defaultdict[str, float] | None = self.__dict__.get("_operation_seconds")
        if seconds is None:
            seconds = self.__dict__["_operation_seconds"] = collections.defaultdict(float)
        return seconds

    _counting: bool = False

    name: str = "abstract"
    capabilities: MeshCapabilities
    timeouts: Timeouts
    # What upgrade_data_plane() takes to come back to the starting data plane (binary or Istio version).
    data_plane_target: str = ""
    # The Host clients name (a cluster run routes its own virtual host); None: the gateway URL's host.
    gateway_host: str | None = None
    # Where the probe's requests enter: "gateway" (the ingress gateway) or "sidecar" (a client workload's
    # sidecar, its outbound listener). Through the sidecar door, gateway_url, gateway_host, config_dump,
    # host_counters and gateway_facts are the client sidecar's: the Envoy that routes the requests.
    front_door: str = "gateway"
    # istiod's environment as this run set it (on top of how istiod was when the run started), and how
    # many times it changed: on a cluster every change is a rollout of istiod, so the run keeps it low.
    istiod_env: dict[str, str]
    baseline_istiod_env: dict[str, str] = {}  # noqa: RUF012 - read-only default: istiod's own defaults
    istiod_env_changes: int = 0

    # -- what is running -------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def gateway_url(self) -> str:
        """Base URL of the ingress gateway, e.g. ``http://127.0.0.1:18080``."""

    @abc.abstractmethod
    def pods(self) -> list[Pod]:
        """The app pods the gateway currently routes new sessions to (ready, not terminating)."""

    @abc.abstractmethod
    def versions(self) -> dict[str, str]:
        """Versions that identify this data and control plane: ``envoy``, ``istio``, ``kubernetes``."""

    # -- changes (each waits until the gateway's Envoy has converged) ----------------------------
    @abc.abstractmethod
    def apply(self, manifest: str | Path) -> None:
        """Apply a manifest file (path relative to ``manifests/`` or absolute)."""

    @abc.abstractmethod
    def delete(self, manifest: str | Path) -> None:
        """Delete the objects of a manifest file; objects that are already gone are fine."""

    @abc.abstractmethod
    def set_istiod_env(self, name: str, value: str | None) -> None:
        """Set (or, with None, unset) an istiod environment variable and wait for the gateway to show it.
        Setting the value it already has changes nothing (and is not counted)."""

    def use_istiod_env(self, env: dict[str, str]) -> None:
        """Make istiod's environment exactly ``env`` on top of how it was when the run started: flags a
        test set and this one does not name go back; only what differs changes."""
        target = {**self.baseline_istiod_env, **env}
        for name in sorted(set(self.istiod_env) - set(target)):
            self.set_istiod_env(name, None)
        for name, value in sorted(target.items()):
            self.set_istiod_env(name, value)

    def run_figures(self) -> dict[str, Any]:
        """Figures of the whole run (the report's ``run`` section)."""
        seconds = {name: round(spent, 1) for name, spent in sorted(self.operation_seconds.items())}
        return {"istiod_env_changes": self.istiod_env_changes, "operations": dict(sorted(self.operations.items())),
                "operation_seconds": seconds}

    @abc.abstractmethod
    def scale(self, replicas: int) -> list[Pod]:
        """Scale the app to ``replicas`` and return once the gateway routes to exactly those pods."""

    @abc.abstractmethod
    def delete_pod(self, name: str) -> Pod:
        """Delete one pod; like a Deployment, a replacement with a new name and address comes up.

        Returns the replacement once the gateway routes to it and no longer to the deleted pod.
        """

    @abc.abstractmethod
    def start_draining(self, name: str) -> None:
        """Make a pod terminate gracefully: it keeps serving while its endpoint is marked draining.

        Returns once the gateway shows the endpoint as draining (cookie sessions) or removed (otherwise).
        ``delete_pod`` completes the termination.
        """

    def kill_pod_process(self, name: str) -> None:
        """Kill a pod's process at once (no preStop, no graceful termination) while the control plane still
        lists its endpoint as ready: the gateway keeps routing to an address that refuses connections, as
        between a crash and Kubernetes noticing it. The next ``reset`` brings the mesh back to its baseline.

        Raises NotImplementedError on a mesh that cannot do this behind the control plane's back.
        """
        raise NotImplementedError(f"the {self.name} mesh cannot kill a pod's process while its endpoint stays")

    def add_pods_announced_unready(self, count: int) -> list[Pod]:
        """Add ``count`` pods the way Istio 1.31 announces them, made on purpose: one endpoint update adds
        them as UNHEALTHY (a membership change), the next only turns them HEALTHY (a health-only update).
        Returns the new pods once the gateway lists them as HEALTHY.

        Raises NotImplementedError on a mesh whose control plane makes its own update sequence.
        """
        raise NotImplementedError(f"the {self.name} mesh's control plane decides its own endpoint update "
                                  "sequence (only the local mesh can make this one on purpose)")

    @abc.abstractmethod
    def restart_rollout(self) -> list[Pod]:
        """Replace every pod (``kubectl rollout restart``) and return the new pods once routed."""

    def upgrade_data_plane(self, target: str) -> None:
        """Move the gateway's data plane to ``target`` under live sessions, pods unchanged.

        Local mesh: ``target`` is another Envoy binary. Clusters: an Istio version (helm upgrade).
        """
        raise MeshError(f"the {self.name} mesh cannot upgrade its data plane")

    # -- what the gateway sees -------------------------------------------------------------------
    @abc.abstractmethod
    def config_dump(self, resource: str | None = None) -> dict[str, Any]:
        """The gateway Envoy's ``/config_dump`` (optionally ``?resource=...``) as parsed JSON."""

    @abc.abstractmethod
    def host_counters(self) -> dict[str, HostCounters]:
        """The gateway's per-host counters for the app's cluster, keyed by ``ip:port``."""

    def request_totals(self) -> dict[str, int]:
        """Requests served per pod ``ip:port`` as the mesh's metrics pipeline reports them.

        Only meshes whose ``capabilities.metrics_source`` is set implement it.
        """
        raise MeshError(f"the {self.name} mesh has no metrics pipeline")

    def wait_for_active_requests(self, expected: dict[str, int]) -> None:
        """Poll the gateway until each ``ip:port`` has exactly this many requests in flight."""
        for attempt in poll(self.timeouts.endpoints_converged, f"gateway active requests {expected}"):
            with attempt:
                counters = self.host_counters()
                seen = {address: counters[address].rq_active if address in counters else None
                        for address in expected}
                assert seen == expected, f"gateway shows {seen}"

    def gateway_facts(self) -> dict[str, Any]:
        """What the gateway's Envoy shows for the app (lb policy, ring/table size, override_host_status,
        the routes' hash policies and session settings, the session filter): see harness.core.envoy_state."""

        dump = self.config_dump()
        prefix = f"outbound|{APP_PORT}||{APP_NAME}."
        names = {c["cluster"]["name"] for config in dump.get("configs", [])
                 for c in config.get("dynamic_active_clusters", []) if c["cluster"]["name"].startswith(prefix)}
        if len(names) != 1:
            raise MeshError(f"expected one app cluster at the gateway, found {sorted(names)}")
        return envoy_state.gateway_facts(dump, names.pop())

    # -- lifecycle -------------------------------------------------------------------------------
    @abc.abstractmethod
    def reset(self) -> None:
        """Bring the mesh back to the baseline: base manifests, 3 pods, no DestinationRule. istiod's
        environment stays as it is: each test names the one it needs (``use_istiod_env``), so tests that
        need the same one run in a row without restarting istiod."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop and remove everything this mesh started; safe to call twice."""
