"""The upgrade gate: compare two conformance reports and fail on a regression.

    python -m harness.report.gate BEFORE.yaml AFTER.yaml [--markdown] [--alpha 1e-4] [--all]

Exit status: 0 no regression, 1 regression, 2 could not compare (a missing or unreadable file, a file that
is not a conformance report, an incomplete run, or runs through different front doors).

Quiet on noise, loud on change:
- Verdicts (``harness.core.verdicts``) are reproducible, so any change of verdict is a change of behaviour:
  a test that passed and now fails, errors, is skipped, or meets a known upstream defect is a regression;
  so is a known-defect test that now fails or is skipped, and a passing test that is missing now.
- Tests either run could not compare are listed as "not compared", never as regressions: a mesh's
  declared missing capability (``unsupported``), a test the run's options left out (``not-run``:
  features, ``-k``, ``--upgrade-to``), and tests absent from a partial run.
- A feature that passed and now fails or meets a known defect is a regression; one whose tests were not
  selected is not compared.
- Measured shares gate only where both runs passed the test: a share that moved beyond its noise is a
  regression. The false-alarm probability ``--alpha`` (default 1e-4) is for the whole comparison
  (Bonferroni: each of the m judged figures is tested at alpha/m), so two identical runs compare clean.
  Figures of known-defect tests are shown, not gated: their values depend on whether the defect showed.

How tests record figures so that the gate can judge them (see ``harness.report.writer``):

    figures["remap_share"] = moved / n       # a share in [0, 1] ...
    figures["remap_share_n"] = n             # ... and the number of independent samples behind it
    figures["remap_share_expected"] = p      # optional: what this run predicts (e.g. the model, for
                                             # this run's pod addresses)

- ``x`` and ``x_n`` in both reports: the two counts are compared by Fisher's exact test (same
  behaviour means the same underlying share).
- ``x``, ``x_n`` and ``x_expected`` in both: the deviation from expectation is compared instead, by
  the exact distribution of the difference of two binomial counts around their own expectations. A
  share whose expectation changes between runs for a legitimate reason (ring hash over different pod
  addresses: the exact remap share 3->5 varies with an SD of about 0.015) is not mistaken for a change
  of behaviour, while a data plane that starts to disagree with the model is. Where a count is
  impossible under its own expectation (an expectation of 0 with sessions moving), the model says
  nothing about noise and the raw counts are compared by Fisher's exact test.
- A figure without ``x_n`` (counts, ratios, durations) has no known noise: its changes are counted,
  listed in a collapsed block in Markdown, and in the terminal with ``--all``; they never fail the gate.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml
from scipy import stats as scipy_stats

from harness.core.verdicts import Outcome
from harness.report.schema import ConformanceReport, TestResult, load

Floats = npt.NDArray[np.float64]
NOT_COMPARED = {Outcome.UNSUPPORTED, Outcome.EXCLUDED}
BROKEN = {Outcome.FAILED, Outcome.ERROR, Outcome.SKIPPED, Outcome.NOT_RUN}


class NotComparable(ValueError):
    """The two reports cannot be compared (exit status 2)."""


@dataclass
class FigureChange:
    test: str
    figure: str
    before: float
    after: float
    n_before: int | None = None
    n_after: int | None = None
    p_value: float | None = None
    expected_before: float | None = None  # set when the deviation from expectation was judged
    expected_after: float | None = None
    why_not_judged: str = ""


@dataclass
class Comparison:
    before: ConformanceReport
    after: ConformanceReport
    alpha: float
    regressions: list[str] = field(default_factory=list)
    improvements: list[str] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)
    neither: list[str] = field(default_factory=list)  # not run by either, for the same kind of reason
    notes: list[str] = field(default_factory=list)
    judged: list[FigureChange] = field(default_factory=list)  # every figure with a p-value
    unjudged: list[FigureChange] = field(default_factory=list)

    @property
    def per_figure_alpha(self) -> float:
        """Bonferroni: the comparison's false-alarm probability ``alpha`` split over its judged figures."""
        return self.alpha / max(1, len(self.judged))

    @property
    def moved(self) -> list[FigureChange]:
        """Figures that moved beyond noise in tests both runs passed: regressions."""
        return [c for c in self.judged if c.p_value is not None and c.p_value < self.per_figure_alpha]

    @property
    def failed(self) -> bool:
        return bool(self.regressions or self.moved)


