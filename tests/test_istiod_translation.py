"""The local mesh's istiod translation: manifest in, the Envoy config facts istiod would produce out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.core import manifests
from harness.core.mesh import PERSISTENT_SESSION_FLAG, MeshError
from harness.core.timeouts import Timeouts
from harness.istio_model.translation import (
    GATEWAY_TARGET_PORT,
    OVERRIDE_HOST_STATUSES,
    PINNED_ISTIO,
    STATEFUL_SESSION_FILTER,
    Endpoint,
    GatewayConfig,
    Translator,
)
from harness.meshes.local.envoy import EnvoyGateway

SOURCES = {kind: {"path_config_source": {"path": f"/x/{kind}.json"}} for kind in ("rds", "eds")}
ENDPOINTS = {"sticky-session-app": [Endpoint("127.1.1.1", 5678), Endpoint("127.1.1.2", 5678, draining=True)]}


def translate(*extra: str, env: dict[str, str] | None = None) -> GatewayConfig:
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for manifest in (*manifests.BASE_MANIFESTS, *extra):
        for obj in manifests.load(manifest):
            objects[manifests.object_key(obj)] = obj
    return Translator("default", "127.0.0.1", 18080, SOURCES).translate(objects, env or {}, ENDPOINTS)


def route(config: GatewayConfig) -> dict[str, Any]:
    routes = config.routes[0]["virtual_hosts"][0]["routes"]
    assert len(routes) == 1
    result: dict[str, Any] = routes[0]
    return result


def http_filters(config: GatewayConfig) -> list[str]:
    hcm = config.listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]
    return [f["name"] for f in hcm["http_filters"]]


def test_no_destination_rule_is_least_request_without_hash() -> None:
    config = translate()
    assert config.clusters[0]["lb_policy"] == "LEAST_REQUEST"
    assert "hash_policy" not in route(config)["route"]
    assert "common_lb_config" not in config.clusters[0]
    assert http_filters(config) == ["envoy.filters.http.router"]


@pytest.mark.parametrize(
    ("manifest", "lb_policy", "lb_config"),
    [
        ("destinationrules/hash-header.yml", "RING_HASH", {"ring_hash_lb_config": {"minimum_ring_size": "1024"}}),
        ("destinationrules/hash-header-ring-10240.yml", "RING_HASH",
         {"ring_hash_lb_config": {"minimum_ring_size": "10240"}}),
        ("destinationrules/hash-header-deprecated-ring-size.yml", "RING_HASH",
         {"ring_hash_lb_config": {"minimum_ring_size": "10240"}}),
        ("destinationrules/hash-header-maglev.yml", "MAGLEV", {"maglev_lb_config": {"table_size": "65537"}}),
        ("destinationrules/simple-round-robin.yml", "ROUND_ROBIN", {}),
        ("destinationrules/simple-random.yml", "RANDOM", {}),
        ("destinationrules/simple-least-request.yml", "LEAST_REQUEST", {}),
    ],
)
def test_destination_rule_sets_cluster_lb(manifest: str, lb_policy: str, lb_config: dict[str, Any]) -> None:
    cluster = translate(manifest).clusters[0]
    assert cluster["lb_policy"] == lb_policy
    for key, value in lb_config.items():
        assert cluster[key] == value


@pytest.mark.parametrize(
    ("manifest", "policy"),
    [
        ("destinationrules/hash-header.yml", {"header": {"header_name": "x-session-id"}}),
        ("destinationrules/hash-query.yml", {"query_parameter": {"name": "session"}}),
        ("destinationrules/hash-source-ip.yml", {"connection_properties": {"source_ip": True}}),
        ("destinationrules/hash-cookie-ttl.yml", {"cookie": {"name": "sticky-hash", "path": "/", "ttl": "3600s"}}),
        ("destinationrules/hash-cookie-session.yml", {"cookie": {"name": "sticky-hash", "path": "/", "ttl": "0s"}}),
        ("destinationrules/hash-cookie-no-ttl.yml", {"cookie": {"name": "sticky-hash", "path": "/"}}),
    ],
)
def test_consistent_hash_key_becomes_route_hash_policy(manifest: str, policy: dict[str, Any]) -> None:
    assert route(translate(manifest))["route"]["hash_policy"] == [policy]


def test_flag_adds_empty_filter_before_router_even_without_label() -> None:
    config = translate(env={PERSISTENT_SESSION_FLAG: "true"})
    assert http_filters(config) == [STATEFUL_SESSION_FILTER, "envoy.filters.http.router"]
    assert "typed_per_filter_config" not in route(config)


def test_header_label_with_flag_sets_per_route_header_state() -> None:
    config = translate("services/session-header.yml", env={PERSISTENT_SESSION_FLAG: "true"})
    per_route = route(config)["typed_per_filter_config"][STATEFUL_SESSION_FILTER]
    state = per_route["stateful_session"]["session_state"]
    assert state["name"] == "envoy.http.stateful_session.header"
    assert state["typed_config"]["name"] == "x-session-id"
    assert "strict" not in per_route["stateful_session"]


def test_cookie_label_with_flag_sets_cookie_state_with_root_path() -> None:
    config = translate("services/session-cookie.yml", env={PERSISTENT_SESSION_FLAG: "true"})
    state = route(config)["typed_per_filter_config"][STATEFUL_SESSION_FILTER]["stateful_session"]["session_state"]
    assert state["typed_config"]["cookie"] == {"name": "sticky-session", "path": "/"}


@pytest.mark.parametrize("service", ["services/session-header.yml", "services/session-cookie.yml"])
def test_label_alone_sets_override_host_status_but_no_session(service: str) -> None:
    config = translate(service)
    assert config.clusters[0]["common_lb_config"]["override_host_status"]["statuses"] == OVERRIDE_HOST_STATUSES
    assert http_filters(config) == ["envoy.filters.http.router"]
    assert "typed_per_filter_config" not in route(config)


def test_seed_cookie_label_does_nothing_on_default_istiod() -> None:
    config = translate("services/session-seed-cookie-label.yml", env={PERSISTENT_SESSION_FLAG: "true"})
    assert "typed_per_filter_config" not in route(config)
    assert "common_lb_config" not in config.clusters[0]


def test_seed_cookie_label_works_when_istiod_is_told_to_read_it() -> None:
    env = {PERSISTENT_SESSION_FLAG: "true", "PILOT_PERSISTENT_SESSION_LABEL": "istio.io/persistent-session-cookie"}
    config = translate("services/session-seed-cookie-label.yml", env=env)
    assert "typed_per_filter_config" in route(config)


def endpoints(config: GatewayConfig) -> dict[str, str]:
    return {
        ep["endpoint"]["address"]["socket_address"]["address"]: ep["health_status"]
        for group in config.endpoints[0]["endpoints"] for ep in group["lb_endpoints"]
    }


def test_draining_endpoints_kept_only_for_cookie_sessions() -> None:
    assert endpoints(translate()) == {"127.1.1.1": "HEALTHY"}
    assert endpoints(translate("services/session-header.yml")) == {"127.1.1.1": "HEALTHY"}
    assert endpoints(translate("services/session-cookie.yml")) == {"127.1.1.1": "HEALTHY", "127.1.1.2": "DRAINING"}


def test_unsupported_field_is_refused_with_its_name(tmp_path: Any) -> None:
    rule = tmp_path / "dr.yml"
    rule.write_text(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: sticky-session-app}\n"
        "spec:\n  host: sticky-session-app\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 1}\n"
    )
    with pytest.raises(MeshError, match="outlierDetection"):
        translate(str(rule))


@pytest.mark.parametrize("value", ["yes", "on", "enabled"])
def test_non_boolean_flag_is_an_error(value: str) -> None:
    with pytest.raises(MeshError, match="not a boolean"):
        translate(env={PERSISTENT_SESSION_FLAG: value})


def test_unknown_istiod_flag_is_an_error() -> None:
    with pytest.raises(MeshError, match="PILOT_SOMETHING"):
        translate(env={"PILOT_SOMETHING": "true"})


# -- issue 11: what the pinned Istio release does (each test names the istiod source it follows) -----------
def custom_rule(tmp_path: Path, consistent_hash: str) -> str:
    """A DestinationRule on the app with ``consistentHash`` given as YAML flow mapping text."""
    rule = tmp_path / "dr.yml"
    rule.write_text(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: sticky-session-app}\n"
        "spec:\n  host: sticky-session-app\n  trafficPolicy:\n    loadBalancer:\n"
        f"      consistentHash: {consistent_hash}\n"
    )
    return str(rule)


def test_translation_models_the_istio_release_helmfile_pins() -> None:
    """The translation follows one release: when helmfile.yaml moves the pin, this fails until the
    translation is re-read against the new release's istiod source and PINNED_ISTIO follows."""
    declared = yaml.safe_load((manifests.PROJECT_ROOT / "helmfile.yaml").read_text())["releases"]
    istiod = next(release for release in declared if release["chart"] == "istio/istiod")
    assert str(istiod["version"]) == PINNED_ISTIO


