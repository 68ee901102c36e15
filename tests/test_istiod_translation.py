"""The local mesh's istiod translation: manifest in, the Envoy config facts istiod would produce out."""

from __future__ import annotations

from typing import Any

import pytest

from fixtures import manifests
from fixtures.local.istiod import (
    OVERRIDE_HOST_STATUSES,
    STATEFUL_SESSION_FILTER,
    Endpoint,
    GatewayConfig,
    Translator,
)
from fixtures.mesh import PERSISTENT_SESSION_FLAG, MeshError

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
