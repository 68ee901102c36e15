"""The conformance report: one machine-readable file per run, and a Markdown summary beside it.

Modelled on the Gateway API ConformanceReport: what ran (mesh, Istio, Envoy and Kubernetes versions),
which features were supported or exempt, and per feature the passed, failed and skipped tests with skip
reasons and **the figures each test measured**. Provisional features (pinning Envoy's exact algorithm)
are reported apart from the contract. Features can be selected like the Gateway API suite's
supported/exempt features; a test needing a feature outside the selection is skipped with that reason.

Figures convention (what ``harness.report.gate`` can judge): a share ``x`` measured on ``n``
samples is recorded as ``figures["x"] = share`` and ``figures["x_n"] = n``. Other numbers are reported
but not judged, because their noise is unknown.

A share whose expectation depends on the run (e.g. the model's exact remap share for this run's pod
addresses) also records ``figures["x_expected"] = p``: the gate then judges the change of the deviation
from expectation, not of the raw share, so different pod addresses are not mistaken for a regression.

The file is written at the end of every run, also when tests fail or the mesh cannot start (the tests
that did not run are reported as errors with the reason), through a temporary file and a rename: a
reader never sees half a report.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from harness.core.features import FEATURES
from harness.core.stash import FIGURES_KEY, MESH_KEY, MESH_VERSIONS, VERSIONS_FROM_OPTIONS
from harness.core.verdicts import (
    EXCLUDED_PREFIX,
    Outcome,
    feature_result,
    settle_known_defect,
    skip_outcome,
    skip_reason,
)
from harness.report.markdown import render_markdown
from harness.report.schema import ConformanceReport, Implementation, Measure, TestResult, dump


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sticky sessions")
    group.addoption("--report", default=None, metavar="PATH",
                    help="conformance report to write (.yaml/.yml or .json); default "
                    "reports/conformance-<mesh>-istio-<version>-envoy-<version>-<UTC time>.yaml, with "
                    "reports/latest.yaml and reports/latest-<mesh>.yaml pointing at the last complete run")
    group.addoption("--supported-features", default=None, metavar="A,B",
                    help="run only tests whose features are all in this list (default: all features)")
    group.addoption("--exempt-features", default=None, metavar="A,B",
                    help="skip tests that need any of these features")


def _feature_list(config: pytest.Config, option: str) -> list[str] | None:
    raw = config.getoption(option)
    if raw is None:
        return None
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in FEATURES]
    if unknown:
        raise pytest.UsageError(f"{option}: unknown feature(s) {unknown}; known: {sorted(FEATURES)}")
    return names


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "measures(measure): the headline figure a test measures "
                            "(harness.report.schema.Measure), which the charts and the summary show")
    if getattr(config, "workerinput", None) is not None:
        return
    supported = _feature_list(config, "--supported-features")
    exempt = _feature_list(config, "--exempt-features") or []
    explicit = config.getoption("--report")
    if explicit:
        check_writable(Path(explicit))
    config.pluginmanager.register(ReportWriter(config, supported, exempt), "sticky-conformance-report")


def check_writable(path: Path) -> None:
    """An unwritable ``--report`` is found before anything starts, not after a whole run."""
    if path.suffix not in {".yaml", ".yml", ".json"}:
        raise pytest.UsageError(f"--report {path}: the report is .yaml, .yml or .json")
    if path.is_dir():
        raise pytest.UsageError(f"--report {path}: is a directory; name a file")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise pytest.UsageError(f"--report {path}: cannot write in {parent}")
    if path.exists() and not os.access(path, os.W_OK):
        raise pytest.UsageError(f"--report {path}: the file exists and is not writable")


def item_features(item: pytest.Item) -> list[str]:
    return sorted({name for marker in item.iter_markers("feature") for name in marker.args})


def item_measures(item: pytest.Item) -> Measure | None:
    """The headline figure a test declares it measures (``@pytest.mark.measures(Measure.X)``)."""
    marker = item.get_closest_marker("measures")
    return Measure(marker.args[0]) if marker is not None and marker.args else None


def item_case(item: pytest.Item) -> str:
    """A parametrised test's parameter id ("" for one without parameters)."""
    callspec = getattr(item, "callspec", None)
    return str(callspec.id) if callspec is not None else ""


