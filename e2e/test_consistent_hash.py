"""Consistent hash (the seed's "Option 1"): a DestinationRule pins a session key to one pod."""

from __future__ import annotations

from typing import Any

import pytest

from fixtures.mesh import Mesh
from fixtures.probe import Probe, Session, pods_of
from fixtures.stats import ALPHA, samples_to_see_two

SESSIONS = 200
ROUNDS = 5


@pytest.mark.feature("consistent-hash-header", "ring-hash")
def test_same_session_id_same_pod(mesh: Mesh, probe: Probe, figures: dict[str, Any]) -> None:
    """The seed's "Test 2": every request of a session id lands on one pod, and different ids spread."""
    # Negative control first: without the rule the same session id is not pinned.
    control = Session(headers={"x-session-id": "user-session-123"})
    probe.run([control], rounds=samples_to_see_two(len(mesh.pods()), ALPHA))
    assert len(control.distinct_pods()) > 1, "without a DestinationRule one session id already stuck to one pod"

    mesh.apply("destinationrules/hash-header.yml")
    sessions = [Session(headers={"x-session-id": f"user-{i}"}) for i in range(SESSIONS)]
    probe.run(sessions, rounds=ROUNDS)
    unsticky = [s for s in sessions if len(s.distinct_pods()) != 1]
    spread = pods_of(sessions)
    figures.update(sessions=SESSIONS, requests=SESSIONS * ROUNDS, sticky_share=1 - len(unsticky) / SESSIONS,
                   per_pod=dict(spread))
    assert not unsticky, f"{len(unsticky)}/{SESSIONS} sessions reached more than one pod, e.g. {unsticky[0].pods}"
    assert len(spread) > 1, f"all {SESSIONS} session ids landed on one pod: {dict(spread)}"
