"""Where one istiod mesh listens, chosen so that it never shares a port with anything else on the machine.

Every istiod mesh (a suite run, a hands-on ``python -m harness.meshes.istiod``, two of either at once) gets:

- a pair of loopback addresses of its own, ``127.A.B.10`` for istiod and ``127.A.B.11`` for the gateway
  pod, claimed for the mesh's lifetime by holding a UDP socket on ``127.A.B.10:15010``. TCP listeners
  never touch UDP ports, so the claim costs istiod nothing, and a second mesh that draws the same A.B
  finds the claim taken and draws again. The kernel drops the claim when the process ends, however it
  ends: no lock file is left behind. istiod's plaintext xDS keeps Istio's port 15010 on that address
  (pilot-agent talks to a CA without TLS only when its address ends in ``:15010``,
  pkg/istio-agent/plugins.go); every other port is drawn free.
- ports drawn free "on every address": bound on 0.0.0.0 for the draw, so a port some other program holds
  on any address, the wildcard included, is never drawn. The component then binds it on loopback (or,
  where Istio's own code binds the wildcard, as pilot-agent's status server and the gateway's listeners
  for a Gateway's servers do, on the wildcard, which the draw covered).

A port taken between the draw and the bind makes the component exit; ``processes.exit_reason`` names the
component and the port in one line.
"""

from __future__ import annotations

import contextlib
import errno
import random
import socket
from dataclasses import dataclass, field

from harness.core.mesh import MeshError

XDS_PLAINTEXT_PORT = 15010
WILDCARD = "0.0.0.0"  # noqa: S104 - only bound to draw a port (never listened on)
CLAIM_ATTEMPTS = 50
# 127.20.0.0 - 127.63.255.255: apart from the pods' addresses (harness/meshes/local/pods.AddressPool draws
# 127.64-250.x.y), so a pod's IP is never istiod's or the gateway's.
FIRST_OCTET_RANGE = (20, 63)


def free_port() -> int:
    """A TCP port no socket holds on any address right now (drawn by binding the wildcard)."""
    with socket.socket() as sock:
        sock.bind((WILDCARD, 0))  # bound for the draw only, never listened on
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: each socket is held until all are drawn, so the kernel cannot hand the
    same port out twice (separate ``free_port`` calls can, and istiod then fails to bind its second listener)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((WILDCARD, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def port_is_free(address: str, port: int) -> bool:
    """Whether a TCP listener could bind ``address:port`` now (nothing holds it there or on the wildcard)."""
    with socket.socket() as sock:
        try:
            sock.bind((address, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


@dataclass
class MeshAddresses:
    """The claimed pair of addresses; ``release`` (or the process ending) gives them back."""

    istiod: str
    gateway: str
    _claim: socket.socket | None = field(default=None, repr=False)

    @property
    def xds(self) -> str:
        return f"{self.istiod}:{XDS_PLAINTEXT_PORT}"

    def release(self) -> None:
        if self._claim is not None:
            self._claim.close()
            self._claim = None


def claim_addresses(rng: random.Random | None = None) -> MeshAddresses:
    """Draw a pair of loopback addresses no other istiod mesh holds, with istiod's 15010 free there."""
    rng = rng or random.Random()
    last = ""
    for _ in range(CLAIM_ATTEMPTS):
        prefix = f"127.{rng.randint(*FIRST_OCTET_RANGE)}.{rng.randint(0, 255)}"
        istiod = f"{prefix}.10"
        claim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            claim.bind((istiod, XDS_PLAINTEXT_PORT))
        except OSError as error:
            claim.close()
            last = f"{istiod}: {error.strerror}"
            continue
        if not port_is_free(istiod, XDS_PLAINTEXT_PORT):
            claim.close()
            last = f"TCP {istiod}:{XDS_PLAINTEXT_PORT} is taken"
            continue
        return MeshAddresses(istiod=istiod, gateway=f"{prefix}.11", _claim=claim)
    raise MeshError(f"no free loopback address for istiod after {CLAIM_ATTEMPTS} draws (last: {last}); "
                    f"is TCP port {XDS_PLAINTEXT_PORT} held on 0.0.0.0 by another program?")
