"""The kind and cluster meshes' calls, checked against the real things they call, without a cluster:

- Helm v3.21.4 (built from source by the istiod mesh) rendering Istio's own istiod chart (``helm template``),
  and installing, upgrading, rolling back releases against a real kube-apiserver;
- a real kube-apiserver, etcd and kube-controller-manager (the istiod mesh's loopback control plane) for
  namespaces, Deployments that never become ready, and pod exec that cannot reach a kubelet;
- the kubernetes client's exec stream against a stand-in kubelet speaking the channel protocol
  (``v4.channel.k8s.io``: stdout on 1, stderr on 2, the exit status as a ``metav1.Status`` on 3);
- a real Envoy (the local mesh's gateway) read as a gateway with two replicas.

Each part skips, with the reason, when what it needs is not built here; nothing here starts a Go build.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.core.mesh import PERSISTENT_SESSION_FLAG, MeshCapabilities, MeshError
from harness.core.timeouts import Timeouts, poll
from harness.meshes.istiod.releases import RELEASES
from harness.meshes.kube.helmfile import Release
from harness.meshes.kube.installed import find_istiod_release, not_helm_message
from harness.meshes.kube.istio import IstioHelm
from harness.meshes.kube.strategies import (
    ExecFailed,
    ExecGatewayAdmin,
    FoundIstiodControl,
    GatewayReplicasDisagree,
    config_dump_over_replicas,
    host_counters_over_replicas,
    pod_exec,
)

HELM_VERSION = "v3.21.4"


# -- what the tests need, found without building anything --------------------------------------------------
def helm_binary() -> Path | None:
    from harness.meshes.istiod import build

    explicit = os.environ.get("HELM_BIN")
    if explicit:
        return Path(explicit)
    directory = build.cache_root() / "bin" / f"helm-{HELM_VERSION}"
    return directory / "helm" if (directory / ".complete").exists() else None


def istio_charts() -> Path | None:
    """Istio's charts at the commit the istiod mesh builds (1.31.0), from the Go module cache."""
    cache = Path(os.environ.get("GOMODCACHE") or Path.home() / "go" / "pkg" / "mod")
    charts = cache / f"istio.io/istio@{RELEASES['1.31'].module_version}" / "manifests" / "charts"
    return charts if charts.is_dir() else None


@pytest.fixture(scope="module")
def helm() -> Path:
    binary = helm_binary()
    if binary is None:
        pytest.skip(f"Helm {HELM_VERSION} is not built here: `python -m harness.meshes.istiod --build-only` builds it")
    return binary


@pytest.fixture(scope="module")
def charts() -> Path:
    found = istio_charts()
    if found is None:
        pytest.skip("Istio's source is not in the Go module cache: `python -m harness.meshes.istiod --build-only` "
                    "downloads it")
    return found


def render_istiod(helm: Path, charts: Path, values: dict[str, Any]) -> dict[str, str]:
    """istiod's container env as Helm renders Istio's istiod chart with these values."""
    from pyhelm3 import Client

    async def render() -> list[dict[str, Any]]:
        client = Client(executable=str(helm))
        chart = await client.get_chart(charts / "istio-control" / "istio-discovery")
        return list(await client.template_resources(chart, "istiod", values, namespace="istio-system"))

    deployment = next(o for o in asyncio.run(render()) if o and o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container.get("env", []) if "valueFrom" not in e}


# -- item 5: unsetting a flag on kind ------------------------------------------------------------------------
def test_helm_renders_a_null_flag_as_an_empty_value(helm: Path, charts: Path) -> None:
    """What the old unset sent: Helm keeps a null for a key the chart's defaults lack, and the chart writes
    it as ``value: ""`` (istiod reads an empty label flag as "feature off")."""
    istio = IstioHelm(None, "1.31.0", 60)
    old_unset = {**istio.values(istio.istiod), "pilot": {**istio.istiod.values["pilot"],
                                                          "env": {PERSISTENT_SESSION_FLAG: None}}}
    assert render_istiod(helm, charts, old_unset)[PERSISTENT_SESSION_FLAG] == ""