class ReportWriter:
    def __init__(self, config: pytest.Config, supported: list[str] | None, exempt: list[str]) -> None:
        self.config = config
        self.supported = supported
        self.exempt = exempt
        self.results: dict[str, TestResult] = {}
        self.collected: dict[str, list[str]] = {}  # conformance tests selected to run -> their features
        self.deselected = 0  # tests -k, -m or --deselect left out
        self.interrupted: str | None = None  # why the run stopped early (mesh did not start, Ctrl-C)
        self.started = dt.datetime.now(dt.UTC)

    # -- selection -----------------------------------------------------------------------------
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            features = item_features(item)
            exempt = [f for f in features if f in self.exempt]
            missing = [f for f in features if self.supported is not None and f not in self.supported]
            if exempt:
                item.add_marker(pytest.mark.skip(
                    reason=f"{EXCLUDED_PREFIX}feature exempt by --exempt-features: {', '.join(exempt)}"))
            elif missing:
                item.add_marker(pytest.mark.skip(
                    reason=f"{EXCLUDED_PREFIX}feature not in --supported-features: {', '.join(missing)}"))

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += sum(1 for item in items if item.nodeid.startswith("e2e/"))

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # After every plugin's selection (-k, -m, deselect): exactly the tests this run means to run.
        self.collected = {item.nodeid: item_features(item) for item in session.items
                          if item.nodeid.startswith("e2e/")}

    # -- results -------------------------------------------------------------------------------
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        outcome = yield
        report: pytest.TestReport = outcome.get_result()
        # A test exposed to a known upstream defect gets its fixed verdict here, before anything reads it.
        defect = settle_known_defect(item, report)
        entry = self.results.get(item.nodeid)
        if entry is None:
            entry = self.results[item.nodeid] = TestResult(item.nodeid, item_features(item), Outcome.PASSED,
                                                           measures=item_measures(item), case=item_case(item))
        for key, value in item.user_properties:
            if key == FIGURES_KEY and isinstance(value, dict):
                entry.figures = _plain(value)
        if defect is not None:
            entry.known_defect = defect
        if entry.known_defect is not None:  # whether it showed is a figure, never a verdict
            entry.figures["defect_shown"] = int(entry.known_defect["shown"])
        if report.when == "call" or report.outcome != "passed":
            entry.duration_s = round((entry.duration_s or 0.0) + report.duration, 3)
            state, reason = _outcome(report)
            # A failing teardown after a passing call still fails the test; a later pass never clears a failure.
            already_failed = entry.outcome in {Outcome.FAILED, Outcome.ERROR}
            if (state != Outcome.PASSED or report.when == "call") and not (already_failed and state == Outcome.PASSED):
                entry.outcome = state
            if reason:
                entry.reason = reason

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        """pytest.exit (e.g. the mesh cannot start) and Ctrl-C end the run here: keep the reason."""
        message = str(excinfo.value).strip()
        self.interrupted = f"{excinfo.typename}: {message}" if message else excinfo.typename

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        # Only conformance runs get a report: a unit-test run has no mesh to report on.
        if session.config.option.collectonly or not (self.collected or any(t.startswith("e2e/") for t in self.results)):
            return
        report = self.build()
        path = self.path(report)
        write_atomically(path, report)
        if report.complete and not self.config.getoption("--report"):
            impl = report.implementation
            point_latest(path, f"{impl.mesh}{'' if impl.front_door == 'gateway' else '-' + impl.front_door}")
        from harness.report.charts import render_charts

        charts_dir = path.with_name(path.stem + "-charts")
        charts = [c.relative_to(path.parent) for c in render_charts(report, charts_dir)]
        write_text_atomically(path.with_suffix(".md"), render_markdown(report, charts))
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            # No chart links there: they are relative to the report, which the summary page does not hold.
            with open(summary, "a", encoding="utf-8") as handle:
                handle.write(render_markdown(report) + "\n")
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"conformance report: {path} (summary: {path.with_suffix('.md')})")

    # -- building ------------------------------------------------------------------------------
    def versions(self) -> dict[str, str]:
        """The session mesh's versions; when no test started the mesh, what the options tell."""
        known = self.config.stash.get(MESH_VERSIONS, None)
        if known:
            return dict(known)
        from_options = self.config.stash.get(VERSIONS_FROM_OPTIONS, None)
        return from_options() if from_options is not None else {"envoy": "", "istio": "", "kubernetes": ""}

    def known_differences(self) -> list[str]:
        """How the mesh knowingly differs from a production install (the istiod mesh lists them)."""
        mesh = self.config.stash.get(MESH_KEY, None)
        return list(mesh.capabilities.known_differences) if mesh is not None else []

    def run_figures(self) -> dict[str, Any]:
        """Figures of the whole run, such as how often istiod's environment changed."""
        from harness.report.estimate import estimate_seconds

        mesh = self.config.stash.get(MESH_KEY, None)
        if mesh is None:
            return {}
        figures = mesh.run_figures()
        # What these tests would cost on kind, from the counts (harness/report/estimate.py says how).
        figures["estimated_kind_minutes"] = round(estimate_seconds(figures) / 60)
        return figures

    def _not_run(self) -> list[TestResult]:
        """Conformance tests selected but never reported (the run stopped): errors, so the gate sees them."""
        reason = f"not run: {self.interrupted or 'the run stopped before this test'}"
        return [TestResult(test, features, Outcome.NOT_RUN, reason=reason)
                for test, features in self.collected.items() if test not in self.results]

    def selection(self) -> dict[str, Any]:
        """What this run selected: a gate compares only tests both runs selected."""
        option = self.config.option
        base = Path(self.config.invocation_params.dir)
        suite = (Path(self.config.rootpath) / "e2e").resolve()

        def selects_e2e(arg: str) -> bool:  # e2e/, something in it, or a folder holding it (not option values)
            target = (base / arg.split("::", maxsplit=1)[0]).resolve()
            try:
                exists = target.exists()
            except OSError:  # an option's value, e.g. a -k expression longer than a file name may be
                return False
            return exists and (target.is_relative_to(suite) or suite.is_relative_to(target))

        paths = [a for a in map(str, self.config.invocation_params.args) if not a.startswith("-") and selects_e2e(a)]

        def narrows(arg: str) -> bool:  # selects only part of e2e/ (a file, a test, a subfolder)
            target = (base / arg.split("::", maxsplit=1)[0]).resolve()
            return "::" in arg or (target.is_relative_to(suite) and target != suite)

        whole_suite = not any(narrows(p) for p in paths)
        keyword, markexpr = getattr(option, "keyword", "") or "", getattr(option, "markexpr", "") or ""
        full = (whole_suite and not keyword and not markexpr and self.deselected == 0
                and self.supported is None and not self.exempt)
        return {"full": full, "paths": paths, "keyword": keyword, "markexpr": markexpr,
                "deselected": self.deselected, "tests": len(self.collected)}

    def build(self) -> ConformanceReport:
        tests = sorted([*self.results.values(), *self._not_run()], key=lambda entry: entry.test)
        profiles: dict[str, dict[str, dict[str, Any]]] = {"contract": {}, "provisional": {}}
        per_feature: dict[str, list[TestResult]] = defaultdict(list)
        for entry in tests:
            for feature in entry.features or ["(none)"]:
                per_feature[feature].append(entry)
        for feature, entries in sorted(per_feature.items()):
            profile = "provisional" if feature in FEATURES and FEATURES[feature].provisional else "contract"
            profiles[profile][feature] = _feature_summary(entries)
        counts: dict[str, int] = defaultdict(int)
        for entry in tests:
            counts[entry.outcome.value] += 1
        complete = self.interrupted is None and not any(t.outcome == Outcome.NOT_RUN for t in tests)
        return ConformanceReport(
            implementation=Implementation(mesh=self.config.getoption("--mesh"),
                                          front_door=self.config.getoption("--front-door"), **self.versions()),
            tests=tests, date=self.started.isoformat(timespec="seconds"), complete=complete,
            interrupted=self.interrupted, selection=self.selection(), summary=dict(counts), profiles=profiles,
            features={"supported": self.supported if self.supported is not None else "all", "exempt": self.exempt},
            known_differences=self.known_differences(), run=self.run_figures())

    def path(self, report: ConformanceReport) -> Path:
        explicit = self.config.getoption("--report")
        if explicit:
            return Path(explicit)
        impl = report.implementation
        istio, envoy = impl.istio or "unknown", impl.envoy or "unknown"
        stamp = self.started.strftime("%Y%m%dT%H%M%SZ")
        mesh = f"{impl.mesh}{'' if impl.front_door == 'gateway' else '-' + impl.front_door}"
        name = _safe(f"conformance-{mesh}-istio-{istio}-envoy-{envoy}-{stamp}")
        return Path(self.config.rootpath) / "reports" / f"{name}.yaml"


