"""Fixtures shared by the unit tests that meet real components built for the istiod mesh."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from harness.core.timeouts import Timeouts


def missing_binaries() -> str | None:
    """Why the control plane cannot start without a Go build, or None when its binaries are cached."""
    from harness.meshes.istiod import build
    from harness.meshes.istiod.control_plane import ETCD_VERSION, KUBERNETES_VERSION

    for component in (build.kubernetes(KUBERNETES_VERSION), build.etcd(ETCD_VERSION)):
        directory = build.cache_root() / "bin" / component.key
        if not (directory / ".complete").exists() or not all(
                (directory / name).exists() for name in component.binary_names()):
            return (f"{component.name} {component.version} is not built in {directory}: build it with "
                    f"`python -m harness.meshes.istiod --build-only` (these tests never start a Go build)")
    return None


@pytest.fixture(scope="module")
def control_plane() -> Iterator[Any]:
    """A real etcd, kube-apiserver and kube-controller-manager on loopback, one per test module."""
    reason = missing_binaries()
    if reason:
        pytest.skip(reason)
    from harness.meshes.istiod.control_plane import KubeControlPlane

    plane = KubeControlPlane(Timeouts()).start()
    try:
        yield plane
    finally:
        plane.stop()
