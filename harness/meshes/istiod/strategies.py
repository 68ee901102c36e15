"""How KubeMesh reaches this mesh's gateway and istiod: the two places where it differs from a cluster.

On kind and an existing cluster the gateway's admin is read with ``pilot-agent request`` in the gateway
pod; here the gateway's Envoy admin listens on loopback. istiod's environment changes the same way on
both: the istiod Deployment changes (``helm upgrade`` there, the chart rendered and applied here) and the
change is waited for as a rollout.
"""

from __future__ import annotations

from harness.core.mesh import MeshError
from harness.meshes.istiod.stack import IstiodStack


class LoopbackGatewayAdmin:
    """The one gateway replica's Envoy admin API on 127.0.0.1."""

    def __init__(self, stack: IstiodStack) -> None:
        self.stack = stack

    def replicas(self) -> list[str]:
        return ["local"]

    def get(self, replica: str, path: str) -> str:
        if self.stack.gateway is None:
            raise MeshError("the gateway is not running")
        self.stack.gateway.check_alive()
        return self.stack.gateway.admin(path)

    can_restart = True  # the mesh started it

    def restart(self) -> None:
        """Restart the gateway so its Envoy builds its load balancer from the current endpoints."""
        self.stack.restart_gateway()


class DeploymentIstiodControl:
    """istiod's flags as its Deployment's environment: a change re-renders the istiod chart with them (as
    ``helm upgrade`` does on kind), applies it, and waits for the Deployment's rollout."""

    def __init__(self, stack: IstiodStack) -> None:
        self.stack = stack
        self.version = f"{stack.release.branch}@{stack.release.commit}"  # file-name safe: reports use it
        self.flags: dict[str, str] = {}

    def baseline_env(self) -> dict[str, str]:
        return {}  # this istiod starts with none of the suite's flags set

    def set_env(self, name: str, value: str | None) -> None:
        if value is None:
            self.flags.pop(name, None)
        else:
            self.flags[name] = value
        self.stack.set_istiod_flags(dict(self.flags))

    def restore(self) -> None:
        """Nothing to give back: the whole mesh stops at close."""
        self.flags.clear()

    def upgrade_to(self, version: str) -> None:
        raise MeshError(f"the istiod mesh runs one Istio build per run; start another run with "
                        f"--istio-version {version} instead of upgrading in place")
