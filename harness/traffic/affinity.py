"""What tests measure about sessions: did each stay on one pod, and where did sessions move.

Kept apart from the tests so every stickiness and scaling check counts the same way, whichever key or
mechanism pinned the session.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from harness.traffic.probe import Session


def unsticky(sessions: Sequence[Session]) -> list[Session]:
    """Sessions whose requests were answered by more than one pod (or by none)."""
    return [s for s in sessions if len(s.distinct_pods()) != 1 or None in s.distinct_pods()]


def assert_sticky(sessions: Sequence[Session], what: str) -> None:
    """Every session stayed on one pod, and the sessions together reached more than one pod.

    The second half is the built-in negative control: a mesh that sends everything to one pod is
    trivially "sticky" and must not pass.
    """
    bad = unsticky(sessions)
    assert not bad, (
        f"{what}: {len(bad)}/{len(sessions)} sessions were answered by more than one pod, "
        f"e.g. {bad[0].pods}"
    )
    spread = Counter(s.last_pod for s in sessions)
    assert len(spread) > 1, f"{what}: all {len(sessions)} sessions landed on one pod {dict(spread)}"


def assert_not_sticky(session: Session, what: str) -> None:
    """The negative control: one client without the session key reached more than one pod."""
    assert len(session.distinct_pods()) > 1, (
        f"{what}: a client without the key stayed on {session.last_pod} for all {len(session.replies)} "
        "requests: stickiness tests with this setup would prove nothing"
    )


def placement(sessions: Sequence[Session]) -> dict[int, str]:
    """Index of each session -> the pod that answered its last request."""
    result = {}
    for index, session in enumerate(sessions):
        pod = session.last_pod
        assert pod is not None, f"session {index} got no pod identity: {session.replies[-1].body!r}"
        result[index] = pod
    return result


@dataclass(frozen=True)
class Movement:
    """How sessions moved between two placements (e.g. before and after scaling)."""

    total: int
    moved: int  # pod changed
    from_removed: int  # were on a pod that is gone
    between_survivors: int  # moved from a pod present before and after to another such pod
    to_new: int  # moved to a pod that did not exist before

    @property
    def moved_share(self) -> float:
        return self.moved / self.total

    @property
    def survivor_share(self) -> float:
        return self.between_survivors / self.total


def movement(before: Mapping[int, str], after: Mapping[int, str], before_pods: set[str],
             after_pods: set[str]) -> Movement:
    survivors = before_pods & after_pods
    moved = from_removed = between = to_new = 0
    for key, old in before.items():
        new = after[key]
        if new == old:
            continue
        moved += 1
        if old not in after_pods:
            from_removed += 1
        elif new in survivors and old in survivors:
            between += 1
        if new not in before_pods:
            to_new += 1
    return Movement(len(before), moved, from_removed, between, to_new)