def check_comparable(before: ConformanceReport, after: ConformanceReport) -> None:
    """Only complete runs through the same front door make a verdict; say why not otherwise."""
    for name, report in (("BEFORE", before), ("AFTER", after)):
        if not report.complete or report.interrupted:
            why = report.interrupted or "some selected tests did not run"
            raise NotComparable(f"{name} ({report.implementation.label()}) is an incomplete run ({why}): the gate "
                                "compares complete runs only; run the suite again")
    doors = [r.implementation.front_door for r in (before, after)]
    if doors[0] != doors[1]:
        raise NotComparable(f"BEFORE went through the {doors[0]} and AFTER through the {doors[1]} front door: "
                            "compare runs through the same door")


def compare(before: ConformanceReport, after: ConformanceReport, alpha: float = 1e-4) -> Comparison:
    result = Comparison(before, after, alpha)
    _compare_tests(result, before, after)
    _compare_features(result, before, after)
    return result


def _compare_tests(result: Comparison, before: ConformanceReport, after: ConformanceReport) -> None:
    old = {t.test: t for t in before.tests}
    new = {t.test: t for t in after.tests}
    for test, entry in sorted(old.items()):
        was = entry.outcome
        current = new.get(test)
        if current is None:
            if was in NOT_COMPARED or was == Outcome.SKIPPED:
                continue
            if after.partial:
                result.not_compared.append(f"{test}: not selected in AFTER")
            elif was in {Outcome.PASSED, Outcome.KNOWN_DEFECT}:
                result.regressions.append(f"{test}: {was} before, missing now")
            continue
        _compare_test(result, test, entry, current)
    for test in sorted(set(new) - set(old)):
        result.notes.append(f"{test}: new ({new[test].outcome})")


def _compare_test(result: Comparison, test: str, entry: TestResult, current: TestResult) -> None:
    was, now = entry.outcome, current.outcome
    reason = f" ({current.reason})" if current.reason else ""
    if was in NOT_COMPARED and was == now:
        result.neither.append(f"{test}: {now}: {current.reason or ''}")
        return
    if was in NOT_COMPARED or now in NOT_COMPARED:
        side = "AFTER" if now in NOT_COMPARED else "BEFORE"
        why = (current if now in NOT_COMPARED else entry).reason or ""
        result.not_compared.append(f"{test}: {now if now in NOT_COMPARED else was} in {side}: {why}")
        return
    if was == Outcome.PASSED and now != Outcome.PASSED:
        result.regressions.append(f"{test}: passed before, {now} now{reason}")
    elif was == Outcome.KNOWN_DEFECT and now in BROKEN:
        result.regressions.append(f"{test}: known defect before, {now} now{reason}")
    elif was in {Outcome.FAILED, Outcome.ERROR, Outcome.KNOWN_DEFECT} and now == Outcome.PASSED:
        result.improvements.append(f"{test}: {was} before, passed now")
    elif was != now:
        result.notes.append(f"{test}: {was} -> {now}")
    if was == now == Outcome.PASSED:
        _compare_figures(result, test, entry.figures, current.figures)
    elif was == now == Outcome.KNOWN_DEFECT:
        _show_figures(result, test, entry.figures, current.figures, "known defect: shown, not gated")


def _compare_features(result: Comparison, before: ConformanceReport, after: ConformanceReport) -> None:
    old_features, new_features = before.feature_results(), after.feature_results()
    for feature, was_result in sorted(old_features.items()):
        now_result = new_features.get(feature)
        if was_result != "passed":
            continue
        if now_result is None or now_result in {"not-run", "unsupported"}:
            if after.partial or now_result is not None:
                result.not_compared.append(f"feature {feature}: {now_result or 'not selected'} in AFTER")
            else:
                result.regressions.append(f"feature {feature}: had tests before, none now")
        elif now_result in {"failed", "known-defect", "skipped"}:
            result.regressions.append(f"feature {feature}: passed before, {now_result} now")


