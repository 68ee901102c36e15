"""Reading an Envoy's state from its admin API output, wherever it came from.

The local mesh fetches admin pages over loopback; the cluster meshes fetch the same pages with
``pilot-agent request GET ...`` inside the gateway pod. Both parse them here, so a fact means the same
thing on every mesh.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

STATEFUL_SESSION_FILTER = "envoy.filters.http.stateful_session"
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"


@dataclass(frozen=True)
class HostCounters:
    """The gateway's own per-endpoint counters for one pod (Envoy ``/clusters``)."""

    address: str
    rq_total: int
    rq_active: int
    health_flags: tuple[str, ...] = ()


def host_counters(clusters_json: dict[str, Any], cluster: str) -> dict[str, HostCounters]:
    """Per-host counters and health flags of one cluster from ``/clusters?format=json``, by ``ip:port``."""
    for status in clusters_json.get("cluster_statuses", []):
        if status["name"] != cluster:
            continue
        hosts = {}
        for host in status.get("host_statuses", []):
            socket = host["address"]["socket_address"]
            address = f"{socket['address']}:{socket['port_value']}"
            stats = {s["name"]: int(s.get("value", 0)) for s in host.get("stats", [])}
            flags = tuple(sorted(k for k, v in host.get("health_status", {}).items() if v is True))
            eds = host.get("health_status", {}).get("eds_health_status")
            hosts[address] = HostCounters(
                address=address,
                rq_total=stats.get("rq_total", 0),
                rq_active=stats.get("rq_active", 0),
                health_flags=flags + ((f"eds:{eds}",) if eds else ()),
            )
        return hosts
    return {}


def eds_status(host: HostCounters) -> str:
    """The EDS health a host was given (HEALTHY when Envoy shows none)."""
    for flag in host.health_flags:
        if flag.startswith("eds:"):
            return flag[4:]
    return "HEALTHY"


def hosts_taking_new_sessions(counters: dict[str, HostCounters]) -> set[str]:
    """The hosts a new session can land on: not DRAINING (terminating pods kept for cookie sessions) nor
    UNHEALTHY (Istio 1.31+ sends not-ready pods that way)."""
    return {address for address, host in counters.items() if eds_status(host) not in {"DRAINING", "UNHEALTHY"}}


def server_version(server_info: dict[str, Any]) -> str:
    """``1.36.2`` from ``/server_info``'s ``version`` (``<sha>/1.36.2/Clean/RELEASE/BoringSSL``)."""
    match = re.search(r"/(\d+\.\d+\.\d+[^/]*)/", str(server_info.get("version", "")))
    return match.group(1) if match else ""


def gateway_facts(dump: dict[str, Any], cluster: str) -> dict[str, Any]:
    """What the sticky-session tests depend on in a gateway's config_dump, in one comparable dict:
    the cluster's lb policy, ring/table size and override_host_status, the routes' hash policies and
    stateful-session settings (the route's, else its virtual host's), and whether a listener carries the
    stateful_session filter. The same facts hold for a sidecar's outbound configuration."""
    facts: dict[str, Any] = {"cluster": None, "routes": [], "session_filter": False}
    for config in dump.get("configs", []):
        kind = config.get("@type", "")
        if kind.endswith("ClustersConfigDump"):
            for entry in config.get("dynamic_active_clusters", []):
                found = entry.get("cluster", {})
                if found.get("name") == cluster:
                    facts["cluster"] = {
                        "lb_policy": found.get("lb_policy", "ROUND_ROBIN"),
                        "minimum_ring_size": str(found.get("ring_hash_lb_config", {}).get("minimum_ring_size", "")),
                        "table_size": str(found.get("maglev_lb_config", {}).get("table_size", "")),
                        "override_host_status": sorted(
                            found.get("common_lb_config", {}).get("override_host_status", {}).get("statuses", [])),
                    }
        elif kind.endswith("RoutesConfigDump"):
            for entry in config.get("dynamic_route_configs", []):
                for host in entry.get("route_config", {}).get("virtual_hosts", []):
                    for route in host.get("routes", []):
                        action = route.get("route", {})
                        if action.get("cluster") != cluster:
                            continue
                        # The most specific setting wins, as in Envoy: a gateway's route carries it, a sidecar's
                        # outbound virtual host for the Service (istiod httproute.go, release-1.31).
                        session = (route.get("typed_per_filter_config", {}).get(STATEFUL_SESSION_FILTER)
                                   or host.get("typed_per_filter_config", {}).get(STATEFUL_SESSION_FILTER) or {})
                        state = session.get("stateful_session", {}).get("session_state", {})
                        predicates = action.get("retry_policy", {}).get("retry_host_predicate", [])
                        facts["routes"].append({
                            "hash_policy": action.get("hash_policy", []),
                            "session_state": state.get("typed_config", {}),
                            # Whether a retry avoids the hosts already tried: istiod drops it on a gateway's
                            # hash routes, keeps it on a sidecar's default outbound route.
                            "retries_other_hosts": any(p.get("name") == PREVIOUS_HOSTS for p in predicates),
                        })
        elif kind.endswith("ListenersConfigDump") and STATEFUL_SESSION_FILTER in str(config):
            facts["session_filter"] = True
    return facts
