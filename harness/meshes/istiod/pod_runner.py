"""One pod on the istiod mesh's node: its process, readiness probe, restarts and termination (``PodRunner``).

The node agent (``node_agent.py``) creates one runner per Pod bound to the node; the runner plays the
kubelet's part for that pod, as that module's docstring describes (running, status, termination, volumes,
events, restarts), from what ``pod_spec.py`` makes of the spec.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import httpx

from harness import processes
from harness.meshes.istiod.pod_spec import (
    ContainerState,
    HttpProbe,
    Launch,
    PreStop,
    UnsupportedPod,
    launch_spec,
    now,
    pod_status,
)

MIN_KILL_GRACE = 2.0  # the kubelet's minimumGracePeriodInSeconds between SIGTERM and SIGKILL
FIRST_PROBE_INTERVAL = 0.05  # until the first probe success
RESTART_BACKOFF = (1.0, 30.0)  # after the first (immediate) restart: doubling from, up to
VOLUME_RETRY = (0.5, 8.0)  # a missing ConfigMap volume is looked for again: doubling from, up to
DEADLINE_CHECK = 0.25  # how soon a shortened grace period (a second delete) is noticed while waiting


class Node(Protocol):
    """What a pod's runner asks of the node agent that runs it (``node_agent.NodeAgent``)."""

    core: Any
    node_name: str
    workdir: Path
    errors: list[str]
    stopping: threading.Event

    def thread(self, target: Callable[..., None], name: str, *args: Any) -> threading.Thread: ...

    def spawn(self, argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]: ...

    def note(self, message: str) -> None: ...

    def call(self, method: Callable[..., Any], *args: Any, missing_ok: bool = False,
             **kwargs: Any) -> dict[str, Any] | None: ...

    def patch_status(self, namespace: str, name: str, uid: str, status: dict[str, Any]) -> None: ...

    def record_event(self, pod: dict[str, Any], kind: str, reason: str, message: str,
                     component: str = "kubelet") -> None: ...

    def final_delete(self, namespace: str, name: str, uid: str) -> None: ...

    def forget(self, runner: PodRunner) -> None: ...


# -- one pod on this node --------------------------------------------------------------------------


