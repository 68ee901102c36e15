"""Run by tests/test_cluster_offline.py in a child pytest: the session's mesh starts, but reading its
versions fails (as a gateway without a serving replica would make it). The mesh must still be closed, and
the run must stop with one message instead of an error per test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import harness.plugin
from harness.core.envoy_state import HostCounters
from harness.core.mesh import Mesh, MeshCapabilities, MeshError, Pod


class VersionlessMesh(Mesh):
    name = "versionless"

    def __init__(self) -> None:
        self.capabilities = MeshCapabilities()

    @property
    def gateway_url(self) -> str:
        return "http://127.0.0.1:9"

    def pods(self) -> list[Pod]:
        return []

    def versions(self) -> dict[str, str]:
        raise MeshError("no running, ready ingress gateway pod")

    def apply(self, manifest: str | Path) -> None: ...

    def delete(self, manifest: str | Path) -> None: ...

    def set_istiod_env(self, name: str, value: str | None) -> None: ...

    def scale(self, replicas: int) -> list[Pod]:
        return []

    def delete_pod(self, name: str) -> Pod:
        raise NotImplementedError

    def start_draining(self, name: str) -> None: ...

    def restart_rollout(self) -> list[Pod]:
        return []

    def config_dump(self, resource: str | None = None) -> dict[str, Any]:
        return {}

    def host_counters(self) -> dict[str, HostCounters]:
        return {}

    def reset(self) -> None: ...

    def close(self) -> None:
        Path(os.environ["LIFECYCLE_OUT"]).write_text("closed")


def _open(config: pytest.Config) -> Mesh:
    return VersionlessMesh()


harness.plugin.open_mesh = _open  # what conftest's session_mesh opens in this child run


def test_one(session_mesh: Mesh) -> None:
    raise AssertionError("never reached: the session stops when the mesh's versions cannot be read")


def test_two(session_mesh: Mesh) -> None:
    raise AssertionError("never reached")
