"""The node agent: the kubelet's (and scheduler's) part for the istiod mesh's pods.

The pure parts (what a pod spec means here, the status a kubelet reports) and the kill sequence are
checked without a server; the whole lifecycle (bind, run, Ready, scale down through preStop and SIGTERM,
restart after a crash, forced delete) against a real kube-apiserver and kube-controller-manager, which
skip with the reason when their binaries are not built (this file never starts a Go build).
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import processes
from harness.core.manifests import APP_SOURCE, load
from harness.core.timeouts import Timeouts, poll
from harness.meshes.istiod import node_agent
from harness.meshes.istiod.node_agent import NodeAgent
from harness.meshes.istiod.pod_runner import MIN_KILL_GRACE, PodRunner
from harness.meshes.istiod.pod_spec import (
    ContainerState,
    UnsupportedPod,
    container_argv,
    container_env,
    downward_fields,
    expand,
    grace_seconds,
    launch_spec,
    pod_status,
)
from harness.meshes.local.pods import AddressPool

NAMESPACE = "sticky-test"
PRE_STOP = ["python3", "-c", "import time; time.sleep(4)"]  # the manifest's 30 s, shortened for speed


def deployment(pre_stop: list[str] = PRE_STOP) -> dict[str, Any]:
    """manifests/01-deployment.yml as the suite applies it, with a shorter preStop sleep."""
    (manifest,) = load("01-deployment.yml")
    manifest = copy.deepcopy(manifest)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["lifecycle"]["preStop"]["exec"]["command"] = pre_stop
    return manifest


def template_pod(name: str = "sticky-session-app-abc-12345", uid: str = "0f1e2d3c-aaaa-bbbb-cccc-000000000001",
                 pre_stop: list[str] = PRE_STOP) -> dict[str, Any]:
    """A Pod as the ReplicaSet controller creates it from the Deployment's template."""
    template = deployment(pre_stop)["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {**template["metadata"], "name": name, "namespace": NAMESPACE, "uid": uid},
            "spec": {**template["spec"], "nodeName": "node-a"}}


# -- what a pod spec means here ---------------------------------------------------------------------


def test_manifest_container_runs_the_repository_echo_app() -> None:
    launch = launch_spec(template_pod(), "127.9.9.9", "node-a")
    assert launch.argv == [sys.executable, str(APP_SOURCE)]
    assert launch.env == {"POD_NAME": "sticky-session-app-abc-12345", "POD_IP": "127.9.9.9", "PORT": "5678",
                          "BIND": "127.9.9.9",  # the manifest's 0.0.0.0 would take the port on every address
                          "SHUTDOWN_LINGER_SECONDS": "10"}
    assert launch.probe is not None
    assert (launch.probe.url, launch.probe.period, launch.probe.failure_threshold) == (
        "http://127.9.9.9:5678/healthz", 1.0, 3)
    assert launch.pre_stop is not None
    assert launch.pre_stop.argv == [sys.executable, "-c", "import time; time.sleep(4)"]


def test_downward_api_and_expansion() -> None:
    pod = template_pod()
    pod["metadata"]["labels"] = {"app": "x"}
    fields = downward_fields(pod, "127.1.1.1", "node-a")
    container = {"name": "c", "env": [
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}},
        {"name": "WHERE", "value": "$(NS)/$(NODE) $$(NS) $(hostname) $(LATER)"},
        {"name": "LATER", "value": "later"},
    ]}
    env = container_env(container, fields)
    assert env["NS"] == NAMESPACE
    assert env["NODE"] == "node-a"
    assert (env["APP"], env["TIER"]) == ("x", "")
    # Kubernetes expands only variables declared before; $$ escapes; unknown references stay literal.
    assert env["WHERE"] == f"{NAMESPACE}/node-a $(NS) $(hostname) $(LATER)"
    assert expand("$(A)$(B)", {"A": "1"}) == "1$(B)"


@pytest.mark.parametrize(("env", "reason"), [
    ([{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}], "only valueFrom.fieldRef"),
    ([{"name": "F", "valueFrom": {"fieldRef": {"fieldPath": "spec.hostname"}}}], "not supported here"),
])
def test_unsupported_env_is_refused(env: list[dict[str, Any]], reason: str) -> None:
    with pytest.raises(UnsupportedPod, match=reason):
        container_env({"name": "c", "env": env}, downward_fields(template_pod(), "127.1.1.1", "n"))


