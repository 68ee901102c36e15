"""Per-pod request counts from the monitoring stack's Prometheus (kind with --monitoring).

The query runs inside the Prometheus pod (``wget`` against its own API on localhost), through the same
pod-exec the mesh uses for the gateway's admin API: no port-forward, nothing exposed on the host.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from harness.core.mesh import APP_NAME, MeshError

MONITORING_NAMESPACE = "monitoring"
PROMETHEUS_SELECTOR = "app.kubernetes.io/name=prometheus"


def requests_by_pod_query(namespace: str) -> str:
    """Requests each app pod's sidecar has served (cumulative counter; tests take differences)."""
    return ('sum by (pod) (istio_requests_total{reporter="destination", '
            f'destination_workload_namespace="{namespace}", destination_workload="{APP_NAME}"}})')


def query_command(query: str) -> list[str]:
    return ["wget", "-qO-", f"http://localhost:9090/api/v1/query?query={quote(query, safe='')}"]


def parse_totals(response: str, address_of: Mapping[str, str]) -> dict[str, int]:
    """``{ip:port: count}`` from a Prometheus instant-query response labelled by ``pod``."""
    data: dict[str, Any] = json.loads(response)
    if data.get("status") != "success":
        raise MeshError(f"Prometheus query failed: {data.get('error', data)}")
    totals = {}
    for sample in data["data"]["result"]:
        pod = sample["metric"].get("pod")
        if pod in address_of:
            totals[address_of[pod]] = round(float(sample["value"][1]))
    return totals
