"""The kind sidecar door's offline parts: the client objects it applies, the kind config's port mapping, the
state of a kept cluster, the admin reads it checks, and how a run through it is wired and declared."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from harness.core.mesh import APP_PORT, MeshCapabilities, MeshError
from harness.core.timeouts import Timeouts
from harness.meshes.kube import kind, sidecar_door
from harness.meshes.kube.config import KubeMeshConfig
from harness.meshes.kube.front_door import CLIENT_NAME, FrontDoor, OutboundPathCheck, outbound_cluster, service_host
from harness.meshes.kube.mesh import KubeMesh, run_host
from harness.meshes.registry import PROVIDERS

NAMESPACE = "sticky-abc123"


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in objects}


# -- what the door applies ------------------------------------------------------------------------------
def test_client_objects_bind_an_outbound_listener_the_node_port_reaches() -> None:
    objects = sidecar_door.client_objects("python:3.12-slim")
    assert [o["kind"] for o in objects] == ["Sidecar", "Service", "Deployment"], "Sidecar first: no unbound start"
    sidecar, service, deployment = (by_kind(objects)[k] for k in ("Sidecar", "Service", "Deployment"))
    labels = {"app": CLIENT_NAME}
    # The Sidecar: one egress listener on the app's port, bound (captureMode NONE) on every pod address.
    assert sidecar["spec"]["workloadSelector"] == {"labels": labels}
    assert sidecar["spec"]["egress"] == [{"port": {"number": APP_PORT, "protocol": "HTTP", "name": "http"},
                                          "bind": sidecar_door.BIND, "captureMode": "NONE", "hosts": ["./*"]}]
    assert sidecar_door.BIND == "0.0.0.0"  # noqa: S104 - the wildcard: the listener a capturing sidecar has
    # The NodePort Service: kind's mapped node port to that listener's port on the client pod.
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"] == [{"name": "http", "port": APP_PORT, "targetPort": APP_PORT,
                                         "protocol": "TCP", "nodePort": kind.SIDECAR_NODE_PORT}]
    # The client: injected by the namespace label, that port left out of inbound capture, an idle container.
    template = deployment["spec"]["template"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["selector"]["matchLabels"] == template["metadata"]["labels"] == labels
    assert template["metadata"]["annotations"] == {"traffic.sidecar.istio.io/excludeInboundPorts": str(APP_PORT)}
    [container] = template["spec"]["containers"]
    assert container["image"] == "python:3.12-slim"
    assert container["command"][:2] == ["python3", "-c"]
    assert "ports" not in container, "nothing in the client listens: the sidecar owns the port"


def test_client_runs_the_echo_apps_image_unless_another_is_given() -> None:
    """Every image on an offline node is pre-loaded: the client needs none beyond the app's."""
    assert sidecar_door.app_image(None) == "python:3.12-slim"
    assert sidecar_door.app_image("mirror.example/python:3.12-slim") == "mirror.example/python:3.12-slim"


def test_idle_command_is_valid_python() -> None:
    compile(sidecar_door.IDLE_COMMAND[2], "<client>", "exec")


# -- the kind config and the kept cluster's state -------------------------------------------------------------
def test_kind_config_maps_both_node_ports_to_loopback() -> None:
    config = kind.render_kind_config(23456, sidecar_host_port=23457)
    mappings = {m["containerPort"]: m for m in config["nodes"][0]["extraPortMappings"]}
    assert mappings == {
        kind.GATEWAY_NODE_PORT: {"containerPort": 30080, "hostPort": 23456, "listenAddress": "127.0.0.1",
                                 "protocol": "TCP"},
        kind.SIDECAR_NODE_PORT: {"containerPort": 30081, "hostPort": 23457, "listenAddress": "127.0.0.1",
                                 "protocol": "TCP"},
    }


def test_kind_config_without_a_sidecar_port_maps_only_the_gateway() -> None:
    """A kept cluster from before the door existed is re-rendered as it was created."""
    mappings = kind.render_kind_config(23456)["nodes"][0]["extraPortMappings"]
    assert [m["containerPort"] for m in mappings] == [kind.GATEWAY_NODE_PORT]


def test_the_checked_in_kind_config_maps_the_door_for_people_too() -> None:
    config = yaml.safe_load(kind.KIND_CONFIG.read_text())
    ports = {m["containerPort"]: m["hostPort"] for m in config["nodes"][0]["extraPortMappings"]}
    assert ports == {kind.GATEWAY_NODE_PORT: 18080, kind.SIDECAR_NODE_PORT: 18081}


