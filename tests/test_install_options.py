"""What the kind mesh installs when a run names another chart repository, hub, app image or values files, and
the two defects the first kind run on our machines exposed (gateway image pull policy, cgroup v1 hosts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.core import manifests
from harness.core.mesh import APP_NAME
from harness.meshes.kube import helmfile, install_options, kind
from harness.meshes.kube.install_options import InstallOptionError, InstallOptions, ValuesFile, from_sources
from harness.meshes.kube.mesh import with_app_image

RELEASES = ["istio-base", "istiod", "istio-ingressgateway"]
UPSTREAM_ENVOY = {"pilot": {"env": {"PILOT_ENABLE_METADATA_EXCHANGE": "false"}}, "telemetry": {"enabled": False}}


def values_file(tmp_path: Path, values: Any, name: str = "extra.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def options(**given: Any) -> InstallOptions:
    arguments: dict[str, Any] = {"chart_repo": None, "hub": None, "app_image": None, "values": []}
    arguments.update(given)
    environ = arguments.pop("environ", {})
    return from_sources(**arguments, releases=RELEASES, environ=environ)


# -- defect: the gateway image was pulled on every start ------------------------------------------------
def test_gateway_image_is_not_pulled_when_present() -> None:
    """The gateway chart's ``image: auto`` is defaulted to ``Always`` by the API server before injection;
    with pre-loaded images the gateway then never starts. The values must say IfNotPresent."""
    gateway = next(r for r in helmfile.install_plan() if r.chart == "gateway")
    assert gateway.values["imagePullPolicy"] == "IfNotPresent"


# -- defect: cgroup v1 hosts ------------------------------------------------------------------------------
def test_cgroup_v1_host_gets_the_kubelet_patch() -> None:
    config = kind.render_kind_config(23456, cgroup_v1=True)
    patches = [yaml.safe_load(p) for p in config["kubeadmConfigPatches"]]
    assert {"kind": "KubeletConfiguration", "failCgroupV1": False} in patches
    assert config["nodes"][0]["extraPortMappings"][0]["hostPort"] == 23456


def test_cgroup_v2_host_gets_the_config_as_it_is() -> None:
    assert "kubeadmConfigPatches" not in kind.render_kind_config(23456, cgroup_v1=False)


def test_cgroup_version_comes_from_dockers_host() -> None:
    def docker(answer: str, code: int = 0) -> Any:
        def run(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
            assert command[:2] == ["docker", "info"]
            return subprocess.CompletedProcess(command, code, stdout=answer, stderr="")
        return run

    assert kind.docker_cgroup_version(docker("1\n")) == "1"
    assert kind.docker_cgroup_version(docker("2\n")) == "2"
    assert kind.docker_cgroup_version(docker("", 1)) == ""
    assert "failCgroupV1: false" in kind.cgroup_note("1")
    assert "as it is" in kind.cgroup_note("2")
    assert "does not say" in kind.cgroup_note("")


def test_lifecycle_renders_the_patch_it_was_told_about(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lifecycle = kind.KindLifecycle("x", keep=False, image=None, cgroup_v1=True)
    assert lifecycle.cgroup_v1


# -- options ----------------------------------------------------------------------------------------------
def test_no_options_install_what_helmfile_declares() -> None:
    assert helmfile.install_plan(options=InstallOptions()) == helmfile.install_plan()


def test_chart_repo_replaces_only_istios_repository() -> None:
    plan = helmfile.install_plan(options=options(chart_repo="http://127.0.0.1:8879/"))
    assert {r.repo_url for r in plan} == {"http://127.0.0.1:8879"}
    assert {r.repo_name for r in plan} == {"istio"}


def test_default_istio_version_does_not_depend_on_the_repository_url(tmp_path: Path) -> None:
    """It used to look for ``istio-release`` in the URL: any mirror failed with 'found []'."""
    spec = yaml.safe_load(helmfile.HELMFILE.read_text())
    spec["repositories"][0]["url"] = "http://127.0.0.1:8879"
    spec.pop("helmfiles", None)
    for release in spec["releases"]:
        release["values"] = [str(helmfile.HELMFILE.parent / v) for v in release["values"]]
    mirrored = tmp_path / "helmfile.yaml"
    mirrored.write_text(yaml.safe_dump(spec))
    assert helmfile.default_istio_version(mirrored) == helmfile.default_istio_version()


def test_values_files_layer_over_helm_values(tmp_path: Path) -> None:
    plain = values_file(tmp_path, UPSTREAM_ENVOY)
    gateway = values_file(tmp_path, {"replicaCount": 2}, "gw.yaml")
    plan = {r.name: r for r in helmfile.install_plan(
        options=options(values=[str(plain), f"istio-ingressgateway={gateway}"]))}
    base = {r.name: r for r in helmfile.install_plan()}
    assert plan["istiod"].values["pilot"]["env"] == UPSTREAM_ENVOY["pilot"]["env"]
    assert plan["istiod"].values["telemetry"] == {"enabled": False}
    assert plan["istiod"].values["pilot"]["replicaCount"] == base["istiod"].values["pilot"]["replicaCount"]
    assert plan["istio-ingressgateway"].values["replicaCount"] == 2
    assert plan["istio-ingressgateway"].values["service"] == base["istio-ingressgateway"].values["service"]
    assert plan["istio-base"].values == base["istio-base"].values


def test_later_values_files_win(tmp_path: Path) -> None:
    first = values_file(tmp_path, {"pilot": {"env": {"A": "1", "B": "1"}}}, "a.yaml")
    second = values_file(tmp_path, {"pilot": {"env": {"B": "2"}}}, "b.yaml")
    istiod = helmfile.install_plan(options=options(values=[str(first), str(second)]))[1]
    assert istiod.values["pilot"]["env"] == {"A": "1", "B": "2"}


def test_hub_sets_istios_global_hub_on_istiod_only() -> None:
    plan = {r.name: r for r in helmfile.install_plan(options=options(hub="mirror.example/istio/"))}
    assert plan["istiod"].values["global"]["hub"] == "mirror.example/istio"
    assert "global" not in plan["istio-ingressgateway"].values


def test_environment_is_used_when_no_option_is_given(tmp_path: Path) -> None:
    first, second = values_file(tmp_path, {"a": 1}, "a.yaml"), values_file(tmp_path, {"b": 1}, "b.yaml")
    environ = {install_options.ENV_CHART_REPO: "https://mirror.example/charts",
               install_options.ENV_HUB: "mirror.example/istio", install_options.ENV_APP_IMAGE: "mirror/python:3.12",
               install_options.ENV_VALUES: f"{first}:istio-base={second}"}
    found = options(environ=environ)
    assert found.chart_repo == "https://mirror.example/charts"
    assert found.hub == "mirror.example/istio"
    assert found.app_image == "mirror/python:3.12"
    assert [(v.release, v.path) for v in found.values] == [("istiod", first), ("istio-base", second)]
    overridden = options(environ=environ, chart_repo="http://127.0.0.1:1", values=[str(second)])
    assert overridden.chart_repo == "http://127.0.0.1:1"
    assert [v.path for v in overridden.values] == [second], "options replace the environment's list"


@pytest.mark.parametrize(("given", "message"), [
    ({"chart_repo": "127.0.0.1:8879"}, "--istio-chart-repo: '127.0.0.1:8879' is not an http(s) URL"),
    ({"chart_repo": "oci://x/y"}, "is not an http(s) URL"),
    ({"environ": {install_options.ENV_CHART_REPO: "ftp://x"}}, "$STICKY_ISTIO_CHART_REPO: 'ftp://x'"),
    ({"hub": "a b"}, "--istio-hub: 'a b' is not an image reference"),
    ({"app_image": "-x"}, "--app-image: '-x' is not an image reference"),
    ({"values": ["/nonexistent/values.yaml"]}, "--istio-values: cannot read /nonexistent/values.yaml"),
    ({"values": ["gateway=/x.yaml"]}, "no release 'gateway' in helmfile.yaml (releases: istio-base, istiod"),
])
def test_bad_options_are_one_line(given: dict[str, Any], message: str) -> None:
    with pytest.raises(InstallOptionError) as raised:
        options(**given)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_values_file_must_be_a_mapping(tmp_path: Path) -> None:
    listed = values_file(tmp_path, ["a", "b"])
    with pytest.raises(InstallOptionError, match="must hold a mapping of Helm values, not list"):
        options(values=[str(listed)])
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [\n")
    with pytest.raises(InstallOptionError, match="is not YAML"):
        options(values=[str(broken)])


def test_values_files_are_the_runs_known_differences(tmp_path: Path) -> None:
    found = options(values=[str(values_file(tmp_path, UPSTREAM_ENVOY))])
    assert found.known_differences() == [
        f"istiod installed with extra values {tmp_path / 'extra.yaml'} over helm/values/: "
        "pilot.env.PILOT_ENABLE_METADATA_EXCHANGE=false, telemetry.enabled=False"]
    assert InstallOptions(hub="h").known_differences() == []


def test_the_offline_kind_legs_values_parse() -> None:
    """The kind leg on our machines layers kind-offline's upstream-Envoy values (skips elsewhere)."""
    shared = manifests.PROJECT_ROOT.parent / "shared" / "kind-offline" / "upstream-envoy-values.yaml"
    if not shared.exists():
        pytest.skip(f"no {shared} (only on the project's own machines)")
    found = options(values=[str(shared)])
    assert found.values[0].values["pilot"]["env"]["PILOT_ENABLE_METADATA_EXCHANGE"] == "false"


