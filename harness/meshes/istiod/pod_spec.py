"""What a Pod spec means on the istiod mesh's one node: the pure parts of the node agent (``node_agent.py``).

A kubelet resolves a container's environment (values, ``$(VAR)`` expansion, the downward API), its command
and volumes, its readiness probe and preStop hook, and reports status in a fixed shape; these functions do
the same from the Pod object alone, with no process or API call, so each is tested apart. A spec this node
cannot run is refused with ``UnsupportedPod`` (the reason the pod's status then gives).
"""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from harness.core.manifests import APP_SOURCE
from harness.core.mesh import MeshError

HOST_IP = "127.0.0.1"
DEFAULT_GRACE_SECONDS = 30.0  # a Pod's default terminationGracePeriodSeconds
MERGE_PATCH = "application/merge-patch+json"
_REFERENCE = re.compile(r"\$\$|\$\(([^)]+)\)")
_MAP_FIELD = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")


class UnsupportedPod(MeshError):
    """A pod spec this node cannot run as a local process; the message says what and why."""


def now() -> str:
    """An RFC 3339 timestamp, as Kubernetes writes them."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- the pure parts: what a spec means here ----------------------------------------------------------


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: declared variables are replaced, ``$$`` is a literal ``$``, and a
    reference to an undeclared variable stays as written (the seed's ``$(hostname)`` stayed literal)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)


def downward_fields(pod: dict[str, Any], ip: str, node_name: str) -> dict[str, str]:
    """The ``fieldRef`` paths a kubelet resolves, with this node's values for the pod's IP and host."""
    meta, spec = pod["metadata"], pod.get("spec") or {}
    fields = {
        "metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
        "spec.nodeName": node_name, "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.podIP": ip, "status.podIPs": ip, "status.hostIP": HOST_IP, "status.hostIPs": HOST_IP,
    }
    for kind in ("labels", "annotations"):
        for key, value in (meta.get(kind) or {}).items():
            fields[f"metadata.{kind}['{key}']"] = value
    return fields


def container_env(container: dict[str, Any], fields: dict[str, str]) -> dict[str, str]:
    """The container's environment as a kubelet builds it: plain values (``$(VAR)`` expanded against the
    variables declared before them) and downward-API ``fieldRef`` values. Secrets, ConfigMap keys,
    resource fields and ``envFrom`` are refused: nothing the suite's pods use, and guessing would be worse."""
    if container.get("envFrom"):
        raise UnsupportedPod(f"container {container.get('name')}: envFrom is not supported here")
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        name = item["name"]
        source = item.get("valueFrom")
        if source is None:
            env[name] = expand(str(item.get("value") or ""), env)
            continue
        path = (source.get("fieldRef") or {}).get("fieldPath")
        if set(source) != {"fieldRef"} or path is None:
            raise UnsupportedPod(f"env {name}: only valueFrom.fieldRef (the downward API) is supported here, "
                                 f"got {sorted(source)}")
        if path not in fields:
            if _MAP_FIELD.fullmatch(path):
                env[name] = ""  # a missing label or annotation resolves to an empty string
                continue
            raise UnsupportedPod(f"env {name}: fieldRef {path!r} is not supported here "
                                 f"(supported: {sorted(p for p in fields if '[' not in p)})")
        env[name] = fields[path]
    return env


def container_argv(container: dict[str, Any], volumes: list[dict[str, Any]], env: dict[str, str]) -> list[str]:
    """``python3 /app/echo_server.py [args]`` with ``/app`` a ConfigMap volume, as this interpreter running
    the repository's ``app/echo_server.py`` (the file the ConfigMap holds). Anything else is refused: the
    image is never run here, so only a command whose meaning is known can be."""
    name = container.get("name")
    command = [expand(str(part), env) for part in [*(container.get("command") or []), *(container.get("args") or [])]]
    if not command:
        raise UnsupportedPod(f"container {name}: no command; the image's entrypoint cannot run here")
    interpreter, *rest = command
    if not _is_python(interpreter) or not rest or rest[0].startswith("-"):
        raise UnsupportedPod(f"container {name}: only `python3 <file from a ConfigMap volume>` runs here, "
                             f"got {command}")
    script = PurePosixPath(rest[0])
    volume, relative = _mounted_from(container, volumes, script)
    if volume is None or "configMap" not in volume:
        raise UnsupportedPod(f"container {name}: {script} is not on a ConfigMap volume, so it cannot be mapped "
                             f"to a file of this repository")
    if relative != APP_SOURCE.name:
        raise UnsupportedPod(f"container {name}: {script} is not the echo app ({APP_SOURCE.name}), the only "
                             f"ConfigMap file this node can map to the repository")
    return [sys.executable, str(APP_SOURCE), *rest[1:]]


def _is_python(command: str) -> bool:
    return re.fullmatch(r"python(3(\.\d+)?)?", PurePosixPath(command).name) is not None


