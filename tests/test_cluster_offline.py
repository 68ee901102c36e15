"""The kind and cluster meshes, checked without a cluster: what can be known offline is checked here.

None of this pretends a cluster exists. It checks the inputs the meshes hand to kind, Helm and the API
server (manifests, install plan, kind config), the prerequisite errors, and that the convergence check
reads the same facts a real Envoy reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fixtures import envoy_state, manifests
from fixtures.cluster import helmfile, kind, prerequisites
from fixtures.cluster.istio import IstioHelm
from fixtures.cluster.kube_mesh import expected_facts
from fixtures.local.istiod import Translator
from fixtures.mesh import PERSISTENT_SESSION_FLAG, MeshError

KUBERNETES_MANIFESTS = sorted(
    str(p) for p in manifests.MANIFEST_DIR.rglob("*.yml")
    if yaml.safe_load(p.read_text())["apiVersion"] in {"v1", "apps/v1"}
)
ISTIO_MANIFESTS = sorted(
    str(p.relative_to(manifests.MANIFEST_DIR)) for p in manifests.MANIFEST_DIR.rglob("*.yml")
    if "istio.io" in yaml.safe_load(p.read_text())["apiVersion"]
)
VENV_BIN = Path(sys.executable).parent


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


def test_istiod_flag_is_set_by_a_helm_upgrade_with_pilot_env() -> None:
    istio = IstioHelm(None, "1.30.4", 300)
    helm = RecordingHelm()
    istio._client = helm
    istio.set_env(PERSISTENT_SESSION_FLAG, "true")
    (name, chart, values, options), = [args for call, args in helm.calls if call == "install"]
    assert (name, chart) == ("istiod", "istiod@1.30.4")
    assert values[-1] == {"pilot": {"env": {PERSISTENT_SESSION_FLAG: "true"}}}
    assert options["wait"] is True
    assert options["namespace"] == "istio-system"
    istio.set_env(PERSISTENT_SESSION_FLAG, None)
    assert helm.calls[-1][1][2][-1] == {"pilot": {"env": {PERSISTENT_SESSION_FLAG: None}}}, (
        "unsetting sends null, which Helm deletes, also when previous values are reused")


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
    from fixtures.local.envoy import find_envoy
    from fixtures.local.mesh import LocalMesh
    from fixtures.timeouts import Timeouts

    mesh = LocalMesh(find_envoy(None), Timeouts()).start()
    request.addfinalizer(mesh.close)
    mesh.apply(extra)
    mesh.set_istiod_env(PERSISTENT_SESSION_FLAG, "true")
    config = mesh._translate()
    cluster = config.clusters[0]["name"]
    assert envoy_state.gateway_facts(mesh.config_dump(), cluster) == expected_facts(config)


def test_prometheus_query_and_parsing() -> None:
    from fixtures.cluster import prometheus

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
