"""What a conformance test's result means: the verdict classes, the known upstream defects, and why a
test did not run.

pytest's outcomes (passed, failed, skipped, xfail, xpass) answer "did the code under test raise?". A
conformance verdict answers "does this mesh behave as documented?", and it must be the same every time
the same mesh, versions and manifests are run. The Gateway API conformance suite gets there with
features a mesh supports or is exempt from; this module adds the two things an Istio upgrade gate needs
on top:

- **Known upstream defects.** Some data-plane releases have a bug that shows only sometimes (Envoy < 1.40
  behind Istio 1.31 starves a new pod depending on how istiod batches its pushes). A test exposed to such
  a defect on this mesh's versions gets the verdict ``known-defect`` whether or not the defect showed this
  time; whether it showed is a figure (``defect_shown``), never a verdict. Where the defect is
  deterministic (the local mesh makes the update sequence itself), a run where it did not show is a
  failure: the version gate that says it applies is then wrong.
- **Why a test did not run.** ``unsupported``: the mesh cannot do what the test needs (its declared
  capabilities); the gate lists such tests as "not compared". ``excluded``: the run's options left the
  test out (feature selection, ``--upgrade-to`` not given). Any other skip is ``skipped`` and counts as a
  lost test when it passed before.

Tests call ``unsupported(reason)`` instead of ``pytest.skip`` for a missing mesh capability, and
``exposed_to(request, mesh, defect_id)`` (or carry the ``adds_pods`` marker) where a known defect may
decide their outcome.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import pytest

from harness.core.mesh import Mesh
from harness.core.versions import envoy_at_least, sends_not_ready_endpoints


class Outcome(enum.StrEnum):
    """The verdict of one conformance test, as the report and the gate use it."""

    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"  # the harness could not run the test to a verdict (set-up or tear-down failed)
    KNOWN_DEFECT = "known-defect"  # exposed to a known upstream defect on these versions (shown or not)
    UNSUPPORTED = "unsupported"  # the mesh cannot run it (declared capability): not compared by the gate
    EXCLUDED = "excluded"  # the run's options left it out (features, --upgrade-to): not compared
    SKIPPED = "skipped"  # any other skip: a lost test when it passed before
    NOT_RUN = "not-run"  # selected, but the run stopped before it (interrupted, mesh never started)


# What a feature's result is, from its tests' verdicts: the first class present wins.
FEATURE_PRECEDENCE = (
    (Outcome.FAILED, Outcome.ERROR, Outcome.NOT_RUN),
    (Outcome.KNOWN_DEFECT,),
    (Outcome.PASSED,),
    (Outcome.SKIPPED,),
    (Outcome.UNSUPPORTED,),
    (Outcome.EXCLUDED,),
)
FEATURE_RESULT = {Outcome.FAILED: "failed", Outcome.KNOWN_DEFECT: "known-defect", Outcome.PASSED: "passed",
                  Outcome.SKIPPED: "skipped", Outcome.UNSUPPORTED: "unsupported", Outcome.EXCLUDED: "not-run"}


def feature_result(outcomes: list[Outcome]) -> str:
    """``failed`` if any test failed, errored or did not run; else ``known-defect`` if any test is exposed to
    one; else ``passed`` if any passed; else why none ran (``skipped``, ``unsupported``, ``not-run``)."""
    present = set(outcomes)
    for group in FEATURE_PRECEDENCE:
        if present & set(group):
            return FEATURE_RESULT[group[0]]
    return "not-run"


# -- why a test did not run ---------------------------------------------------------------------------
class Unsupported(pytest.skip.Exception):  # type: ignore[name-defined,misc]
    """A skip because the mesh cannot do what the test needs (a declared capability it lacks)."""


class Excluded(pytest.skip.Exception):  # type: ignore[name-defined,misc]
    """A skip because the run's options leave the test out."""


def unsupported(reason: str) -> NoReturn:
    """Skip: this mesh cannot run the test (the gate lists it as "not compared", never as a regression)."""
    raise Unsupported(msg=f"unsupported by this mesh: {reason}", pytrace=False)


def excluded(reason: str) -> NoReturn:
    """Skip: the run's options leave this test out (the gate lists it as "not compared")."""
    raise Excluded(msg=f"{EXCLUDED_PREFIX}{reason}", pytrace=False)


UNSUPPORTED_PREFIX = "unsupported by this mesh: "
EXCLUDED_PREFIX = "not selected: "  # also the start of the report writer's feature-selection skips


def skip_reason(raw: str) -> str:
    """A skip's reason without the exception's name pytest puts before our own skip classes."""
    for kind in (Unsupported, Excluded):
        raw = raw.removeprefix(f"{kind.__module__}.{kind.__qualname__}: ")
    return raw


