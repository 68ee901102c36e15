"""The CI workflow's istiod-mesh job runs every Istio release the istiod mesh can build, no more."""

from __future__ import annotations

import yaml

from harness.core.manifests import PROJECT_ROOT
from harness.meshes.istiod.releases import RELEASES


def test_istiod_job_covers_the_pinned_releases() -> None:
    workflow = yaml.safe_load((PROJECT_ROOT / ".github" / "workflows" / "ci.yml").read_text())
    job = workflow["jobs"]["istiod-mesh"]
    assert sorted(job["strategy"]["matrix"]["istio"]) == sorted(RELEASES)
    commands = " ".join(step.get("run", "") for step in job["steps"])
    assert "make e2e-istiod" in commands
    assert "make istiod-binaries" in commands
