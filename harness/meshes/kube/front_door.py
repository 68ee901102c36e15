"""The sidecar front door's parts that do not depend on the mesh (istiod mesh, kind).

Through the sidecar door the probe's requests leave through a client workload's sidecar, its *outbound*
listener, instead of the ingress gateway (the path of a call between services). Each mesh starts that client
its own way (``harness/meshes/istiod/sidecar.py``: pilot-agent as a local process; ``harness/meshes/kube/
sidecar_door.py``: an injected pod reached through a NodePort); what they share is here, so both check the
same things:

- what the client calls: the Service by its cluster name, ``sticky-session-app.<ns>.svc.cluster.local:5678``;
- the ``Sidecar`` resource that makes istiod bind a real outbound listener for port 5678 (``captureMode:
  NONE`` and a ``bind`` address), selecting the client by its label;
- ``OutboundPathCheck``: every config_dump read from the client's Envoy is checked to route the probe's
  requests by the sidecar *outbound* class from real istiod (listener direction OUTBOUND, the Service's
  virtual host, the ``outbound|5678||...`` cluster), and what was seen goes into the report;
- ``FrontDoor``: what a door gives the KubeMesh (``KubeMeshConfig.front_door``): the URL and Host the probe
  uses, the admin every convergence reads, how it starts and stops, and the report's ``run.front_door``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.core.mesh import APP_NAME, APP_PORT, MeshError
from harness.meshes.kube.strategies import GatewayAdmin

Apply = Callable[[dict[str, Any]], None]  # server-side apply of one object into the run's namespace

CLIENT_NAME = "sticky-client"
SIDECAR_NAME = "sticky-client-egress"
_HCM = "envoy.filters.network.http_connection_manager"
_SESSION_FILTER = "envoy.filters.http.stateful_session"


@dataclass
class FrontDoor:
    """Where the probe's requests enter when it is not the ingress gateway (``--front-door sidecar``): a
    client workload's sidecar, whose Envoy every convergence, counter and fact is then read from."""

    name: str  # "sidecar"
    url: str  # what the probe connects to
    host: str  # the Host header it sends (the Service's cluster name)
    admin: GatewayAdmin  # that Envoy's admin pages
    known_differences: list[str]  # how this door differs from an app calling through iptables capture
    start: Callable[[Apply], None]  # once the run's namespace exists, before the baseline
    stop: Callable[[], None]  # first thing at close
    run_figures: Callable[[], dict[str, Any]]  # the report's run.front_door and more


def service_host(namespace: str) -> str:
    """What an app in the mesh calls: the Service's cluster name and port (the Host header)."""
    return f"{APP_NAME}.{namespace}.svc.cluster.local:{APP_PORT}"


def outbound_cluster(namespace: str) -> str:
    return f"outbound|{APP_PORT}||{APP_NAME}.{namespace}.svc.cluster.local"


def sidecar_resource(bind: str) -> dict[str, Any]:
    """The Sidecar resource that gives the client a real outbound listener at ``bind:5678``."""
    return {
        "apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": {"name": SIDECAR_NAME},
        "spec": {
            "workloadSelector": {"labels": {"app": CLIENT_NAME}},
            "egress": [{"port": {"number": APP_PORT, "protocol": "HTTP", "name": "http"},
                        "bind": bind, "captureMode": "NONE", "hosts": ["./*"]}],
        },
    }


class OutboundPathCheck:
    """Checks, in every config_dump read from the sidecar, that the probe's requests take the outbound path:
    the listener at ``bind:5678`` is OUTBOUND, its HCM's route configuration has the Service's virtual host
    (domains include the Host the probe sends) whose route goes to the outbound cluster. Notes what it saw
    (session filter in that HCM, StatefulSessionPerRoute on the virtual host, hash policy on the route)."""

    def __init__(self, namespace: str, bind: str) -> None:
        self.host = service_host(namespace)
        self.cluster = outbound_cluster(namespace)
        self.bind = bind
        self.seen: dict[str, Any] = {}

    def run_figures(self, **extra: Any) -> dict[str, Any]:
        """The report's ``run.front_door``: what every check saw, and what the door adds."""
        return {"front_door": {"door": "sidecar", **self.seen, **extra}}

    def checked(self, path: str, text: str) -> str:
        """An admin page as read, after checking it when it is a config_dump."""
        if path.startswith("config_dump"):
            self.check(json.loads(text))
        return text

    def check(self, dump: dict[str, Any]) -> None:
        listener = self.listener(dump)
        if listener is None:
            return  # not pushed yet: convergence waits for the facts, which need it
        if listener.get("traffic_direction") != "OUTBOUND":
            raise MeshError(f"the sidecar's listener at {self.bind}:{APP_PORT} is "
                            f"{listener.get('traffic_direction')}, not OUTBOUND")
        hcms = [f["typed_config"] for chain in listener.get("filter_chains", []) for f in chain.get("filters", [])
                if f.get("name") == _HCM]
        if len(hcms) != 1:
            raise MeshError(f"the sidecar's outbound listener has {len(hcms)} HTTP connection managers, expected 1")
        hcm = hcms[0]
        route_name = hcm.get("rds", {}).get("route_config_name", "")
        route_config = self._route_config(dump, route_name)
        if route_config is None:
            return
        # A sidecar's route configuration ignores the port in host matching (its domains carry none).
        names = {self.host}
        if route_config.get("ignore_port_in_host_matching"):
            names.add(self.host.rsplit(":", 1)[0])
        vhost = next((v for v in route_config.get("virtual_hosts", []) if names & set(v.get("domains", []))), None)
        if vhost is None:
            return  # the Service is not applied or not pushed yet: convergence waits for its facts
        clusters = {r.get("route", {}).get("cluster") for r in vhost.get("routes", [])}
        if clusters != {self.cluster}:
            raise MeshError(f"the sidecar routes {self.host} to {sorted(map(str, clusters))}, not {self.cluster}")
        self.seen.update(listener=listener.get("name"), direction="OUTBOUND", route_config=route_name,
                         virtual_host=vhost.get("name"), cluster=self.cluster)
        if any(f.get("name") == _SESSION_FILTER for f in hcm.get("http_filters", [])):
            self.seen["session_filter_in_outbound_hcm"] = True
        if _SESSION_FILTER in vhost.get("typed_per_filter_config", {}):
            self.seen["session_settings_on_virtual_host"] = True
        if any(_SESSION_FILTER in r.get("typed_per_filter_config", {}) for r in vhost.get("routes", [])):
            self.seen["session_settings_on_route"] = True
        if any(r.get("route", {}).get("hash_policy") for r in vhost.get("routes", [])):
            self.seen["hash_policy_on_route"] = True

    def listener(self, dump: dict[str, Any]) -> dict[str, Any] | None:
        """The listener bound at ``bind:5678`` in a config_dump (None: not pushed yet). A whole dump nests the
        listeners in a ListenersConfigDump; ``?resource=dynamic_listeners`` lists them as the configs."""
        for config in dump.get("configs", []):
            for entry in config.get("dynamic_listeners", [config]):
                listener = entry.get("active_state", {}).get("listener", {})
                socket = listener.get("address", {}).get("socket_address", {})
                if socket.get("address") == self.bind and socket.get("port_value") == APP_PORT:
                    return dict(listener)
        return None

    @staticmethod
    def _route_config(dump: dict[str, Any], name: str) -> dict[str, Any] | None:
        for config in dump.get("configs", []):
            for entry in config.get("dynamic_route_configs", []):
                if entry.get("route_config", {}).get("name") == name:
                    return dict(entry["route_config"])
        return None
