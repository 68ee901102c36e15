"""Charts for the conformance report: distributions are read faster than tables.

Drawn from the figures the tests recorded (the report's ``tests`` list), as PNG files next to the report:
- ``scaling.png``: share of sessions that moved per scaling step and algorithm, measured against the
  model's exact prediction and the ideal minimal-disruption share;
- ``sessions-per-pod.png``: sessions per pod before and after scaling 3 -> 5, ring hash vs maglev;
- ``new-session-shares.png``: the idle new pod's share of new sessions per load-balancing policy, with
  the Binomial acceptance interval the test asserted.
A chart whose figures are missing (tests skipped or deselected) is simply not drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from harness.core.stats import share_interval
from harness.report.schema import ConformanceReport, Measure

COLORS = {"measured": "#1f77b4", "model": "#ff7f0e", "ideal": "#2ca02c", "before": "#9ecae1", "after": "#08519c"}


def _figures(report: ConformanceReport, measure: Measure, needs: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Figures by case of the tests that measure ``measure``, ran to a verdict and recorded every figure in
    ``needs``."""
    return {test.case: test.figures for test in report.measured(measure, *needs)}


def scaling_chart(report: ConformanceReport, path: Path) -> Path | None:
    data = _figures(report, Measure.SESSIONS_MOVED, ("remap_share", "remap_share_expected", "remap_ideal"))
    if not data:
        return None
    labels = sorted(data, key=lambda k: (k.rsplit("-", 1)[-1], k))
    x = range(len(labels))
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(8, len(labels) * 0.9), 4.8))
    for offset, (key, name) in enumerate([("remap_share", "measured"), ("remap_share_expected", "model"),
                                           ("remap_ideal", "ideal")]):
        ax.bar([i + (offset - 1) * width for i in x], [data[label][key] for label in labels], width,
               label={"measured": "measured", "model": "model (exact, these pods)", "ideal": "ideal (minimal)"}[name],
               color=COLORS[name])
    ax.set_xticks(list(x), [label.replace("-", "\n", 1) for label in labels], fontsize=8)
    ax.set_ylabel("share of sessions that changed pod")
    ax.set_xlabel("algorithm and scaling step")
    ax.set_title("Sessions moved by scaling (consistent hash)")
    ax.set_ylim(0, 0.7)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def sessions_per_pod_chart(report: ConformanceReport, path: Path) -> Path | None:
    data = {case: figures for case, figures in _figures(report, Measure.SESSIONS_MOVED,
                                                          ("per_pod_before", "per_pod_after")).items()
            if case.endswith("-3to5")}
    if not data:
        return None
    fig, axes = plt.subplots(1, len(data), figsize=(4.2 * len(data), 4), sharey=True, squeeze=False)
    for ax, (label, figures) in zip(axes[0], sorted(data.items()), strict=True):
        before, after = figures["per_pod_before"], figures["per_pod_after"]
        pods = list(after)  # start order; the first three existed before
        ax.bar([i - 0.2 for i in range(len(pods))], [before.get(p, 0) for p in pods], 0.4, label="3 pods",
               color=COLORS["before"])
        ax.bar([i + 0.2 for i in range(len(pods))], [after[p] for p in pods], 0.4, label="after scaling to 5",
               color=COLORS["after"])
        ax.set_xticks(range(len(pods)), [f"pod {i + 1}" + (" (new)" if p not in before else "")
                                         for i, p in enumerate(pods)], fontsize=8, rotation=20)
        ax.set_title(label.removesuffix("-3to5"))
        ax.set_xlabel("pod")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("sessions on the pod")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Sessions per pod before and after scaling 3 -> 5")
    return _save(fig, path)


def new_session_chart(report: ConformanceReport, path: Path) -> Path | None:
    data = _figures(report, Measure.NEW_SESSION_SHARE, ("new_sessions", "expected_share", "new_pod_share"))
    if not data:
        return None
    labels = sorted(data)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, label in enumerate(labels):
        figures = data[label]
        n, expected = int(figures["new_sessions"]), float(figures["expected_share"])
        bound = share_interval(n, expected)
        ax.bar(i, figures["new_pod_share"], 0.5, color=COLORS["measured"], label="measured" if i == 0 else None)
        ax.errorbar(i, expected, yerr=[[expected - bound.low], [bound.high - expected]], fmt="D",
                    color=COLORS["model"], capsize=8, label="expected, with acceptance interval" if i == 0 else None)
    ax.axhline(0.25, color="grey", linestyle=":", label="round-robin share (1/4)")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("share of new sessions on the idle new pod")
    ax.set_xlabel("DestinationRule simple policy (3 busy pods + 1 idle)")
    ax.set_title("Where new sessions go after scale-up")
    ax.set_ylim(0, 0.7)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_charts(report: ConformanceReport, directory: Path) -> list[Path]:
    charts = [
        scaling_chart(report, directory / "scaling.png"),
        sessions_per_pod_chart(report, directory / "sessions-per-pod.png"),
        new_session_chart(report, directory / "new-session-shares.png"),
    ]
    return [chart for chart in charts if chart is not None]
