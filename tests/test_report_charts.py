"""Charts render from a report's figures, and a missing set of figures draws no chart (never a crash)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fixtures.report.charts import render_charts

PNG = b"\x89PNG\r\n\x1a\n"


def test(test_id: str, **figures: Any) -> dict[str, Any]:
    return {"test": test_id, "outcome": "passed", "features": [], "figures": figures}


test.__test__ = False  # type: ignore[attr-defined]  # a builder, not a test


def report() -> dict[str, Any]:
    scaling = "e2e/test_consistent_hash.py::test_scaling_moves_the_predicted_share"
    lb = "e2e/test_stateful_sessions.py::test_new_sessions_after_scale_up"
    before = {"a": 200, "b": 210, "c": 190}
    after = {"a": 120, "b": 125, "c": 118, "d": 120, "e": 117}
    return {"tests": [
        test(f"{scaling}[maglev-3to5]", remap_share=0.40, remap_share_expected=0.401, remap_ideal=0.4,
             per_pod_before=before, per_pod_after=after),
        test(f"{scaling}[ring-1024-3to5]", remap_share=0.52, remap_share_expected=0.53, remap_ideal=0.4,
             per_pod_before=before, per_pod_after=after),
        test(f"{lb}[least-request]", new_pod_share=0.44, expected_share=0.4375, new_sessions=400),
        test(f"{lb}[round-robin]", new_pod_share=0.25, expected_share=0.25, new_sessions=400),
    ]}


def test_all_charts_render_as_png(tmp_path: Path) -> None:
    charts = render_charts(report(), tmp_path)
    assert [c.name for c in charts] == ["scaling.png", "sessions-per-pod.png", "new-session-shares.png"]
    for chart in charts:
        assert chart.read_bytes().startswith(PNG)
        assert chart.stat().st_size > 10_000


def test_missing_figures_draw_nothing(tmp_path: Path) -> None:
    assert render_charts({"tests": []}, tmp_path) == []


def test_a_test_that_stopped_before_its_figures_draws_no_chart_and_breaks_none(tmp_path: Path) -> None:
    # A known-defect (or failed) test may stop before recording the figures a chart needs.
    tests = [{"test": "e2e/t.py::test_new_sessions_after_scale_up[least-request]", "outcome": "known-defect",
              "figures": {"held_seconds": 31.0}}]
    assert render_charts({"tests": tests}, tmp_path) == []
