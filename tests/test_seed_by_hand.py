"""The seed's README by hand on the istiod mesh: real ``kubectl`` and ``curl`` subprocesses, as a person types them.

``python -m harness.meshes.istiod`` is started the way the README says, with
``PILOT_ENABLE_PERSISTENT_SESSION_FILTER=true`` exported in its environment (which must not reach istiod),
and the lines it prints are used as a shell would (``export ...``). Then the seed's steps, in order: apply,
the INGRESS_HOST/INGRESS_PORT lines, the curl loops, Step 1 (``kubectl set env deploy/istiod``, ``rollout
status``, the jsonpath check), the Service label, ``x-session-id`` read and decoded, pinning, scaling,
"verify the filter" through the printed admin URL, ``kubectl logs`` and ``kubectl describe``, and Ctrl-C
with nothing left behind. The negative control: the label alone (flag off) gives no ``x-session-id``.

Skipped, with the reason, when the istiod mesh's binaries are not built (this file never starts a Go build).
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.core.manifests import APP_SOURCE, MANIFEST_DIR, PROJECT_ROOT
from harness.core.timeouts import poll

START_TIMEOUT = float(os.environ.get("STICKY_TIMEOUT_HANDS_ON_START", "240"))
STEP_TIMEOUT = 60.0


def missing() -> str | None:
    from harness.meshes.istiod import build, releases
    from harness.meshes.istiod.control_plane import ETCD_VERSION, KUBERNETES_VERSION

    release = releases.release(None)
    for component in (build.kubernetes(KUBERNETES_VERSION), build.etcd(ETCD_VERSION),
                      build.istio(release.module_version), build.helm(build.HELM_VERSION)):
        directory = build.cache_root() / "bin" / component.key
        if not (directory / ".complete").exists() or not all(
                (directory / name).exists() for name in component.binary_names()):
            return (f"{component.name} {component.version} is not built in {directory}: build it with "
                    f"`python -m harness.meshes.istiod --build-only` (this test never starts a Go build)")
    if not (build.cache_root() / "envoy" / release.envoy / "envoy" / "_bin" / "envoy").exists():
        return f"Envoy {release.envoy} is not installed: `python -m harness.meshes.istiod --build-only`"
    return None


def descendants(pid: int) -> set[int]:
    from harness.processes import children

    found: set[int] = set()
    pending = [pid]
    while pending:
        for child in children(pending.pop()):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


@dataclass
class HandsOnMesh:
    """A running ``python -m harness.meshes.istiod`` and the shell environment its printed lines give."""

    process: subprocess.Popen[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    printed: list[str] = field(default_factory=list)

    @property
    def gateway_url(self) -> str:
        return self.env["GATEWAY_URL"]

    @property
    def admin_url(self) -> str:
        line = next(line for line in self.printed if "the gateway's Envoy admin:" in line)
        return line.split("admin:", 1)[1].split()[0]

    def run(self, *argv: str) -> str:
        """A command as the shell would run it; its stdout, or a failure with its stderr."""
        result = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=STEP_TIMEOUT,
                                check=False, cwd=PROJECT_ROOT)
        assert result.returncode == 0, f"{' '.join(argv)}: exit {result.returncode}: {result.stderr[-1500:]}"
        return result.stdout

    def kubectl(self, *args: str) -> str:
        return self.run("kubectl", *args)

    def curl(self, *args: str) -> str:
        return self.run("curl", "-s", "--max-time", "10", *args)


def start_hands_on(tmp_path: Path, name: str) -> HandsOnMesh:
    log = tmp_path / f"{name}.log"
    exported = {**os.environ, "PILOT_ENABLE_PERSISTENT_SESSION_FILTER": "true", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as err:
        process = subprocess.Popen([sys.executable, "-m", "harness.meshes.istiod"], stdout=subprocess.PIPE,
                                   stderr=err, text=True, env=exported, cwd=PROJECT_ROOT)
    return HandsOnMesh(process, log)


def read_exports(mesh: HandsOnMesh) -> None:
    """Read the printed lines up to the ready message; ``export`` lines set the shell environment."""
    assert mesh.process.stdout is not None
    env = {key: value for key, value in os.environ.items() if key != "PILOT_ENABLE_PERSISTENT_SESSION_FILTER"}
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        line = mesh.process.stdout.readline()
        if not line:
            pytest.fail(f"the mesh exited (code {mesh.process.poll()}):\n{mesh.log.read_text()[-3000:]}")
        mesh.printed.append(line.rstrip("\n"))
        match = re.match(r"export (\w+)=(\S+)", line)
        if match:
            env[match.group(1)] = match.group(2).replace("$PATH", env.get("PATH", ""))
        if line.startswith("#   curl -s '"):  # the last line it prints
            mesh.env = env
            return
    pytest.fail(f"the mesh printed no ready lines within {START_TIMEOUT:g}s:\n{mesh.log.read_text()[-3000:]}")


def stop_with_ctrl_c(mesh: HandsOnMesh) -> None:
    """Ctrl-C: the mesh exits 0 within seconds, its processes and its directory gone."""
    workdir = Path(mesh.env["KUBECONFIG"]).parent
    started = time.monotonic()
    mesh.process.send_signal(signal.SIGINT)
    assert mesh.process.wait(60) == 0, mesh.log.read_text()[-3000:]
    print(f"Ctrl-C to exit: {time.monotonic() - started:.1f}s")
    assert not workdir.exists()


@pytest.fixture
def hands_on(tmp_path: Path) -> Iterator[HandsOnMesh]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    mesh = start_hands_on(tmp_path, "mesh")
    children: set[int] = set()
    try:
        read_exports(mesh)
        children = descendants(mesh.process.pid)
        yield mesh
    finally:
        if mesh.process.poll() is None:
            mesh.process.send_signal(signal.SIGINT)
            mesh.process.wait(60)
        left = {pid for pid in children if Path(f"/proc/{pid}").exists()
                and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()}
        assert not left, f"processes left after Ctrl-C: {sorted(left)}"


def pod_of(answer: str) -> str:
    match = re.search(r"Pod: (\S+) - IP: (\S+)", answer)
    assert match, f"not the echo app's answer: {answer!r}"
    return match.group(2)


def session_header(verbose: str) -> str | None:
    match = re.search(r"^< x-session-id: (\S+)", verbose, flags=re.MULTILINE | re.IGNORECASE)
    return match.group(1) if match else None


FLAG_JSONPATH = ('jsonpath={.spec.template.spec.containers[0].env[?(@.name=='
                 '"PILOT_ENABLE_PERSISTENT_SESSION_FILTER")].value}')


def verbose_get(mesh: HandsOnMesh, *headers: str) -> subprocess.CompletedProcess[str]:
    """``curl -v`` through the gateway: the answer on stdout, the headers on stderr."""
    return subprocess.run(["curl", "-sv", "--max-time", "10", *headers, f"http://{mesh.gateway_url}/"],
                          env=mesh.env, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False)


def listener_filters(mesh: HandsOnMesh) -> int:
    return mesh.curl(f"{mesh.admin_url}/config_dump?resource=dynamic_listeners").count(
        "envoy.filters.http.stateful_session")


def common_resources(mesh: HandsOnMesh) -> set[str]:
    """The app's source as its ConfigMap, 01-04, the Gateway URL lines, Test 1's answers; the pods' IPs."""
    mesh.kubectl("create", "configmap", "sticky-session-app", f"--from-file={APP_SOURCE}")
    for manifest in ("01-deployment.yml", "02-service.yml", "03-gateway.yml", "04-virtualservice.yml"):
        mesh.kubectl("apply", "-f", str(MANIFEST_DIR / manifest))
    mesh.kubectl("rollout", "status", "deploy/sticky-session-app", "--timeout=60s")
    host = mesh.kubectl("-n", "istio-system", "get", "service", "istio-ingressgateway", "-o",
                        "jsonpath={.status.loadBalancer.ingress[0].ip}")
    port = mesh.kubectl("-n", "istio-system", "get", "service", "istio-ingressgateway", "-o",
                        'jsonpath={.spec.ports[?(@.name=="http2")].port}')
    assert f"{host}:{port}" == mesh.gateway_url
    for attempt in poll(STEP_TIMEOUT, "the gateway routes to the app", interval=0.2, max_interval=1.0):
        with attempt:
            pod_of(mesh.curl(f"http://{mesh.gateway_url}/"))
    pods = set(mesh.kubectl("get", "pods", "-l", "app=sticky-session-app", "-o",
                            "jsonpath={.items[*].status.podIP}").split())
    assert len(pods) == 3
    return pods


