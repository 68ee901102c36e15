"""A mesh is safe beside anything: no inherited environment, its own addresses, free ports, one-line exits."""

from __future__ import annotations

import json
import random
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import processes
from harness.core.mesh import MeshError
from harness.meshes.istiod.addresses import WILDCARD, XDS_PLAINTEXT_PORT, claim_addresses, free_port, port_is_free
from harness.meshes.istiod.istio import bootstrap_on_address
from harness.meshes.istiod.stack import gateway_service


def test_children_start_from_an_explicit_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PILOT_ENABLE_PERSISTENT_SESSION_FILTER", "true")
    monkeypatch.setenv("ISTIO_META_DNS_CAPTURE", "true")
    log = tmp_path / "env.log"
    child = processes.spawn([sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"], log,
                            env={"POD_NAME": "p"}, cwd=tmp_path)
    child.wait(30)
    processes.stop(child, 1)
    seen = json.loads(log.read_text().strip().splitlines()[-1])
    seen.pop("LC_CTYPE", None)  # Python's own C-locale coercion may add it in the child
    assert seen == {"PATH": processes.CONTAINER_PATH, "HOME": str(tmp_path), "POD_NAME": "p"}


@pytest.mark.parametrize(("log", "expected"), [
    ("starting\nError: listen tcp 127.20.0.10:15010: bind: address already in use\n",
     "istiod exited with code 1: port 15010 (127.20.0.10) is already in use"),
    ("[critical] error initializing configuration '': cannot bind '0.0.0.0:15021': Address already in use\n",
     "istiod exited with code 1: port 15021 (0.0.0.0) is already in use"),
    ("info: up\nerror: failed to create discovery service: something\ninfo: shutting down\n",
     "istiod exited with code 1: error: failed to create discovery service: something"),
    ("", "istiod exited with code 1: (empty log)"),
])
def test_exit_reason_is_one_line_naming_component_and_port(tmp_path: Path, log: str, expected: str) -> None:
    path = tmp_path / "istiod.log"
    path.write_text(log)
    reason = processes.exit_reason("istiod", 1, path)
    assert "\n" not in reason
    assert reason == f"{expected} (log {path})"


def test_free_port_is_free_on_every_address() -> None:
    port = free_port()
    assert port_is_free(WILDCARD, port)
    assert port_is_free("127.0.0.1", port)
    with socket.socket() as holder:
        holder.bind((WILDCARD, 0))
        held = holder.getsockname()[1]
        holder.listen()
        assert not port_is_free("127.33.1.10", held)  # the wildcard covers every address


def test_two_meshes_never_claim_the_same_addresses() -> None:
    first = claim_addresses(random.Random(7))
    second = claim_addresses(random.Random(7))  # draws the same pair first, finds it claimed, draws again
    try:
        assert first.istiod != second.istiod
        assert first.gateway != second.gateway
        for claimed in (first, second):
            assert claimed.istiod.startswith("127.")
            assert claimed.istiod.endswith(".10")
            assert claimed.gateway == claimed.istiod[:-3] + ".11"
            assert claimed.xds == f"{claimed.istiod}:{XDS_PLAINTEXT_PORT}"
            assert port_is_free(claimed.istiod, XDS_PLAINTEXT_PORT)  # the claim is UDP: istiod's TCP bind works
    finally:
        first.release()
        second.release()
    again = claim_addresses(random.Random(7))
    try:
        assert again.istiod == first.istiod  # released: free to claim
    finally:
        again.release()


def test_bootstrap_listeners_bind_the_gateway_address() -> None:
    template = ('{"listeners": [{"name": "{{ .wildcard }}_{{ .envoy_prometheus_port }}", "address": '
                '{"socket_address": {"address": "{{ .wildcard }}"}}}], "admin": "{{ .localhost }}"}')
    rendered = bootstrap_on_address(template, "127.40.3.11")
    assert "{{ .wildcard }}" not in rendered
    assert rendered.count("127.40.3.11") == 2
    assert "{{ .localhost }}" in rendered
    with pytest.raises(MeshError, match="no longer has"):
        bootstrap_on_address('{"listeners": []}', "127.40.3.11")


def test_gateway_service_answers_on_its_http2_port() -> None:
    service = {"spec": {"type": "NodePort", "ports": [
        {"name": "status-port", "port": 15021, "protocol": "TCP", "targetPort": 15021},
        {"name": "http2", "port": 80, "protocol": "TCP", "targetPort": 80, "nodePort": 30080}]}}
    gateway_service(service, 41234, 41000)
    ports = {entry["name"]: entry for entry in service["spec"]["ports"]}
    assert ports["http2"] == {"name": "http2", "port": 41234, "protocol": "TCP", "targetPort": 41234}
    assert ports["http-80"] == {"name": "http-80", "port": 80, "protocol": "TCP", "targetPort": 41234}
    assert ports["status-port"]["targetPort"] == 41000
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["allocateLoadBalancerNodePorts"] is False
    with pytest.raises(MeshError, match="no http2 port"):
        gateway_service({"spec": {"ports": [{"name": "http", "port": 80}]}}, 1, 2)


# -- istiod as a Deployment --------------------------------------------------------------------------
def _istiod_pod(name: str, created: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "istio-system", "uid": f"uid-{name}", "creationTimestamp": created},
            "spec": {"serviceAccountName": "istiod", "containers": [{
                "name": "discovery", "image": "istio/pilot",
                "env": [{"name": "PILOT_ENABLE_PERSISTENT_SESSION_FILTER", "value": "true"},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "SERVICE_ACCOUNT",
                         "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                        {"name": "GOMAXPROCS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu",
                                                                                  "divisor": "1"}}},
                        {"name": "MEMORY_MI", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory",
                                                                                 "divisor": "1Mi"}}}],
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}}]}}