HASH_MANIFESTS = [
    "destinationrules/hash-header.yml", "destinationrules/hash-header-maglev.yml",
    "destinationrules/hash-header-ring-empty.yml", "destinationrules/hash-query.yml",
    "destinationrules/hash-source-ip.yml", "destinationrules/hash-cookie-ttl.yml",
]


# istio/istio release-1.30, pilot/pkg/networking/core/route/route.go applyHTTPRouteDestination passes
# ``hash != nil`` to retry.ConvertPolicy; pilot/pkg/networking/core/route/retry/retry.go returns
# DefaultConsistentHashPolicy (no previous_hosts predicate) for it and DefaultPolicy otherwise. Neither sets
# retriable_status_codes.
@pytest.mark.parametrize("manifest", HASH_MANIFESTS)
def test_hash_route_retries_without_previous_hosts(manifest: str) -> None:
    policy = route(translate(manifest))["route"]["retry_policy"]
    assert policy == {
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "num_retries": 2,
        "host_selection_retry_max_attempts": "5",
    }


@pytest.mark.parametrize("manifest", [None, "destinationrules/simple-round-robin.yml",
                                      "destinationrules/simple-least-request.yml"])
def test_route_without_hash_retries_on_other_hosts(manifest: str | None) -> None:
    policy = route(translate(*([manifest] if manifest else [])))["route"]["retry_policy"]
    assert [p["name"] for p in policy["retry_host_predicate"]] == ["envoy.retry_host_predicates.previous_hosts"]
    assert policy["num_retries"] == 2
    assert policy["host_selection_retry_max_attempts"] == "5"
    assert "retriable_status_codes" not in policy


