"""What a test needs from a mesh beyond the common interface, declared on the test and resolved here.

A test says ``@needs("istiod-env")`` (or puts it on a parameter's marks); before the test runs, the plugin
asks the session's mesh for each need and, where the mesh lacks one, the test's verdict is ``unsupported``
with the mesh's own reason. No test asks which mesh it runs on.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from harness.core.mesh import Mesh


def _istiod_env(mesh: Mesh) -> str | None:
    caps = mesh.capabilities
    return None if caps.can_set_istiod_env else (caps.reason_no_istiod_env or
                                                 f"the {mesh.name} mesh cannot change istiod's environment")


def _source_addresses(mesh: Mesh) -> str | None:
    return None if len(mesh.capabilities.client_source_addresses) >= 2 else (
        f"the {mesh.name} mesh cannot present distinct client source addresses to the gateway")


def _metrics(mesh: Mesh) -> str | None:
    return None if mesh.capabilities.metrics_source else (
        f"the {mesh.name} mesh has no metrics pipeline (kind: --monitoring installs one)")


def _pod_kill(mesh: Mesh) -> str | None:
    return None if type(mesh).kill_pod_process is not Mesh.kill_pod_process else (
        f"the {mesh.name} mesh cannot kill a pod's process while its endpoint stays ready (only the local mesh "
        "can; on a cluster the kubelet restarts the container)")


def _real_istiod(mesh: Mesh) -> str | None:
    return None if mesh.capabilities.real_istiod else (
        f"the {mesh.name} mesh's gateway config is the translation itself; run with --mesh istiod or kind")


def _boot_clock(mesh: Mesh) -> str | None:
    return None if mesh.capabilities.shares_boot_clock else (
        "needs the gateway host's boot clock, which only the local mesh shares with the test")


# Each need, and why a mesh lacks it (None: it has it).
NEEDS: dict[str, Callable[[Mesh], str | None]] = {
    "istiod-env": _istiod_env,  # change istiod's environment (its flags)
    "source-addresses": _source_addresses,  # clients with distinct source IPs, as the gateway sees them
    "metrics": _metrics,  # a metrics pipeline counting requests per pod
    "pod-kill": _pod_kill,  # kill a pod's process while its endpoint stays ready
    "real-istiod": _real_istiod,  # the proxy's configuration comes from a real istiod, not the translation
    "boot-clock": _boot_clock,  # the gateway's boot clock is the test's (Envoy's monotonic cookie expiry)
}


def needs(*names: str) -> pytest.MarkDecorator:
    """Declare what a test (or a parameter, in its marks) needs from the mesh."""
    unknown = [name for name in names if name not in NEEDS]
    if unknown:
        raise ValueError(f"unknown mesh need(s) {unknown}; known: {sorted(NEEDS)}")
    return pytest.mark.needs(*names)


def needs_of(item: pytest.Item) -> list[str]:
    return [name for marker in item.iter_markers("needs") for name in marker.args]


def lacking(mesh: Mesh, names: list[str]) -> str | None:
    """Why ``mesh`` cannot serve a test needing ``names`` (the first need it lacks), or None."""
    for name in names:
        reason = NEEDS[name](mesh)
        if reason:
            return reason
    return None
