"""The hash algorithms the suite's DestinationRules select, each with the reference model of Envoy's hash
for it, so a test can predict where a key lands for the actual pod addresses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.hashing import model as hashmodel


@dataclass(frozen=True)
class Algorithm:
    id: str
    manifest: str
    feature: str
    build: Callable[[list[str]], hashmodel.HashModel]
    ring_points: int | None  # hash points on the ring (None: maglev's table is split evenly)


ALGORITHMS = [
    Algorithm("ring-1024", "destinationrules/hash-header.yml", "ring-hash",
              lambda addresses: hashmodel.RingHash(addresses, minimum_ring_size=1024), 1024),
    Algorithm("ring-10240", "destinationrules/hash-header-ring-10240.yml", "ring-hash",
              lambda addresses: hashmodel.RingHash(addresses, minimum_ring_size=10240), 10240),
    Algorithm("ring-deprecated-field", "destinationrules/hash-header-deprecated-ring-size.yml", "ring-hash",
              lambda addresses: hashmodel.RingHash(addresses, minimum_ring_size=10240), 10240),
    Algorithm("maglev", "destinationrules/hash-header-maglev.yml", "maglev",
              lambda addresses: hashmodel.Maglev(addresses, table_size=65537), None),
]


def algorithm(algorithm_id: str) -> Algorithm:
    return next(a for a in ALGORITHMS if a.id == algorithm_id)
