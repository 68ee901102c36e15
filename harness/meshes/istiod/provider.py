"""The istiod mesh's provider: real istiod and pilot-agent built from Istio's source, a real Kubernetes API
server and controllers on loopback, pods as local processes run by the node agent."""

from __future__ import annotations

import contextlib

import pytest

from harness.core.mesh import Mesh
from harness.core.provider import MeshProvider, OptionGroup, progress, start_diagnostics_dir
from harness.core.timeouts import Timeouts
from harness.meshes.kube.provider import add_istio_version_option
from harness.meshes.local.provider import check_upgrade_binary


class IstiodProvider(MeshProvider):
    name = "istiod"

    def add_options(self, group: OptionGroup) -> None:
        add_istio_version_option(group)

    def check_options(self, config: pytest.Config) -> None:
        check_upgrade_binary(config)

    def versions_from_options(self, config: pytest.Config) -> dict[str, str]:
        from harness.meshes.istiod import releases

        requested = config.getoption("--istio-version")
        with contextlib.suppress(Exception):  # an unknown version: named as given
            chosen = releases.release(requested)
            envoy = "" if config.getoption("--envoy-bin") else chosen.envoy
            return {"envoy": envoy, "istio": f"{chosen.branch}@{chosen.commit}", "kubernetes": ""}
        return {"envoy": "", "istio": str(requested or ""), "kubernetes": ""}

    def open(self, config: pytest.Config, timeouts: Timeouts) -> Mesh:
        from harness.meshes.istiod.mesh import open_istiod_mesh

        return open_istiod_mesh(config.getoption("--istio-version"), config.getoption("--envoy-bin"),
                                timeouts, lambda message: progress(config, message),
                                keep_workdir=config.getoption("--keep-workdir"),
                                diagnostics_dir=start_diagnostics_dir(config),
                                front_door=config.getoption("--front-door"))
