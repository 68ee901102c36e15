"""The Markdown summary of a conformance report: what a platform engineer reads first.

It leads with a verdict one can act on (conformant, conformant with known upstream defects, not
conformant, or an incomplete run that is no verdict at all), then the headline figures with what each is
compared to, the known defects met, the per-feature table, and the terms it uses.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from harness.core.stats import ALPHA, share_interval
from harness.core.verdicts import Outcome
from harness.report.schema import ConformanceReport, Measure, TestResult

TERMS = [
    ("passed", "the mesh behaved as documented, within the stated statistical bound"),
    ("failed", "it did not: a conformance failure, and a regression for the gate"),
    ("known-defect", "the test meets a known upstream defect on these versions; the verdict is the same "
     "whether or not the defect showed this run (`defect_shown` says if it did); its figures are shown, "
     "not gated"),
    ("unsupported", "the mesh cannot run the test (a capability it declares it lacks); not compared"),
    ("not-run", "the run's options left the test out (features, `-k`, `--upgrade-to`), or it stopped first"),
    ("share (n)", f"a measured proportion and its sample size; bounds have a false-failure probability of "
     f"{ALPHA:g} per assertion"),
]


def verdict(report: ConformanceReport) -> str:
    """One sentence a person can act on."""
    tests = report.tests
    if not report.complete:
        missing = report.count(Outcome.NOT_RUN)
        why = report.interrupted or "the run stopped early"
        return (f"**Incomplete run: no verdict.** {why}; {missing} selected tests did not run. "
                "The upgrade gate refuses this report.")
    failed = [t for t in tests if t.outcome in {Outcome.FAILED, Outcome.ERROR}]
    if failed:
        features = sorted({f for t in failed for f in t.features})
        return f"**Not conformant: {len(failed)} tests failed** ({', '.join(features) or 'no feature'})."
    passed = report.count(Outcome.PASSED)
    defects = _defects(tests)
    if defects:
        names = ", ".join(f"`{d}`" for d in sorted(defects))
        affected = sum(len(entries) for entries in defects.values())
        shown = sum(1 for entries in defects.values() for t in entries if t.known_defect and t.known_defect["shown"])
        return (f"**Conformant, with known upstream defects on these versions**: {names}. {passed} tests "
                f"passed; {affected} tests meet a known defect (it showed in {shown} of them this run); "
                "nothing else failed.")
    return f"**Conformant**: all {passed} tests that ran passed."


def _defects(tests: list[TestResult]) -> dict[str, list[TestResult]]:
    found: dict[str, list[TestResult]] = defaultdict(list)
    for test in tests:
        if test.outcome == Outcome.KNOWN_DEFECT and test.known_defect is not None:
            found[test.known_defect["id"]].append(test)
    return found


def _share(figures: dict[str, Any], name: str) -> str:
    value, n = figures.get(name), figures.get(f"{name}_n")
    if not isinstance(value, int | float):
        return "?"
    return f"{value:.3f}" + (f" (n={n})" if n else "")


def headline_rows(report: ConformanceReport) -> list[tuple[str, str, str, str]]:
    """(figure, measured, compared to, verdict) for the figures a platform engineer asks about first."""
    rows: list[tuple[str, str, str, str]] = []
    for test in report.measured(Measure.SESSIONS_MOVED):
        figures = test.figures
        expected, ideal = figures.get("remap_share_expected"), figures.get("remap_ideal")
        bound = share_interval(int(figures.get("remap_share_n", 0) or 1), float(expected or 0))
        rows.append((f"sessions moved by scaling, {test.case}", _share(figures, "remap_share"),
                     f"model {expected:.3f} (accepted {bound.low:.3f}-{bound.high:.3f}); ideal {ideal:.3f}"
                     if isinstance(expected, float) and isinstance(ideal, float) else "model",
                     test.outcome.value))
    for test in report.measured(Measure.SESSIONS_KEPT):
        rows.append((f"stateful sessions kept 3 -> 5, {test.case}", _share(test.figures, "stayed_share"),
                     "1.000 (all)", test.outcome.value))
    for test in report.measured(Measure.NEW_SESSION_SHARE):
        expected, n = test.figures.get("expected_share"), test.figures.get("new_pod_share_n")
        if isinstance(expected, float) and isinstance(n, int):
            bound = share_interval(n, expected)
            compared = f"{expected:.4f} (accepted {bound.low:.3f}-{bound.high:.3f})"
        else:
            compared = "?"
        rows.append((f"new sessions on the idle new pod, {test.case}", _share(test.figures, "new_pod_share"),
                     compared, test.outcome.value))
    for test in report.measured(Measure.ADDED_POD_STARVATION):
        rows.append(("added pods that got no traffic", _share(test.figures, "starved_share"), "0 (none)",
                     test.outcome.value))
    return rows


def render_markdown(report: ConformanceReport, charts: list[Path] | None = None) -> str:
    impl = report.implementation
    selection = report.selection
    lines = [
        f"## Sticky-session conformance: {impl.mesh} mesh, {impl.front_door} front door, "
        f"Istio {impl.istio or '?'}, Envoy {impl.envoy or '?'}",
        "",
        verdict(report),
        "",
    ]
    if impl.translation_of_istio:
        lines += [f"The local mesh's configuration is this suite's translation of the manifests as Istio "
                  f"{impl.translation_of_istio} would push it (not a running istiod).", ""]
    if report.partial:
        parts = [f"`-k {selection['keyword']}`" if selection.get("keyword") else "",
                 f"`-m {selection['markexpr']}`" if selection.get("markexpr") else "",
                 f"paths {', '.join(selection.get('paths', []))}" if selection.get("paths") else "",
                 f"{selection.get('deselected')} deselected" if selection.get("deselected") else ""]
        lines += ["Partial run (" + ", ".join(p for p in parts if p) + "): features without a selected test "
                  "are not run, not failed.", ""]
    lines += ["Summary: " + ", ".join(f"{count} {outcome}" for outcome, count in report.summary.items()), ""]
    rows = headline_rows(report)
    if rows:
        lines += ["| headline figure | measured | compared to | verdict |", "|---|---|---|---|"]
        lines += [f"| {name} | {measured} | {compared} | {outcome} |" for name, measured, compared, outcome in rows]
        lines.append("")
    defects = _defects(report.tests)
    if defects:
        lines += ["Known upstream defects met on these versions (shown, not gated):", ""]
        for defect_id, entries in sorted(defects.items()):
            record = entries[0].known_defect or {}
            shown = sum(1 for t in entries if t.known_defect and t.known_defect["shown"])
            upstream = "; ".join(record.get("upstream", []))
            lines.append(f"- `{defect_id}`: {record.get('summary', '')}. Upstream: {upstream}. "
                         f"{len(entries)} tests exposed, shown in {shown} this run.")
        lines.append("")
    if report.run:
        lines += ["Run: " + ", ".join(f"{k.replace('_', ' ')} {_inline(v)}" for k, v in report.run.items()), ""]
    if report.known_differences:
        lines += ["Known differences from a production install:", *(f"- {d}" for d in report.known_differences), ""]
    lines += ["| profile | feature | result | passed | failed | known defect | not compared |",
              "|---|---|---|---|---|---|---|"]
    for profile, features in report.profiles.items():
        for feature, summary in features.items():
            def count(*outcomes: Outcome, summary: dict[str, Any] = summary) -> int:
                return sum(len(summary.get(outcome.value, [])) for outcome in outcomes)
            lines.append(
                f"| {profile} | {feature} | {summary['result']} | {count(Outcome.PASSED)} | "
                f"{count(Outcome.FAILED, Outcome.ERROR, Outcome.NOT_RUN)} | {count(Outcome.KNOWN_DEFECT)} | "
                f"{count(Outcome.UNSUPPORTED, Outcome.EXCLUDED, Outcome.SKIPPED)} |")
    if charts:
        lines += ["", "Charts: " + ", ".join(f"[{c.stem}]({c.as_posix()})" for c in charts)]
    failed = [t for t in report.tests if t.outcome in {Outcome.FAILED, Outcome.ERROR, Outcome.NOT_RUN}]
    if failed:
        lines += ["", "Failed:", ""]
        lines += [f"- `{t.test}` ({t.outcome}): {t.reason or ''}".rstrip(": ") for t in failed]
    notes = [t for t in report.tests if t.outcome in {Outcome.SKIPPED, Outcome.UNSUPPORTED, Outcome.EXCLUDED}
             and t.reason]
    if notes:
        lines += ["", "Not compared (with the reason):", ""]
        lines += [f"- `{t.test}` ({t.outcome}): {t.reason}" for t in notes]
    lines += ["", "Terms: " + "; ".join(f"**{term}**: {meaning}" for term, meaning in TERMS) + "."]
    return "\n".join(lines) + "\n"


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k} {v}" for k, v in value.items()) + ")"
    return str(value)