def skip_outcome(reason: str) -> Outcome:
    """The verdict class of a skip, from its reason (the report keeps only the reason's text)."""
    if reason.startswith(UNSUPPORTED_PREFIX):
        return Outcome.UNSUPPORTED
    if reason.startswith(EXCLUDED_PREFIX):
        return Outcome.EXCLUDED
    return Outcome.SKIPPED


# -- known upstream defects --------------------------------------------------------------------------
@dataclass(frozen=True)
class KnownDefect:
    """An upstream bug that decides some tests' outcome on some versions, named so a person can look it up."""

    id: str
    summary: str
    upstream: tuple[str, ...]  # issues, fixes and flags, as a person would search for them
    applies: Callable[[Mesh], bool]  # whether this mesh's versions have the defect
    # Whether a test exposed to it must show it on this mesh (the mesh makes the triggering sequence itself).
    deterministic: Callable[[Mesh], bool] = lambda mesh: False

    def as_record(self, shown: bool) -> dict[str, Any]:
        return {"id": self.id, "summary": self.summary, "upstream": list(self.upstream), "shown": shown}


HEALTH_ONLY_UPDATE = "envoy-health-only-update"
NEW_POD_STARVATION = "new-pod-starvation"

_ENVOY_FIX = "Envoy 1.40.0 fixes it (envoyproxy/envoy#45212; Istio 1.30.1's runtime flag " \
             "coalesce_lb_rebuilds_on_batch_update=false works around part of it)"

KNOWN_DEFECTS: dict[str, KnownDefect] = {d.id: d for d in (
    KnownDefect(
        HEALTH_ONLY_UPDATE,
        "Envoy < 1.40 ignores an endpoint update that only changes a host's health when it is the first "
        "update after a membership change: a pod turned DRAINING still takes new sessions, and a pod turned "
        "from UNHEALTHY to HEALTHY gets none",
        (_ENVOY_FIX,),
        applies=lambda mesh: not envoy_at_least(mesh, (1, 40, 0)),
        # The local mesh publishes the surge pod and the drain as two updates itself: the bug always shows.
        deterministic=lambda mesh: mesh.name == "local",
    ),
    KnownDefect(
        NEW_POD_STARVATION,
        "Envoy < 1.40 behind an istiod that sends a starting pod first as an UNHEALTHY endpoint, then "
        "HEALTHY once ready: the HEALTHY update can be ignored and the new pod then gets no traffic; "
        "whether it is depends on how istiod batches its pushes",
        (_ENVOY_FIX, "Istio 1.31's PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS (default true) sends not-ready pods "
         "as UNHEALTHY endpoints"),
        applies=lambda mesh: not envoy_at_least(mesh, (1, 40, 0)) and sends_not_ready_endpoints(mesh),
    ),
)}

_EXPOSURE = pytest.StashKey[tuple[KnownDefect, bool]]()


def exposed_to(item: pytest.Item, mesh: Mesh, defect_id: str) -> None:
    """Declare that ``item``'s outcome may be decided by ``defect_id`` on this mesh: where the defect
    applies, the verdict is ``known-defect`` whatever happens (see the module's docstring)."""
    defect = KNOWN_DEFECTS[defect_id]
    if defect.applies(mesh):
        item.stash[_EXPOSURE] = (defect, defect.deterministic(mesh))


def exposure(item: pytest.Item) -> tuple[KnownDefect, bool] | None:
    """The known defect ``item`` is exposed to on this run's mesh, and whether it must show."""
    return item.stash.get(_EXPOSURE, None)


def settle_known_defect(item: pytest.Item, report: pytest.TestReport) -> dict[str, Any] | None:
    """Turn the call-phase report of a test exposed to a known defect into its fixed verdict.

    pytest then shows it as XFAIL either way (a stable count), with the defect and whether it showed in
    the reason. A deterministic defect that did not show stays a failure, with the reason. Returns the
    defect's record for the report, or None when the test is not exposed.
    """
    found = exposure(item)
    if found is None or report.when != "call" or report.skipped:
        return None
    defect, must_show = found
    shown = report.failed
    if must_show and not shown:
        report.outcome = "failed"
        report.longrepr = (f"known defect {defect.id} did not show on this mesh, where the update sequence that "
                           f"triggers it is deterministic: the version gate for it is wrong ({defect.summary})")
        return defect.as_record(shown)
    report.outcome = "skipped"
    report.wasxfail = f"known defect {defect.id} ({'shown' if shown else 'not shown'} this run)"
    return defect.as_record(shown)
