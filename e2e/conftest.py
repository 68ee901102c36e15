"""Version-dependent truths that apply to several e2e files, declared by marker."""

from __future__ import annotations

import pytest

from fixtures.mesh import Mesh
from fixtures.versions import new_pods_may_starve


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "adds_pods: the test needs traffic to reach pods it adds (scale-up, "
                            "replacement); an expected failure where the data plane may starve new pods")


@pytest.fixture(autouse=True)
def _new_pod_starvation(request: pytest.FixtureRequest) -> None:
    """On Envoy < 1.40 behind an istiod that sends starting pods as UNHEALTHY endpoints (Istio 1.31+),
    new pods may never get traffic: such a test is an expected failure there, with the reason in the
    report. Not strict: whether Envoy drops the update depends on how istiod batches its pushes."""
    if request.node.get_closest_marker("adds_pods") is None:
        return
    mesh: Mesh = request.getfixturevalue("mesh")
    reason = new_pods_may_starve(mesh)
    if reason:
        request.node.add_marker(pytest.mark.xfail(reason=reason, strict=False))