def _mounted_from(container: dict[str, Any], volumes: list[dict[str, Any]],
                  path: PurePosixPath) -> tuple[dict[str, Any] | None, str]:
    """The volume ``path`` lies on, and the file's path inside that volume (``subPath`` mounts included)."""
    for mount in container.get("volumeMounts") or []:
        mount_path = PurePosixPath(mount["mountPath"])
        if path == mount_path or mount_path in path.parents:
            inside = PurePosixPath(mount.get("subPath") or "") / path.relative_to(mount_path)
            volume = next((v for v in volumes if v.get("name") == mount["name"]), None)
            return volume, str(inside)
    return None, ""


@dataclass(frozen=True)
class HttpProbe:
    """A readiness probe (httpGet) with the kubelet's defaults."""

    url: str
    headers: dict[str, str]
    period: float = 10.0
    timeout: float = 1.0
    initial_delay: float = 0.0
    success_threshold: int = 1
    failure_threshold: int = 3


def _port(container: dict[str, Any], port: Any) -> int:
    """A probe's or hook's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise UnsupportedPod(f"container {container.get('name')}: no port named {port!r}")


def _http_get_url(container: dict[str, Any], action: dict[str, Any], ip: str, what: str) -> str:
    if action.get("scheme", "HTTP").upper() != "HTTP":
        raise UnsupportedPod(f"container {container.get('name')}: {what} httpGet over {action['scheme']} "
                             f"is not supported here")
    path = action.get("path") or "/"
    return f"http://{action.get('host') or ip}:{_port(container, action.get('port', 80))}/{path.lstrip('/')}"


def readiness_probe(container: dict[str, Any], ip: str) -> HttpProbe | None:
    """The container's readiness probe against ``ip``; None without one (Ready once running)."""
    probe = container.get("readinessProbe")
    if not probe:
        return None
    action = probe.get("httpGet")
    if action is None:
        raise UnsupportedPod(f"container {container.get('name')}: only httpGet readiness probes are supported, "
                             f"got {sorted(k for k in probe if k not in _PROBE_TIMING)}")
    return HttpProbe(
        url=_http_get_url(container, action, ip, "readinessProbe"),
        headers={h["name"]: h["value"] for h in action.get("httpHeaders") or []},
        period=float(probe.get("periodSeconds") or 10), timeout=float(probe.get("timeoutSeconds") or 1),
        initial_delay=float(probe.get("initialDelaySeconds") or 0),
        success_threshold=int(probe.get("successThreshold") or 1),
        failure_threshold=int(probe.get("failureThreshold") or 3))


_PROBE_TIMING = {"periodSeconds", "timeoutSeconds", "initialDelaySeconds", "successThreshold", "failureThreshold",
                 "terminationGracePeriodSeconds"}


@dataclass(frozen=True)
class PreStop:
    """The container's preStop hook: one of an exec command, a sleep, or an HTTP GET."""

    argv: list[str] | None = None
    sleep: float | None = None
    url: str | None = None


def pre_stop_hook(container: dict[str, Any], ip: str, env: dict[str, str]) -> PreStop | None:
    """The preStop hook as this node runs it. An exec hook runs as given (``$(VAR)`` expanded), with
    ``python``/``python3`` as this interpreter, since the image's interpreter is not here."""
    hook = (container.get("lifecycle") or {}).get("preStop")
    if not hook:
        return None
    if "exec" in hook:
        argv = [expand(str(part), env) for part in hook["exec"].get("command") or []]
        if not argv:
            raise UnsupportedPod(f"container {container.get('name')}: empty preStop exec command")
        if _is_python(argv[0]):
            argv[0] = sys.executable
        return PreStop(argv=argv)
    if "sleep" in hook:
        return PreStop(sleep=float(hook["sleep"]["seconds"]))
    if "httpGet" in hook:
        return PreStop(url=_http_get_url(container, hook["httpGet"], ip, "preStop"))
    raise UnsupportedPod(f"container {container.get('name')}: preStop {sorted(hook)} is not supported here")


@dataclass(frozen=True)
class Launch:
    """Everything needed to run one pod's container here, resolved from its spec."""

    container: str
    image: str
    argv: list[str]
    env: dict[str, str]
    probe: HttpProbe | None
    pre_stop: PreStop | None


def launch_spec(pod: dict[str, Any], ip: str, node_name: str) -> Launch:
    """Resolve a pod's spec for this node, or refuse it with ``UnsupportedPod`` saying why."""
    spec = pod["spec"]
    containers = spec.get("containers") or []
    if len(containers) != 1 or spec.get("initContainers"):
        raise UnsupportedPod(f"only pods with one container and no init containers run here, got "
                             f"{[c.get('name') for c in containers]} and "
                             f"{[c.get('name') for c in spec.get('initContainers') or []]}")
    container = containers[0]
    env = container_env(container, downward_fields(pod, ip, node_name))
    # Every pod shares this host's network namespace: listening on 0.0.0.0 would take the port on every
    # address, so each pod listens on its own address only.
    env["BIND"] = ip
    return Launch(container=container["name"], image=container.get("image") or "",
                  argv=container_argv(container, spec.get("volumes") or [], env), env=env,
                  probe=readiness_probe(container, ip), pre_stop=pre_stop_hook(container, ip, env))