class PodRunner:
    """One pod's container, its readiness probe, restarts and termination.

    ``run`` (its own thread) starts the container and probes it until it is stopped for good;
    ``request_termination`` starts the kubelet's kill sequence in another thread. ``lock`` orders every
    change of state with the status patch that reports it, so a late probe result can never overwrite the
    final status."""

    def __init__(self, agent: Node, pod: dict[str, Any], ip: str) -> None:
        meta = pod["metadata"]
        self.agent = agent
        self.pod = pod  # as first seen: the parts of the spec used here are immutable
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.ip = ip
        self.log = agent.workdir / f"{self.namespace}_{self.name}_{self.uid[:8]}.log"
        containers = pod["spec"].get("containers") or [{}]
        self.state = ContainerState(name=containers[0].get("name", ""), image=containers[0].get("image", ""),
                                    ip=ip, start_time=now())
        self.launch: Launch | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.hooks: list[subprocess.Popen[bytes]] = []
        self.lock = threading.RLock()
        self.halted = threading.Event()  # no more (re)starts: terminating, or the agent stopping
        self.stopped = threading.Event()  # the container is stopped for good: probing ends
        self.termination: threading.Thread | None = None
        self.deadline = float("inf")  # monotonic end of the grace period once terminating
        self.gone = False  # the Pod no longer exists in the API: nothing left to report or delete

    def event(self, message: str) -> None:
        """A lifecycle line in the pod's log (beside its output) and in the agent's log."""
        line = f"[node-agent {time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d}] {message}\n"
        with contextlib.suppress(OSError), self.log.open("a") as log:
            log.write(line)
        self.agent.note(f"{self.namespace}/{self.name}: {message}")

    # -- running and probing -----------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.launch = launch_spec(self.pod, self.ip, self.agent.node_name)
        except UnsupportedPod as error:
            with self.lock:
                self.state.waiting = ("CreateContainerConfigError", str(error))
                self.event(f"refused: {error}")
                self.agent.errors.append(f"pod {self.namespace}/{self.name}: {error}")
                self.report()
            return
        self.event(f"admitted on {self.ip}: {' '.join(self.launch.argv)}")
        if self.wait_for_volumes() and self.start_container():
            self.probe_loop(self.launch)

    def wait_for_volumes(self) -> bool:
        """A kubelet mounts every volume before it starts a container: while a (non-optional) ConfigMap the
        pod mounts is missing, the pod stays ContainerCreating and a FailedMount event says which, retried
        with a growing delay until it appears. False when halted meanwhile."""
        delay = VOLUME_RETRY[0]
        while True:
            missing = [(volume["name"], volume["configMap"]["name"]) for volume in self.pod["spec"].get("volumes") or []
                       if "configMap" in volume and not volume["configMap"].get("optional")
                       and self.agent.call(self.agent.core.read_namespaced_config_map, volume["configMap"]["name"],
                                           self.namespace, missing_ok=True) is None]
            if not missing:
                return True
            with self.lock:
                if self.state.waiting is None:
                    self.state.waiting = ("ContainerCreating", "")
                    self.report()
            for volume, config_map in missing:
                self.agent.record_event(self.pod, "Warning", "FailedMount", f'MountVolume.SetUp failed for volume '
                                        f'"{volume}" : configmap "{config_map}" not found')
            if self.halted.wait(delay):
                return False
            delay = min(delay * 2, VOLUME_RETRY[1])

    def start_container(self) -> bool:
        """Start (or restart) the process and report it; False when halted or it cannot be started."""
        assert self.launch is not None
        with self.lock:
            if self.halted.is_set():
                return False
            try:
                # Always from the pod's own thread (``run``, which restarts too and lives as long as the
                # container): PR_SET_PDEATHSIG fires when the spawning *thread* ends, not the process.
                self.process = self.agent.spawn(self.launch.argv, self.log, self.launch.env)
            except OSError as error:
                self.state.waiting = ("RunContainerError", str(error))
                self.agent.errors.append(f"pod {self.namespace}/{self.name}: cannot start: {error}")
                self.report()
                return False
            self.state.running_since, self.state.pid, self.state.waiting = now(), self.process.pid, None
            self.event(f"container started, pid {self.process.pid}")
            self.agent.record_event(self.pod, "Normal", "Started", f"Started container {self.state.name}")
            self.report()
            return True

    def probe_loop(self, launch: Launch) -> None:
        """Probe readiness at the spec's period (fast until the first success) until the container is
        stopped for good, and restart a container that exits on its own (restartPolicy Always)."""
        probe = launch.probe
        successes = failures = 0
        ever_ready = False
        if probe is not None and probe.initial_delay and self.stopped.wait(probe.initial_delay):
            return
        with httpx.Client(timeout=probe.timeout if probe else 1.0, trust_env=False) as client:
            while not self.stopped.is_set():
                process = self.process
                if process is not None and process.poll() is not None:
                    if not self.restart_after_exit(process):
                        return
                    successes = failures = 0
                    ever_ready = False
                    continue
                failure = None if probe is None else self.probe_result(client, probe)
                ok = failure is None
                # The fast probes before the first success are this agent's own (a kubelet probes once a
                # period): only failures a kubelet would also have seen become Unhealthy events.
                if failure is not None and ever_ready and not self.stopped.is_set():
                    self.agent.record_event(self.pod, "Warning", "Unhealthy", f"Readiness probe failed: {failure}")
                successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
                with self.lock:
                    if self.stopped.is_set() or process is not self.process:
                        continue
                    if ok and successes >= (probe.success_threshold if probe else 1):
                        changed = self.state.set_ready(True)
                    elif not ok and failures >= (probe.failure_threshold if probe else 1):
                        changed = self.state.set_ready(False)
                    else:
                        changed = False
                    if changed:
                        self.event("ready" if self.state.ready else "not ready (readiness probe failing)")
                        self.report()
                ever_ready = ever_ready or self.state.ready
                period = probe.period if probe else 1.0
                self.stopped.wait(period if ever_ready else min(FIRST_PROBE_INTERVAL, period))

    @staticmethod
    def probe_once(client: httpx.Client, probe: HttpProbe) -> bool:
        """One httpGet probe: success is a 2xx or 3xx answer within the probe's timeout, as for a kubelet."""
        return PodRunner.probe_result(client, probe) is None

    @staticmethod
    def probe_result(client: httpx.Client, probe: HttpProbe) -> str | None:
        """None when the probe succeeds, else why it failed, worded as the kubelet's Unhealthy event."""
        try:
            status = client.get(probe.url, headers=probe.headers).status_code
        except httpx.HTTPError as error:
            return f"Get \"{probe.url}\": {type(error).__name__}: {error}"
        return None if 200 <= status < 400 else f"HTTP probe failed with statuscode: {status}"

    def restart_after_exit(self, process: subprocess.Popen[bytes]) -> bool:
        """The container exited on its own: report it, back off, start it again on the same IP. False when
        it must not be restarted (terminating or the agent stopping: the termination reports it)."""
        code = process.returncode
        processes.stop(process, 0)  # reaped already; drops it from the registry
        with self.lock:
            if self.halted.is_set():
                return False
            self.state.exited(code, final=False)
            delay = 0.0 if self.state.restarts == 0 else min(RESTART_BACKOFF[0] * 2 ** (self.state.restarts - 1),
                                                             RESTART_BACKOFF[1])
            self.event(f"container exited with code {code}; restarting in {delay:g}s")
            if delay:
                self.agent.record_event(self.pod, "Warning", "BackOff",
                                        f"Back-off restarting failed container {self.state.name} in pod {self.name}")
            self.report()
        if self.halted.wait(delay):
            return False
        with self.lock:
            if self.halted.is_set():
                return False
            self.state.restarts += 1
            return self.start_container()

    # -- termination -------------------------------------------------------------------------------
    def request_termination(self, grace: float, *, gone: bool = False) -> None:
        """Start the kill sequence with ``grace`` seconds (its own thread), or shorten a running one's
        grace period (a second delete with a shorter one, or a forced delete); never lengthen it."""
        with self.lock:
            self.gone = self.gone or gone
            deadline = time.monotonic() + grace
            if self.stopped.is_set():
                return  # already stopped for good (e.g. the DELETED event of our own final delete)
            if self.termination is not None:
                if deadline < self.deadline:
                    self.deadline = deadline
                    self.event(f"grace period shortened to {grace:g}s")
                return
            self.deadline = deadline
            self.halted.set()
            self.termination = self.agent.thread(self.terminate, f"terminate-{self.name}", grace)

    def terminate(self, grace: float) -> None:
        """The kubelet's sequence: preStop (bounded by the grace period), SIGTERM, SIGKILL when the grace
        period is used up (at least ``MIN_KILL_GRACE`` after the hook), final status, final delete."""
        started = time.monotonic()
        self.event(f"deletion requested, grace period {grace:g}s")
        self.agent.record_event(self.pod, "Normal", "Killing", f"Stopping container {self.state.name}")
        with self.lock:
            process = self.process
        alive = process is not None and process.poll() is None
        if alive and grace > 0 and self.launch is not None and self.launch.pre_stop is not None:
            self.run_pre_stop(self.launch.pre_stop)
        if process is not None:
            budget = max(self.deadline - time.monotonic(), MIN_KILL_GRACE)
            self.event(f"SIGTERM to pid {process.pid} (SIGKILL after {budget:.1f}s)")
            processes.stop(process, budget)
            killed = process.returncode == -9
            self.event(f"container {'killed (SIGKILL)' if killed else 'exited'} with code {process.returncode}")
        with self.lock:
            self.stopped.set()
            if process is not None and process is self.process:
                self.state.exited(process.returncode if process.returncode is not None else -9, final=True)
                self.report()
        if not self.gone and not self.agent.stopping.is_set():
            self.agent.final_delete(self.namespace, self.name, self.uid)
            self.event(f"deleted (final delete) {time.monotonic() - started:.1f}s after the deletion request")
        self.agent.forget(self)

    def run_pre_stop(self, hook: PreStop) -> None:
        """Run the preStop hook until it ends or the grace period does (a hook that outlasts the grace
        period is stopped, as a kubelet stops waiting for it); a failing hook is logged, as a kubelet's
        FailedPreStopHook event, and the kill goes on."""
        self.event(f"preStop hook: {hook.argv or (f'sleep {hook.sleep:g}s' if hook.sleep is not None else hook.url)}")
        if hook.argv is not None:
            assert self.launch is not None
            with self.lock:
                if self.agent.stopping.is_set():
                    return
                try:
                    process = self.agent.spawn(hook.argv, self.log, self.launch.env)
                except OSError as error:
                    self.event(f"FailedPreStopHook: {error}")
                    return
                self.hooks.append(process)
            self.wait_until_deadline(process.poll)
            if process.poll() is None:
                self.event("preStop hook still running at the end of the grace period: stopped")
            processes.stop(process, 0.5)
            if process.returncode not in (0, None, -15):
                self.event(f"FailedPreStopHook: exit code {process.returncode}")
        elif hook.sleep is not None:
            end = time.monotonic() + hook.sleep
            self.wait_until_deadline(lambda: True if time.monotonic() >= end else None)
        elif hook.url is not None:
            try:
                httpx.get(hook.url, timeout=max(self.deadline - time.monotonic(), 0.1), trust_env=False)
            except httpx.HTTPError as error:
                self.event(f"FailedPreStopHook: {error}")
        self.event("preStop hook done")

    def wait_until_deadline(self, done: Callable[[], object | None]) -> None:
        """Wait until ``done()`` returns non-None, the grace period ends (re-read, so a shortened one
        counts), or the agent stops."""
        while done() is None and not self.agent.stopping.is_set():
            left = self.deadline - time.monotonic()
            if left <= 0:
                return
            self.agent.stopping.wait(min(left, DEADLINE_CHECK))

    # -- reporting and stopping --------------------------------------------------------------------
    def report(self) -> None:
        """Patch the pod's status with the current state (callers hold ``lock``, so reports keep order)."""
        if not self.gone and not self.agent.stopping.is_set():
            self.agent.patch_status(self.namespace, self.name, self.uid, pod_status(self.state))

    def halt(self) -> list[subprocess.Popen[bytes]]:
        """The agent is stopping: no more starts; SIGTERM to every process, returned for reaping."""
        with self.lock:
            self.halted.set()
            self.stopped.set()
            running = [p for p in [*self.hooks, self.process] if p is not None and p.poll() is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        return running
