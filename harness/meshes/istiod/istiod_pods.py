"""istiod as a Deployment: the chart's Deployment is applied, and this node runs its pod as a process.

On a cluster, ``kubectl set env deploy/istiod``, ``kubectl edit`` or ``helm upgrade`` change istiod's pod
template; the Deployment controller rolls out a new ReplicaSet, the kubelet starts the new pod, and the
Deployment's status (observed generation, updated/ready/available replicas) tells ``kubectl rollout
status`` when it is done. Here the same happens through the real kube-controller-manager, and
``IstiodPods`` plays the kubelet (and the scheduler) for istiod's pods only:

- a pod of the istiod Deployment without a node is bound to this node (pods/binding);
- the newest live pod is the one that runs: pilot-discovery with exactly the environment its
  ``discovery`` container declares, resolved as a kubelet resolves it (values, downward-API ``fieldRef``,
  ``resourceFieldRef`` against the node's capacity when no limit is set), and its mesh config from the
  ``istio`` ConfigMap as its volume would carry it; its status goes Running, then Ready once istiod's
  ``/ready`` answers, with the pod's IP istiod's own loopback address;
- an older pod still there (a rollout surges the new pod first) gives up the process first: istiod has one
  address and Istio's port 15010 in this mesh, so a rollout here is stop-then-start (seconds without
  istiod; the gateway keeps its last configuration and reconnects, as after an istiod restart);
- a deleted pod whose process runs is stopped; every deleted pod gets the kubelet's final delete.

Each pass of ``sync`` brings the processes in line with the pods; a thread runs it every ``SYNC_INTERVAL``
(a short poll of a loopback API server: cheaper to reason about than a watch, and nothing is missed).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from harness.core.mesh import MeshError
from harness.core.timeouts import Timeouts, poll
from harness.meshes.istiod.istio import ISTIO_NAMESPACE, IstiodProcess
from harness.meshes.istiod.pod_spec import HOST_IP, MERGE_PATCH, downward_fields, now

ISTIOD_DEPLOYMENT = "istiod"
ISTIOD_SELECTOR = "app=istiod"
CONTAINER = "discovery"
SYNC_INTERVAL = 0.1


def node_capacity() -> dict[str, float]:
    """What a resourceFieldRef without a limit resolves to: the node's allocatable CPU and memory."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": float(os.cpu_count() or 1), "memory": float(memory)}


_SUFFIXES = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2.0**10, "Mi": 2.0**20,
             "Gi": 2.0**30, "Ti": 2.0**40}


def quantity(text: str) -> float:
    """A Kubernetes quantity (``500m``, ``2``, ``256Mi``) as a number."""
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if suffix and text.endswith(suffix):
            return float(text[: -len(suffix)]) * _SUFFIXES[suffix]
    return float(text)


def resource_value(container: dict[str, Any], ref: dict[str, Any]) -> str:
    """A ``resourceFieldRef`` as the kubelet resolves it: the limit (or request), else the node's
    allocatable for a limit; divided by the divisor and rounded up."""
    resource = str(ref["resource"])
    kind, _, name = resource.partition(".")
    declared = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if declared is not None:
        value = quantity(str(declared))
    elif kind == "limits" and name in ("cpu", "memory"):
        value = node_capacity()[name]
    else:
        value = 0.0
    return str(math.ceil(value / quantity(str(ref.get("divisor") or "1"))))


def pod_env(pod: dict[str, Any], container: dict[str, Any], ip: str, node_name: str) -> dict[str, str]:
    """The container's environment as a kubelet builds it for this pod (``$(VAR)`` references are left as
    written: istiod's chart uses none)."""
    fields = downward_fields(pod, ip, node_name)
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        source = item.get("valueFrom")
        if source is None:
            env[item["name"]] = str(item.get("value") or "")
        elif "fieldRef" in source and source["fieldRef"]["fieldPath"] in fields:
            env[item["name"]] = fields[source["fieldRef"]["fieldPath"]]
        elif "resourceFieldRef" in source:
            env[item["name"]] = resource_value(container, source["resourceFieldRef"])
        else:
            raise MeshError(f"istiod pod {pod['metadata']['name']}: env {item['name']} from {sorted(source)} "
                            "cannot be resolved here")
    return env


def discovery_container(pod: dict[str, Any]) -> dict[str, Any]:
    for container in pod["spec"].get("containers") or []:
        if container.get("name") == CONTAINER:
            return dict(container)
    raise MeshError(f"istiod pod {pod['metadata']['name']} has no {CONTAINER} container")


