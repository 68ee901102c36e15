"""The seed's monitoring section, as checks: per-pod request metrics agree with what clients saw.

On the local mesh the metrics are the gateway Envoy's own per-endpoint Prometheus series; on a cluster
with monitoring, Prometheus's ``istio_requests_total`` by destination pod. A sticky case concentrates
the counts on one pod, a non-sticky case spreads them; both must match the probe's own tally.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from e2e.vocabulary import HEADER
from harness.core.mesh import Mesh
from harness.core.needs import needs
from harness.core.stats import ALPHA, samples_to_see_all
from harness.core.timeouts import poll
from harness.traffic.affinity import assert_not_sticky
from harness.traffic.probe import Probe, Session

REQUESTS_STICKY = 50


def observed_by_address(mesh: Mesh, sessions: list[Session]) -> Counter[str]:
    by_name = {pod.name: pod.address for pod in mesh.pods()}
    return Counter(by_name[str(reply.pod)] for session in sessions for reply in session.replies)


def assert_metrics_match(mesh: Mesh, before: dict[str, int], observed: Counter[str]) -> dict[str, int]:
    """Poll the metrics until the per-pod increase equals what the probe observed (scrapes lag)."""
    delta: dict[str, int] = {}
    for attempt in poll(mesh.timeouts.metrics_scrape, "per-pod request metrics matching the probe"):
        with attempt:
            now = mesh.request_totals()
            delta = {address: now.get(address, 0) - before.get(address, 0) for address in now}
            delta = {address: count for address, count in delta.items() if count}
            assert delta == dict(observed), f"metrics say {delta}, the probe saw {dict(observed)}"
    return delta


@pytest.fixture
def metrics_mesh(mesh: Mesh) -> Mesh:
    """The mesh, for tests that declare ``needs("metrics")``."""
    return mesh


@pytest.mark.feature("observability", "consistent-hash-header")
@needs("metrics")
def test_sticky_traffic_concentrates_in_metrics(metrics_mesh: Mesh, probe: Probe, figures: dict[str, Any]) -> None:
    """One session id under a header hash: the metrics show all its requests on one pod."""
    metrics_mesh.apply("destinationrules/hash-header.yml")
    before = metrics_mesh.request_totals()
    session = Session(headers={HEADER: "user-session-123"})
    probe.run([session], rounds=REQUESTS_STICKY)
    observed = observed_by_address(metrics_mesh, [session])
    delta = assert_metrics_match(metrics_mesh, before, observed)
    figures.update(source=metrics_mesh.capabilities.metrics_source, requests=REQUESTS_STICKY, per_pod=delta)
    assert len(delta) == 1, f"a sticky session's requests show up on {len(delta)} pods: {delta}"


@pytest.mark.feature("observability", "load-balancing")
@needs("metrics")
def test_spread_traffic_spreads_in_metrics(metrics_mesh: Mesh, probe: Probe, figures: dict[str, Any]) -> None:
    """Clients without a key: the metrics show every pod serving, in the same counts the probe saw."""
    before = metrics_mesh.request_totals()
    count = samples_to_see_all(len(metrics_mesh.pods()), ALPHA)
    roaming = Session()
    probe.run([roaming], rounds=count, fresh_connections=True)
    assert_not_sticky(roaming, "no DestinationRule")
    delta = assert_metrics_match(metrics_mesh, before, observed_by_address(metrics_mesh, [roaming]))
    figures.update(source=metrics_mesh.capabilities.metrics_source, requests=count, per_pod=delta)
    assert len(delta) == len(metrics_mesh.pods()), f"metrics show {len(delta)} of {len(metrics_mesh.pods())} pods"