@pytest.mark.parametrize(("change", "reason"), [
    (lambda c, v: c.pop("command"), "no command"),
    (lambda c, v: c.update(command=["/bin/sh", "-c", "sleep 1"]), "only `python3"),
    (lambda c, v: c.update(command=["python3", "-c", "print(1)"]), "only `python3"),
    (lambda c, v: c.update(command=["python3", "/srv/echo_server.py"]), "not on a ConfigMap volume"),
    (lambda c, v: c.update(command=["python3", "/app/other.py"]), "not the echo app"),
    (lambda c, v: v[0].update(emptyDir={}) or v[0].pop("configMap"), "not on a ConfigMap"),
])
def test_unrunnable_command_is_refused(change: Any, reason: str) -> None:
    spec = template_pod()["spec"]
    container, volumes = copy.deepcopy(spec["containers"][0]), copy.deepcopy(spec["volumes"])
    change(container, volumes)
    with pytest.raises(UnsupportedPod, match=reason):
        container_argv(container, volumes, {})


def test_command_variants_that_map_to_the_app() -> None:
    volumes = [{"name": "app", "configMap": {"name": "cm"}}]
    sub_path = {"name": "c", "command": ["/usr/bin/python3.12", "/opt/echo.py", "--x"],
                "volumeMounts": [{"name": "app", "mountPath": "/opt/echo.py", "subPath": "echo_server.py"}]}
    assert container_argv(sub_path, volumes, {}) == [sys.executable, str(APP_SOURCE), "--x"]
    from_args = {"name": "c", "command": ["python"], "args": ["$(DIR)/echo_server.py"],
                 "volumeMounts": [{"name": "app", "mountPath": "/app/"}]}
    assert container_argv(from_args, volumes, {"DIR": "/app"}) == [sys.executable, str(APP_SOURCE)]


def test_more_than_one_container_is_refused() -> None:
    pod = template_pod()
    pod["spec"]["containers"].append({"name": "istio-proxy", "image": "proxyv2"})
    with pytest.raises(UnsupportedPod, match="one container"):
        launch_spec(pod, "127.1.1.1", "n")


def test_grace_period_sources() -> None:
    pod = template_pod()
    assert grace_seconds(pod) == 45  # the spec's terminationGracePeriodSeconds
    pod["metadata"]["deletionGracePeriodSeconds"] = 2
    assert grace_seconds(pod) == 2  # the delete's own
    del pod["spec"]["terminationGracePeriodSeconds"], pod["metadata"]["deletionGracePeriodSeconds"]
    assert grace_seconds(pod) == 30


# -- the status a kubelet reports --------------------------------------------------------------------