# istio/istio release-1.30, pilot/pkg/networking/core/cluster_traffic_policy.go applyTrafficPolicy ->
# applyConnectionPool with an empty ConnectionPoolSettings -> getDefaultCircuitBreakerThresholds: all four
# thresholds math.MaxUint32, TrackRemaining = !DISABLE_TRACK_REMAINING_CB_METRICS (default true) = false.
@pytest.mark.parametrize("manifest", [None, "destinationrules/hash-header.yml", "destinationrules/simple-random.yml"])
def test_clusters_get_istiods_circuit_breakers(manifest: str | None) -> None:
    cluster = translate(*([manifest] if manifest else [])).clusters[0]
    assert cluster["circuit_breakers"] == {"thresholds": [{
        "max_connections": 4294967295, "max_pending_requests": 4294967295,
        "max_requests": 4294967295, "max_retries": 4294967295,
    }]}


# istio/istio release-1.30, pkg/bootstrap/config.go extractRuntimeFlags (the same from 1.30.1 to the branch
# head; 1.30.0 lacks the coalesce flag), written into the "global config" static layer of
# tools/packaging/common/envoy_bootstrap.json, followed by an empty admin layer.
def test_bootstrap_carries_pilot_agents_runtime_flags(tmp_path: Path) -> None:
    bootstrap = EnvoyGateway("/bin/true", tmp_path, Timeouts()).bootstrap()
    assert bootstrap["layered_runtime"] == {"layers": [
        {"name": "global config", "static_layer": {
            "re2.max_program_size.error_level": "32768",
            "envoy.deprecated_features:envoy.config.listener.v3.Listener.hidden_envoy_deprecated_use_original_dst":
                True,
            "envoy.reloadable_features.http_reject_path_with_fragment": False,
            "envoy.reloadable_features.fixed_heap_use_allocated": True,
            "envoy.reloadable_features.coalesce_lb_rebuilds_on_batch_update": False,
        }},
        {"name": "admin", "admin_layer": {}},
    ]}


