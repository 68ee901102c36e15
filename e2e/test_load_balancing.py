"""The seed's "Test 1": without a session key, requests spread over every pod."""

from __future__ import annotations

from typing import Any

import pytest

from fixtures.mesh import Mesh
from fixtures.probe import Probe
from fixtures.stats import ALPHA, samples_to_see_all


@pytest.mark.feature("load-balancing")
def test_requests_without_a_key_reach_every_pod(mesh: Mesh, probe: Probe, figures: dict[str, Any]) -> None:
    """No DestinationRule: Istio's default LEAST_REQUEST spreads new clients over all pods.

    Sample size: enough that a uniform spread misses a pod with probability <= ALPHA.
    """
    pods = {pod.name for pod in mesh.pods()}
    count = samples_to_see_all(len(pods), ALPHA)
    answered = probe.spread(count)
    figures.update(requests=count, pods_answering=len(answered), per_pod=dict(answered))
    assert set(answered) == pods, f"{count} clients reached {dict(answered)}, expected every pod of {sorted(pods)}"
