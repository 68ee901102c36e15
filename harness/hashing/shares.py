"""Exact shares of the hash space that change owner between two pod sets (ring hash or maglev).

A scaling test measures the share of sessions that moved on a finite sample of keys. Its expectation is
the share of the 64-bit hash space whose owner changed, which the reference model gives exactly: for
maglev, the table entries that changed owner; for a ring, the arcs between consecutive points of both
rings whose owner differs. With keys hashing uniformly, the measured count is then Binomial(n, share).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from harness.hashing.model import HashModel, Maglev, RingHash

HASH_SPACE = 1 << 64


@dataclass(frozen=True)
class Remap:
    moved: float  # share of the hash space whose host changed
    between_survivors: float  # ...from a host present in both sets to another host present in both


def exact_remap(before: HashModel, after: HashModel) -> Remap:
    survivors = set(before.addresses) & set(after.addresses)
    if isinstance(before, Maglev) and isinstance(after, Maglev):
        return _maglev_remap(before, after, survivors)
    if isinstance(before, RingHash) and isinstance(after, RingHash):
        return _ring_remap(before, after, survivors)
    raise TypeError("both models must be of the same algorithm")


def _maglev_remap(before: Maglev, after: Maglev, survivors: set[str]) -> Remap:
    if before.table_size != after.table_size:
        raise ValueError("maglev tables of different sizes")
    moved = between = 0
    for old_index, new_index in zip(before.table, after.table, strict=True):
        old, new = before.sorted_addresses[old_index], after.sorted_addresses[new_index]
        if old != new:
            moved += 1
            if old in survivors and new in survivors:
                between += 1
    return Remap(moved / before.table_size, between / before.table_size)


def _owner(ring: RingHash, point: int) -> str:
    """Owner of every hash in (previous boundary, point]: the first ring point >= point, wrapping."""
    index = bisect_left(ring.ring_hashes, point)
    return ring.pick_hash(ring.ring_hashes[index] if index < len(ring.ring_hashes) else 0)


def _ring_remap(before: RingHash, after: RingHash, survivors: set[str]) -> Remap:
    boundaries = sorted(set(before.ring_hashes) | set(after.ring_hashes))
    moved = between = 0
    previous = boundaries[-1] - HASH_SPACE  # the wrap-around arc (last point, 2^64) + [0, first point]
    for point in boundaries:
        length = point - previous
        previous = point
        old, new = _owner(before, point), _owner(after, point)
        if old != new:
            moved += length
            if old in survivors and new in survivors:
                between += length
    return Remap(moved / HASH_SPACE, between / HASH_SPACE)
