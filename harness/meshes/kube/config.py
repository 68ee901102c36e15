"""What an opener decides about a KubeMesh, typed and given at construction.

Every Kubernetes mesh (kind, an existing cluster, the istiod mesh) is the same ``KubeMesh``; they differ in
the values here and in two strategies (``strategies.py``). An opener builds one ``KubeMeshConfig`` and
hands it over; nothing is set on the mesh afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.core.mesh import MeshCapabilities
from harness.core.timeouts import Timeouts
from harness.meshes.kube.front_door import FrontDoor
from harness.meshes.kube.istio import IstioHelm
from harness.meshes.kube.strategies import GatewayAdmin, IstiodControl


@dataclass
class KubeMeshConfig:
    name: str  # the mesh's name in reports ("kind", "cluster", "istiod")
    gateway_url: str
    timeouts: Timeouts
    capabilities: MeshCapabilities
    istio: IstioHelm | None = None  # the Helm releases (kind; a cluster with --allow-istiod-restart)
    gateway_admin: GatewayAdmin | None = None  # default: `pilot-agent request` exec'd in the gateway pods
    istiod_control: IstiodControl | None = None  # default: helm upgrade of ``istio``'s istiod release
    namespace: str | None = None  # default: a fresh sticky-<random>
    front_door: FrontDoor | None = None  # None: the ingress gateway
    own_host: bool = False  # route a host of this run's own (a shared gateway), not every host
    app_image: str | None = None  # the echo app's image instead of the Deployment's (a mirror)
    diagnostics_dir: Path | None = None  # where a failed start leaves its diagnostics
    stale_namespace_age: float | None = None  # delete this suite's namespaces older than this (s); None: none
    restore_istiod_at_close: bool = True  # False where the next start installs istiod's values again
    delete_namespace_at_close: bool = True  # False where the whole API server goes at close (istiod mesh)
    # How often convergence is polled: a cluster answers in seconds; the istiod mesh in milliseconds.
    poll_interval: float = 0.2
    poll_max_interval: float = 2.0
    preparations: list[Callable[[], None]] = field(default_factory=list)  # run first by start(): installs
    extra_manifests: list[Path] = field(default_factory=list)  # applied once at start, outside the baseline
    after_close: list[Callable[[], None]] = field(default_factory=list)  # e.g. deleting the kind cluster
    # When the mesh's life began (an opener that created a cluster first gives that time) and the set-up
    # steps it already timed.
    started_at: float = field(default_factory=time.monotonic)
    setup_seconds: dict[str, float] = field(default_factory=dict)
