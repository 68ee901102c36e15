"""Version gates: where data-plane behaviour differs between releases, tests say so by version."""

from __future__ import annotations

import re

from harness.core.mesh import Mesh


def parse(version: str) -> tuple[int, ...]:
    """``1.40.0`` or ``1.39.3-dev`` -> (1, 40, 0); unknown -> (0,)."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if not match:
        return (0,)
    return tuple(int(part or 0) for part in match.groups())


def envoy_at_least(mesh: Mesh, minimum: tuple[int, ...]) -> bool:
    """Whether the gateway's Envoy is ``minimum`` or newer (an unknown version counts as newest)."""
    version = mesh.versions().get("envoy", "")
    return not version or parse(version) >= minimum


def sends_not_ready_endpoints(mesh: Mesh) -> bool:
    """Whether istiod sends not-ready pods as UNHEALTHY endpoints: its clusters then carry
    ``healthy_panic_threshold: 0`` (both come with PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS, Istio 1.31+)."""
    # With ?resource=, each config is one cluster entry (not a ClustersConfigDump).
    for entry in mesh.config_dump("dynamic_active_clusters").get("configs", []):
        cluster = entry.get("cluster", {})
        if cluster.get("name", "").startswith("outbound|"):
            threshold = cluster.get("common_lb_config", {}).get("healthy_panic_threshold")
            # A zero Percent prints as {}: present and without a value means 0.
            return threshold is not None and float(threshold.get("value", 0)) == 0.0
    return False