def _safe(name: str) -> str:
    """A file name from versions such as ``release-1.31@eed52ebb66ad``: no path separators."""
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in name)


def point_latest(path: Path, mesh: str) -> None:
    """``latest.yaml`` and ``latest-<mesh>.yaml`` (and their ``.md``) point at this complete run's report:
    a stable name for the gate, while every run keeps its own file."""
    for name in ("latest", f"latest-{mesh}"):
        for suffix in (path.suffix, ".md"):
            link = path.with_name(name + suffix)
            temporary = link.with_name(f".{link.name}.{os.getpid()}")
            temporary.unlink(missing_ok=True)
            temporary.symlink_to(path.with_suffix(suffix).name)
            os.replace(temporary, link)


def _outcome(report: pytest.TestReport) -> tuple[Outcome, str]:
    """The verdict class of a pytest report, and its reason. A pytest xfail mark is not a verdict: a test
    whose outcome a known upstream defect decides declares it (``harness.core.verdicts``)."""
    if hasattr(report, "wasxfail"):
        reason = str(report.wasxfail)
        if reason.startswith("known defect "):
            return Outcome.KNOWN_DEFECT, reason
        return Outcome.ERROR, (f"a pytest xfail mark ({reason}) is not a conformance verdict: declare the "
                               "known defect in harness/core/verdicts.py")
    if report.failed:
        if report.when == "call":
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else str(report.longrepr or "")
            return Outcome.FAILED, (message.splitlines() or [""])[0][:500]
        return Outcome.ERROR, ""
    if report.skipped:
        reason = skip_reason(str(report.longrepr[2]).removeprefix("Skipped: ") if isinstance(report.longrepr, tuple)
                             else str(report.longrepr or ""))
        return skip_outcome(reason), reason
    return Outcome.PASSED, ""