def label_without_flag(mesh: HandsOnMesh) -> None:
    """The negative control: the flag exported before the mesh started is not in istiod's Deployment, and
    the Service label alone gives no session filter and no x-session-id. istiod has pushed the label once
    the app's cluster keeps DRAINING hosts (override_host_status, set by the label with the flag on or off)."""
    assert mesh.kubectl("get", "deploy", "istiod", "-n", "istio-system", "-o", FLAG_JSONPATH) == ""
    mesh.kubectl("label", "svc", "sticky-session-app", "istio.io/persistent-session-header=x-session-id")
    for attempt in poll(STEP_TIMEOUT, "the label's cluster settings at the gateway", interval=0.2, max_interval=1.0):
        with attempt:
            clusters = mesh.curl(f"{mesh.admin_url}/config_dump?resource=dynamic_active_clusters")
            assert '"override_host_status"' in clusters
    assert "stateful_session" not in mesh.curl(f"{mesh.admin_url}/config_dump?resource=dynamic_route_configs")
    answer = verbose_get(mesh)
    assert pod_of(answer.stdout)
    assert session_header(answer.stderr) is None
    assert listener_filters(mesh) == 0


def set_flag_and_pin(mesh: HandsOnMesh, pods: set[str]) -> None:
    """Step 1 (set env, rollout status, the jsonpath check), then x-session-id read, decoded, pinned, and
    still pinned after scaling to 5; Step 2 through the admin URL."""
    mesh.kubectl("set", "env", "deploy/istiod", "-n", "istio-system", "PILOT_ENABLE_PERSISTENT_SESSION_FILTER=true")
    mesh.kubectl("rollout", "status", "deploy", "istiod", "-n", "istio-system", "--timeout=120s")
    assert mesh.kubectl("get", "deploy", "istiod", "-n", "istio-system", "-o", FLAG_JSONPATH) == "true"
    header: str | None = None
    for attempt in poll(STEP_TIMEOUT, "x-session-id in the gateway's answer", interval=0.2, max_interval=1.0):
        with attempt:
            header = session_header(verbose_get(mesh).stderr)
            assert header, "no x-session-id yet"
    assert header is not None
    pinned_ip, _, pinned_port = base64.b64decode(header).decode().partition(":")
    assert pinned_ip in pods
    assert pinned_port == "5678"
    answers = {pod_of(mesh.curl("-H", f"x-session-id: {header}", f"http://{mesh.gateway_url}/")) for _ in range(10)}
    assert answers == {pinned_ip}
    mesh.kubectl("scale", "deployment", "sticky-session-app", "--replicas=5")
    mesh.kubectl("rollout", "status", "deploy/sticky-session-app", "--timeout=60s")
    answers = {pod_of(mesh.curl("-H", f"x-session-id: {header}", f"http://{mesh.gateway_url}/")) for _ in range(10)}
    assert answers == {pinned_ip}
    assert listener_filters(mesh) >= 1


