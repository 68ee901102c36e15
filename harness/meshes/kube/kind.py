"""The kind cluster: created with pytest-kind's KindCluster, reused when kept, deleted otherwise.

State (kubeconfig, the host ports of the gateway and of the sidecar door, the Istio version installed) lives
in a user cache directory, not the checkout, so ``--keep-cluster`` survives a fresh clone: the next run finds
the cluster by name and reuses it. pytest-kind would download old amd64-only kind/kubectl binaries, so the
ones on PATH are passed in.

cgroup v1 hosts: kubelet 1.35+ refuses to start on cgroup v1 unless its configuration says
``failCgroupV1: false``, and kind v0.33 only warns, so ``kind create`` would wait out kubeadm's 4 minutes and
fail. The cgroup version of Docker's host (``docker info``: the daemon's machine, which may be a VM) decides:
on v1 the rendered kind config gets a kubeadm patch for the kubelet, and the run says so at start.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.core.manifests import PROJECT_ROOT
from harness.core.mesh import MeshError

KIND_CONFIG = PROJECT_ROOT / "kind" / "cluster.yaml"
GATEWAY_NODE_PORT = 30080
# The sidecar front door's NodePort (harness/meshes/kube/sidecar_door.py): the client pod's outbound listener.
SIDECAR_NODE_PORT = 30081
# kubeadm's KubeletConfiguration patch that lets kubelet 1.35+ run on a cgroup v1 host.
CGROUP_V1_KUBELET_PATCH = "kind: KubeletConfiguration\nfailCgroupV1: false\n"


def state_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "istio-sticky-conformance"


@dataclass
class ClusterState:
    name: str
    host_port: int
    istio_version: str = ""
    sidecar_host_port: int = 0  # 0: a cluster created before the sidecar door's port was mapped

    @classmethod
    def load(cls, directory: Path) -> ClusterState | None:
        try:
            return cls(**json.loads((directory / "state.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        temporary = directory / "state.json.tmp"
        temporary.write_text(json.dumps(asdict(self)))
        temporary.replace(directory / "state.json")


def free_host_port(avoid: int = 0) -> int:
    """A port free on the host's loopback now (not ``avoid``, one picked a moment ago and not yet bound)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != avoid:
            return port


def docker_cgroup_version(run: Any = subprocess.run) -> str:
    """The cgroup version of Docker's host ("1", "2"; "" when ``docker info`` does not say)."""
    try:
        result = run(["docker", "info", "--format", "{{.CgroupVersion}}"], capture_output=True, text=True,
                     timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def cgroup_note(version: str) -> str:
    """The start-up line saying what the run does about the host's cgroup version."""
    if version == "1":
        return ("Docker's host runs cgroup v1: kubelet 1.35+ refuses it by default, so the kind config gets "
                "a KubeletConfiguration patch failCgroupV1: false")
    if version == "2":
        return "Docker's host runs cgroup v2: the kind config is used as it is"
    return ("`docker info` does not say the host's cgroup version: the kind config is used as it is (on a "
            "cgroup v1 host kubelet 1.35+ will not start)")


def render_kind_config(host_port: int, template: Path = KIND_CONFIG, *, cgroup_v1: bool = False,
                       sidecar_host_port: int | None = None) -> dict[str, Any]:
    """kind/cluster.yaml with the gateway NodePort mapped to ``host_port`` and the sidecar door's NodePort to
    ``sidecar_host_port`` (None: that mapping left out) on the host's loopback, and on a cgroup v1 host the
    kubelet patch that lets it start there."""
    config: dict[str, Any] = yaml.safe_load(template.read_text())
    for node_port, port in ((GATEWAY_NODE_PORT, host_port), (SIDECAR_NODE_PORT, sidecar_host_port)):
        mappings = [m for node in config["nodes"] for m in node.get("extraPortMappings", [])
                    if m["containerPort"] == node_port]
        if len(mappings) != 1:
            raise MeshError(f"{template} must map containerPort {node_port} exactly once")
        if port is None:
            for node in config["nodes"]:
                node["extraPortMappings"] = [m for m in node.get("extraPortMappings", []) if m is not mappings[0]]
            continue
        mappings[0]["hostPort"] = port
        mappings[0]["listenAddress"] = "127.0.0.1"
    if cgroup_v1:
        patches = config.setdefault("kubeadmConfigPatches", [])
        if CGROUP_V1_KUBELET_PATCH not in patches:
            patches.append(CGROUP_V1_KUBELET_PATCH)
    return config


def existing_clusters(kind: str) -> list[str]:
    result = subprocess.run([kind, "get", "clusters"], capture_output=True, text=True, check=False, timeout=60)
    return result.stdout.split() if result.returncode == 0 else []


class KindLifecycle:
    """Create or reuse the named cluster; ``close`` deletes it unless it is kept."""

    def __init__(self, name: str, keep: bool, image: str | None, *, cgroup_v1: bool = False) -> None:
        self.name = name
        self.keep = keep
        self.image = image
        self.cgroup_v1 = cgroup_v1
        self.directory = state_root() / name
        self.kind = shutil.which("kind") or "kind"
        self.kubectl = shutil.which("kubectl") or "kubectl"
        self.state: ClusterState | None = None
        self.created = False
        self.closed = False

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    def up(self) -> ClusterState:
        from pytest_kind import KindCluster

        previous = ClusterState.load(self.directory)
        exists = self.name in existing_clusters(self.kind)
        if exists and previous is None:
            # Not ours: its ports are not mapped for the gateway, and deleting it would destroy someone's work.
            raise MeshError(f"a kind cluster named {self.name} exists that this suite did not create; "
                            "delete it or pass another --cluster-name")
        reuse = previous is not None and exists and self.kubeconfig.exists()
        if reuse and previous:
            state = previous
        else:
            gateway_port = free_host_port()
            state = ClusterState(self.name, gateway_port, sidecar_host_port=free_host_port(avoid=gateway_port))
        self.directory.mkdir(parents=True, exist_ok=True)
        config_path = self.directory / "kind-config.yaml"
        config_path.write_text(yaml.safe_dump(render_kind_config(
            state.host_port, cgroup_v1=self.cgroup_v1, sidecar_host_port=state.sidecar_host_port or None)))
        cluster = KindCluster(self.name, kubeconfig=self.kubeconfig, image=self.image,
                              kind_path=Path(self.kind), kubectl_path=Path(self.kubectl))
        self.created = not reuse
        try:
            cluster.create(config_file=config_path)  # reuses a cluster of that name if it exists
        except subprocess.CalledProcessError as error:
            raise MeshError(f"kind could not create cluster {self.name}: {error}") from None
        state.save(self.directory)
        self.state = state
        return state

    def remember_istio(self, version: str) -> None:
        if self.state is not None:
            self.state.istio_version = version
            self.state.save(self.directory)

    def close(self) -> None:
        """Delete the cluster and its state unless it is kept; a second call does nothing."""
        if self.keep or self.closed:
            return
        self.closed = True
        subprocess.run([self.kind, "delete", "cluster", f"--name={self.name}", f"--kubeconfig={self.kubeconfig}"],
                       check=False, timeout=300)
        shutil.rmtree(self.directory, ignore_errors=True)
