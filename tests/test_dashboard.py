"""The Grafana dashboard and the monitoring stack, checked offline.

Every PromQL expression must parse (promql-parser, the Prometheus parser's Rust port) and may only name
metrics the mesh exports; a deliberately broken expression must be rejected, so the check can fail.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cel
import promql_parser
import pytest
import yaml

from harness.core.manifests import PROJECT_ROOT
from harness.meshes.kube.helmfile import install_plan

OBSERVABILITY = PROJECT_ROOT / "observability"
DASHBOARD = OBSERVABILITY / "dashboards" / "sticky-sessions.json"
# Metrics the dashboard may use, and where each comes from.
EXPORTED = {
    "istio_requests_total": "Istio standard metric (sidecars, gateway)",
    "istio_request_duration_milliseconds_bucket": "Istio standard metric (histogram)",
    "kube_deployment_status_replicas_available": "kube-state-metrics (installed with the prometheus chart)",
    "envoy_cluster_outlier_detection_ejections_active": "Envoy stat, exported via proxyStatsMatcher",
    "envoy_cluster_outlier_detection_ejections_enforced_total": "Envoy stat, exported via proxyStatsMatcher",
}
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "30s", "$namespace": "default"}
PROMQL_FUNCTIONS = {"sum", "rate", "increase", "histogram_quantile", "label_values", "by", "on", "le", "count"}


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict) and query.get("query", "").startswith("label_values("):
            # label_values(<selector>, label) is Grafana's; its selector is PromQL
            found.append(query["query"].removeprefix("label_values(").rsplit(",", 1)[0])
    return found


def expand(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (identifiers followed by a selector or a range)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    names = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?=\{|\[)", without_strings))
    return names - PROMQL_FUNCTIONS


def test_dashboard_has_the_seed_panels() -> None:
    titles = {panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]}
    assert titles == {"Request rate by pod", "Current distribution", "Pod count",
                      "Share of requests carrying a session", "Latency by pod (P50 / P99)", "Outlier ejections"}


@pytest.mark.parametrize("expr", expressions())
def test_every_expression_parses_and_uses_exported_metrics(expr: str) -> None:
    promql_parser.parse(expand(expr))
    names = metric_names(expand(expr))
    assert names, f"no metric in {expr}"
    assert names <= set(EXPORTED), f"{sorted(names - set(EXPORTED))} are not metrics the mesh exports"


def test_a_broken_expression_is_rejected() -> None:
    with pytest.raises(Exception, match=r"."):
        promql_parser.parse('sum by (pod (rate(istio_requests_total{reporter="destination"}[1m]))')


def test_grafana_values_embed_this_dashboard() -> None:
    values: dict[str, Any] = yaml.safe_load((OBSERVABILITY / "values" / "grafana.yaml").read_text())
    embedded = values["dashboards"]["sticky-sessions"]["sticky-sessions"]["json"]
    assert json.loads(embedded) == json.loads(DASHBOARD.read_text())


def test_monitoring_helmfile_pins_its_charts() -> None:
    plan = install_plan(OBSERVABILITY / "helmfile.yaml")
    assert [r.name for r in plan] == ["prometheus", "grafana"]
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", r.version) for r in plan)
    assert plan[0].values["server"]["global"]["scrape_interval"] == "5s"


def test_root_helmfile_includes_the_monitoring_stack() -> None:
    root = yaml.safe_load((PROJECT_ROOT / "helmfile.yaml").read_text())
    assert {"path": "observability/helmfile.yaml"} in root["helmfiles"]


def test_session_tag_telemetry_is_valid_yaml() -> None:
    telemetry = yaml.safe_load((OBSERVABILITY / "telemetry-session-tag.yml").read_text())
    assert telemetry["kind"] == "Telemetry"
    tags = telemetry["spec"]["metrics"][0]["overrides"][0]["tagOverrides"]
    assert "has_session" in tags


def test_everything_under_observability_parses() -> None:
    for path in OBSERVABILITY.rglob("*"):
        if path.suffix in {".yaml", ".yml"}:
            yaml.safe_load(path.read_text())
        elif path.suffix == ".json":
            json.loads(path.read_text())
    assert Path(DASHBOARD).exists()


# -- CEL in Istio Telemetry resources: parsed by a real CEL implementation --------------------------------


def cel_expressions() -> list[tuple[str, str]]:
    """``(where, expression)`` for every CEL expression under observability/: Telemetry tag overrides'
    ``value`` and access-log filters' ``expression`` (Istio evaluates both with CEL)."""
    found = []
    for path in sorted(OBSERVABILITY.rglob("*.y*ml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not isinstance(document, dict) or document.get("kind") != "Telemetry":
                continue
            spec = document.get("spec") or {}
            for metric in spec.get("metrics") or []:
                for override in metric.get("overrides") or []:
                    for tag, change in (override.get("tagOverrides") or {}).items():
                        if change.get("value"):
                            found.append((f"{path.name}: tag {tag}", str(change["value"])))
            for logging in spec.get("accessLogging") or []:
                expression = (logging.get("filter") or {}).get("expression")
                if expression:
                    found.append((f"{path.name}: access log filter", str(expression)))
    return found


def test_there_are_cel_expressions() -> None:
    assert [where for where, _ in cel_expressions()] == ["telemetry-session-tag.yml: tag has_session"]


@pytest.mark.parametrize(("where", "expression"), cel_expressions())
def test_every_cel_expression_parses(where: str, expression: str) -> None:
    """cel-go and cel-cpp (Istio's) refuse ``has()`` on anything but a field selection; so does this parser,
    and Istio then drops the tag without an error anyone sees."""
    cel.compile(expression)


def test_cel_has_on_a_map_index_is_rejected() -> None:
    """The check can fail: the tag as it was written before (has() on request.headers['...'])."""
    with pytest.raises(ValueError, match=r"invalid argument to has\(\) macro"):
        cel.compile("has(request.headers['x-session-id']) ? 'true' : 'false'")


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, "false"),
    ({"x-session-id": "MTAuMC4wLjU6NTY3OA=="}, "true"),
    ({"cookie": "theme=dark; sticky-session=\"abc\""}, "true"),
    ({"cookie": "theme=dark"}, "false"),
])
def test_the_session_tag_says_whether_a_request_carries_a_session(headers: dict[str, str], expected: str) -> None:
    (_, expression), = cel_expressions()
    assert cel.evaluate(expression, {"request": {"headers": headers}}) == expected
