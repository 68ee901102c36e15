"""An istiod-equivalent for the local mesh: Kubernetes/Istio objects in, the gateway's Envoy config out.

It produces what istiod pushes to an ingress gateway for the subset of the APIs this suite uses (read from
istio/istio, pilot/pkg/networking/core; see shared DESIGN.md section 2):

- Gateway + VirtualService -> one HTTP listener and its route configuration.
- DestinationRule ``trafficPolicy.loadBalancer`` -> the cluster's lb_policy (LEAST_REQUEST without a rule,
  RING_HASH with a 1024-point minimum ring by default for consistentHash, MAGLEV) and the route's hash_policy.
- ``PILOT_ENABLE_PERSISTENT_SESSION_FILTER`` -> an empty ``envoy.filters.http.stateful_session`` filter
  before the router; the Service's session label -> per-route ``StatefulSessionPerRoute`` settings and the
  cluster's ``override_host_status`` (HEALTHY, DRAINING, UNKNOWN, DEGRADED), with or without the flag.
- Terminating pods are sent as DRAINING endpoints only when the Service has the cookie label; otherwise
  they leave the endpoint set at once.

Anything outside that subset is refused with a clear error rather than silently ignored: a test that
applied an unsupported field would otherwise pass for the wrong reason.

The translation models **one** Istio release, the one ``helmfile.yaml`` pins (``PINNED_ISTIO``; a unit test
fails when the pin moves, so the translation is re-read against the new release's source). What another
release does comes from the real-istiod mesh (``--mesh istiod``), not from more modelling here. Every
setting below names the istiod source it follows; release-1.30 (1.30.3 and the branch head of 2026-08-26,
identical in every file cited) is the pinned line. The pin moved from 1.30.4 to 1.30.5 (2026-09-21) on its
release notes (istio.io news/releases/1.30.x/announcing-1.30.5): ambient CNI, JWKS fetching, workload
metadata (MDS/WDS) pushes, the statsFlushInterval/statsEvictionInterval annotations, ListenerSet status,
ServiceEntry selectors, observedGeneration, istioctl analyze; none touches the files cited here (gateway
listeners and routes, DestinationRule load balancing, persistent sessions, endpoint health, bootstrap runtime
flags). Its source could not be read here (the module proxy refuses release-1.30 commits after 9739e10eb9d7,
harness/meshes/istiod/releases.py), so that is the notes' word until the kind workflow's 1.30.5 leg runs
the fidelity test against a real 1.30.5 istiod (not run on the project's machines: no 1.30 images here).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.core.mesh import PERSISTENT_SESSION_FLAG, MeshError

COOKIE_LABEL_FLAG = "PILOT_PERSISTENT_SESSION_LABEL"
HEADER_LABEL_FLAG = "PILOT_PERSISTENT_SESSION_HEADER_LABEL"
DEFAULT_COOKIE_LABEL = "istio.io/persistent-session"
DEFAULT_HEADER_LABEL = "istio.io/persistent-session-header"
KNOWN_FLAGS = {PERSISTENT_SESSION_FLAG, COOKIE_LABEL_FLAG, HEADER_LABEL_FLAG}

# The Istio release this translation models: the istiod chart version helmfile.yaml pins.
PINNED_ISTIO = "1.30.5"

STATEFUL_SESSION_FILTER = "envoy.filters.http.stateful_session"
OVERRIDE_HOST_STATUSES = ["HEALTHY", "DRAINING", "UNKNOWN", "DEGRADED"]
DEFAULT_MINIMUM_RING_SIZE = 1024
SIMPLE_POLICIES = {"LEAST_REQUEST", "ROUND_ROBIN", "RANDOM", "LEAST_CONN", "UNSPECIFIED"}

# The port the gateway's Envoy listens on for the Gateway's HTTP server (port 80): istiod resolves a Gateway
# server port to the gateway Service's targetPort (pilot/pkg/model/gateway.go resolvePorts), and the Gateway
# chart maps 80 to targetPort 80 (helm/values/istio-ingressgateway.yaml). The local mesh binds a free port
# instead, as kind maps a host port to the node port: only the names below follow the target port.
GATEWAY_TARGET_PORT = 80
# istiod's names for that port (release-1.30): listener ``<bind>_<port>`` (pilot/pkg/networking/core/
# gateway.go getListenerName), route configuration ``http.<port>`` (pilot/pkg/model/gateway.go
# gatewayRDSRouteName), HCM stat prefix ``<direction>_<listener>`` plus istiod's ";" delimiter (gateway.go,
# util.DelimitedStatsPrefix), virtual host ``<host>:<server port>`` (gateway.go buildGatewayHTTPRouteConfig).
LISTENER_NAME = f"0.0.0.0_{GATEWAY_TARGET_PORT}"
ROUTE_CONFIG_NAME = f"http.{GATEWAY_TARGET_PORT}"
STAT_PREFIX = f"outbound_{LISTENER_NAME};"
VIRTUAL_HOST_NAME = "*:80"
# What istiod's gateway connection manager sets that clients can observe (release-1.30:
# pilot/pkg/networking/util/proxy_headers.go GetProxyHeadersFromProxyConfig for the server header;
# pilot/pkg/networking/core/listener_builder.go buildHTTPConnectionManager for the rest, with the mesh's
# default path normalization BASE).
SERVER_NAME = "istio-envoy"

_T = "type.googleapis.com/"
_HCM = _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
# istiod's default retry policy for an HTTP route without VirtualService retries (release-1.30,
# pilot/pkg/networking/core/route/retry/retry.go ConvertPolicy with a nil policy). istiod sets no
# retriable_status_codes, so "retriable-status-codes" in retry_on retries no response status by itself.
_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DEFAULT_RETRY_POLICY: dict[str, Any] = {
    "retry_on": _RETRY_ON,
    "num_retries": 2,
    "retry_host_predicate": [{
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {"@type": _T + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
    }],
    "host_selection_retry_max_attempts": "5",
}
# The same for a route whose destination has a consistentHash (route/route.go applyHTTPRouteDestination
# passes ``hash != nil``; retry.go DefaultConsistentHashPolicy): no previous_hosts predicate, so a retry
# picks the same host by the same hash, and a key whose pod refuses connections fails instead of moving.
CONSISTENT_HASH_RETRY_POLICY: dict[str, Any] = {
    key: value for key, value in DEFAULT_RETRY_POLICY.items() if key != "retry_host_predicate"
}
# istiod's circuit breaker thresholds for every cluster without a connectionPool (release-1.30,
# pilot/pkg/networking/core/cluster_traffic_policy.go getDefaultCircuitBreakerThresholds; track_remaining
# stays off, DISABLE_TRACK_REMAINING_CB_METRICS defaults to true). Envoy's own defaults allow 1024
# connections, pending and active requests and only 3 concurrent retries.
MAX_UINT32 = 4294967295
DEFAULT_CIRCUIT_BREAKERS: dict[str, Any] = {
    "thresholds": [{
        "max_connections": MAX_UINT32,
        "max_pending_requests": MAX_UINT32,
        "max_requests": MAX_UINT32,
        "max_retries": MAX_UINT32,
    }],
}


@dataclass(frozen=True)
class Endpoint:
    """A pod's address as EDS carries it."""

    ip: str
    port: int
    draining: bool = False
    # Sent as UNHEALTHY: Istio 1.31 sends not-ready pods so (PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS); the
    # modelled release does not, so only LocalMesh.add_pods_announced_unready sets it, on purpose.
    unready: bool = False