def test_state_of_a_cluster_kept_before_the_door_loads_without_its_port(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"name": "sticky", "host_port": 23456, "istio_version": "1.31.0"}))
    assert kind.ClusterState.load(tmp_path) == kind.ClusterState("sticky", 23456, "1.31.0", sidecar_host_port=0)
    kind.ClusterState("sticky", 23456, "1.31.0", sidecar_host_port=23457).save(tmp_path)
    assert kind.ClusterState.load(tmp_path).sidecar_host_port == 23457  # type: ignore[union-attr]


def test_free_host_port_avoids_the_one_just_picked() -> None:
    first = kind.free_host_port()
    assert kind.free_host_port(avoid=first) != first


# -- reading the client's Envoy ---------------------------------------------------------------------------
def listener_dump(direction: str, *, resource: bool = False) -> dict[str, Any]:
    """A config_dump with the client's bound listener: whole (nested in a ListenersConfigDump) or as
    ``?resource=dynamic_listeners`` gives it (each listener one config)."""
    entry = {"active_state": {"listener": {
        "name": f"0.0.0.0_{APP_PORT}", "traffic_direction": direction,
        "address": {"socket_address": {"address": sidecar_door.BIND, "port_value": APP_PORT}}, "filter_chains": []}}}
    return {"configs": [entry] if resource else [{"dynamic_listeners": [entry]}]}


class FakeCore:
    """The two calls the door's admin makes: list the client pods, and exec in one (the status channel is
    read by pod_exec, so exec is replaced at the ExecGatewayAdmin level here)."""

    def __init__(self, ready: bool = True) -> None:
        self.ready = ready

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> Any:
        assert (namespace, label_selector) == (NAMESPACE, f"app={CLIENT_NAME}")
        condition = SimpleNamespace(type="Ready", status="True" if self.ready else "False")
        pod = SimpleNamespace(metadata=SimpleNamespace(name="sticky-client-1", deletion_timestamp=None),
                              status=SimpleNamespace(phase="Running", conditions=[condition]))
        return SimpleNamespace(items=[pod])


def admin_answering(pages: dict[str, str], ready: bool = True) -> tuple[sidecar_door.ExecSidecarAdmin, list[Any]]:
    check = OutboundPathCheck(NAMESPACE, sidecar_door.BIND)
    admin = sidecar_door.ExecSidecarAdmin(FakeCore(ready), NAMESPACE, check)
    calls: list[Any] = []

    def exec_in_pod(pod: str, command: list[str]) -> str:
        calls.append((pod, command))
        return pages[command[-1]]

    admin.exec._exec = exec_in_pod
    return admin, calls


def test_every_config_dump_from_the_client_is_checked_for_the_outbound_path() -> None:
    admin, calls = admin_answering({"config_dump": json.dumps(listener_dump("INBOUND")),
                                    "server_info": '{"version": "x/1.39.3/Clean/RELEASE/BoringSSL"}'})
    assert admin.replicas() == ["sticky-client-1"]
    assert admin.get("sticky-client-1", "server_info").startswith("{")  # not a dump: not parsed
    with pytest.raises(MeshError, match="is INBOUND, not OUTBOUND"):
        admin.get("sticky-client-1", "config_dump")
    assert calls[-1] == ("sticky-client-1", ["pilot-agent", "request", "GET", "config_dump"])


@pytest.mark.parametrize("resource", [False, True], ids=["whole-dump", "resource-dump"])
def test_the_bound_wildcard_listener_is_the_one_checked(resource: bool) -> None:
    check = OutboundPathCheck(NAMESPACE, sidecar_door.BIND)
    dump = listener_dump("OUTBOUND", resource=resource)
    assert check.listener(dump)["name"] == f"0.0.0.0_{APP_PORT}"  # type: ignore[index]
    assert OutboundPathCheck(NAMESPACE, "10.244.0.9").listener(dump) is None
    with pytest.raises(MeshError, match="INBOUND"):
        check.check(listener_dump("INBOUND", resource=resource))


def test_no_ready_client_is_an_error_and_the_client_is_never_restarted() -> None:
    admin, _ = admin_answering({}, ready=False)
    with pytest.raises(MeshError, match="no running, ready client pod"):
        admin.replicas()
    assert admin.can_restart is False
    with pytest.raises(MeshError, match="does not restart"):
        admin.restart()


# -- wiring a run through the door ------------------------------------------------------------------------
def door(host_port: int = 23457) -> FrontDoor:
    return sidecar_door.kind_sidecar_door(FakeCore(), NAMESPACE, Timeouts(), image=None, host_port=host_port,
                                          progress=lambda _: None)