SUFFIXES = ("_n", "_expected")


def _pairs(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, float, float]]:
    pairs = []
    for name, before in old.items():
        after = new.get(name)
        if name.endswith(SUFFIXES) or not _number(before) or not _number(after):
            continue
        pairs.append((name, float(before), float(after)))  # type: ignore[arg-type] # _number checked it
    return pairs


def _show_figures(result: Comparison, test: str, old: dict[str, Any], new: dict[str, Any], why: str) -> None:
    for name, before, after in _pairs(old, new):
        if before != after:
            result.unjudged.append(FigureChange(test, name, before, after, why_not_judged=why))


def _compare_figures(result: Comparison, test: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    for name, before, after in _pairs(old, new):
        expected = _share(old.get(f"{name}_expected")), _share(new.get(f"{name}_expected"))
        change = FigureChange(test, name, before, after)
        n_before, n_after = old.get(f"{name}_n"), new.get(f"{name}_n")
        if not (_count(n_before) and _count(n_after)):
            if before != after:
                result.unjudged.append(change)
            continue
        assert isinstance(n_before, int)
        assert isinstance(n_after, int)
        change.n_before, change.n_after = n_before, n_after
        if _share(before) is None or _share(after) is None:
            change.why_not_judged = "recorded with a sample size but not a share in [0, 1]"
            result.unjudged.append(change)
            continue
        k_before, k_after = round(before * n_before), round(after * n_after)
        samples = (Sample(k_before, n_before, expected[0]) if expected[0] is not None else None,
                   Sample(k_after, n_after, expected[1]) if expected[1] is not None else None)
        if samples[0] is not None and samples[1] is not None and samples[0].possible() and samples[1].possible():
            change.expected_before, change.expected_after = samples[0].p, samples[1].p
            change.p_value = residual_p_value(samples[0], samples[1])
        else:
            table = [[k_before, n_before - k_before], [k_after, n_after - k_after]]
            change.p_value = float(scipy_stats.fisher_exact(table).pvalue)
        result.judged.append(change)


@dataclass(frozen=True)
class Sample:
    """A share measured as ``k`` successes out of ``n``, against the share ``p`` its run expected."""

    k: int
    n: int
    p: float

    def possible(self) -> bool:
        """Whether ``k`` can happen under Bin(n, p) at all (not when p is 0 or 1 and k says otherwise)."""
        return not (self.p <= 0.0 and self.k > 0) and not (self.p >= 1.0 and self.k < self.n)

    def deviations(self) -> tuple[Floats, Floats]:
        """Every likely deviation k/n - p under Bin(n, p), with its probability (tails < 1e-15 dropped)."""
        low, high = scipy_stats.binom.ppf([1e-15, 1 - 1e-15], self.n, self.p)
        ks = np.arange(int(np.nan_to_num(low, nan=0)), int(np.nan_to_num(high, nan=self.n)) + 1)
        return ks / self.n - self.p, scipy_stats.binom.pmf(ks, self.n, self.p)


def residual_p_value(before: Sample, after: Sample) -> float:
    """Two-sided p-value of the change in deviation from expectation, exactly.

    Under "same behaviour relative to the expectation", K_b ~ Bin(n_b, p_b) and K_a ~ Bin(n_a, p_a)
    independently; the statistic D = (K_a/n_a - p_a) - (K_b/n_b - p_b) has mean 0. Its distribution is
    summed over both binomials' supports, which stays exact for small expected counts (a maglev's 0.0001
    of sessions moving between survivors) where a normal approximation would raise false alarms.
    """
    dev_before, pmf_before = before.deviations()
    dev_after, pmf_after = after.deviations()
    observed = abs((after.k / after.n - after.p) - (before.k / before.n - before.p))
    differences = np.abs(dev_after[:, None] - dev_before[None, :])
    mass = pmf_after[:, None] * pmf_before[None, :]
    return float(min(1.0, mass[differences >= observed - 1e-12].sum()))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _share(value: Any) -> float | None:
    return float(value) if _number(value) and 0.0 <= value <= 1.0 else None


def render(result: Comparison, markdown: bool = False, show_all: bool = False) -> str:
    bullet = "- " if markdown else "  "
    title = f"Comparing {result.before.implementation.label()}  ->  {result.after.implementation.label()}"
    lines = [f"## {title}" if markdown else title, ""]
    verdict = "REGRESSION" if result.failed else "no regression"
    lines.append(f"**Verdict: {verdict}**" if markdown else f"Verdict: {verdict}")

    def section(heading: str, items: list[str]) -> None:
        if items:
            lines.extend(["", f"### {heading}" if markdown else f"{heading}:"])
            lines.extend(f"{bullet}{item}" for item in items)

    section("Regressions", result.regressions)
    section(f"Figures that moved beyond noise (alpha {result.alpha:g} for the comparison, "
            f"{result.per_figure_alpha:.2g} per figure over {len(result.judged)} judged figures)",
            [_judged(c) for c in result.moved])
    section("Improvements", result.improvements)
    section("Not compared", result.not_compared)
    section("Other changes", result.notes)
    if result.neither and show_all:
        section("Run by neither (unsupported or excluded in both)", result.neither)
    elif result.neither:
        lines.extend(["", f"{len(result.neither)} tests run by neither (unsupported or excluded in both; "
                      "--all lists them)"])
    unjudged = [_unjudged(c) for c in result.unjudged]
    if unjudged and markdown:
        lines.extend(["", f"<details><summary>{len(unjudged)} figures without a known noise changed "
                      "(not judged)</summary>", ""])
        lines.extend(f"- {item}" for item in unjudged)
        lines.extend(["", "</details>"])
    elif unjudged and show_all:
        section("Figures without a known noise (not judged)", unjudged)
    elif unjudged:
        lines.extend(["", f"{len(unjudged)} figures without a known noise changed (not judged; --all lists them)"])
    return "\n".join(lines) + "\n"


def _judged(c: FigureChange) -> str:
    text = (f"{c.test} {c.figure}: {c.before:.4f} (n={c.n_before}) -> {c.after:.4f} (n={c.n_after}), "
            f"change {c.after - c.before:+.4f}")
    if c.expected_before is not None and c.expected_after is not None:
        shift = (c.after - c.expected_after) - (c.before - c.expected_before)
        text += (f"; expected {c.expected_before:.4f} -> {c.expected_after:.4f}, "
                 f"deviation from expected {shift:+.4f} (exact binomial)")
    else:
        text += " (Fisher exact)"
    return f"{text}, p={c.p_value:.2g}"


def _unjudged(c: FigureChange) -> str:
    change = f"{c.before:g} -> {c.after:g} ({c.after - c.before:+g})"
    return f"{c.test} {c.figure}: {change}" + (f": {c.why_not_judged}" if c.why_not_judged else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.report.gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--markdown", action="store_true", help="Markdown output (for $GITHUB_STEP_SUMMARY)")
    parser.add_argument("--alpha", type=float, default=1e-4,
                        help="false-alarm probability of the whole comparison (split over its figures)")
    parser.add_argument("--all", action="store_true", help="also list figure changes that cannot be judged")
    args = parser.parse_args(argv)
    try:
        before, after = load(args.before), load(args.after)
        check_comparable(before, after)
    except OSError as error:
        print(f"gate: cannot read {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 2
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        print(f"gate: not valid YAML{where}: {getattr(error, 'problem', None) or error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"gate: {error}", file=sys.stderr)
        return 2
    result = compare(before, after, args.alpha)
    sys.stdout.write(render(result, markdown=args.markdown, show_all=args.all))
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