@dataclass
class GatewayConfig:
    """What istiod would push to the gateway, one entry per xDS type (Envoy v3 JSON)."""

    listeners: list[dict[str, Any]]
    routes: list[dict[str, Any]]
    clusters: list[dict[str, Any]]
    endpoints: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SessionLabels:
    """The Service label names istiod reads for persistent sessions (overridable by istiod flags).

    An empty name turns that kind of session off: istiod's flag then holds "" and no label has an empty key
    (release-1.30 pilot/pkg/features/experimental.go: "If not empty, services with this label will use ...";
    pilot/pkg/model/service.go SupportsDrainingEndpoints checks the name is not empty).
    """

    cookie: str = DEFAULT_COOKIE_LABEL
    header: str = DEFAULT_HEADER_LABEL

    @classmethod
    def from_env(cls, istiod_env: Mapping[str, str]) -> SessionLabels:
        """The label names istiod reads with this environment: unset means the default, "" means off."""
        return cls(cookie=istiod_env.get(COOKIE_LABEL_FLAG, DEFAULT_COOKIE_LABEL),
                   header=istiod_env.get(HEADER_LABEL_FLAG, DEFAULT_HEADER_LABEL))

    def setting(self, labels: Mapping[str, str]) -> SessionSetting | None:
        """The Service's persistent-session setting. With both labels set the cookie wins and the header
        label is ignored (release-1.30 pilot/pkg/networking/util/util.go MaybeBuildStatefulSessionFilterConfig
        takes the cookie case first)."""
        if self.cookie and labels.get(self.cookie):
            return SessionSetting("cookie", labels[self.cookie])
        if self.header and labels.get(self.header):
            return SessionSetting("header", labels[self.header])
        return None


