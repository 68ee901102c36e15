"""The local mesh's pods: echo-app processes, each on its own loopback address, named like a Deployment's.

Kubernetes gives each pod a new name and a new IP; so does this: a replaced pod never reuses an address,
which is what lets a test tell "the session moved" from "the same pod came back". Pod names follow
``<deployment>-<pod-template-hash>-<suffix>``; the template hash changes on a rollout restart.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness import processes
from harness.core.manifests import APP_SOURCE
from harness.core.mesh import APP_NAME, APP_PORT, MeshError, Pod
from harness.core.timeouts import Timeouts, poll

SPARE_PODS = 3  # warm processes kept for the next scale-up or replacement
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' safe alphabet for generated names


@dataclass
class PodProcess:
    pod: Pod
    process: subprocess.Popen[bytes]
    log: Path | None = None
    draining: bool = False  # terminating: the endpoint is DRAINING
    leaving: bool = False  # terminated: the endpoint left the endpoint set, the process is about to stop
    unready: bool = False  # announced as an UNHEALTHY endpoint (``LocalMesh.add_pods_announced_unready``)


@dataclass
class AddressPool:
    """Fresh loopback addresses in a /16 of 127.0.0.0/8 chosen at random per run (runs do not collide)."""

    rng: random.Random
    prefix: str = ""
    _next: int = 0
    _used: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.prefix:
            self.prefix = f"127.{self.rng.randint(64, 250)}.{self.rng.randint(1, 250)}"

    def take(self) -> str:
        self._next += 1
        if self._next > 250:
            raise MeshError(f"the local mesh ran out of pod addresses in {self.prefix}.0/24")
        return f"{self.prefix}.{self._next}"

    def client_addresses(self, count: int) -> list[str]:
        """Addresses in a neighbouring /24 for clients that must look like different source IPs."""
        first, second, third = self.prefix.split(".")
        client_third = (int(third) + 1) % 250 + 1
        return [f"{first}.{second}.{client_third}.{i}" for i in range(1, count + 1)]


class PodSet:
    """The pods of the one app Deployment, started and stopped as processes."""

    def __init__(self, workdir: Path, timeouts: Timeouts, rng: random.Random, port: int = APP_PORT) -> None:
        self.workdir = workdir
        self.timeouts = timeouts
        self.rng = rng
        self.port = port
        self.addresses = AddressPool(rng)
        self.template_hash = self._template_hash()
        self.pods: dict[str, PodProcess] = {}
        self.spares: list[tuple[subprocess.Popen[bytes], Path]] = []
        self._spawned = 0

    def _template_hash(self) -> str:
        return "".join(self.rng.choice(_ALPHABET) for _ in range(10))

    def _name(self) -> str:
        while True:
            suffix = "".join(self.rng.choice(_ALPHABET) for _ in range(5))
            name = f"{APP_NAME}-{self.template_hash}-{suffix}"
            if name not in self.pods:
                return name

    def serving(self) -> list[Pod]:
        """Pods that are up and not terminating, in start order."""
        return [p.pod for p in self.pods.values() if not p.draining]

    def _spare(self) -> tuple[subprocess.Popen[bytes], Path]:
        """A warm echo process waiting for its identity on stdin (started earlier, or now)."""
        if self.spares:
            return self.spares.pop(0)
        return self._spawn_spare()

    def _spawn_spare(self) -> tuple[subprocess.Popen[bytes], Path]:
        self._spawned += 1
        log = self.workdir / f"pod-process-{self._spawned}.log"
        process = processes.spawn([sys.executable, "-S", str(APP_SOURCE)], log,
                                  env={"IDENTITY_ON_STDIN": "1"}, stdin_pipe=True)
        return process, log

    def start(self, count: int) -> list[Pod]:
        """Start ``count`` new pods and wait until each answers its readiness endpoint.

        Pods come from warm spare processes; as many spares are started again for the next scale-up,
        so Python's start-up (about 80 ms) is paid in the background rather than on the test's clock.
        """
        started: list[PodProcess] = []
        for _ in range(count):
            pod = Pod(name=self._name(), ip=self.addresses.take(), port=self.port)
            process, log = self._spare()
            assert process.stdin is not None
            process.stdin.write(f"{pod.name} {pod.ip} {pod.port} {pod.ip}\n".encode())
            process.stdin.flush()
            entry = PodProcess(pod, process, log=log)
            self.pods[pod.name] = entry
            started.append(entry)
        for entry in started:
            self._wait_ready(entry)
        while len(self.spares) < SPARE_PODS:
            self.spares.append(self._spawn_spare())
        return [entry.pod for entry in started]

    def _wait_ready(self, entry: PodProcess) -> None:
        for attempt in poll(self.timeouts.pod_ready, f"pod {entry.pod.name} ready on {entry.pod.address}"):
            with attempt:
                if entry.process.poll() is not None:
                    log = entry.log.read_text(errors="replace") if entry.log else ""
                    raise MeshError(f"pod {entry.pod.name} exited ({entry.process.returncode}): {log.strip()}")
                with socket.create_connection((entry.pod.ip, entry.pod.port), timeout=1) as conn:
                    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n")
                    assert conn.recv(64).startswith(b"HTTP/1.1 200"), "readiness endpoint not OK"

    def mark_draining(self, name: str) -> None:
        self.get(name).draining = True

    def get(self, name: str) -> PodProcess:
        try:
            return self.pods[name]
        except KeyError:
            raise MeshError(f"no pod named {name!r}; pods: {sorted(self.pods)}") from None

    def stop(self, names: list[str]) -> None:
        """Stop pods together (SIGTERM to all, then reap each): scaling down 5 -> 2 costs one exit, not 3."""
        entries = [entry for entry in (self.pods.pop(name, None) for name in names) if entry is not None]
        for entry in entries:
            entry.process.terminate()
        for entry in entries:
            processes.stop(entry.process, self.timeouts.process_exit)

    def new_template(self) -> None:
        """A rollout restart creates a new ReplicaSet: new pods get a new template hash."""
        self.template_hash = self._template_hash()

    def stop_all(self) -> None:
        self.stop(list(self.pods))
        for process, _ in self.spares:
            processes.stop(process, self.timeouts.process_exit)
        self.spares = []
