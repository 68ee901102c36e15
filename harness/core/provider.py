"""What a mesh gives the suite: one provider per mesh, listed in ``harness/meshes/registry.py``.

A provider owns everything mesh-specific the plugin needs before and around a run: the options only it
uses, their checks (one line, before anything starts), its opener, the versions the report names when no
mesh started, the lines of pytest's header, and the front doors it lacks (with the reason). Adding a mesh is
adding a provider; nothing else chooses by mesh name.

Also here, shared by the providers: a progress line a person can follow during long set-up steps, and
where a failed start leaves its diagnostics.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pytest

from harness.core.mesh import Mesh
from harness.core.timeouts import Timeouts


class OptionGroup(Protocol):
    """Where a provider adds its options (pytest's option group; an option two providers share is added
    once)."""

    def addoption(self, *names: str, **settings: Any) -> None: ...


class MeshProvider(abc.ABC):
    """One mesh the suite runs on (``--mesh NAME``)."""

    name: ClassVar[str]
    # Front doors this mesh lacks, each with why (a run through one skips every test with that reason).
    missing_front_doors: ClassVar[Mapping[str, str]] = {}

    def add_options(self, group: OptionGroup) -> None:  # noqa: B027 - a mesh may have no options of its own
        """The options this mesh uses (``pytest --help`` lists them under "sticky sessions")."""

    def check_options(self, config: pytest.Config) -> None:  # noqa: B027 - nothing to check by default
        """Raise ``pytest.UsageError`` (one line) for an option that would only fail after minutes of set-up."""

    def report_header(self, config: pytest.Config) -> list[str]:
        """Lines for pytest's header, after the mesh and front door."""
        return []

    @abc.abstractmethod
    def versions_from_options(self, config: pytest.Config) -> dict[str, str]:
        """The versions (envoy, istio, kubernetes) the report names when the mesh never started."""

    @abc.abstractmethod
    def open(self, config: pytest.Config, timeouts: Timeouts) -> Mesh:
        """Start the mesh (a ``MeshError`` says in one line why it cannot)."""


def progress(config: pytest.Config, message: str) -> None:
    """A line a person can follow during the long set-up steps (shown even with output captured)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    # The mesh starts inside a fixture, whose output pytest captures (fd level): without suspending the
    # capture these lines would only show when the start fails.
    capture = config.pluginmanager.get_plugin("capturemanager")
    suspended = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
    with suspended:
        reporter.write_line(f"[{config.getoption('--mesh')}] {message}")


def start_diagnostics_dir(config: pytest.Config) -> Path:
    """Where a failed mesh start leaves its diagnostics (events, logs, config_dump)."""
    return Path(config.getoption("--diagnostics-dir")) / "mesh-start"