@dataclass(frozen=True)
class SessionSetting:
    kind: str  # "cookie" or "header"
    name: str


def parse_bool_flag(name: str, raw: str | None) -> bool:
    """Go's strconv.ParseBool, as istiod reads boolean env flags; anything else is an error here."""
    if raw is None:
        return False
    if raw in {"1", "t", "T", "TRUE", "true", "True"}:
        return True
    if raw in {"0", "f", "F", "FALSE", "false", "False"}:
        return False
    raise MeshError(f"istiod flag {name}={raw!r} is not a boolean (istiod would ignore it and keep false)")


def cluster_name(service: str, namespace: str, port: int) -> str:
    return f"outbound|{port}||{service}.{namespace}.svc.cluster.local"


def _duration(value: Any, where: str) -> str:
    """An Istio duration ("3600s", "1h", "0s") as Envoy's JSON duration ("3600s")."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?", str(value))
    if not match or not any(match.groups()):
        raise MeshError(f"{where}: {value!r} is not a duration such as 3600s, 1h or 0s")
    hours, minutes, seconds, millis = match.groups()
    total = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0) + int(millis or 0) / 1000
    return f"{total:g}s"


def _only(obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(obj) - allowed
    if unknown:
        raise MeshError(
            f"{where}: the local mesh does not translate {sorted(unknown)}; "
            f"supported here: {sorted(allowed)} (run on --mesh kind for the full API)"
        )


def connection_manager(stat_prefix: str, route_name: str, rds_source: dict[str, Any],
                       http_filters: list[dict[str, Any]], *, use_remote_address: bool,
                       server_name: str | None = None) -> dict[str, Any]:
    """The HTTP connection manager istiod builds for a gateway or a sidecar's outbound listener: its
    settings are the same for both (server header overwritten, path normalization, no stream idle timeout,
    websocket upgrades); the gateway names the server and trusts the client address, the sidecar does not."""
    return {
        "@type": _HCM,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "use_remote_address": use_remote_address,
        **({"server_name": server_name} if server_name is not None else {}),
        "server_header_transformation": "OVERWRITE",
        "normalize_path": True,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "stream_idle_timeout": "0s",
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "rds": {"route_config_name": route_name, "config_source": rds_source},
        "http_filters": http_filters,
    }


class Translator:
    """Turns the applied objects and istiod's environment into the gateway's configuration."""

    # Which proxy's configuration this is; ``harness/istio_model/sidecar.py`` gives a client sidecar's outbound
    # configuration instead (``harness.istio_model.translator_for`` chooses by front door).
    front_door = "gateway"

    def __init__(self, namespace: str, listen_address: str, listen_port: int, xds_sources: Mapping[str, Any]):
        self.namespace = namespace
        self.listen_address = listen_address
        self.listen_port = listen_port
        # config_source blocks for RDS and EDS (file-based xDS in the local mesh).
        self.xds_sources = xds_sources

    def translate(
        self,
        objects: Mapping[tuple[str, str], dict[str, Any]],
        istiod_env: Mapping[str, str],
        endpoints: Mapping[str, list[Endpoint]],
    ) -> GatewayConfig:
        """``endpoints`` maps a Service name to its pods' addresses (terminating ones marked draining)."""
        for name in istiod_env:
            if name not in KNOWN_FLAGS:
                raise MeshError(f"istiod flag {name} is not one the local mesh knows: {sorted(KNOWN_FLAGS)}")
        flag_on = parse_bool_flag(PERSISTENT_SESSION_FLAG, istiod_env.get(PERSISTENT_SESSION_FLAG))
        session_labels = SessionLabels.from_env(istiod_env)

        by_kind: dict[str, dict[str, dict[str, Any]]] = {}
        for (kind, name), obj in objects.items():
            by_kind.setdefault(kind, {})[name] = obj
        rules = {self._short_host(dr["spec"].get("host", ""), "DestinationRule"): dr
                 for dr in by_kind.get("DestinationRule", {}).values()}

        return self._proxy_config(by_kind, rules, session_labels, flag_on=flag_on, endpoints=endpoints)

    def _proxy_config(self, by_kind: Mapping[str, Mapping[str, dict[str, Any]]],
                      rules: Mapping[str, dict[str, Any]], session_labels: SessionLabels, *,
                      flag_on: bool, endpoints: Mapping[str, list[Endpoint]]) -> GatewayConfig:
        """The gateway's listener, routes, clusters and endpoints (a sidecar's outbound ones in the subclass)."""
        gateways = by_kind.get("Gateway", {})
        services = by_kind.get("Service", {})
        self._check_gateways(gateways)
        clusters: list[dict[str, Any]] = []
        assignments: list[dict[str, Any]] = []
        routes: list[dict[str, Any]] = []
        used: dict[str, str] = {}  # cluster name -> Service
        for vs in sorted(by_kind.get("VirtualService", {}).values(), key=lambda o: o["metadata"]["name"]):
            if not set(vs["spec"].get("gateways", [])) & set(gateways):
                continue
            routes.extend(self._routes(vs, services, rules, session_labels if flag_on else None, used))
        for name, service in sorted(used.items()):
            svc = services[service]
            labels = svc["metadata"].get("labels") or {}
            session = session_labels.setting(labels)
            clusters.append(self._cluster(name, rules.get(service), session is not None))
            keep_draining = session is not None and session.kind == "cookie"
            assignments.append(self._assignment(name, endpoints.get(service, []), keep_draining))
        http_filters: list[dict[str, Any]] = []
        if flag_on:
            http_filters.append({
                "name": STATEFUL_SESSION_FILTER,
                "typed_config": {"@type": _T + "envoy.extensions.filters.http.stateful_session.v3.StatefulSession"},
            })
        http_filters.append({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": _T + "envoy.extensions.filters.http.router.v3.Router"},
        })
        listeners = [self._listener(http_filters)] if gateways else []
        # release-1.30 pilot/pkg/networking/core/gateway.go buildGatewayHTTPRouteConfig: virtual hosts count
        # request attempts (proxy_headers.go IncludeRequestAttemptCount), clusters are not validated.
        route_config = {
            "@type": _T + "envoy.config.route.v3.RouteConfiguration",
            "name": ROUTE_CONFIG_NAME,
            "virtual_hosts": [{"name": VIRTUAL_HOST_NAME, "domains": ["*"], "routes": routes,
                               "include_request_attempt_count": True}] if routes else [],
            "validate_clusters": False,
            "ignore_port_in_host_matching": True,
        }
        return GatewayConfig(listeners=listeners, routes=[route_config], clusters=clusters, endpoints=assignments)

    # -- pieces ------------------------------------------------------------------------------------
    def _short_host(self, host: str, where: str) -> str:
        """A Service's short name from ``svc``, ``svc.ns`` or ``svc.ns.svc.cluster.local`` in our namespace."""
        parts = host.split(".")
        if not host or (len(parts) > 1 and parts[1] != self.namespace):
            raise MeshError(f"{where}: host {host!r} is not a Service in namespace {self.namespace}")
        return parts[0]

    def _check_gateways(self, gateways: Mapping[str, dict[str, Any]]) -> None:
        for name, gw in gateways.items():
            spec = gw.get("spec", {})
            _only(spec, {"selector", "servers"}, f"Gateway {name}")
            for server in spec.get("servers", []):
                _only(server, {"port", "hosts", "name"}, f"Gateway {name} server")
                protocol = str(server.get("port", {}).get("protocol", "")).upper()
                if protocol not in {"HTTP", "HTTP2"}:
                    raise MeshError(f"Gateway {name}: the local mesh serves plain HTTP only, not {protocol}")

    def _routes(
        self,
        vs: dict[str, Any],
        services: Mapping[str, dict[str, Any]],
        rules: Mapping[str, dict[str, Any]],
        session_labels: SessionLabels | None,
        used: dict[str, str],
    ) -> list[dict[str, Any]]:
        """Routes of one VirtualService; ``session_labels`` is None while the session filter flag is off."""
        where = f"VirtualService {vs['metadata']['name']}"
        spec = vs["spec"]
        _only(spec, {"hosts", "gateways", "http"}, where)
        result = []
        for index, http in enumerate(spec.get("http", [])):
            _only(http, {"match", "route", "name"}, f"{where} http[{index}]")
            destinations = http.get("route", [])
            if len(destinations) != 1:
                raise MeshError(f"{where} http[{index}]: the local mesh routes to exactly one destination")
            dest = destinations[0]
            _only(dest, {"destination", "weight"}, f"{where} http[{index}].route[0]")
            _only(dest["destination"], {"host", "port"}, f"{where} destination")
            service = self._short_host(dest["destination"]["host"], where)
            if service not in services:
                raise MeshError(f"{where}: destination Service {service!r} is not applied")
            port = self._service_port(services[service], dest["destination"].get("port", {}).get("number"), where)
            name = cluster_name(service, self.namespace, port)
            used[name] = service
            hash_policy = _hash_policy(rules.get(service))
            retry_policy = CONSISTENT_HASH_RETRY_POLICY if hash_policy else DEFAULT_RETRY_POLICY
            action: dict[str, Any] = {"cluster": name, "timeout": "0s", "retry_policy": retry_policy}
            if hash_policy:
                action["hash_policy"] = [hash_policy]
            for match in self._matches(http.get("match"), where):
                route: dict[str, Any] = {"match": match, "route": action}
                labels = services[service]["metadata"].get("labels") or {}
                session = session_labels.setting(labels) if session_labels else None
                if session is not None:
                    route["typed_per_filter_config"] = {STATEFUL_SESSION_FILTER: _per_route_session(session)}
                result.append(route)
        return result

    @staticmethod
    def _matches(matches: list[dict[str, Any]] | None, where: str) -> list[dict[str, Any]]:
        if not matches:
            return [{"prefix": "/"}]
        out = []
        for match in matches:
            _only(match, {"uri"}, f"{where} match")
            uri = match["uri"]
            _only(uri, {"prefix", "exact"}, f"{where} match.uri")
            out.append({"prefix": uri["prefix"]} if "prefix" in uri else {"path": uri["exact"]})
        return out

    @staticmethod
    def _service_port(service: dict[str, Any], number: int | None, where: str) -> int:
        ports = service["spec"].get("ports", [])
        if number is None and len(ports) == 1:
            return int(ports[0]["port"])
        if any(port["port"] == number for port in ports):
            return int(number)  # type: ignore[arg-type]
        raise MeshError(f"{where}: Service {service['metadata']['name']} has no port {number}")

    def _listener(self, http_filters: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "@type": _T + "envoy.config.listener.v3.Listener",
            "name": LISTENER_NAME,
            "address": {"socket_address": {"address": self.listen_address, "port_value": self.listen_port}},
            "filter_chains": [{
                "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": connection_manager(
                        STAT_PREFIX, ROUTE_CONFIG_NAME, self.xds_sources["rds"], http_filters,
                        use_remote_address=True, server_name=SERVER_NAME),
                }],
            }],
        }

    def _cluster(self, name: str, rule: dict[str, Any] | None, has_session_label: bool) -> dict[str, Any]:
        cluster: dict[str, Any] = {
            "@type": _T + "envoy.config.cluster.v3.Cluster",
            "name": name,
            "type": "EDS",
            "eds_cluster_config": {"eds_config": self.xds_sources["eds"], "service_name": name},
            "connect_timeout": "10s",
            "circuit_breakers": DEFAULT_CIRCUIT_BREAKERS,
            # Not something istiod sets: per-pod counters for the local mesh's observability checks.
            "track_cluster_stats": {"per_endpoint_stats": True},
        }
        cluster.update(_lb_settings(rule))
        if has_session_label:
            cluster["common_lb_config"] = {"override_host_status": {"statuses": list(OVERRIDE_HOST_STATUSES)}}
        return cluster

    @staticmethod
    def _assignment(name: str, endpoints: list[Endpoint], keep_draining: bool) -> dict[str, Any]:
        lb_endpoints = [
            {
                "endpoint": {"address": {"socket_address": {"address": ep.ip, "port_value": ep.port}}},
                "health_status": "DRAINING" if ep.draining else "UNHEALTHY" if ep.unready else "HEALTHY",
            }
            for ep in endpoints
            if keep_draining or not ep.draining
        ]
        return {
            "@type": _T + "envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": lb_endpoints}] if lb_endpoints else [],
        }