def hcm(config: GatewayConfig) -> dict[str, Any]:
    result: dict[str, Any] = config.listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]
    return result


# istio/istio release-1.30: pilot/pkg/networking/util/proxy_headers.go GetProxyHeadersFromProxyConfig (server
# name istio-envoy, OVERWRITE) via pilot/pkg/networking/core/gateway.go buildGatewayConnectionManager;
# pilot/pkg/networking/core/listener_builder.go buildHTTPConnectionManager (codec AUTO, normalize_path for the
# default BASE normalization, escaped slashes kept, websocket upgrades, stream_idle_timeout 0s).
def test_connection_manager_settings_clients_observe() -> None:
    manager = hcm(translate())
    assert manager["server_name"] == "istio-envoy"
    assert manager["server_header_transformation"] == "OVERWRITE"
    assert manager["normalize_path"] is True
    assert manager["path_with_escaped_slashes_action"] == "KEEP_UNCHANGED"
    assert manager["stream_idle_timeout"] == "0s"
    assert manager["upgrade_configs"] == [{"upgrade_type": "websocket"}]
    assert manager["codec_type"] == "AUTO"
    assert manager["use_remote_address"] is True


# istio/istio release-1.30: pilot/pkg/model/gateway.go resolvePorts (a Gateway server port resolves to the
# gateway Service's targetPort, 80 for the Gateway chart) and gatewayRDSRouteName ("http.<port>");
# pilot/pkg/networking/core/gateway.go getListenerName ("<bind>_<port>"), the stat prefix
# "<direction>_<listener>" + util.DelimitedStatsPrefix's ";", buildGatewayHTTPRouteConfig (virtual host
# "<host>:<server port>" counting request attempts, clusters not validated, port ignored in host matching).
def test_istiods_names_for_the_gateway_listener_and_routes() -> None:
    config = translate()
    assert config.listeners[0]["name"] == "0.0.0.0_80"
    assert hcm(config)["stat_prefix"] == "outbound_0.0.0.0_80;"
    assert hcm(config)["rds"]["route_config_name"] == "http.80"
    assert config.routes[0]["name"] == "http.80"
    assert config.routes[0]["validate_clusters"] is False
    assert config.routes[0]["ignore_port_in_host_matching"] is True
    host = config.routes[0]["virtual_hosts"][0]
    assert (host["name"], host["include_request_attempt_count"]) == ("*:80", True)


def test_listener_port_name_is_the_gateway_charts_target_port() -> None:
    """The names above assume the Gateway chart's targetPort for the http2 port; the kind mesh installs it
    with this project's values, so both must agree."""
    values = yaml.safe_load((manifests.PROJECT_ROOT / "helm/values/istio-ingressgateway.yaml").read_text())
    http2 = next(port for port in values["service"]["ports"] if port["name"] == "http2")
    assert (http2["port"], http2["targetPort"]) == (80, GATEWAY_TARGET_PORT)


# istio/istio release-1.30: pilot/pkg/features/experimental.go (PILOT_PERSISTENT_SESSION_LABEL and
# PILOT_PERSISTENT_SESSION_HEADER_LABEL: "If not empty, ..."); pilot/pkg/model/service.go
# SupportsDrainingEndpoints checks the name is not empty; pilot/pkg/networking/util/util.go
# MaybeBuildStatefulSessionFilterConfig and pilot/pkg/xds/endpoints/endpoint_builder.go look the label up by
# that name, and no Service label has an empty key: an empty flag turns that kind of session off.
@pytest.mark.parametrize(("flag", "service"), [
    ("PILOT_PERSISTENT_SESSION_LABEL", "services/session-cookie.yml"),
    ("PILOT_PERSISTENT_SESSION_HEADER_LABEL", "services/session-header.yml"),
])
def test_empty_label_flag_turns_sessions_off(flag: str, service: str) -> None:
    config = translate(service, env={PERSISTENT_SESSION_FLAG: "true", flag: ""})
    assert "typed_per_filter_config" not in route(config)
    assert "common_lb_config" not in config.clusters[0]
    assert endpoints(config) == {"127.1.1.1": "HEALTHY"}
    assert http_filters(config) == [STATEFUL_SESSION_FILTER, "envoy.filters.http.router"]