def test_app_image_replaces_only_the_apps_image() -> None:
    deployment = next(o for o in manifests.load("01-deployment.yml") if o["kind"] == "Deployment")
    assert deployment["metadata"]["name"] == APP_NAME
    replaced = with_app_image(deployment, "mirror/python:3.12-slim")
    assert [c["image"] for c in replaced["spec"]["template"]["spec"]["containers"]] == ["mirror/python:3.12-slim"]
    service = {"kind": "Service", "metadata": {"name": APP_NAME}}
    assert with_app_image(service, "x") == service
    assert with_app_image(deployment, None) is deployment


@pytest.mark.parametrize(("arguments", "message"), [
    (["--mesh", "kind", "--istio-values", "/nonexistent.yaml"], "--istio-values: cannot read /nonexistent.yaml"),
    (["--mesh", "local", "--istio-hub", "x"], "--istio-hub do(es) not apply to --mesh local"),
    (["--mesh", "cluster", "--istio-values", "x.yaml"], "--istio-values do(es) not apply to --mesh cluster"),
])
def test_pytest_stops_before_any_work_with_one_line(arguments: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", *arguments,
                             "e2e/test_load_balancing.py"], cwd=manifests.PROJECT_ROOT, capture_output=True,
                            text=True, check=False, timeout=120)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert message in result.stderr


def test_values_file_keeps_its_release_and_path(tmp_path: Path) -> None:
    path = values_file(tmp_path, {})
    assert options(values=[f"istiod={path}"]).values == (ValuesFile("istiod", path),)
