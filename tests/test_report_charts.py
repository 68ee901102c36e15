"""Charts render from a report's figures, and a missing set of figures draws no chart (never a crash)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.core.verdicts import Outcome
from harness.report.charts import render_charts
from harness.report.schema import ConformanceReport, Implementation, Measure, TestResult

PNG = b"\x89PNG\r\n\x1a\n"


def measured(measure: Measure, case: str, outcome: Outcome = Outcome.PASSED, **figures: Any) -> TestResult:
    return TestResult(f"e2e/t.py::test[{case}]", [], outcome, figures, measures=measure, case=case)


def report(*tests: TestResult) -> ConformanceReport:
    return ConformanceReport(Implementation("local"), list(tests))


def full_report() -> ConformanceReport:
    before = {"a": 200, "b": 210, "c": 190}
    after = {"a": 120, "b": 125, "c": 118, "d": 120, "e": 117}
    moved, share = Measure.SESSIONS_MOVED, Measure.NEW_SESSION_SHARE
    return report(
        measured(moved, "maglev-3to5", remap_share=0.40, remap_share_expected=0.401, remap_ideal=0.4,
                 per_pod_before=before, per_pod_after=after),
        measured(moved, "ring-1024-3to5", remap_share=0.52, remap_share_expected=0.53, remap_ideal=0.4,
                 per_pod_before=before, per_pod_after=after),
        measured(share, "least-request", new_pod_share=0.44, expected_share=0.4375, new_sessions=400),
        measured(share, "round-robin", new_pod_share=0.25, expected_share=0.25, new_sessions=400),
    )


def test_all_charts_render_as_png(tmp_path: Path) -> None:
    charts = render_charts(full_report(), tmp_path)
    assert [c.name for c in charts] == ["scaling.png", "sessions-per-pod.png", "new-session-shares.png"]
    for chart in charts:
        assert chart.read_bytes().startswith(PNG)
        assert chart.stat().st_size > 10_000


def test_missing_figures_draw_nothing(tmp_path: Path) -> None:
    assert render_charts(report(), tmp_path) == []


def test_a_test_that_stopped_before_its_figures_draws_no_chart_and_breaks_none(tmp_path: Path) -> None:
    # A known-defect (or failed) test may stop before recording the figures a chart needs.
    stopped = measured(Measure.NEW_SESSION_SHARE, "least-request", Outcome.KNOWN_DEFECT, held_seconds=31.0)
    assert render_charts(report(stopped), tmp_path) == []


def test_charts_find_figures_by_what_a_test_measures_not_by_its_name(tmp_path: Path) -> None:
    renamed = TestResult("e2e/t.py::test_renamed[maglev-3to5]", [], Outcome.PASSED,
                         {"remap_share": 0.4, "remap_share_expected": 0.4, "remap_ideal": 0.4})
    assert render_charts(report(renamed), tmp_path) == [], "no measures declared: no chart"
    declared = measured(Measure.SESSIONS_MOVED, "maglev-3to5", remap_share=0.4, remap_share_expected=0.4,
                        remap_ideal=0.4)
    assert [c.name for c in render_charts(report(declared), tmp_path)] == ["scaling.png"]