def newest(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pod that should run: the most recently created (a rollout's new pod), by name on a tie."""
    return max(pods, key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]), default=None)


def rollout_done(deployment: dict[str, Any]) -> tuple[bool, str]:
    """``kubectl rollout status``'s test: the controller has seen this generation, every replica is updated
    and available, and no old replica is left."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    wanted = int(spec.get("replicas", 1))
    generation = int(deployment["metadata"].get("generation") or 0)
    if int(status.get("observedGeneration") or 0) < generation:
        return False, "the Deployment controller has not seen the new generation yet"
    updated, total = int(status.get("updatedReplicas") or 0), int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < wanted:
        return False, f"{updated} of {wanted} updated replicas"
    if total > updated:
        return False, f"{total - updated} old replicas pending termination"
    if available < updated:
        return False, f"{available} of {updated} updated replicas available"
    return True, "rolled out"


class IstiodPods:
    """The kubelet's part for istiod's pods (see the module docstring)."""

    def __init__(self, api_client: Any, process: IstiodProcess, node_name: str, timeouts: Timeouts,
                 progress: Callable[[str], None]) -> None:
        from kubernetes import client

        self.core: Any = client.CoreV1Api(api_client)
        self.apps: Any = client.AppsV1Api(api_client)
        self.process = process
        self.node_name = node_name
        self.timeouts = timeouts
        self.progress = progress
        self.running_uid: str | None = None  # the pod whose process runs
        self.running_pod = ""
        self.restarts = 0
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one sync at a time (the thread's, or a caller's)

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> IstiodPods:
        self._thread = threading.Thread(target=self._loop, name="istiod-pods", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the sync thread and istiod; a start in progress is cut short (its process goes first)."""
        self.stopping.set()
        self.process.stop()
        if self._thread is not None:
            self._thread.join(self.timeouts.process_exit + 5.0)
        with self._lock:
            self.process.stop()

    def _loop(self) -> None:
        while not self.stopping.wait(SYNC_INTERVAL):
            try:
                self.sync()
            except Exception as error:
                if self.stopping.is_set():
                    return
                message = f"{type(error).__name__}: {error}"
                if not self.errors or self.errors[-1] != message:
                    self.errors.append(message)

    def check_alive(self) -> None:
        """A failure that stops the mesh: the running istiod exited, or the runner keeps failing. Taken under
        the runner's lock: while a pass hands istiod over to a new pod, the old process has exited (code 0,
        by our SIGTERM) before ``stop`` forgets it, and a check in that moment must not read it as a crash
        (it did, under load, in a cold .ci/run)."""
        with self._lock:
            self.process.check_alive()
        if len(self.errors) >= 3:
            raise MeshError(f"running istiod's pod failed: {self.errors[-1]}")

    # -- one pass ------------------------------------------------------------------------------------
    def _json(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        response = method(*args, _preload_content=False, _request_timeout=self.timeouts.request, **kwargs)
        data = response.data
        return json.loads(data) if data else {}

    def sync(self) -> None:
        with self._lock:
            if self.stopping.is_set():
                return
            pods = self._json(self.core.list_namespaced_pod, ISTIO_NAMESPACE,
                              label_selector=ISTIOD_SELECTOR).get("items") or []
            live = []
            for pod in pods:
                meta, spec = pod["metadata"], pod.get("spec") or {}
                if meta.get("deletionTimestamp"):
                    self._terminate(pod)
                elif not spec.get("nodeName"):
                    self._bind(pod)
                elif spec["nodeName"] == self.node_name:
                    live.append(pod)
            if self.running_uid is not None and self.running_uid not in {p["metadata"]["uid"] for p in live}:
                self._stop_process()  # its pod went away between two passes
            wanted = newest(live)
            if wanted is not None and wanted["metadata"]["uid"] != self.running_uid:
                self._run(wanted, [p for p in live if p is not wanted])
            elif wanted is not None and not self.process.running and self.process.process is not None:
                self._restart(wanted)

    def _bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"], "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}}
        from kubernetes.client.exceptions import ApiException

        with contextlib.suppress(ApiException):  # bound meanwhile, or gone: the next pass sees it
            self._json(self.core.create_namespaced_pod_binding, meta["name"], ISTIO_NAMESPACE, body)

    def _run(self, pod: dict[str, Any], older: list[dict[str, Any]]) -> None:
        """Hand the process to ``pod``: the older pod's istiod stops first (one address), then this one
        starts with its own environment and is reported Ready once it serves."""
        started = time.monotonic()
        previous = self.running_pod
        for old in older:
            if old["metadata"]["uid"] == self.running_uid:
                self._stop_process()
                self._report(old, ready=False, terminated={"exitCode": 0, "reason": "Completed"})
        if self.running_uid is not None:
            self._stop_process()
        self._start(pod, restarts=0)
        if previous:
            self.progress(f"istiod pod {previous} replaced by {pod['metadata']['name']} "
                          f"in {time.monotonic() - started:.1f}s")

    def _restart(self, pod: dict[str, Any]) -> None:
        """The running istiod exited on its own: restart it in the same pod (restartPolicy Always)."""
        code = self.process.process.returncode if self.process.process is not None else None
        self._report(pod, ready=False, terminated={"exitCode": code, "reason": "Error"})
        self.process.stop()
        self.restarts += 1
        self._start(pod, restarts=self.restarts)

    def _start(self, pod: dict[str, Any], restarts: int) -> None:
        meta = pod["metadata"]
        container = discovery_container(pod)
        env = pod_env(pod, container, self.process.address, self.node_name)
        mesh = self._json(self.core.read_namespaced_config_map, "istio", ISTIO_NAMESPACE)["data"]["mesh"]
        self.running_uid, self.running_pod = meta["uid"], meta["name"]
        self._report(pod, ready=False, running=True, restarts=restarts)
        self.process.start(container, env, str(mesh), meta["name"])
        self._report(pod, ready=True, running=True, restarts=restarts)

    def _stop_process(self) -> None:
        self.process.stop()
        self.running_uid, self.running_pod = None, ""

    def _terminate(self, pod: dict[str, Any]) -> None:
        """A deleted pod: its process (if it runs) stops, then the kubelet's final delete."""
        from kubernetes.client.exceptions import ApiException

        meta = pod["metadata"]
        if meta["uid"] == self.running_uid:
            self._stop_process()
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": meta["uid"]}}
        with contextlib.suppress(ApiException):
            self._json(self.core.delete_namespaced_pod, meta["name"], ISTIO_NAMESPACE, body=body,
                       grace_period_seconds=0)

    def _report(self, pod: dict[str, Any], *, ready: bool, running: bool = False, restarts: int = 0,
                terminated: dict[str, Any] | None = None) -> None:
        from kubernetes.client.exceptions import ApiException

        stamp = now()
        state: dict[str, Any] = ({"running": {"startedAt": stamp}} if running
                                 else {"terminated": {**(terminated or {}), "finishedAt": stamp}})
        flag = "True" if ready else "False"
        status = {
            "phase": "Running", "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}],
            "podIP": self.process.address, "podIPs": [{"ip": self.process.address}],
            "startTime": pod.get("status", {}).get("startTime") or stamp,
            "conditions": [{"type": kind, "status": "True" if kind in ("PodScheduled", "Initialized") else flag,
                            "lastTransitionTime": stamp}
                           for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [{"name": CONTAINER, "image": discovery_container(pod).get("image", ""),
                                   "imageID": "", "ready": ready, "started": running, "restartCount": restarts,
                                   "state": state}],
        }
        with contextlib.suppress(ApiException):  # the pod is gone: nothing to report
            self._json(self.core.patch_namespaced_pod_status, pod["metadata"]["name"], ISTIO_NAMESPACE,
                       {"metadata": {"uid": pod["metadata"]["uid"]}, "status": status}, _content_type=MERGE_PATCH)

    # -- waiting ---------------------------------------------------------------------------------------
    def deployment(self) -> dict[str, Any]:
        return self._json(self.apps.read_namespaced_deployment, ISTIOD_DEPLOYMENT, ISTIO_NAMESPACE)

    def wait_rollout(self, timeout: float) -> dict[str, Any]:
        """Until the Deployment is rolled out (as ``kubectl rollout status`` decides) and its pod's istiod
        serves; the Deployment as it then is."""
        for attempt in poll(timeout, "istiod's Deployment rolled out", interval=0.05, max_interval=0.5):
            with attempt:
                self.check_alive()
                deployment = self.deployment()
                done, why = rollout_done(deployment)
                assert done, why
                assert self.process.running, "istiod's process is not running"
                return deployment
        raise AssertionError("unreachable")