def test_empty_cookie_label_flag_leaves_the_header_label_working() -> None:
    config = translate("services/session-both-labels.yml",
                       env={PERSISTENT_SESSION_FLAG: "true", "PILOT_PERSISTENT_SESSION_LABEL": ""})
    state = route(config)["typed_per_filter_config"][STATEFUL_SESSION_FILTER]["stateful_session"]["session_state"]
    assert state["name"] == "envoy.http.stateful_session.header"
    # Draining endpoints are kept only for the cookie label's name (endpoint_builder.go), now empty.
    assert endpoints(config) == {"127.1.1.1": "HEALTHY"}
    assert config.clusters[0]["common_lb_config"]["override_host_status"]["statuses"] == OVERRIDE_HOST_STATUSES


# istio/istio release-1.30, pilot/pkg/networking/util/util.go MaybeBuildStatefulSessionFilterConfig: the
# cookie case comes first, the header label is then ignored; endpoint_builder.go keeps DRAINING endpoints for
# the cookie label; cluster.go sets override_host_status for either label (SupportsDrainingEndpoints).
def test_both_labels_cookie_wins_and_header_is_ignored() -> None:
    config = translate("services/session-both-labels.yml", env={PERSISTENT_SESSION_FLAG: "true"})
    per_route = route(config)["typed_per_filter_config"][STATEFUL_SESSION_FILTER]
    state = per_route["stateful_session"]["session_state"]
    assert state["name"] == "envoy.http.stateful_session.cookie"
    assert state["typed_config"]["cookie"] == {"name": "sticky-session", "path": "/"}
    assert "x-session-id" not in str(per_route)
    assert endpoints(config) == {"127.1.1.1": "HEALTHY", "127.1.1.2": "DRAINING"}
    assert config.clusters[0]["common_lb_config"]["override_host_status"]["statuses"] == OVERRIDE_HOST_STATUSES


# istio/istio release-1.30, pilot/pkg/networking/core/cluster_traffic_policy.go ApplyRingHashLoadBalancer:
# with ringHash present only its size counts, and a size of 0 sends no ring config; without ringHash the
# deprecated top-level size is used and 0 means an explicit 1024. Maglev's table size 0 sends no config.
@pytest.mark.parametrize(("consistent_hash", "expected"), [
    ("{httpHeaderName: x-session-id, ringHash: {}}", {"lb_policy": "RING_HASH"}),
    ("{httpHeaderName: x-session-id, ringHash: {minimumRingSize: 0}}", {"lb_policy": "RING_HASH"}),
    ("{httpHeaderName: x-session-id, ringHash: {}, minimumRingSize: 10240}", {"lb_policy": "RING_HASH"}),
    ("{httpHeaderName: x-session-id, ringHash: {minimumRingSize: 2048}, minimumRingSize: 10240}",
     {"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": "2048"}}),
    ("{httpHeaderName: x-session-id, minimumRingSize: 0}",
     {"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": "1024"}}),
    ("{httpHeaderName: x-session-id, minimumRingSize: 10240}",
     {"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": "10240"}}),
    ("{httpHeaderName: x-session-id, maglev: {tableSize: 0}}", {"lb_policy": "MAGLEV"}),
    ("{httpHeaderName: x-session-id, maglev: {}, minimumRingSize: 10240}", {"lb_policy": "MAGLEV"}),
], ids=["ring-empty", "ring-0", "ring-empty-ignores-deprecated", "ring-size-beats-deprecated", "deprecated-0",
        "deprecated-10240", "maglev-0", "maglev-ignores-deprecated"])
def test_ring_edge_cases(tmp_path: Path, consistent_hash: str, expected: dict[str, Any]) -> None:
    cluster = translate(custom_rule(tmp_path, consistent_hash)).clusters[0]
    lb = {key: cluster[key] for key in ("lb_policy", "ring_hash_lb_config", "maglev_lb_config") if key in cluster}
    assert lb == expected