def _per_route_session(session: SessionSetting) -> dict[str, Any]:
    if session.kind == "cookie":
        state = {
            "name": "envoy.http.stateful_session.cookie",
            "typed_config": {
                "@type": _T + "envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState",
                "cookie": {"name": session.name, "path": "/"},
            },
        }
    else:
        state = {
            "name": "envoy.http.stateful_session.header",
            "typed_config": {
                "@type": _T + "envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState",
                "name": session.name,
            },
        }
    return {
        "@type": _T + "envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute",
        "stateful_session": {"session_state": state},
    }


def _load_balancer(rule: dict[str, Any] | None) -> dict[str, Any]:
    if rule is None:
        return {}
    where = f"DestinationRule {rule['metadata']['name']}"
    spec = rule["spec"]
    _only(spec, {"host", "trafficPolicy"}, where)
    policy = spec.get("trafficPolicy") or {}
    _only(policy, {"loadBalancer"}, f"{where} trafficPolicy")
    lb = policy.get("loadBalancer") or {}
    _only(lb, {"simple", "consistentHash"}, f"{where} loadBalancer")
    if "simple" in lb and "consistentHash" in lb:
        raise MeshError(f"{where}: loadBalancer takes simple or consistentHash, not both")
    return dict(lb)


def _lb_settings(rule: dict[str, Any] | None) -> dict[str, Any]:
    lb = _load_balancer(rule)
    where = f"DestinationRule {rule['metadata']['name']}" if rule else ""
    if "simple" in lb:
        simple = str(lb["simple"])
        if simple not in SIMPLE_POLICIES:
            raise MeshError(f"{where}: simple {simple!r} is not one of {sorted(SIMPLE_POLICIES)}")
        # istiod maps LEAST_CONN (deprecated alias) and UNSPECIFIED to Envoy's LEAST_REQUEST default.
        return {"lb_policy": simple if simple in {"ROUND_ROBIN", "RANDOM"} else "LEAST_REQUEST"}
    consistent = lb.get("consistentHash")
    if consistent is None:
        return {"lb_policy": "LEAST_REQUEST"}
    if "maglev" in consistent:
        maglev = consistent["maglev"] or {}
        _only(maglev, {"tableSize"}, f"{where} maglev")
        settings: dict[str, Any] = {"lb_policy": "MAGLEV"}
        if maglev.get("tableSize"):
            settings["maglev_lb_config"] = {"table_size": str(int(maglev["tableSize"]))}
        return settings
    # release-1.30 pilot/pkg/networking/core/cluster_traffic_policy.go ApplyRingHashLoadBalancer: with
    # ``ringHash`` present its own size decides and the deprecated top-level one is ignored; a size of 0
    # (or ``ringHash: {}``) sends no ring config at all (Envoy's default minimum, 1024, applies). Without
    # ``ringHash`` the deprecated size is used, and 0 means istiod's explicit 1024.
    if "ringHash" in consistent:
        ring = consistent["ringHash"] or {}
        _only(ring, {"minimumRingSize"}, f"{where} ringHash")
        size = int(ring.get("minimumRingSize") or 0)
        settings = {"lb_policy": "RING_HASH"}
        if size:
            settings["ring_hash_lb_config"] = {"minimum_ring_size": str(size)}
        return settings
    size = int(consistent.get("minimumRingSize") or DEFAULT_MINIMUM_RING_SIZE)
    return {"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": str(size)}}


