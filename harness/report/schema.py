"""The conformance report's schema, shared by the writer, the gate, the charts, the Markdown summary and
the run estimate: typed records instead of string keys, and headline figures found by what a test
declares it measures (``@pytest.mark.measures(...)``), not by its name.

On disk the report is YAML (or JSON) with the same keys as these records (``to_dict``); ``from_dict``
reads any report this suite wrote, including those written before a field existed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from harness.core.verdicts import Outcome

API_VERSION = "sticky-sessions.conformance/v1alpha1"
KIND = "ConformanceReport"
# Older reports named pytest's outcomes; they read as today's verdicts.
LEGACY_OUTCOMES = {"xfailed": Outcome.KNOWN_DEFECT, "xpassed": Outcome.KNOWN_DEFECT}
RAN_TO_A_VERDICT = frozenset({Outcome.PASSED, Outcome.FAILED, Outcome.KNOWN_DEFECT})


class Measure(StrEnum):
    """The headline figures a platform engineer asks about first; a test that measures one declares it with
    ``@pytest.mark.measures(Measure.X)`` and records the figures named here."""

    # remap_share(_n, _expected), remap_ideal; per_pod_before/after on a 3 -> 5 step
    SESSIONS_MOVED = "sessions-moved"
    SESSIONS_KEPT = "sessions-kept"  # stayed_share(_n)
    NEW_SESSION_SHARE = "new-session-share"  # new_pod_share(_n), expected_share, new_sessions
    ADDED_POD_STARVATION = "added-pod-starvation"  # starved_share(_n)


def outcome_of(raw: Any) -> Outcome:
    """A verdict as written in a report (an unknown word is an error, never a pass)."""
    text = str(raw or "")
    if text in LEGACY_OUTCOMES:
        return LEGACY_OUTCOMES[text]
    return Outcome(text) if text in {o.value for o in Outcome} else Outcome.ERROR


@dataclass
class TestResult:
    """One conformance test's verdict and what it measured."""

    test: str  # pytest's node id
    features: list[str]
    outcome: Outcome
    figures: dict[str, Any] = field(default_factory=dict)
    measures: Measure | None = None  # the headline figure this test measures, if any
    case: str = ""  # its parameter id ("ring-1024-3to5"); "" for a test without parameters
    reason: str | None = None
    known_defect: dict[str, Any] | None = None  # id, upstream, shown
    duration_s: float | None = None

    __test__ = False  # a record, not a pytest test class

    @property
    def ran_to_a_verdict(self) -> bool:
        """Passed, failed or known defect: its figures mean something (a skip has none)."""
        return self.outcome in RAN_TO_A_VERDICT

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"test": self.test, "features": self.features, "outcome": self.outcome.value,
                                "figures": self.figures}
        if self.measures is not None:
            data["measures"] = self.measures.value
        if self.case:
            data["case"] = self.case
        for name in ("known_defect", "duration_s", "reason"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        return data

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TestResult:
        measures = raw.get("measures")
        return cls(test=str(raw.get("test", "")), features=list(raw.get("features") or []),
                   outcome=outcome_of(raw.get("outcome")), figures=dict(raw.get("figures") or {}),
                   measures=Measure(measures) if measures in {m.value for m in Measure} else None,
                   case=str(raw.get("case") or ""), reason=raw.get("reason"), known_defect=raw.get("known_defect"),
                   duration_s=raw.get("duration_s"))


@dataclass
class Implementation:
    """What ran: the mesh, the door the probe entered by, and the versions."""

    mesh: str
    front_door: str = "gateway"
    envoy: str = ""
    istio: str = ""
    translation_of_istio: str = ""  # the local mesh: the Istio release its translation models
    kubernetes: str = ""

    def label(self) -> str:
        door = f" / {self.front_door} door" if self.front_door != "gateway" else ""
        return f"{self.mesh or '?'} / Istio {self.istio or '?'} / Envoy {self.envoy or '?'}{door}"

    def to_dict(self) -> dict[str, Any]:
        return {"mesh": self.mesh, "front_door": self.front_door, "envoy": self.envoy, "istio": self.istio,
                **({"translation_of_istio": self.translation_of_istio} if self.translation_of_istio else {}),
                "kubernetes": self.kubernetes}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Implementation:
        return cls(mesh=str(raw.get("mesh", "")), front_door=str(raw.get("front_door", "gateway")),
                   envoy=str(raw.get("envoy") or ""), istio=str(raw.get("istio") or ""),
                   translation_of_istio=str(raw.get("translation_of_istio") or ""),
                   kubernetes=str(raw.get("kubernetes") or ""))


@dataclass
class ConformanceReport:
    implementation: Implementation
    tests: list[TestResult]
    date: str = ""
    complete: bool = True
    interrupted: str | None = None
    # What the run selected: full, paths, keyword, markexpr, deselected, tests.
    selection: dict[str, Any] = field(default_factory=lambda: {"full": True})
    summary: dict[str, int] = field(default_factory=dict)  # tests per verdict
    # contract/provisional -> feature -> {"result": verdict, <verdict>: [tests]}
    profiles: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=lambda: {"supported": "all", "exempt": []})
    statistics: dict[str, Any] = field(default_factory=lambda: {"alpha": 1e-4})
    known_differences: list[str] = field(default_factory=list)
    run: dict[str, Any] = field(default_factory=dict)  # figures of the whole run (set-up times, operations)

    @property
    def partial(self) -> bool:
        """The run selected part of the suite (-k, -m, a path, features)."""
        return not self.selection.get("full", True)

    def feature_results(self) -> dict[str, str]:
        return {name: summary.get("result", "?") for profile in self.profiles.values()
                for name, summary in profile.items()}

    def count(self, *outcomes: Outcome) -> int:
        return sum(self.summary.get(outcome.value, 0) for outcome in outcomes)

    def measured(self, measure: Measure, *needed: str) -> list[TestResult]:
        """Tests that measure ``measure``, ran to a verdict and recorded every figure in ``needed`` (a failing
        or known-defect test may stop before recording them), by case."""
        return sorted((t for t in self.tests if t.measures == measure and t.ran_to_a_verdict
                       and all(name in t.figures for name in needed)), key=lambda t: t.case)

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "date": self.date,
            "implementation": self.implementation.to_dict(),
            **({"known_differences": self.known_differences} if self.known_differences else {}),
            **({"run": self.run} if self.run else {}),
            "statistics": self.statistics,
            "features": self.features,
            "selection": self.selection,
            "complete": self.complete,
            "summary": dict(sorted(self.summary.items())),
            **({"interrupted": self.interrupted} if self.interrupted else {}),
            "profiles": self.profiles,
            "tests": [test.to_dict() for test in self.tests],
        }

    @classmethod
    def from_dict(cls, raw: Any) -> ConformanceReport:
        if not isinstance(raw, dict) or raw.get("kind") != KIND:
            raise ValueError("not a conformance report")
        return cls(implementation=Implementation.from_dict(raw.get("implementation") or {}),
                   tests=[TestResult.from_dict(t) for t in raw.get("tests") or []],
                   date=str(raw.get("date", "")), complete=raw.get("complete") is not False,
                   interrupted=raw.get("interrupted"), selection=dict(raw.get("selection") or {"full": True}),
                   summary=dict(raw.get("summary") or {}), profiles=dict(raw.get("profiles") or {}),
                   features=dict(raw.get("features") or {}), statistics=dict(raw.get("statistics") or {}),
                   known_differences=list(raw.get("known_differences") or []), run=dict(raw.get("run") or {}))


def dump(report: ConformanceReport, path: Path) -> str:
    if path.suffix == ".json":
        return json.dumps(report.to_dict(), indent=2) + "\n"
    return yaml.safe_dump(report.to_dict(), sort_keys=False, width=120)


def load(path: Path) -> ConformanceReport:
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    try:
        return ConformanceReport.from_dict(data)
    except ValueError:
        raise ValueError(f"{path} is not a conformance report") from None
