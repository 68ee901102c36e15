"""The share of the hash space each host owns in the reference model (ring hash or maglev).

A test that takes one pod out of a consistent hash measures how many keys it loses; the expectation is the
pod's exact share of the 64-bit hash space, not ``1/N``: a 1024-point ring over 3 pods gives shares that
differ by several points. With keys hashing uniformly, the number of keys a pod owns out of ``n`` is then
Binomial(n, share).
"""

from __future__ import annotations

from collections import defaultdict

from harness.hashing.model import HashModel, Maglev, RingHash
from harness.hashing.shares import HASH_SPACE


def owned_shares(model: HashModel) -> dict[str, float]:
    """Host ``ip:port`` -> the share of request hashes it is picked for (the shares sum to 1)."""
    if isinstance(model, Maglev):
        return {host: count / model.table_size for host, count in model.entries_per_host.items()}
    if isinstance(model, RingHash):
        return _ring_shares(model)
    raise TypeError(f"no exact shares for {type(model).__name__}")


def _ring_shares(ring: RingHash) -> dict[str, float]:
    """Each ring point owns the hashes in (previous point, point]; the first point also owns the wrap-around
    (last point, 2^64) and 0, as Envoy's search sends hashes above the last point to entry 0."""
    shares: dict[str, int] = defaultdict(int)
    points = ring.ring_hashes
    previous = points[-1] - HASH_SPACE
    for point in points:
        shares[ring.pick_hash(point)] += point - previous
        previous = point
    result = {host: 0.0 for host in ring.addresses}
    result.update({host: length / HASH_SPACE for host, length in shares.items()})
    return result
