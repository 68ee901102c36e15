"""The kubelet's part (and the scheduler's) for the app's pods: this machine is the cluster's one Node.

The istiod mesh runs a real kube-apiserver and kube-controller-manager, so a Deployment becomes a
ReplicaSet and Pods, and Pods become EndpointSlices, through Kubernetes' own code. ``NodeAgent`` plays the
node, through the same API calls a node makes:

- **Node.** ``start`` registers a Node (Ready, InternalIP 127.0.0.1, room for 250 pods). The node lifecycle
  controller is off in the control plane, so no heartbeat or Lease is needed to stay Ready.
- **Scheduling.** There is no kube-scheduler: an unscheduled Pod (empty ``spec.nodeName``) of the served
  namespace is bound to this node through the pods/binding subresource, which is the very call a scheduler
  makes (taints, resources and affinity are not considered: there is one node).
- **Running.** Each Pod bound here runs as a local process (``harness.processes``: it never outlives
  the run) on a loopback address of its own, fresh for every pod and never reused, so a replaced pod is
  told from the one it replaced by its IP, as in a cluster. Every pod shares this host's network
  namespace, so the container's ``BIND`` is overridden with the pod's own IP: with the manifest's
  ``0.0.0.0`` each pod would listen on every address, and the second pod on port 5678 could not start.
  Env comes from the spec as a kubelet resolves it (values with ``$(VAR)`` expansion, the downward API's
  ``fieldRef``). The container's image is not run: ``python3 /app/echo_server.py`` with ``/app`` a
  ConfigMap volume is mapped to this interpreter running this repository's ``app/echo_server.py``, the
  file the ConfigMap is made from (``harness.core.manifests.APP_SOURCE``). A spec that cannot be run that way
  is refused, never half-run: the pod stays Pending with the reason in its container status
  (``CreateContainerConfigError``, as a kubelet reports a bad config; a Failed phase would make the
  ReplicaSet replace it in a tight loop), and the reason is kept in ``NodeAgent.errors``.
- **Status.** Running with podIP/podIPs, hostIP, startTime, containerStatuses and the PodScheduled,
  Initialized, ContainersReady and Ready conditions; Ready only once the readiness probe (httpGet, at the
  spec's periodSeconds, with its thresholds) succeeds. Until the first success the probe runs every 50 ms,
  so a pod is Ready as soon as it answers rather than up to a period later.
- **Termination**, as a kubelet's ``killContainer``: on a deletionTimestamp, the preStop hook runs (a real
  process, bounded by the grace period), then SIGTERM, SIGKILL once the grace period is used up (at least
  2 s after the hook, like the kubelet's minimum), then the final delete (grace 0, the pod's UID as
  precondition). Each termination has its own thread, so several overlap. Readiness is *not* forced off:
  the EndpointSlice controller marks a pod with a deletionTimestamp ``ready: false, terminating: true`` by
  itself, and ``serving`` follows the Ready condition, which a kubelet keeps probing during termination
  (its prober stops only liveness and startup probes on deletion). That is what lets istiod keep a
  draining pod as a DRAINING endpoint for cookie sessions (it requires ``serving: true``); the echo app
  answers its probe through the preStop hook and stops answering after SIGTERM, and Ready follows.
  A pod deleted with grace 0 (gone from the API at once) is stopped at once: no hook, SIGTERM, SIGKILL
  after 2 s.
- **Volumes.** A ConfigMap volume (not optional) must exist before the container starts: until it does,
  the pod stays ContainerCreating and a FailedMount event names the volume and the ConfigMap, as a
  kubelet's volume manager reports it.
- **Events**, as ``kubectl describe pod`` lists them: Scheduled, FailedMount, Started, Unhealthy (each
  failed readiness probe), BackOff (a restart after a crash), Killing; a repeat counts up on one Event.
- **Restarts.** A container that exits on its own is reported (not ready, exit code in lastState,
  restartCount) and started again on the same IP (restartPolicy Always): the first restart at once, then
  with a doubling back-off from 1 s to 30 s (a kubelet starts at 10 s; a crash here is a bug to see fast).

Everything is bounded and logged: one log file per pod under ``workdir`` (the process's output and the
agent's lifecycle lines for it) and ``node-agent.log``. ``stop`` stops every process it started (hooks
included) and its threads, and is safe to call twice; Ctrl-C reaches it through the mesh's teardown, and
``processes``' parent-death signal and atexit hook cover a hard exit.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3

from harness import processes
from harness.core.mesh import MeshError
from harness.core.timeouts import Timeouts
from harness.meshes.istiod.kubelet_api import KubeletServer, LogLookup, LogSource
from harness.meshes.istiod.pod_runner import (
    PodRunner,
)
from harness.meshes.istiod.pod_spec import (
    MERGE_PATCH,
    grace_seconds,
    node_object,
    node_status,
    now,
)
from harness.meshes.local.pods import AddressPool

SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease", "istio-system"})
WATCH_SECONDS = 30  # server-side timeout of one watch request; the next one resumes from its resourceVersion


# -- the node --------------------------------------------------------------------------------------


class NodeAgent:
    """This machine as the cluster's node for the pods of ``namespace`` (None: every namespace but the
    system ones). See the module docstring for what it does and why."""

    def __init__(self, api_client: Any, node_name: str, workdir: Path, timeouts: Timeouts, *,
                 namespace: str | None, addresses: AddressPool | None = None,
                 rng: random.Random | None = None, other_logs: LogLookup | None = None) -> None:
        from kubernetes import client

        self.core: Any = client.CoreV1Api(api_client)
        self.node_name = node_name
        self.workdir = workdir
        self.timeouts = timeouts
        self.namespace = namespace
        self.addresses = addresses or AddressPool(rng or random.Random())
        self.errors: list[str] = []  # what went wrong, for the mesh's diagnostics (each also in the log)
        # The kubelet API for `kubectl logs`: this node's pods, then the pods it does not run (other_logs).
        self.other_logs = other_logs
        self.kubelet = KubeletServer(workdir / "kubelet", self.log_source) if other_logs is not None else None
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._runners: dict[str, PodRunner] = {}  # by pod UID
        self._done: set[str] = set()  # UIDs this node has terminated and deleted
        self._bound: set[str] = set()  # UIDs this node has bound
        self._events: dict[tuple[str, str, str], tuple[str, int]] = {}  # (uid, reason, message) -> (name, count)
        self._threads: list[threading.Thread] = []
        self._spawned: list[subprocess.Popen[bytes]] = []
        self._watch_response: Any = None
        self._stopped = False

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> NodeAgent:
        """Register the Node, then list and watch pods in a background thread."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if self.kubelet is not None:
                self.kubelet.start()
            self._register_node()
            self.thread(self._watch_loop, "node-agent-watch")
        except BaseException:
            self.stop()
            raise
        self.note(f"node {self.node_name} registered; serving namespace {self.namespace or '(all but system)'}")
        return self

    def stop(self) -> None:
        """Stop the watch, every pod process and hook (SIGTERM to all, then reap each, SIGKILL after
        ``process_exit``), and the threads; pods are left in the API (the control plane goes next).
        Safe to call twice."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self.stopping.set()
            response, runners = self._watch_response, list(self._runners.values())
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()  # unblocks the watch thread's read at once
        running = [process for runner in runners for process in runner.halt()]
        with self._lock:
            running += [p for p in self._spawned if p.poll() is None and p not in running]
        for process in running:
            processes.stop(process, self.timeouts.process_exit)
        deadline = time.monotonic() + self.timeouts.process_exit
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(max(deadline - time.monotonic(), 0.1))
        if self.kubelet is not None:
            self.kubelet.stop()
        self.note("stopped")

    def thread(self, target: Callable[..., None], name: str, *args: Any) -> threading.Thread:
        """A daemon thread whose unexpected error is recorded rather than lost."""

        def guarded() -> None:
            try:
                target(*args)
            except Exception as error:
                if not self.stopping.is_set():
                    self.errors.append(f"{name}: {type(error).__name__}: {error}")
                    self.note(f"{name} failed: {type(error).__name__}: {error}")

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()
        return thread

    def spawn(self, argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start a pod's process (container or hook); refused once the agent is stopping, so nothing can
        start after ``stop`` has collected what to stop."""
        with self._lock:
            if self.stopping.is_set():
                raise OSError("the node agent is stopping")
            process = processes.spawn(argv, log, env=env)
            self._spawned.append(process)
        return process

    def spawned(self) -> list[subprocess.Popen[bytes]]:
        """Every process this agent started (containers, restarts and hooks), for checks after ``stop``."""
        with self._lock:
            return list(self._spawned)

    def note(self, message: str) -> None:
        with contextlib.suppress(OSError), (self.workdir / "node-agent.log").open("a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {message}\n")

    # -- API calls -----------------------------------------------------------------------------------
    def call(self, method: Callable[..., Any], *args: Any, missing_ok: bool = False,
             **kwargs: Any) -> dict[str, Any] | None:
        """One API call, its JSON answer parsed by hand (the generated models cannot read some answers,
        e.g. the Status a pods/binding create returns). Retried twice on a transient failure (connection,
        5xx, 429); 404 and 409 mean "gone or changed" and give None when ``missing_ok``."""
        from kubernetes.client.exceptions import ApiException

        for attempt in range(3):
            try:
                response = method(*args, _preload_content=False, _request_timeout=self.timeouts.request, **kwargs)
                data = response.data
                return json.loads(data) if data else {}
            except ApiException as error:
                status = error.status or 0
                if missing_ok and status in (404, 409):
                    return None
                if not (status in (0, 429) or status >= 500) or attempt == 2:
                    raise
            except (OSError, urllib3.exceptions.HTTPError) as error:  # connection refused, reset, timed out
                if attempt == 2 or self.stopping.is_set():
                    raise MeshError(f"API call {getattr(method, '__name__', method)} failed: {error}") from error
            self.stopping.wait(0.1 * 3**attempt)
        raise AssertionError("unreachable")

    def _register_node(self) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.call(self.core.create_node, node_object(self.node_name))
        except ApiException as error:
            if error.status != 409:
                raise MeshError(f"cannot register node {self.node_name}: {error.status} {error.reason}") from error
        # The status is the kubelet's to post after registering. The spec's taints go: admission adds
        # node.kubernetes.io/not-ready, which only the (disabled) node lifecycle controller would remove.
        status = node_status(self.kubelet.port if self.kubelet else None)
        self.call(self.core.patch_node_status, self.node_name, {"status": status}, _content_type=MERGE_PATCH)
        self.call(self.core.patch_node, self.node_name, {"spec": {"taints": None}}, _content_type=MERGE_PATCH)

    def patch_status(self, namespace: str, name: str, uid: str, status: dict[str, Any]) -> None:
        """Merge-patch a pod's status, with its UID in the patch as a precondition (as the kubelet's status
        manager does: a pod recreated under the same name is never patched). Failures are recorded."""
        body = {"metadata": {"uid": uid}, "status": status}
        try:
            self.call(self.core.patch_namespaced_pod_status, name, namespace, body, _content_type=MERGE_PATCH,
                      missing_ok=True)
        except Exception as error:
            if not self.stopping.is_set():
                self.errors.append(f"status of pod {namespace}/{name}: {error}")
                self.note(f"{namespace}/{name}: status patch failed: {error}")

    def record_event(self, pod: dict[str, Any], kind: str, reason: str, message: str,
                     component: str = "kubelet") -> None:
        """An Event about the pod, as ``kubectl describe pod`` lists them: the same reason and message again
        counts up on one Event (as the kubelet's event recorder aggregates them). Failures are noted only."""
        meta = pod["metadata"]
        key = (meta["uid"], reason, message)
        stamp = now()
        with self._lock:
            name, count = self._events.get(key, (f"{meta['name']}.{uuid.uuid4().hex[:16]}", 0))
            self._events[key] = (name, count + 1)
        try:
            if count:
                self.call(self.core.patch_namespaced_event, name, meta["namespace"],
                          {"count": count + 1, "lastTimestamp": stamp}, _content_type=MERGE_PATCH, missing_ok=True)
                return
            self.call(self.core.create_namespaced_event, meta["namespace"], {
                "apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": meta["namespace"]},
                "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": meta["namespace"],
                                   "name": meta["name"], "uid": meta["uid"]},
                "type": kind, "reason": reason, "message": message, "count": 1,
                "firstTimestamp": stamp, "lastTimestamp": stamp,
                "source": {"component": component, "host": self.node_name},
                "reportingComponent": component, "reportingInstance": self.node_name,
            }, missing_ok=True)
        except Exception as error:
            if not self.stopping.is_set():
                self.note(f"{meta['namespace']}/{meta['name']}: event {reason} not recorded: {error}")

    def final_delete(self, namespace: str, name: str, uid: str) -> None:
        """The kubelet's last word on a terminated pod: delete with grace 0 and the UID as precondition."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            self.call(self.core.delete_namespaced_pod, name, namespace, body=body, grace_period_seconds=0,
                      missing_ok=True)
        except Exception as error:
            if not self.stopping.is_set():
                self.errors.append(f"final delete of pod {namespace}/{name}: {error}")
                self.note(f"{namespace}/{name}: final delete failed: {error}")

    def _bind(self, pod: dict[str, Any]) -> None:
        """Schedule the pod here through pods/binding (what kube-scheduler does). The client cannot read
        the Status this call returns (a known issue of the generated client), hence the raw answer."""
        meta = pod["metadata"]
        with self._lock:
            if meta["uid"] in self._bound:
                return
            self._bound.add(meta["uid"])
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"], "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}}
        try:
            self.call(self.core.create_namespaced_pod_binding, meta["name"], meta["namespace"], body,
                      missing_ok=True)
            self.record_event(pod, "Normal", "Scheduled", f"Successfully assigned {meta['namespace']}/{meta['name']} "
                              f"to {self.node_name}", component="default-scheduler")
        except Exception as error:
            with self._lock:
                self._bound.discard(meta["uid"])  # the next event or re-list tries again
            if not self.stopping.is_set():
                self.errors.append(f"binding pod {meta['namespace']}/{meta['name']}: {error}")
                self.note(f"{meta['namespace']}/{meta['name']}: binding failed: {error}")

    # -- watching ------------------------------------------------------------------------------------
    def _serves(self, namespace: str) -> bool:
        return namespace == self.namespace if self.namespace else namespace not in SYSTEM_NAMESPACES

    def _list_method(self) -> tuple[Callable[..., Any], tuple[str, ...]]:
        if self.namespace:
            return self.core.list_namespaced_pod, (self.namespace,)
        return self.core.list_pod_for_all_namespaces, ()

    def _watch_loop(self) -> None:
        """List, then watch from the list's resourceVersion; list again after 410 Gone or any failure
        (with a bounded back-off), as an informer does, so no change is ever missed."""
        resource_version: str | None = None
        delay = 0.0
        while not self.stopping.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist()
                resource_version = self._watch(resource_version)
                delay = 0.0
            except Exception as error:
                if self.stopping.is_set():
                    return
                delay = min(max(delay * 2, 0.2), 5.0)
                self.note(f"pod watch failed ({type(error).__name__}: {error}); listing again in {delay:g}s")
                resource_version = None
                self.stopping.wait(delay)

    def _relist(self) -> str:
        method, args = self._list_method()
        listed = self.call(method, *args) or {}
        seen = set()
        for pod in listed.get("items") or []:
            seen.add(pod["metadata"]["uid"])
            self._handle(pod)
        with self._lock:
            vanished = [runner for uid, runner in self._runners.items() if uid not in seen]
        for runner in vanished:  # deleted while no watch was open
            runner.request_termination(0, gone=True)
        return str(listed["metadata"]["resourceVersion"])

    def _watch(self, resource_version: str) -> str | None:
        """One watch request; the last resourceVersion seen, or None after 410 Gone (list again)."""
        from kubernetes.watch.watch import iter_resp_lines

        method, args = self._list_method()
        response = method(*args, watch=True, resource_version=resource_version, allow_watch_bookmarks=True,
                          timeout_seconds=WATCH_SECONDS, _preload_content=False,
                          _request_timeout=(self.timeouts.request, WATCH_SECONDS + self.timeouts.request))
        with self._lock:
            if self.stopping.is_set():
                response.close()
                return resource_version
            self._watch_response = response
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if self.stopping.is_set():
                    break
                if not line:
                    continue
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise MeshError(f"watch error {obj.get('code')}: {obj.get('reason')}: {obj.get('message')}")
                resource_version = str(obj["metadata"]["resourceVersion"])
                if kind == "DELETED":
                    self._deleted(obj)
                elif kind in ("ADDED", "MODIFIED"):
                    self._handle(obj)
        finally:
            with self._lock:
                self._watch_response = None
            response.release_conn()
        return resource_version

    def _handle(self, pod: dict[str, Any]) -> None:
        """Bring this node in line with one pod object (idempotent: the agent's own status patches come
        back as events too)."""
        meta, spec = pod["metadata"], pod.get("spec") or {}
        if not self._serves(meta["namespace"]):
            return
        deleting = meta.get("deletionTimestamp") is not None
        if not spec.get("nodeName"):
            if not deleting:
                self._bind(pod)
            return
        if spec["nodeName"] != self.node_name:
            return
        uid = meta["uid"]
        new = False
        with self._lock:
            if self.stopping.is_set() or uid in self._done:
                return
            runner = self._runners.get(uid)
            if runner is None and not deleting:
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    return
                try:
                    ip = self.addresses.take()
                except MeshError as error:
                    self.errors.append(f"pod {meta['namespace']}/{meta['name']}: {error}")
                    return
                runner = self._runners[uid] = PodRunner(self, pod, ip)
                new = True
        if runner is not None and new:
            self.thread(runner.run, f"pod-{meta['name']}")
        if runner is None and deleting:
            # Bound here but never run by this agent (deleted before it was seen): nothing to stop.
            self.final_delete(meta["namespace"], meta["name"], uid)
            with self._lock:
                self._done.add(uid)
        elif runner is not None and deleting:
            runner.request_termination(grace_seconds(pod))

    def _deleted(self, pod: dict[str, Any]) -> None:
        """The pod left the API: our own final delete, or a forced delete (grace 0): stop at once."""
        uid = pod["metadata"]["uid"]
        with self._lock:
            runner = self._runners.get(uid)
            self._bound.discard(uid)
        if runner is not None:
            runner.request_termination(0, gone=True)

    def forget(self, runner: PodRunner) -> None:
        """A terminated pod: its UID is done (later events about it are ignored), its IP never reused."""
        with self._lock:
            self._runners.pop(runner.uid, None)
            self._done.add(runner.uid)

    def log_source(self, namespace: str, pod: str, container: str) -> LogSource | None:
        """A pod's container output for the kubelet API: the pod's log file without the agent's own
        lifecycle lines, running while its process is; pods this node does not run from ``other_logs``."""
        with self._lock:
            runner = next((r for r in self._runners.values() if r.namespace == namespace and r.name == pod), None)
        if runner is not None:
            path = runner.log
        else:
            found = sorted(self.workdir.glob(f"{namespace}_{pod}_*.log"), key=lambda p: p.stat().st_mtime)
            if not found:
                return self.other_logs(namespace, pod, container) if self.other_logs else None
            path = found[-1]

        def running() -> bool:
            process = runner.process if runner is not None else None
            return process is not None and process.poll() is None and not (runner and runner.stopped.is_set())

        return LogSource(path, keep=lambda line: not line.startswith("[node-agent "), running=running)

    def pods(self) -> dict[str, str]:
        """Pods this node runs (terminating ones included): name -> IP."""
        with self._lock:
            return {runner.name: runner.ip for runner in self._runners.values()}
