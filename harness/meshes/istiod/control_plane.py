"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager.

Built from source (``build.py``) at a pinned release and started as local processes, so the objects the
suite applies go through real admission, real storage and real controllers: Deployment -> ReplicaSet ->
Pods, Pods -> EndpointSlices with ready/serving/terminating conditions. There is no kube-scheduler and no
kubelet: ``node_agent.NodeAgent`` binds the app's pods to this machine and runs them.

Every listener binds 127.0.0.1 on a port drawn free on every address (``addresses.free_port``), so
parallel runs never collide, and everything (processes, etcd data, certificates) lives in one temporary
directory removed by ``stop``.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from harness import processes
from harness.core.mesh import MeshError
from harness.core.timeouts import Timeouts, poll
from harness.meshes.istiod import build
from harness.meshes.istiod.addresses import free_port, free_ports

KUBERNETES_VERSION = "v1.35.4"  # supported by Istio 1.30 and 1.31 (their client-go is v0.35 / v0.36)
ETCD_VERSION = "v3.6.16"
SERVICE_CIDR = "10.96.0.0/16"  # ClusterIPs are only numbers here: nothing routes them, nothing is sent there
# The controllers the suite relies on; node lifecycle is off because the node agent does not heartbeat.
CONTROLLERS = "deployment,replicaset,endpointslice,garbagecollector,namespace,serviceaccount,serviceaccount-token"


def _signing_key(directory: Path) -> tuple[Path, Path]:
    """The service-account token signing key pair kube-apiserver and the token controller need."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = directory / "sa.key"
    public = directory / "sa.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    private.chmod(0o600)
    return private, public


class KubeControlPlane:
    """etcd + kube-apiserver + kube-controller-manager, started in order and waited for."""

    def __init__(self, timeouts: Timeouts, progress: build.Progress = build._quiet,
                 kubernetes_version: str = KUBERNETES_VERSION, etcd_version: str = ETCD_VERSION) -> None:
        self.timeouts = timeouts
        self.progress = progress
        self.kubernetes_version = kubernetes_version
        self.etcd_version = etcd_version
        self.workdir = Path(tempfile.mkdtemp(prefix="sticky-kube-"))
        self.token = secrets.token_hex(16)
        self.api_port = free_port()
        self.kubeconfig = self.workdir / "kubeconfig"
        self._processes: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.stopped = False

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def start(self) -> KubeControlPlane:
        try:
            kube = build.ensure(build.kubernetes(self.kubernetes_version), self.progress)
            etcd_bin = build.ensure(build.etcd(self.etcd_version), self.progress)["server"]
            started = time.monotonic()
            etcd_url = self._start_etcd(etcd_bin)
            self._start_apiserver(kube["kube-apiserver"], etcd_url)
            self._write_kubeconfig()
            self._start_controller_manager(kube["kube-controller-manager"])
            self.progress(f"Kubernetes {self.kubernetes_version} API server up at {self.server} "
                          f"in {time.monotonic() - started:.1f}s")
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        process = processes.spawn(argv, log, cwd=self.workdir)
        self._processes.append((name, process, log))
        return process

    def _start_etcd(self, binary: Path) -> str:
        client, peer = free_ports(2)
        url = f"http://127.0.0.1:{client}"
        self._spawn("etcd", [
            str(binary), "--name", "sticky", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}", "--initial-cluster", f"sticky=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync", "--log-level", "warn",  # throw-away data: no fsync, fast on small disks
        ])
        self._wait_http("etcd", f"{url}/health", verify=False, headers={})
        return url

    def _start_apiserver(self, binary: Path, etcd_url: str) -> None:
        private, public = _signing_key(self.workdir)
        (self.workdir / "tokens.csv").write_text(f"{self.token},sticky-admin,sticky-admin,system:masters\n")
        self._spawn("kube-apiserver", [
            str(binary), "--etcd-servers", etcd_url,
            "--bind-address", "127.0.0.1", "--secure-port", str(self.api_port),
            "--cert-dir", str(self.workdir / "apiserver-certs"),  # self-signed serving certificate
            "--token-auth-file", str(self.workdir / "tokens.csv"), "--authorization-mode", "RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(public), "--service-account-signing-key-file", str(private),
            "--service-cluster-ip-range", SERVICE_CIDR,
            # The kubernetes Service's endpoint would be this loopback address, which Endpoints refuse.
            "--endpoint-reconciler-type", "none", "--advertise-address", "10.96.0.1",
            "--profiling=false",
            # `kubectl logs` reaches the node agent's kubelet API at the Node's InternalIP (127.0.0.1).
            "--kubelet-preferred-address-types=InternalIP",
        ])
        self._wait_http("kube-apiserver", f"{self.server}/readyz", verify=False,
                        headers={"Authorization": f"Bearer {self.token}"})

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "sticky",
            "clusters": [{"name": "sticky", "cluster": {"server": self.server, "insecure-skip-tls-verify": True}}],
            "users": [{"name": "sticky-admin", "user": {"token": self.token}}],
            "contexts": [{"name": "sticky", "context": {"cluster": "sticky", "user": "sticky-admin"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def _start_controller_manager(self, binary: Path) -> None:
        self._spawn("kube-controller-manager", [
            str(binary), "--kubeconfig", str(self.kubeconfig), "--authentication-kubeconfig", str(self.kubeconfig),
            "--authorization-kubeconfig", str(self.kubeconfig),
            "--bind-address", "127.0.0.1", "--secure-port", str(free_port()),
            "--leader-elect=false", "--controllers", CONTROLLERS, "--use-service-account-credentials=false",
            "--service-account-private-key-file", str(self.workdir / "sa.key"),
            "--concurrent-deployment-syncs", "5", "--concurrent-replicaset-syncs", "5",
        ])

    def _wait_http(self, name: str, url: str, verify: bool, headers: dict[str, str]) -> None:
        for attempt in poll(self.timeouts.control_plane_start, f"{name} ready at {url}", interval=0.05,
                            max_interval=0.5):
            with attempt:
                self.check_alive()
                try:
                    response = httpx.get(url, verify=verify, headers=headers, timeout=2.0)
                except httpx.HTTPError as error:
                    raise AssertionError(f"{type(error).__name__}") from None
                assert response.status_code == 200, f"HTTP {response.status_code}: {response.text[:200]}"

    def check_alive(self) -> None:
        """A component that exited stops the run with one line (which one, which port if it clashed), not a
        time-out."""
        for name, process, log in self._processes:
            if process.poll() is not None:
                raise MeshError(processes.exit_reason(name, process.returncode, log))

    def api_client(self) -> Any:
        from kubernetes import config as kube_config

        return kube_config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]

    def logs(self) -> dict[str, Path]:
        return {name: log for name, _, log in self._processes}

    def stop(self, keep_workdir: bool = False) -> None:
        """Stop the controllers first, etcd last, and remove all state; safe to call twice."""
        if self.stopped:
            return
        self.stopped = True
        for _, process, _ in reversed(self._processes):
            processes.stop(process, self.timeouts.process_exit)
        if not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