@dataclass
class ContainerState:
    """What the kubelet knows of a pod's one container; ``pod_status`` turns it into the Pod's status."""

    name: str
    image: str
    ip: str
    start_time: str  # when the pod was admitted on this node (status.startTime)
    running_since: str | None = None
    pid: int | None = None
    ready: bool = False
    ready_changed: str = ""  # lastTransitionTime of ContainersReady and Ready
    restarts: int = 0
    waiting: tuple[str, str] | None = None  # (reason, message) while not running
    terminated: dict[str, Any] | None = None  # the final state once stopped for good
    last_terminated: dict[str, Any] | None = None  # the previous run, after a restart

    def __post_init__(self) -> None:
        self.ready_changed = self.ready_changed or self.start_time

    def set_ready(self, ready: bool) -> bool:
        """Change readiness; True when it changed (a transition to report)."""
        if ready == self.ready:
            return False
        self.ready, self.ready_changed = ready, now()
        return True

    def exited(self, code: int, *, final: bool) -> None:
        """The running process ended with ``code``: the final state, or the last state before a restart."""
        state = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                 "startedAt": self.running_since or self.start_time, "finishedAt": now()}
        if code < 0:
            state.update(exitCode=128 - code, signal=-code)  # killed by a signal, as a runtime reports it
        self.set_ready(False)
        self.running_since, self.pid = None, None
        if final:
            self.terminated = state
        else:
            self.last_terminated = state
            self.waiting = ("CrashLoopBackOff", f"back-off restarting container {self.name}")


def pod_status(state: ContainerState) -> dict[str, Any]:
    """The Pod status a kubelet would report for ``state`` (the whole of it: sent as a merge patch, its
    lists replace the stored ones)."""
    ready = "True" if state.ready else "False"
    not_ready = {} if state.ready else {"reason": "ContainersNotReady",
                                        "message": f"containers with unready status: [{state.name}]"}
    if state.running_since is not None:
        current: dict[str, Any] = {"running": {"startedAt": state.running_since}}
    elif state.terminated is not None:
        current = {"terminated": state.terminated}
    else:
        reason, message = state.waiting or ("ContainerCreating", "")
        current = {"waiting": {"reason": reason, "message": message} if message else {"reason": reason}}
    container: dict[str, Any] = {
        "name": state.name, "image": state.image, "imageID": "", "ready": state.ready,
        "started": state.running_since is not None, "restartCount": state.restarts, "state": current,
        "lastState": {"terminated": state.last_terminated} if state.last_terminated else {},
    }
    if state.pid is not None:
        container["containerID"] = f"process://{state.pid}"
    ran = state.running_since is not None or state.terminated is not None or state.last_terminated is not None
    return {
        "phase": "Running" if ran else "Pending",
        "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}], "podIP": state.ip, "podIPs": [{"ip": state.ip}],
        "startTime": state.start_time,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": state.start_time},
            {"type": "Initialized", "status": "True", "lastTransitionTime": state.start_time},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": state.ready_changed, **not_ready},
            {"type": "Ready", "status": ready, "lastTransitionTime": state.ready_changed, **not_ready},
        ],
        "containerStatuses": [container],
    }


def node_object(name: str) -> dict[str, Any]:
    """The Node this machine registers as; its status is patched right after (see ``node_status``)."""
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                  "kubernetes.io/arch": _arch()}},
            "spec": {}}


MAX_PODS = 250  # what one AddressPool (a /24) holds


def node_status(kubelet_port: int | None = None) -> dict[str, Any]:
    """Ready, this machine's capacity, and where its kubelet API listens (for ``kubectl logs``)."""
    stamp = now()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
    resources = {"cpu": str(os.cpu_count() or 1), "memory": f"{memory}Ki", "pods": str(MAX_PODS)}
    return {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "node agent is posting ready status", "lastHeartbeatTime": stamp,
                        "lastTransitionTime": stamp}],
        "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": platform.node()}],
        "capacity": resources, "allocatable": resources,
        **({"daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}}} if kubelet_port else {}),
        "nodeInfo": {"operatingSystem": "linux", "architecture": _arch(), "kubeletVersion": "sticky-node-agent",
                     "kernelVersion": platform.release(), "osImage": platform.platform(),
                     "containerRuntimeVersion": "process://", "machineID": "", "systemUUID": "", "bootID": "",
                     "kubeProxyVersion": ""},
    }


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def grace_seconds(pod: dict[str, Any]) -> float:
    """The grace period of a pod being deleted: the delete's own, else the spec's, else Kubernetes' 30 s."""
    meta, spec = pod["metadata"], pod.get("spec") or {}
    for value in (meta.get("deletionGracePeriodSeconds"), spec.get("terminationGracePeriodSeconds")):
        if value is not None:
            return float(value)
    return DEFAULT_GRACE_SECONDS