def _hash_policy(rule: dict[str, Any] | None) -> dict[str, Any] | None:
    consistent = _load_balancer(rule).get("consistentHash")
    if consistent is None:
        return None
    assert rule is not None
    where = f"DestinationRule {rule['metadata']['name']} consistentHash"
    keys = {"httpHeaderName", "httpCookie", "httpQueryParameterName", "useSourceIp"}
    _only(consistent, keys | {"ringHash", "maglev", "minimumRingSize"}, where)
    chosen = keys & set(consistent)
    if len(chosen) != 1:
        raise MeshError(f"{where}: exactly one hash key of {sorted(keys)} is needed, got {sorted(chosen)}")
    if "httpHeaderName" in consistent:
        return {"header": {"header_name": consistent["httpHeaderName"]}}
    if "httpQueryParameterName" in consistent:
        return {"query_parameter": {"name": consistent["httpQueryParameterName"]}}
    if "useSourceIp" in consistent:
        if consistent["useSourceIp"] is not True:
            raise MeshError(f"{where}: useSourceIp: false selects no hash key")
        return {"connection_properties": {"source_ip": True}}
    cookie = consistent["httpCookie"]
    _only(cookie, {"name", "path", "ttl"}, f"{where}.httpCookie")
    policy: dict[str, Any] = {"name": cookie["name"]}
    if cookie.get("path"):
        policy["path"] = cookie["path"]
    if "ttl" in cookie:
        policy["ttl"] = _duration(cookie["ttl"], f"{where}.httpCookie.ttl")
    return {"cookie": policy}
