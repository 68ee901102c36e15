"""The sidecar front door's offline parts: the outbound-path check, facts from a sidecar's outbound
configuration (session settings on the virtual host, as istiod puts them there), the Sidecar resource and
what each mesh declares about the doors it lacks."""

from __future__ import annotations

from typing import Any

import pytest

from fixtures import envoy_state
from fixtures.istiod_mesh.sidecar import OutboundPathCheck, outbound_cluster, service_host, sidecar_resource
from fixtures.mesh import APP_PORT, MeshError
from fixtures.plugin import FRONT_DOORS, MESHES, MISSING_FRONT_DOORS

NAMESPACE = "sticky-abc123"
BIND = "127.0.30.12"
FILTER = envoy_state.STATEFUL_SESSION_FILTER
HEADER_STATE = {"@type": "type.googleapis.com/envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState",
                "name": "x-session-id"}
HASH = [{"header": {"header_name": "x-session-id"}}]


def sidecar_dump(*, direction: str = "OUTBOUND", cluster: str | None = None, session_filter: bool = True,
                 vhost_session: bool = True, domains: list[str] | None = None) -> dict[str, Any]:
    """A sidecar config_dump shaped as istiod release-1.31 builds it for a bound egress listener."""
    cluster = cluster or outbound_cluster(NAMESPACE)
    filters = ([{"name": FILTER}] if session_filter else []) + [{"name": "envoy.filters.http.router"}]
    vhost: dict[str, Any] = {
        "name": f"sticky-session-app.{NAMESPACE}.svc.cluster.local:{APP_PORT}",
        "domains": domains if domains is not None else [service_host(NAMESPACE).rsplit(":", 1)[0],
                                                         "sticky-session-app"],
        "routes": [{"name": "default", "route": {"cluster": cluster, "hash_policy": HASH}}],
    }
    if vhost_session:
        vhost["typed_per_filter_config"] = {FILTER: {"stateful_session": {"session_state": {
            "typed_config": HEADER_STATE}}}}
    listener = {
        "name": f"{BIND}_{APP_PORT}", "traffic_direction": direction,
        "address": {"socket_address": {"address": BIND, "port_value": APP_PORT}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "rds": {"route_config_name": f"{BIND}_{APP_PORT}"}, "http_filters": filters}}]}],
    }
    return {"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
         "dynamic_listeners": [{"active_state": {"listener": listener}}]},
        {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
         "dynamic_route_configs": [{"route_config": {"name": f"{BIND}_{APP_PORT}", "virtual_hosts": [vhost],
                                                     "ignore_port_in_host_matching": True}}]},
    ]}


def test_outbound_path_is_recognised_and_noted() -> None:
    check = OutboundPathCheck(NAMESPACE, BIND)
    check.check(sidecar_dump())
    assert check.seen == {
        "listener": f"{BIND}_{APP_PORT}", "direction": "OUTBOUND", "route_config": f"{BIND}_{APP_PORT}",
        "virtual_host": f"sticky-session-app.{NAMESPACE}.svc.cluster.local:{APP_PORT}",
        "cluster": outbound_cluster(NAMESPACE), "session_filter_in_outbound_hcm": True,
        "session_settings_on_virtual_host": True, "hash_policy_on_route": True}


@pytest.mark.parametrize(("dump", "message"), [
    (sidecar_dump(direction="INBOUND"), "not OUTBOUND"),
    (sidecar_dump(cluster="inbound|5678||"), "not outbound|5678||"),
])
def test_another_path_is_refused(dump: dict[str, Any], message: str) -> None:
    with pytest.raises(MeshError, match=message.replace("|", r"\|")):
        OutboundPathCheck(NAMESPACE, BIND).check(dump)


def test_nothing_pushed_yet_is_not_an_error() -> None:
    """Before the Service is pushed there is no listener or no virtual host for it: convergence waits."""
    check = OutboundPathCheck(NAMESPACE, BIND)
    check.check({"configs": []})
    check.check(sidecar_dump(domains=["other.example"]))
    assert check.seen == {}


def test_facts_take_session_settings_from_the_virtual_host() -> None:
    """A gateway puts StatefulSessionPerRoute on the route, a sidecar on the Service's virtual host: the same
    fact either way (Envoy applies the most specific one)."""
    facts = envoy_state.gateway_facts(sidecar_dump(), outbound_cluster(NAMESPACE))
    assert facts["routes"] == [{"hash_policy": HASH, "session_state": HEADER_STATE, "retries_other_hosts": False}]
    assert facts["session_filter"] is True
    bare = envoy_state.gateway_facts(sidecar_dump(vhost_session=False, session_filter=False),
                                     outbound_cluster(NAMESPACE))
    assert bare["routes"] == [{"hash_policy": HASH, "session_state": {}, "retries_other_hosts": False}]
    assert bare["session_filter"] is False


def test_sidecar_resource_binds_one_outbound_listener_without_capture() -> None:
    spec = sidecar_resource(BIND)["spec"]
    assert spec["workloadSelector"] == {"labels": {"app": "sticky-client"}}
    assert spec["egress"] == [{"port": {"number": APP_PORT, "protocol": "HTTP", "name": "http"}, "bind": BIND,
                               "captureMode": "NONE", "hosts": ["./*"]}]


def test_every_mesh_declares_its_missing_doors_with_a_reason() -> None:
    assert set(MISSING_FRONT_DOORS) <= set(MESHES)
    for doors in MISSING_FRONT_DOORS.values():
        assert set(doors) <= set(FRONT_DOORS) - {"gateway"}
        assert all(reason.strip() for reason in doors.values())
    assert "istiod" not in MISSING_FRONT_DOORS  # the mesh that has both doors