def client() -> sidecar_door.KindClientSidecar:
    return sidecar_door.KindClientSidecar(FakeCore(), NAMESPACE, Timeouts(), image=None, host_port=23457,
                                          progress=lambda _: None)


def test_the_door_makes_the_client_sidecar_the_front_door() -> None:
    made = door()
    assert made.name == "sidecar"
    assert made.url == "http://127.0.0.1:23457"
    assert made.host == service_host(NAMESPACE) == f"sticky-session-app.{NAMESPACE}.svc.cluster.local:5678"
    assert isinstance(made.admin, sidecar_door.ExecSidecarAdmin)
    assert any("NodePort" in d and "15001" in d for d in made.known_differences)
    made.admin.check.seen.update(listener="0.0.0.0_5678", cluster=outbound_cluster(NAMESPACE))
    figures = made.run_figures()
    assert figures["front_door"]["door"] == "sidecar"
    assert figures["front_door"]["listener"] == "0.0.0.0_5678"
    assert figures["front_door"]["node_port"] == kind.SIDECAR_NODE_PORT


def test_a_cluster_kept_before_the_door_existed_is_refused_with_the_way_out() -> None:
    with pytest.raises(MeshError, match=r"created without the sidecar door's port mapping.*--cluster-name"):
        door(host_port=0)


def test_a_door_leaves_the_routed_host_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the door the probe sends the Service's name; the run's Gateway and VirtualService keep the run's
    own host (istiod's webhook refuses a host with a port)."""
    monkeypatch.setattr("kubernetes.dynamic.DynamicClient", lambda _client: None)  # no API server to discover
    config = KubeMeshConfig("kind", "http://gw", Timeouts(), MeshCapabilities(), namespace=NAMESPACE,
                            own_host=True, front_door=door())
    mesh = KubeMesh(api_client_stub(), config)
    assert (mesh.gateway_host, mesh.routed_host) == (service_host(NAMESPACE), run_host(NAMESPACE))
    assert mesh.front_door == "sidecar"
    assert mesh.gateway_url == "http://127.0.0.1:23457"


def api_client_stub() -> Any:
    from kubernetes import client as kube_client

    return kube_client.ApiClient()


def test_manifests_are_applied_on_the_routed_host_not_the_probes() -> None:
    """istiod's webhook refuses a VirtualService host with a port: the sidecar door's Host must not reach it."""
    applied: list[dict[str, Any]] = []
    dynamic = SimpleNamespace(resources=SimpleNamespace(get=lambda **_: "r"),
                              server_side_apply=lambda _resource, body, **__: applied.append(body))
    mesh = SimpleNamespace(routed_host=run_host(NAMESPACE), gateway_host=service_host(NAMESPACE),
                           config=SimpleNamespace(app_image=None), namespace=NAMESPACE, dynamic=dynamic,
                           timeouts=Timeouts())
    virtual_service = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "v"},
                       "spec": {"hosts": ["*"], "gateways": ["g"]}}
    KubeMesh._server_side_apply(mesh, virtual_service)  # type: ignore[arg-type]
    assert applied[0]["spec"]["hosts"] == [run_host(NAMESPACE)]


def test_kind_has_the_sidecar_door_and_the_cluster_mesh_says_why_it_has_not() -> None:
    assert not PROVIDERS["kind"].missing_front_doors
    assert "NodePort" in PROVIDERS["cluster"].missing_front_doors["sidecar"]


def test_a_node_port_still_held_by_an_earlier_runs_namespace_is_waited_out() -> None:
    """The kind opener deletes earlier runs' namespaces without waiting: their Service may hold the node port
    for a moment. The API server then refuses the Service (422 "already allocated"), which is retried."""
    from kubernetes.client.exceptions import ApiException

    attempts: list[str] = []

    def apply(obj: dict[str, Any]) -> None:
        attempts.append(obj["kind"])
        if len(attempts) < 3:
            error = ApiException(status=422, reason="Unprocessable Entity")
            error.body = '{"message":"Service \\"sticky-client\\" is invalid: spec.ports[0].nodePort: Invalid ' \
                         'value: 30081: provided port is already allocated"}'
            raise error

    client()._apply(apply, {"kind": "Service"})
    assert attempts == ["Service"] * 3


def test_any_other_refusal_is_final() -> None:
    from kubernetes.client.exceptions import ApiException

    def apply(obj: dict[str, Any]) -> None:
        raise ApiException(status=422, reason="Unprocessable Entity")

    with pytest.raises(ApiException):
        client()._apply(apply, {"kind": "Service"})
