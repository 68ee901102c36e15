"""``harness.hashing.owners``: each host's exact share of the hash space, against the model's own picks."""

from __future__ import annotations

from collections import Counter

import pytest

from harness.core.stats import share_interval
from harness.hashing.model import HashModel, Maglev, RingHash
from harness.hashing.owners import owned_shares

HOSTS = [f"127.0.10.{octet}:5678" for octet in (1, 2, 3)]
KEYS = 20_000


@pytest.mark.parametrize("model", [RingHash(HOSTS, 1024), RingHash(HOSTS, 16), Maglev(HOSTS, 65537)],
                         ids=["ring-1024", "ring-16", "maglev"])
def test_shares_sum_to_one_and_match_sampled_picks(model: HashModel) -> None:
    shares = owned_shares(model)
    assert set(shares) == set(HOSTS)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-12)
    counts = Counter(model.pick(f"owner-{i}") for i in range(KEYS))
    for host in HOSTS:
        # Keys hash uniformly: a host's count is Binomial(KEYS, share); the interval holds at alpha 1e-4.
        assert counts[host] / KEYS in share_interval(KEYS, shares[host]), (host, counts[host], shares[host])


def test_ring_shares_are_the_arcs_each_point_closes() -> None:
    """A tiny ring, checked by hand: a hash exactly on a point belongs to that point's host, one above it to
    the next point's, and hashes above the last point wrap to the first."""
    ring = RingHash(HOSTS[:2], minimum_ring_size=2)
    points = ring.ring_hashes
    assert ring.pick_hash(points[0]) == ring.pick_hash(points[-1] + 1)
    shares = owned_shares(ring)
    first, second = points
    owner_first = ring.pick_hash(first)
    assert owner_first != ring.pick_hash(second)
    assert shares[owner_first] == pytest.approx((first + (1 << 64) - second) / (1 << 64), rel=1e-12)


def test_an_unknown_model_is_refused() -> None:
    with pytest.raises(TypeError):
        owned_shares(object())  # type: ignore[arg-type]