WITH_REASON = {Outcome.SKIPPED, Outcome.UNSUPPORTED, Outcome.EXCLUDED, Outcome.KNOWN_DEFECT, Outcome.NOT_RUN}


def _feature_summary(entries: list[TestResult]) -> dict[str, Any]:
    by_outcome: dict[str, list[Any]] = defaultdict(list)
    for entry in entries:
        if entry.outcome in WITH_REASON:
            by_outcome[entry.outcome.value].append({"test": entry.test, "reason": entry.reason or ""})
        else:
            by_outcome[entry.outcome.value].append(entry.test)
    result = feature_result([entry.outcome for entry in entries])
    return {"result": result, **{key: value for key, value in sorted(by_outcome.items())}}


def _plain(value: Any) -> Any:
    """Figures as plain YAML/JSON data (tuples, numpy numbers and Counters become lists and numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return round(value, 6)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def write_text_atomically(path: Path, text: str) -> None:
    """Write beside the target, flush to disk, then rename over it: readers see the old file or the new.

    The temporary file is created private (mode 0600); the report gets the usual mode for new files
    (0666 less the umask), since CI uploads and other users read it. A failed write removes its temporary.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False,
                                     encoding="utf-8") as handle:
        temporary = Path(handle.name)
        try:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), 0o666 & ~umask)
        except BaseException:
            handle.close()
            temporary.unlink(missing_ok=True)
            raise
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_atomically(path: Path, report: ConformanceReport) -> None:
    write_text_atomically(path, dump(report, path))