def test_unsetting_a_flag_renders_no_env_entry(helm: Path, charts: Path) -> None:
    istio = IstioHelm(None, "1.31.0", 60)
    istio._client = NoUpgrades()
    istio.set_env(PERSISTENT_SESSION_FLAG, "true")
    assert render_istiod(helm, charts, istio.values(istio.istiod))[PERSISTENT_SESSION_FLAG] == "true"
    istio.set_env(PERSISTENT_SESSION_FLAG, None)
    assert PERSISTENT_SESSION_FLAG not in render_istiod(helm, charts, istio.values(istio.istiod))


def test_the_baseline_is_what_the_chart_renders(helm: Path, charts: Path) -> None:
    """``env`` (1.24+ charts) and ``pilot.env`` both reach istiod, ``pilot.env`` winning: the baseline
    environment read from values says the same as the rendered Deployment."""
    from harness.meshes.kube.istio import env_of

    values = {"env": {PERSISTENT_SESSION_FLAG: "false", "PILOT_PERSISTENT_SESSION_LABEL": "my-cookie"},
              "pilot": {"env": {PERSISTENT_SESSION_FLAG: True}}}
    rendered = render_istiod(helm, charts, values)
    for name, value in env_of(values).items():
        assert rendered[name] == value


class NoUpgrades:
    """A pyhelm3 client for tests that only look at values: any call would be a mistake here."""

    async def get_chart(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def install_or_upgrade_release(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def get_current_revision(self, *args: Any, **kwargs: Any) -> Any:
        from pyhelm3.errors import ReleaseNotFoundError

        raise ReleaseNotFoundError(1, b"", b"release: not found")


# -- Helm against a real API server ----------------------------------------------------------------------------
@pytest.fixture
def namespace(control_plane: Any, helm: Path) -> Iterator[str]:
    """A namespace of its own; its Helm releases are uninstalled after the test (the istiod chart also makes
    cluster-wide objects, which two releases cannot share)."""
    from kubernetes import client

    name = f"istio-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(control_plane.api_client())
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    kube = ["--kubeconfig", str(control_plane.kubeconfig), "-n", name]
    releases = subprocess.run([str(helm), "list", "-a", "-q", *kube], capture_output=True, text=True,
                              check=False).stdout.split()
    for release in releases:
        subprocess.run([str(helm), "uninstall", release, "--no-hooks", *kube], capture_output=True, check=False)
    with contextlib.suppress(Exception):
        core.delete_namespace(name)


def istiod_env_in_cluster(control_plane: Any, namespace: str, deployment: str = "istiod") -> dict[str, str]:
    from kubernetes import client

    found = client.AppsV1Api(control_plane.api_client()).read_namespaced_deployment(deployment, namespace)
    container = found.spec.template.spec.containers[0]
    return {e.name: e.value for e in container.env or [] if e.value is not None}


def shared_istiod(control_plane: Any, helm: Path, charts: Path, namespace: str, values: dict[str, Any],
                  name: str = "istiod") -> None:
    """istiod installed by someone else with Helm (no wait: nothing runs pods here). ``values`` must name
    ``global.istioNamespace`` (the chart's objects refer to it)."""
    plan = [Release(name, namespace, "istiod", "", "1.0.0", values)]
    IstioHelm(control_plane.kubeconfig, None, 120, plan=plan, wait=False, executable=str(helm),
              charts={"istiod": charts / "istio-control" / "istio-discovery"}).install()


def helm_values(helm: Path, control_plane: Any, release: str, namespace: str) -> dict[str, Any]:
    output = subprocess.run([str(helm), "get", "values", release, "-n", namespace, "-o", "json",
                             "--kubeconfig", str(control_plane.kubeconfig)], capture_output=True, text=True,
                            check=True).stdout
    values: dict[str, Any] = json.loads(output) or {}
    return values


def test_a_shared_istiod_is_restored_to_the_values_it_was_found_with(
        control_plane: Any, helm: Path, charts: Path, namespace: str) -> None:
    """Item 3: the flag was already on before the run. Setting it back during the run and restoring at close
    keep it on (reuse_values with a null deleted it), and the baseline the translation assumes is "true"."""
    from pyhelm3 import Client

    found_values = {"revision": "", "pilot": {"env": {PERSISTENT_SESSION_FLAG: "true", "OTHER_FLAG": "x"}},
                    "global": {"istioNamespace": namespace}}
    shared_istiod(control_plane, helm, charts, namespace, found_values)
    client = Client(kubeconfig=control_plane.kubeconfig, executable=str(helm))
    release = find_istiod_release(client, namespace, "default")
    assert release is not None
    assert release.values == found_values
    istio = IstioHelm.for_installed(control_plane.kubeconfig, release, 120, wait=False, executable=str(helm),
                                    charts={"istiod": charts / "istio-control" / "istio-discovery"})
    from harness.meshes.kube.strategies import HelmIstiodControl

    control = HelmIstiodControl(istio)
    assert control.baseline_env() == {PERSISTENT_SESSION_FLAG: "true"}, "only flags the translation reads"

    control.set_env(PERSISTENT_SESSION_FLAG, "false")
    control.set_env("PILOT_PERSISTENT_SESSION_HEADER_LABEL", "x-session")
    env = istiod_env_in_cluster(control_plane, namespace)
    assert (env[PERSISTENT_SESSION_FLAG], env["PILOT_PERSISTENT_SESSION_HEADER_LABEL"]) == ("false", "x-session")

    control.set_env(PERSISTENT_SESSION_FLAG, None)  # back to the baseline, not deleted
    assert istiod_env_in_cluster(control_plane, namespace)[PERSISTENT_SESSION_FLAG] == "true"

    control.restore()
    assert helm_values(helm, control_plane, "istiod", namespace) == found_values
    env = istiod_env_in_cluster(control_plane, namespace)
    assert env[PERSISTENT_SESSION_FLAG] == "true"
    assert env["OTHER_FLAG"] == "x"
    assert "PILOT_PERSISTENT_SESSION_HEADER_LABEL" not in env
    assert istio.upgrades == 4


def test_the_old_unset_with_reuse_values_did_not_give_istiod_back(
        control_plane: Any, helm: Path, charts: Path, namespace: str) -> None:
    """Why item 3 needed a fix, on real Helm: with ``--reuse-values`` the previous release's coalesced values
    become the chart's defaults, so a null removes the key from the stored values but not from what is
    rendered. The run's flag stays on the shared istiod, and the stored values no longer say so."""
    from pyhelm3 import Client

    shared_istiod(control_plane, helm, charts, namespace, {"global": {"istioNamespace": namespace}})

    async def old_set(value: str | None) -> None:
        client = Client(kubeconfig=control_plane.kubeconfig, executable=str(helm))
        chart = await client.get_chart(charts / "istio-control" / "istio-discovery")
        await client.install_or_upgrade_release("istiod", chart, {"pilot": {"env": {PERSISTENT_SESSION_FLAG: value}}},
                                                namespace=namespace, reuse_values=True)

    asyncio.run(old_set("true"))
    asyncio.run(old_set(None))
    assert istiod_env_in_cluster(control_plane, namespace)[PERSISTENT_SESSION_FLAG] == "true", "still on"
    stored = helm_values(helm, control_plane, "istiod", namespace)
    assert PERSISTENT_SESSION_FLAG not in stored.get("pilot", {}).get("env", {}), "while Helm says it is gone"


# -- item 9: the real release, whatever its name -----------------------------------------------------------------
def test_a_revisioned_istiod_release_is_found_by_its_chart(
        control_plane: Any, helm: Path, charts: Path, namespace: str) -> None:
    from pyhelm3 import Client

    values = {"revision": "canary", "global": {"istioNamespace": namespace}}
    shared_istiod(control_plane, helm, charts, namespace, values, name="istiod-canary")
    client = Client(kubeconfig=control_plane.kubeconfig, executable=str(helm))
    release = find_istiod_release(client, namespace, "canary")
    assert release is not None
    assert (release.name, release.chart, release.status, release.istio_revision) == (
        "istiod-canary", "istiod", "deployed", "canary")
    assert release.chart_version == "1.0.0", "the chart's own version (Istio's source tree says 1.0.0)"
    istio = IstioHelm.for_installed(control_plane.kubeconfig, release, 120)
    assert istio.istiod_name == "istiod-canary"
    assert istio.version == "1.0.0"


def test_an_istiod_helm_does_not_manage_is_named(control_plane: Any, helm: Path, namespace: str) -> None:
    """An istioctl install: an istiod Deployment and no Helm release."""
    from kubernetes import client
    from pyhelm3 import Client

    labels = {"app": "istiod", "istio.io/rev": "default"}
    client.AppsV1Api(control_plane.api_client()).create_namespaced_deployment(namespace, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="istiod", labels=labels),
        spec=client.V1DeploymentSpec(
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=client.V1PodSpec(
                containers=[client.V1Container(name="discovery", image="docker.io/istio/pilot:1.30.3")])))))
    assert find_istiod_release(Client(kubeconfig=control_plane.kubeconfig, executable=str(helm)),
                               namespace, "default") is None
    assert "is not managed by Helm" in not_helm_message("istiod", namespace)