def troubleshooting(mesh: HandsOnMesh) -> None:
    """The seed's kubectl logs, describe, and istiod's logs."""
    logs = mesh.kubectl("logs", "-l", "app=sticky-session-app", "--tail=10")
    assert logs.strip(), "kubectl logs printed nothing"
    assert "[node-agent" not in logs
    assert "Started container" in mesh.kubectl("describe", "pod", "-l", "app=sticky-session-app")
    assert mesh.kubectl("logs", "deploy/istiod", "-n", "istio-system", "--tail=5").strip()


def edit_flag_off(mesh: HandsOnMesh) -> None:
    """``kubectl edit`` (its editor a sed script) turns the flag off again: a rollout, and the filter goes."""
    editor = "sed -i '/name: PILOT_ENABLE_PERSISTENT_SESSION_FILTER/{n;s/value: \"true\"/value: \"false\"/}'"
    subprocess.run(["kubectl", "edit", "deploy", "istiod", "-n", "istio-system"],
                   env={**mesh.env, "KUBE_EDITOR": editor}, check=True, capture_output=True, timeout=STEP_TIMEOUT)
    mesh.kubectl("rollout", "status", "deploy", "istiod", "-n", "istio-system", "--timeout=120s")
    assert mesh.kubectl("get", "deploy", "istiod", "-n", "istio-system", "-o", FLAG_JSONPATH) == "false"
    for attempt in poll(STEP_TIMEOUT, "no session filter after kubectl edit", interval=0.2, max_interval=1.0):
        with attempt:
            assert listener_filters(mesh) == 0


def test_the_seed_readme_by_hand(hands_on: HandsOnMesh) -> None:
    mesh = hands_on
    versions = mesh.kubectl("version", "-o", "json")
    assert versions.count('"gitVersion": "v1.35.4"') == 2, versions  # client and server
    pods = common_resources(mesh)
    label_without_flag(mesh)
    set_flag_and_pin(mesh, pods)
    troubleshooting(mesh)
    edit_flag_off(mesh)
    stop_with_ctrl_c(mesh)


def test_two_meshes_started_at_once_both_work(tmp_path: Path) -> None:
    reason = missing()
    if reason:
        pytest.skip(reason)
    meshes = [start_hands_on(tmp_path, "first"), start_hands_on(tmp_path, "second")]
    try:
        for mesh in meshes:
            read_exports(mesh)
        assert meshes[0].gateway_url != meshes[1].gateway_url
        for mesh in meshes:
            mesh.kubectl("create", "configmap", "sticky-session-app", f"--from-file={APP_SOURCE}")
            for manifest in ("01-deployment.yml", "02-service.yml", "03-gateway.yml", "04-virtualservice.yml"):
                mesh.kubectl("apply", "-f", str(MANIFEST_DIR / manifest))
        for mesh in meshes:
            mesh.kubectl("rollout", "status", "deploy/sticky-session-app", "--timeout=60s")
            ips = set(mesh.kubectl("get", "pods", "-l", "app=sticky-session-app", "-o",
                                   "jsonpath={.items[*].status.podIP}").split())
            for attempt in poll(STEP_TIMEOUT, "the app answers through the gateway", interval=0.2, max_interval=1.0):
                with attempt:
                    assert pod_of(mesh.curl(f"http://{mesh.gateway_url}/")) in ips  # its own pods, not the other's
        for mesh in meshes:
            stop_with_ctrl_c(mesh)
    finally:
        for mesh in meshes:
            if mesh.process.poll() is None:
                mesh.process.send_signal(signal.SIGINT)
                mesh.process.wait(60)