def conditions(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_status_pending_running_ready_restarted_terminated() -> None:
    state = ContainerState(name="app", image="python:3.12-slim", ip="127.5.5.5", start_time="2026-01-01T00:00:00Z")
    pending = pod_status(state)
    assert pending["phase"] == "Pending"
    assert pending["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}

    state.running_since, state.pid = "2026-01-01T00:00:01Z", 4242
    running = pod_status(state)
    assert running["phase"] == "Running"
    assert (running["podIP"], running["podIPs"], running["hostIP"]) == ("127.5.5.5", [{"ip": "127.5.5.5"}],
                                                                        "127.0.0.1")
    assert running["startTime"] == "2026-01-01T00:00:00Z"
    assert conditions(running) == {"PodScheduled": "True", "Initialized": "True", "ContainersReady": "False",
                                   "Ready": "False"}
    container = running["containerStatuses"][0]
    assert (container["started"], container["ready"], container["containerID"]) == (True, False, "process://4242")

    assert state.set_ready(True)
    assert not state.set_ready(True)  # no transition, nothing to report
    ready = pod_status(state)
    assert conditions(ready)["Ready"] == conditions(ready)["ContainersReady"] == "True"
    assert ready["containerStatuses"][0]["ready"] is True

    state.exited(-9, final=False)  # killed: 128 + 9, as a container runtime reports it
    crashed = pod_status(state)
    assert conditions(crashed)["Ready"] == "False"
    assert crashed["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 137
    assert crashed["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert crashed["phase"] == "Running"

    state.restarts, state.running_since, state.waiting = 1, "2026-01-01T00:00:05Z", None
    state.exited(0, final=True)
    final = pod_status(state)["containerStatuses"][0]
    assert final["state"]["terminated"]["reason"] == "Completed"
    assert final["restartCount"] == 1
    assert (final["ready"], final["started"]) == (False, False)


# -- the kill sequence and the watch, against a recording fake API -----------------------------------


class Answer:
    def __init__(self, body: Any) -> None:
        self.data = json.dumps(body).encode()


class Stream:
    """A watch response: newline-delimited events."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.lines = [json.dumps(event).encode() + b"\n" for event in events]

    def stream(self, amt: Any = None, decode_content: Any = None) -> Iterator[bytes]:
        yield from self.lines

    def release_conn(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeCore:
    """Records what the agent asks of the API server, in order."""

    def __init__(self, events: list[dict[str, Any]] | None = None) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.events = events or []

    def __getattr__(self, name: str) -> Any:
        def method(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            if kwargs.get("watch"):
                return Stream(self.events)
            return Answer({})
        return method

    def named(self, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return [(args, kwargs) for called, args, kwargs in self.calls if called == name]


@pytest.fixture
def fake_agent(tmp_path: Path) -> Iterator[tuple[NodeAgent, FakeCore]]:
    agent = NodeAgent(None, "node-a", tmp_path, Timeouts(), namespace=NAMESPACE)
    core = FakeCore()
    agent.core = core
    yield agent, core
    agent.stop()


def statuses(core: FakeCore) -> list[dict[str, Any]]:
    return [args[2]["status"] for args, _ in core.named("patch_namespaced_pod_status")]


def test_kill_sequence_prestop_sigterm_final_delete(fake_agent: tuple[NodeAgent, FakeCore]) -> None:
    agent, core = fake_agent
    pod = template_pod(pre_stop=["python3", "-c", "import time; time.sleep(0.5)"])
    runner = PodRunner(agent, pod, AddressPool(random.Random()).take())
    agent.thread(runner.run, "pod")
    for attempt in poll(10.0, "pod reported Ready"):
        with attempt:
            assert any(conditions(s)["Ready"] == "True" for s in statuses(core))
    process = runner.process
    assert process is not None
    assert httpx.get(f"http://{runner.ip}:5678/").text == f"Pod: {pod['metadata']['name']} - IP: {runner.ip}\n"

    started = time.monotonic()
    runner.request_termination(10)
    for attempt in poll(10.0, "final delete"):
        with attempt:
            assert core.named("delete_namespaced_pod")
    assert time.monotonic() - started >= 0.5  # the preStop hook ran to its end first
    assert process.returncode == 0  # SIGTERM: the echo app exits by itself
    (args, kwargs), = core.named("delete_namespaced_pod")
    assert args == (pod["metadata"]["name"], NAMESPACE)
    assert kwargs["grace_period_seconds"] == 0
    assert kwargs["body"]["preconditions"] == {"uid": pod["metadata"]["uid"]}
    last = statuses(core)[-1]
    assert conditions(last)["Ready"] == "False"
    assert last["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    # Every status patch carries the UID precondition.
    assert {args[2]["metadata"]["uid"] for args, _ in core.named("patch_namespaced_pod_status")} == {
        pod["metadata"]["uid"]}
    log = next(agent.workdir.glob(f"{NAMESPACE}_{pod['metadata']['name']}_*.log")).read_text()
    assert log.index("preStop hook: ") < log.index("preStop hook done") < log.index("SIGTERM") < log.index(
        "deleted (final delete)")


def test_forced_delete_stops_at_once_without_hook(fake_agent: tuple[NodeAgent, FakeCore]) -> None:
    agent, core = fake_agent
    runner = PodRunner(agent, template_pod(pre_stop=["python3", "-c", "import time; time.sleep(30)"]),
                       AddressPool(random.Random()).take())
    agent.thread(runner.run, "pod")
    for attempt in poll(10.0, "pod started"):
        with attempt:
            assert runner.process is not None
    started = time.monotonic()
    runner.request_termination(0, gone=True)  # the DELETED event of a grace-0 delete
    for attempt in poll(MIN_KILL_GRACE + 3, "container stopped"):
        with attempt:
            assert runner.process.poll() is not None
    assert time.monotonic() - started < MIN_KILL_GRACE + 1
    assert not core.named("delete_namespaced_pod")  # already gone from the API
    assert len(agent.spawned()) == 1  # no preStop hook process


def test_watch_binds_unscheduled_pods_and_relists_after_gone(fake_agent: tuple[NodeAgent, FakeCore]) -> None:
    agent, core = fake_agent
    unscheduled = template_pod()
    unscheduled["spec"].pop("nodeName")
    unscheduled["metadata"]["resourceVersion"] = "7"
    other_namespace = copy.deepcopy(unscheduled)
    other_namespace["metadata"].update(namespace="elsewhere", uid="other", resourceVersion="8")
    core.events = [{"type": "ADDED", "object": unscheduled}, {"type": "ADDED", "object": other_namespace},
                   {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}]
    assert agent._watch("5") == "9"
    (args, kwargs), = core.named("create_namespaced_pod_binding")
    assert args[:2] == (unscheduled["metadata"]["name"], NAMESPACE)
    assert args[2]["target"] == {"apiVersion": "v1", "kind": "Node", "name": "node-a"}
    assert kwargs["_preload_content"] is False  # the client cannot read the Status a binding returns
    (_, watch_kwargs), = core.named("list_namespaced_pod")
    assert (watch_kwargs["resource_version"], watch_kwargs["allow_watch_bookmarks"]) == ("5", True)

    core.events = [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                                "message": "too old resource version"}}]
    assert agent._watch("9") is None  # 410 Gone: the loop lists again


def test_stop_twice_leaves_nothing(fake_agent: tuple[NodeAgent, FakeCore]) -> None:
    agent, _ = fake_agent
    runner = PodRunner(agent, template_pod(), AddressPool(random.Random()).take())
    agent.thread(runner.run, "pod")
    for attempt in poll(10.0, "pod started"):
        with attempt:
            assert runner.process is not None
    runner.request_termination(30)  # in its preStop hook when the agent stops
    for attempt in poll(10.0, "preStop hook started"):
        with attempt:
            assert len(agent.spawned()) == 2
    agent.stop()
    agent.stop()
    assert all(p.poll() is not None for p in agent.spawned())
    assert not set(agent.spawned()) & set(processes.running())


# -- against a real kube-apiserver and kube-controller-manager --------------------------------------


# (the control_plane fixture: tests/conftest.py)


class Cluster:
    """The API as a test reads it: raw JSON, no generated models."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.discovery = client.DiscoveryV1Api(api_client)
        self.namespace = namespace

    def pods(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(
            self.core.list_namespaced_pod(self.namespace, _preload_content=False).data)["items"]
        return items

    def endpoints(self) -> dict[str, dict[str, Any]]:
        """The app Service's endpoints by address, with their ready/serving/terminating conditions."""
        slices = json.loads(self.discovery.list_namespaced_endpoint_slice(
            self.namespace, _preload_content=False).data)["items"]
        return {address: endpoint["conditions"] for s in slices for endpoint in s.get("endpoints") or []
                for address in endpoint["addresses"]}


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def answer(ip: str) -> str:
    return httpx.get(f"http://{ip}:5678/", timeout=2.0, trust_env=False).text.strip()


def pid_of(pod: dict[str, Any]) -> int:
    return int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))


@pytest.fixture
def cluster(control_plane: Any, tmp_path: Path) -> Iterator[tuple[Cluster, NodeAgent]]:
    from kubernetes import client

    api_client = control_plane.api_client()
    namespace = f"node-agent-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api_client).create_namespace({"metadata": {"name": namespace}})
    agent = NodeAgent(api_client, f"node-{namespace}", tmp_path / "pods", Timeouts(), namespace=namespace)
    agent.start()
    try:
        yield Cluster(api_client, namespace), agent
    finally:
        agent.stop()


def config_map_missing_then_created(kube: Cluster) -> None:
    """The app's ConfigMap volume is missing: its pods stay ContainerCreating with a FailedMount event each,
    as under a kubelet, and start once it exists."""
    from kubernetes import client

    for attempt in poll(30.0, "FailedMount events for 3 pods"):
        with attempt:
            events = json.loads(kube.core.list_namespaced_event(kube.namespace, _preload_content=False).data)["items"]
            failed = {e["involvedObject"]["name"] for e in events if e["reason"] == "FailedMount"}
            assert len(failed) == 3, sorted(failed)
    message = next(e["message"] for e in events if e["reason"] == "FailedMount")
    assert message == 'MountVolume.SetUp failed for volume "app" : configmap "sticky-session-app" not found', message
    for pod in kube.pods():
        assert not ready(pod)
        assert pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
    kube.core.create_namespaced_config_map(kube.namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="sticky-session-app"), data={"echo_server.py": APP_SOURCE.read_text()}))


def test_deployment_runs_scales_down_restarts_and_stops(cluster: tuple[Cluster, NodeAgent]) -> None:
    kube, agent = cluster
    node = json.loads(kube.core.read_node(agent.node_name, _preload_content=False).data)
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
    assert {"type": "InternalIP", "address": "127.0.0.1"} in node["status"]["addresses"]
    assert not node["spec"].get("taints")

    (service,) = load("02-service.yml")
    kube.core.create_namespaced_service(kube.namespace, service)
    kube.apps.create_namespaced_deployment(kube.namespace, deployment())
    config_map_missing_then_created(kube)
    pods = three_pods_ready(kube, agent)
    all_ips = {pod["status"]["podIP"] for pod in pods}
    survivor = scale_to_one(kube, agent, pods)
    restarted = restart_after_crash(kube, agent, survivor)
    replacement = force_delete(kube, survivor, restarted)
    assert replacement["status"]["podIP"] not in all_ips  # a new pod never reuses an address
    assert not agent.errors

    agent.stop()
    agent.stop()
    assert all(p.poll() is not None for p in agent.spawned())
    assert not set(agent.spawned()) & set(processes.running())


def only_pod(kube: Cluster) -> dict[str, Any]:
    pods = kube.pods()
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def three_pods_ready(kube: Cluster, agent: NodeAgent) -> list[dict[str, Any]]:
    """3 pods bound here, Ready after their probe, each on its own loopback address, answering as itself."""
    for attempt in poll(30.0, "3 pods Ready with their endpoints ready"):
        with attempt:
            pods = kube.pods()
            assert len(pods) == 3
            assert all(ready(pod) for pod in pods), [pod["status"].get("conditions") for pod in pods]
            endpoints = kube.endpoints()
            assert all(endpoints.get(pod["status"]["podIP"], {}).get("ready") for pod in pods), endpoints
    ips = {pod["metadata"]["name"]: pod["status"]["podIP"] for pod in pods}
    assert len(set(ips.values())) == 3
    assert all(ip.startswith("127.") and ip != "127.0.0.1" for ip in ips.values())
    for name, ip in ips.items():
        assert answer(ip) == f"Pod: {name} - IP: {ip}"
    for pod in pods:
        assert pod["spec"]["nodeName"] == agent.node_name
        assert (pod["status"]["phase"], pod["status"]["hostIP"]) == ("Running", "127.0.0.1")
        assert pod["status"]["containerStatuses"][0]["started"] is True
    return pods


def scale_to_one(kube: Cluster, agent: NodeAgent, pods: list[dict[str, Any]]) -> dict[str, Any]:
    """Two pods terminate the kubelet's way. While their preStop hook runs they still serve, and the
    EndpointSlice shows them terminating but serving (what istiod's DRAINING needs)."""
    pids = {pod["metadata"]["name"]: pid_of(pod) for pod in pods}
    kube.apps.patch_namespaced_deployment_scale("sticky-session-app", kube.namespace, {"spec": {"replicas": 1}},
                                                _content_type="application/merge-patch+json")
    for attempt in poll(10.0, "two pods terminating and serving"):
        with attempt:
            terminating = [p for p in kube.pods() if p["metadata"].get("deletionTimestamp")]
            assert len(terminating) == 2
            endpoints = kube.endpoints()
            for pod in terminating:
                assert endpoints.get(pod["status"]["podIP"]) == {"ready": False, "serving": True,
                                                                 "terminating": True}
    for pod in terminating:
        assert answer(pod["status"]["podIP"]).startswith(f"Pod: {pod['metadata']['name']}")
    for attempt in poll(15.0, "terminated pods deleted"):
        with attempt:
            survivor = only_pod(kube)
    for name in (p["metadata"]["name"] for p in terminating):
        process = next(p for p in agent.spawned() if p.pid == pids[name])
        assert process.returncode == 0  # exited on SIGTERM, not killed
        log = next(agent.workdir.glob(f"{kube.namespace}_{name}_*.log")).read_text()
        assert log.index("deletion requested, grace period 45s") < log.index("preStop hook done") < log.index(
            "SIGTERM") < log.index("deleted (final delete)")
    ip = survivor["status"]["podIP"]
    assert answer(ip) == f"Pod: {survivor['metadata']['name']} - IP: {ip}"
    return survivor


def restart_after_crash(kube: Cluster, agent: NodeAgent, survivor: dict[str, Any]) -> subprocess.Popen[bytes]:
    """A container that dies is restarted on the same IP and reported (restartCount, lastState)."""
    os.kill(pid_of(survivor), signal.SIGKILL)
    for attempt in poll(15.0, "crashed container restarted and Ready"):
        with attempt:
            pod = only_pod(kube)
            container = pod["status"]["containerStatuses"][0]
            assert container["restartCount"] == 1
            assert ready(pod)
    ip = survivor["status"]["podIP"]
    assert pod["status"]["podIP"] == ip
    assert container["lastState"]["terminated"]["exitCode"] == 137
    assert answer(ip) == f"Pod: {survivor['metadata']['name']} - IP: {ip}"
    return next(p for p in agent.spawned() if p.pid == pid_of(pod))


def force_delete(kube: Cluster, survivor: dict[str, Any], process: subprocess.Popen[bytes]) -> dict[str, Any]:
    """A forced delete (grace 0) stops the process at once; the ReplicaSet's replacement runs."""
    kube.core.delete_namespaced_pod(survivor["metadata"]["name"], kube.namespace, grace_period_seconds=0)
    for attempt in poll(MIN_KILL_GRACE + 3, "force-deleted pod's process stopped"):
        with attempt:
            assert process.poll() is not None
    for attempt in poll(30.0, "replacement Ready"):
        with attempt:
            replacement = only_pod(kube)
            assert replacement["metadata"]["uid"] != survivor["metadata"]["uid"]
            assert ready(replacement)
    return replacement


def test_unrunnable_pod_is_refused_in_its_status_and_deleted_at_once(cluster: tuple[Cluster, NodeAgent]) -> None:
    kube, agent = cluster
    pod = {"metadata": {"name": "image-only"}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}
    kube.core.create_namespaced_pod(kube.namespace, pod)
    for attempt in poll(15.0, "refusal reported"):
        with attempt:
            status = only_pod(kube)["status"]
            waiting = (status.get("containerStatuses") or [{}])[0].get("state", {}).get("waiting", {})
            assert waiting.get("reason") == "CreateContainerConfigError", status
    assert "no command" in waiting["message"]
    assert status["phase"] == "Pending"  # not Failed: a ReplicaSet would replace a Failed pod in a loop
    assert any("image-only" in error for error in agent.errors)
    kube.core.delete_namespaced_pod("image-only", kube.namespace)  # grace 30, but nothing runs
    for attempt in poll(5.0, "refused pod deleted"):
        with attempt:
            assert kube.pods() == []
    assert agent.spawned() == []


def test_processes_die_with_the_agent_process(control_plane: Any, tmp_path: Path) -> None:
    """A hard exit of the process running the agent (no stop()) leaves no pod process behind."""
    namespace = f"node-agent-{uuid.uuid4().hex[:6]}"
    script = f"""
import json, sys
from pathlib import Path
from harness.meshes.istiod.node_agent import NodeAgent
from harness.core.timeouts import Timeouts, poll
from kubernetes import client, config
api = config.new_client_from_config(config_file={str(control_plane.kubeconfig)!r})
client.CoreV1Api(api).create_namespace({{"metadata": {{"name": {namespace!r}}}}})
agent = NodeAgent(api, "node-" + {namespace!r}, Path({str(tmp_path)!r}), Timeouts(), namespace={namespace!r}).start()
client.CoreV1Api(api).create_namespaced_config_map({namespace!r}, {{"metadata": {{"name": "sticky-session-app"}},
                                                     "data": {{"echo_server.py": "unused"}}}})
client.CoreV1Api(api).create_namespaced_pod({namespace!r}, json.loads(sys.argv[1]))
for attempt in poll(20.0, "pod started"):
    with attempt:
        assert agent.spawned()
print(agent.spawned()[0].pid, flush=True)
import os, signal
os.kill(os.getpid(), signal.SIGKILL)
"""
    pod = template_pod(name="hard-exit")
    for key in ("uid", "namespace"):
        pod["metadata"].pop(key)
    pod["spec"].pop("nodeName")
    result = subprocess.run([sys.executable, "-c", script, json.dumps(pod)], capture_output=True, text=True,
                            timeout=60, cwd=Path(node_agent.__file__).resolve().parents[3], check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    pid = int(result.stdout.split()[0])
    for attempt in poll(5.0, "pod process gone with its parent"):
        with attempt:
            assert not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