# -- item 14: a release an interrupted helm left pending ----------------------------------------------------------
STUCK_CHART = {
    "Chart.yaml": "apiVersion: v2\nname: stuck\nversion: 0.1.0\n",
    "templates/configmap.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: stuck-config\ndata:\n"
                                "  stuck: {{ .Values.stuck | quote }}\n",
    # With stuck=true a Deployment whose pods never run here (no kubelet): `helm upgrade --wait` waits on it.
    "templates/deployment.yaml": """{{- if .Values.stuck }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: stuck
spec:
  selector:
    matchLabels: {app: stuck}
  template:
    metadata:
      labels: {app: stuck}
    spec:
      containers:
        - name: app
          image: python:3.12-slim
{{- end }}
""",
}


def helm_status(helm: Path, control_plane: Any, release: str, namespace: str) -> tuple[str, int]:
    result = subprocess.run([str(helm), "status", release, "-n", namespace, "-o", "json", "--kubeconfig",
                             str(control_plane.kubeconfig)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return "", 0
    status = json.loads(result.stdout)
    return str(status["info"]["status"]), int(status["version"])


def test_a_release_left_pending_by_a_killed_helm_is_recovered_on_kind_and_explained_on_a_cluster(
        control_plane: Any, helm: Path, namespace: str, tmp_path: Path) -> None:
    chart = tmp_path / "stuck"
    for name, text in STUCK_CHART.items():
        (chart / name).parent.mkdir(parents=True, exist_ok=True)
        (chart / name).write_text(text)
    plan = [Release("stuck", namespace, "stuck", "", "0.1.0", {"stuck": False})]
    istio = IstioHelm(control_plane.kubeconfig, None, 60, plan=plan, charts={"stuck": chart}, executable=str(helm))
    istio.install()
    kube = ["-n", namespace, "--kubeconfig", str(control_plane.kubeconfig)]
    # A helm upgrade killed while it waits (Ctrl-C twice, a CI runner cancelled, an OOM kill): pending-upgrade.
    upgrade = subprocess.Popen([str(helm), "upgrade", "stuck", str(chart), "--set", "stuck=true", "--wait",
                                "--timeout", "5m", *kube], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for attempt in poll(60.0, "helm upgrade in progress", interval=0.2, max_interval=0.5):
            with attempt:
                assert helm_status(helm, control_plane, "stuck", namespace) == ("pending-upgrade", 2)
    finally:
        upgrade.send_signal(signal.SIGKILL)
        upgrade.wait(10)
    assert helm_status(helm, control_plane, "stuck", namespace) == ("pending-upgrade", 2)
    blocked = subprocess.run([str(helm), "upgrade", "stuck", str(chart), *kube], capture_output=True, text=True,
                             check=False)
    assert "another operation (install/upgrade/rollback) is in progress" in blocked.stderr

    istio.shared = True  # an existing cluster's release: the suite explains and stops
    with pytest.raises(MeshError, match=r"stuck in .* is pending-upgrade \(revision 2\).*helm rollback stuck"):
        istio.recover_pending()

    istio.shared = False  # the suite's own kind cluster: rolled back, then installed as planned
    messages: list[str] = []
    istio.progress = messages.append
    istio.install()
    assert helm_status(helm, control_plane, "stuck", namespace) == ("deployed", 4)  # 3 was the rollback
    assert messages == ["Helm release stuck was left pending-upgrade by an interrupted helm command: rolled back "
                        "before installing"]


# -- KubeMesh against a real API server -----------------------------------------------------------------------------
def kube_mesh(control_plane: Any, timeouts: Timeouts | None = None, **settings: Any) -> Any:
    from harness.meshes.kube.config import KubeMeshConfig
    from harness.meshes.kube.mesh import KubeMesh

    return KubeMesh(control_plane.api_client(), KubeMeshConfig(
        "kind", "http://127.0.0.1:9", timeouts or Timeouts(), MeshCapabilities(can_set_istiod_env=False),
        istiod_control=FoundIstiodControl("test", {}, "not here"), **settings))


def test_a_start_that_times_out_leaves_diagnostics_then_cleans_up_then_says_why(
        control_plane: Any, helm: Path, charts: Path, tmp_path: Path) -> None:
    """Item 2: Istio's CRDs are installed (the preparation), the app is applied, and its pods never become
    ready (nothing runs them here): the rollout wait times out. Diagnostics are written before the namespace
    and the cluster go, and the run gets one MeshError instead of a TimeoutError per test."""
    from kubernetes import client

    from harness.meshes.kube.helmfile import install_plan

    base = next(r for r in install_plan() if r.name == "istio-base")
    crds = IstioHelm(control_plane.kubeconfig, None, 120, plan=[replace(base, version="1.0.0")], wait=False,
                     executable=str(helm), charts={"base": charts / "base"})
    order: list[str] = []
    mesh = kube_mesh(control_plane, replace(Timeouts(), deployment_rollout=3.0, namespace_delete=60.0),
                     preparations=[lambda: (order.append("prepare"), crds.install())],
                     diagnostics_dir=tmp_path / "diagnostics",
                     after_close=[lambda: order.append("cluster deleted")])
    collect = mesh.collect_diagnostics
    mesh.collect_diagnostics = lambda directory: (order.append("diagnostics"), collect(directory))[1]
    with pytest.raises(MeshError) as error:
        mesh.start()
    message = str(error.value)
    assert message.startswith("the kind mesh did not start: TimeoutError: 3 ready pods of sticky-session-app"), message
    assert f"in {tmp_path / 'diagnostics'}" in message
    assert "everything it created is removed" in message
    assert order == ["prepare", "diagnostics", "cluster deleted"]
    events = (tmp_path / "diagnostics" / "events.txt").read_text()
    assert "sticky-session-app" in events, "the namespace's events were read before it was deleted"
    with pytest.raises(client.exceptions.ApiException) as gone:
        client.CoreV1Api(control_plane.api_client()).read_namespace(mesh.namespace)
    assert gone.value.status == 404


def test_stale_namespaces_of_this_suite_are_deleted(control_plane: Any) -> None:
    """Item 7: an interrupted run's namespace (this suite's managed-by label) is deleted at the next start;
    namespaces without the label, and (on a shared cluster) recent ones, are left alone."""
    from kubernetes import client

    from harness.meshes.kube.mesh import FIELD_MANAGER, MANAGED_BY_LABEL

    core = client.CoreV1Api(control_plane.api_client())
    stale, other = f"sticky-{uuid.uuid4().hex[:6]}", f"other-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=stale, labels={MANAGED_BY_LABEL: FIELD_MANAGER})))
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    shared = kube_mesh(control_plane, stale_namespace_age=3600.0)  # only namespaces older than any run
    assert stale not in shared.delete_stale_namespaces()
    own = kube_mesh(control_plane, stale_namespace_age=0.0)  # kind: every earlier run's namespace
    assert stale in own.delete_stale_namespaces()
    assert core.read_namespace(stale).metadata.deletion_timestamp is not None
    assert core.read_namespace(other).metadata.deletion_timestamp is None
    core.delete_namespace(other)


def test_exec_that_cannot_reach_a_kubelet_is_retried_not_fatal(control_plane: Any) -> None:
    """Item 6, against a real API server: exec into a pod no kubelet runs. The client library raises
    ``ApiException(status=0)``, which no poll retried; ``pod_exec`` raises ``ExecFailed`` (an OSError)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from kubernetes.stream import stream

    core = client.CoreV1Api(control_plane.api_client())
    name = f"exec-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        container = client.V1Container(name="istio-proxy", image="istio/proxyv2:1.31.0")
        core.create_namespaced_pod(name, client.V1Pod(metadata=client.V1ObjectMeta(name="gateway"),
                                                      spec=client.V1PodSpec(containers=[container])))
        with pytest.raises(ApiException) as raw:
            stream(core.connect_get_namespaced_pod_exec, "gateway", name, command=["pilot-agent"],
                   container="istio-proxy", stderr=False, stdin=False, stdout=True, tty=False)
        assert raw.value.status == 0
        with pytest.raises(ExecFailed, match="could not start"):
            pod_exec(core, name, "gateway", "istio-proxy", ["pilot-agent", "request", "GET", "server_info"])
        admin = ExecGatewayAdmin(lambda: ["gateway"], lambda pod, command: pod_exec(
            core, name, pod, "istio-proxy", command), attempts=2, pause=0.1)
        tries: list[int] = []

        def wait_for_the_gateway() -> None:
            for attempt in poll(1.5, "gateway answers", interval=0.2, max_interval=0.2):
                with attempt:
                    tries.append(1)
                    admin.get("gateway", "server_info")

        with pytest.raises(TimeoutError, match="gateway answers"):
            wait_for_the_gateway()
        assert len(tries) > 1, "a wait goes on after a failed exec"
    finally:
        core.delete_namespace(name)


# -- item 6: the exec status channel ---------------------------------------------------------------------------------
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
NON_ZERO_EXIT = json.dumps({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                            "message": "command terminated with non-zero exit code: exit status 7",
                            "details": {"causes": [{"reason": "ExitCode", "message": "7"}]}}).encode()
SUCCESS = json.dumps({"metadata": {}, "status": "Success"}).encode()


def _frame(payload: bytes, opcode: int = 2) -> bytes:
    size = len(payload)
    head = bytes([0x80 | opcode])
    head += bytes([size]) if size < 126 else bytes([126]) + struct.pack(">H", size) if size < 65536 else (
        bytes([127]) + struct.pack(">Q", size))
    return head + payload


class StandInKubelet:
    """Answers exec requests as the API server relays a kubelet's: a websocket upgrade with the
    ``v4.channel.k8s.io`` protocol, then one frame per channel (a leading channel byte), then close."""

    def __init__(self, scripts: list[list[tuple[int, bytes]]]) -> None:
        self.scripts = list(scripts)
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for script in self.scripts:
            conn, _ = self.server.accept()
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                key = next(line.split(":", 1)[1].strip() for line in request.decode().split("\r\n")
                           if line.lower().startswith("sec-websocket-key"))
                digest = hashlib.sha1((key + WEBSOCKET_GUID).encode(), usedforsecurity=False).digest()
                accept = base64.b64encode(digest).decode()
                conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
                              ).encode())
                wants_stderr = b"stderr=true" in request.split(b"\r\n", 1)[0]
                for channel, payload in script:
                    if channel != 2 or wants_stderr:  # a stream the client did not ask for is not sent
                        conn.sendall(_frame(bytes([channel]) + payload))
                conn.sendall(_frame(struct.pack(">H", 1000), opcode=8))

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{self.port}")))

    def close(self) -> None:
        self.thread.join(5)
        self.server.close()


def test_a_failed_command_is_not_read_as_output() -> None:
    """The library's default read returns whatever arrived on stdout, also from a command that failed (a
    half-written config_dump); ``pod_exec`` reads the exit status and refuses it."""
    from kubernetes.stream import stream

    kubelet = StandInKubelet([[(1, b'{"configs": ['), (2, b"upstream connect error\n"), (3, NON_ZERO_EXIT)]] * 2)
    core = kubelet.core()
    assert stream(core.connect_get_namespaced_pod_exec, "gw", "istio-system", command=["pilot-agent"],
                  container="istio-proxy", stderr=False, stdin=False, stdout=True, tty=False) == '{"configs": ['
    with pytest.raises(ExecFailed, match=r"exit code 7 \(upstream connect error\)"):
        pod_exec(core, "istio-system", "gw", "istio-proxy", ["pilot-agent", "request", "GET", "config_dump"])
    kubelet.close()


@pytest.mark.parametrize(("script", "outcome"), [
    ([(1, b'{"version": "x/1.39.3/Clean/RELEASE/BoringSSL"}'), (3, SUCCESS)], "ok"),
    ([(3, SUCCESS)], "succeeded but printed nothing"),
    ([(1, b'{"version": ')], "ended without an exit status"),
    ([(1, b"{}"), (3, b"not json")], "unreadable exec status"),
], ids=["success", "empty", "no-status", "garbled-status"])
def test_exec_outcomes(script: list[tuple[int, bytes]], outcome: str) -> None:
    kubelet = StandInKubelet([script])
    try:
        if outcome == "ok":
            output = pod_exec(kubelet.core(), "istio-system", "gw", "istio-proxy", ["pilot-agent"])
            assert json.loads(output)["version"].startswith("x/1.39.3")
        else:
            with pytest.raises(ExecFailed, match=outcome):
                pod_exec(kubelet.core(), "istio-system", "gw", "istio-proxy", ["pilot-agent"])
    finally:
        kubelet.close()


def test_a_gateway_read_retries_a_transient_failure() -> None:
    kubelet = StandInKubelet([[(2, b"envoy admin not ready\n"), (3, NON_ZERO_EXIT)], [(1, b"{}"), (3, SUCCESS)]])
    core = kubelet.core()
    admin = ExecGatewayAdmin(lambda: ["gw"], lambda pod, command: pod_exec(core, "istio-system", pod,
                                                                           "istio-proxy", command), pause=0.05)
    assert admin.get("gw", "server_info") == "{}"
    kubelet.close()


# -- item 8: a gateway with two replicas, read from a real Envoy -------------------------------------------------------
class TwoReplicas:
    """Two gateway replicas: ``gateway-a`` is the local mesh's live Envoy; ``gateway-b`` answers the same
    pages, or a snapshot taken earlier (a replica that has not caught up)."""

    def __init__(self, mesh: Any) -> None:
        self.mesh = mesh
        self.snapshot: dict[str, str] = {}

    def replicas(self) -> list[str]:
        return ["gateway-a", "gateway-b"]

    def get(self, replica: str, path: str) -> str:
        if replica == "gateway-b" and path in self.snapshot:
            return self.snapshot[path]
        return str(self.mesh.gateway.require_admin().get("/" + path).text)

    def freeze(self, *paths: str) -> None:
        self.snapshot = {path: self.get("gateway-a", path) for path in paths}


@pytest.fixture
def local_mesh() -> Iterator[Any]:
    from harness.meshes.local.envoy import find_envoy
    from harness.meshes.local.mesh import LocalMesh

    mesh = LocalMesh(find_envoy(None), Timeouts()).start()
    try:
        yield mesh
    finally:
        mesh.close()


def test_counters_are_summed_over_replicas_that_agree(local_mesh: Any) -> None:
    from harness.traffic.probe import Probe

    Probe(local_mesh.gateway_url).spread(60)
    cluster = local_mesh._app_cluster()
    replicas = TwoReplicas(local_mesh)
    single = local_mesh.host_counters()
    summed = host_counters_over_replicas(replicas, cluster)
    assert set(summed) == set(single)
    assert {a: h.rq_total for a, h in summed.items()} == {a: 2 * h.rq_total for a, h in single.items()}
    assert sum(h.rq_total for h in single.values()) >= 60


def test_replicas_that_disagree_are_waited_for(local_mesh: Any) -> None:
    """A replica that still shows the old hosts, or the old cluster config, makes the read an
    AssertionError, which every convergence poll retries until all replicas agree."""
    cluster = local_mesh._app_cluster()
    replicas = TwoReplicas(local_mesh)
    replicas.freeze("clusters?format=json", "config_dump")
    local_mesh.scale(4)
    with pytest.raises(GatewayReplicasDisagree, match="disagree on the app's hosts"):
        host_counters_over_replicas(replicas, cluster)
    local_mesh.apply("destinationrules/hash-header-maglev.yml")
    with pytest.raises(GatewayReplicasDisagree, match="disagree on outbound"):
        config_dump_over_replicas(replicas, "config_dump", cluster)
    assert issubclass(GatewayReplicasDisagree, AssertionError)
    replicas.snapshot = {}
    assert len(host_counters_over_replicas(replicas, cluster)) == 4
    dump = config_dump_over_replicas(replicas, "config_dump", cluster)
    from harness.core import envoy_state

    assert envoy_state.gateway_facts(dump, cluster)["cluster"]["lb_policy"] == "MAGLEV"


# -- item 9: the cluster mesh's opener, run by pytest against a real API server --------------------------------------
def cluster_run(control_plane: Any, helm: Path, tmp_path: Path, *options: str) -> str:
    import sys

    from harness.core.manifests import PROJECT_ROOT

    env = {**os.environ, "PATH": f"{helm.parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "e2e/test_load_balancing.py", "--mesh", "cluster",
                             "--kubeconfig", str(control_plane.kubeconfig),
                             "--gateway-url", "http://127.0.0.1:9", "--report", str(tmp_path / "r.yaml"), *options],
                            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=False, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert "Traceback" not in output, output
    return output


def test_the_cluster_mesh_says_what_it_found(control_plane: Any, helm: Path, tmp_path: Path) -> None:
    from kubernetes import client

    apps = client.AppsV1Api(control_plane.api_client())
    core = client.CoreV1Api(control_plane.api_client())
    with contextlib.suppress(client.exceptions.ApiException):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="istio-system")))
    if apps.list_namespaced_deployment("istio-system", label_selector="app=istiod").items:
        pytest.skip("an earlier test left an istiod in istio-system")
    assert "Istio is not installed: no istiod Deployment" in cluster_run(control_plane, helm, tmp_path)

    labels = {"app": "istiod", "istio.io/rev": "default"}
    apps.create_namespaced_deployment("istio-system", client.V1Deployment(
        metadata=client.V1ObjectMeta(name="istiod", labels=labels),
        spec=client.V1DeploymentSpec(
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=client.V1PodSpec(
                containers=[client.V1Container(name="discovery", image="docker.io/istio/pilot:1.30.3-distroless")])))))
    try:
        output = cluster_run(control_plane, helm, tmp_path, "--allow-istiod-restart")
        assert "istiod (istiod in istio-system) is not managed by Helm" in output
    finally:
        apps.delete_namespaced_deployment("istiod", "istio-system")
