"""The echo app behind every mesh: one stdlib file, run as a local process or in a container.

Each pod answers ``Pod: <name> - IP: <ip>`` so a client can tell who served it. It can hold a request
open (``/?hold=<seconds>``) so tests can load a pod with in-flight requests (LEAST_REQUEST), and it has a
readiness endpoint (``/healthz``) for the local mesh and for a Kubernetes readiness probe.

Configuration comes from the environment, as the Deployment's downward API provides it:
POD_NAME, POD_IP, PORT (default 5678), BIND (default: POD_IP), DRAIN_SECONDS (default 5: how long
SIGTERM waits for requests being answered; held requests are answered at once) and
SHUTDOWN_LINGER_SECONDS (default 0). With a linger, SIGTERM first fails the readiness endpoint and keeps
serving until no request has come for a moment (at most the linger): behind Istio's stateful sessions a
terminating pod's endpoint stays (DRAINING) for the sessions it holds until its readiness fails, so an
app that closed its listener at SIGTERM would fail those requests until the endpoint leaves.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_HOLD_SECONDS = 600.0  # a safety cap: clients end their holds by closing the connection
DRAIN_SECONDS = float(os.environ.get("DRAIN_SECONDS", "5"))
LINGER_SECONDS = float(os.environ.get("SHUTDOWN_LINGER_SECONDS", "0"))
# No request for this long after SIGTERM: the endpoint has left, stop serving.
QUIET_SECONDS = float(os.environ.get("SHUTDOWN_QUIET_SECONDS", "0.5"))
SHUTTING_DOWN = threading.Event()  # wakes held requests so a terminating pod answers them at once


class InFlight:
    """Requests being answered, so SIGTERM can let them finish (graceful shutdown) but not wait forever."""

    def __init__(self) -> None:
        self.count = 0
        self.last_request = time.monotonic()
        self.idle = threading.Condition()

    def __enter__(self) -> None:
        with self.idle:
            self.count += 1
            self.last_request = time.monotonic()

    def __exit__(self, *_: object) -> None:
        with self.idle:
            self.count -= 1
            self.idle.notify_all()

    def wait_quiet(self, quiet: float, timeout: float) -> None:
        """Until no request has started for ``quiet`` seconds, at most ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.idle:
            while (now := time.monotonic()) < deadline and now - self.last_request < quiet:
                self.idle.wait(min(quiet - (now - self.last_request), deadline - now))

    def wait_idle(self, timeout: float) -> None:
        with self.idle:
            self.idle.wait_for(lambda: self.count == 0, timeout)


IN_FLIGHT = InFlight()


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the gateway pools upstream connections
    server_version = "sticky-echo"
    # One buffered write per response and no Nagle: otherwise headers and body leave in two segments and
    # delayed ACKs cost 40 ms per request.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    identity = b""

    def do_GET(self) -> None:
        with IN_FLIGHT:
            self._get()

    def _get(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/healthz":
            if SHUTTING_DOWN.is_set():
                self._answer(503, b"shutting down\n")
            else:
                self._answer(200, b"ok\n")
            return
        hold = parse_qs(url.query).get("hold")
        if hold:
            try:
                seconds = min(max(float(hold[0]), 0.0), MAX_HOLD_SECONDS)
            except ValueError:
                self._answer(400, b"hold must be a number of seconds\n")
                return
            SHUTTING_DOWN.wait(seconds)
        self._answer(200, self.identity)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Silence per-request logging: thousands of requests per test would drown real errors."""


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, EchoHandler, bind_and_activate=False)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server_bind()
        self.server_activate()


def receive_identity() -> None:
    """With IDENTITY_ON_STDIN=1, wait for one line ``POD_NAME POD_IP PORT BIND`` before serving.

    Lets the local mesh keep a warm process ready (the interpreter and http.server already imported)
    and give it a pod's identity in a millisecond, instead of paying Python's start-up per new pod.
    """
    if os.environ.get("IDENTITY_ON_STDIN") != "1":
        return
    fields = sys.stdin.readline().split()
    if len(fields) != 4:
        sys.exit(0)  # the harness closed stdin without using this spare: nothing to serve
    for key, value in zip(("POD_NAME", "POD_IP", "PORT", "BIND"), fields, strict=True):
        os.environ[key] = value


def main() -> int:
    receive_identity()
    name = os.environ.get("POD_NAME") or socket.gethostname()
    ip = os.environ.get("POD_IP") or "127.0.0.1"
    port = int(os.environ.get("PORT", "5678"))
    bind = os.environ.get("BIND") or ip
    EchoHandler.identity = f"Pod: {name} - IP: {ip}\n".encode()
    try:
        server = EchoServer((bind, port))
    except OSError as error:
        print(f"echo_server: cannot listen on {bind}:{port}: {error}", file=sys.stderr)
        return 2

    def linger_then_stop() -> None:
        if LINGER_SECONDS > 0:
            IN_FLIGHT.wait_quiet(QUIET_SECONDS, LINGER_SECONDS)
        server.shutdown()

    def stop(_signum: int, _frame: object) -> None:
        SHUTTING_DOWN.set()
        threading.Thread(target=linger_then_stop, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"echo_server: {name} listening on {bind}:{port}", flush=True)
    server.serve_forever(poll_interval=0.02)
    server.server_close()
    IN_FLIGHT.wait_idle(DRAIN_SECONDS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