def test_istiod_runs_with_exactly_its_pods_environment() -> None:
    from harness.meshes.istiod.istiod_pods import discovery_container, node_capacity, pod_env

    pod = _istiod_pod("istiod-abc", "2026-12-03T13:00:00Z")
    env = pod_env(pod, discovery_container(pod), "127.30.1.10", "node")
    assert env == {"PILOT_ENABLE_PERSISTENT_SESSION_FILTER": "true", "POD_NAME": "istiod-abc",
                   "SERVICE_ACCOUNT": "istiod", "GOMAXPROCS": str(int(node_capacity()["cpu"])), "MEMORY_MI": "256"}


def test_the_newest_istiod_pod_runs_and_rollouts_complete_as_kubectl_decides() -> None:
    from harness.meshes.istiod.istiod_pods import newest, rollout_done

    old, new = _istiod_pod("istiod-old", "2026-12-03T13:00:00Z"), _istiod_pod("istiod-new", "2026-12-03T13:05:00Z")
    assert newest([old, new]) is new
    assert newest([]) is None

    def deployment(generation: int, observed: int, replicas: int, updated: int, available: int) -> dict[str, Any]:
        return {"metadata": {"generation": generation}, "spec": {"replicas": 1},
                "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated,
                           "availableReplicas": available}}

    assert rollout_done(deployment(2, 1, 1, 1, 1)) == (
        False, "the Deployment controller has not seen the new generation yet")
    assert rollout_done(deployment(2, 2, 2, 1, 1))[0] is False
    assert rollout_done(deployment(2, 2, 1, 1, 0))[0] is False
    assert rollout_done(deployment(2, 2, 1, 1, 1)) == (True, "rolled out")


# -- the kubelet API: kubectl logs -------------------------------------------------------------------
def test_kubelet_api_serves_container_logs(tmp_path: Path) -> None:
    import httpx

    from harness.meshes.istiod.kubelet_api import KubeletServer, LogSource

    log = tmp_path / "pod.log"
    log.write_text("one\n[node-agent 13:00:00.000] container started\ntwo\nthree\n")
    source = LogSource(log, keep=lambda line: not line.startswith("[node-agent "))
    server = KubeletServer(tmp_path / "kubelet",
                           lambda ns, pod, _: source if (ns, pod) == ("default", "app-1") else None)
    server.start()
    try:
        base = f"https://127.0.0.1:{server.port}/containerLogs/default"
        with httpx.Client(verify=False, timeout=10, trust_env=False) as client:  # noqa: S501 - self-signed
            assert client.get(f"{base}/app-1/app").text == "one\ntwo\nthree\n"
            assert client.get(f"{base}/app-1/app?tailLines=2").text == "two\nthree\n"
            assert client.get(f"{base}/app-1/app?limitBytes=5").text == "one\nt"
            assert client.get(f"{base}/app-1/app?follow=true").text == "one\ntwo\nthree\n"  # not running: ends
            assert client.get(f"{base}/app-2/app").status_code == 404
            assert client.get(f"https://127.0.0.1:{server.port}/exec/default/app-1/app").status_code == 404
    finally:
        server.stop()


def test_local_mesh_by_hand_refuses_a_malformed_flag_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.meshes.local import __main__ as local_mesh

    assert local_mesh.main(["--istiod-env", "PILOT_ENABLE_PERSISTENT_SESSION_FILTER"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --istiod-env expects NAME=VALUE, got 'PILOT_ENABLE_PERSISTENT_SESSION_FILTER'")


def test_ports_drawn_together_are_distinct() -> None:
    """istiod's five listeners get their ports in one draw: separate draws could repeat a port, and istiod
    then exits at start with "address already in use" (seen once with a kind run beside it)."""
    from harness.meshes.istiod.addresses import free_ports

    for _ in range(20):
        ports = free_ports(5)
        assert len(set(ports)) == 5, ports
