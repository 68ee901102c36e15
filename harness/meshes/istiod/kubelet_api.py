"""The kubelet's HTTPS API, the one part ``kubectl logs`` needs: ``GET /containerLogs/<ns>/<pod>/<container>``.

``kubectl logs`` asks the API server, which connects to the kubelet of the pod's node at the Node's
``status.daemonEndpoints.kubeletEndpoint.Port`` on its InternalIP (the API server runs with
``--kubelet-preferred-address-types=InternalIP``), over TLS, and streams the answer back. This server
listens on 127.0.0.1 on a free port with a self-signed certificate (the API server is not given a CA for
kubelets, so it does not verify it, as with a default kube-apiserver), and answers from the log file a
lookup names for the pod: the node agent's pods, istiod's pod and the gateway pod. The query parameters
kubectl sends are honoured where they mean something here: ``tailLines``, ``limitBytes`` and ``follow``
(stream until the pod's process is gone or kubectl hangs up); ``previous`` and ``timestamps`` are ignored.
Anything else is 404, as for a kubelet endpoint this node does not serve.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from harness.meshes.istiod.addresses import free_port

FOLLOW_INTERVAL = 0.2


@dataclass(frozen=True)
class LogSource:
    """Where a container's output is, which lines of that file are its own, and whether it still runs."""

    path: Path
    keep: Callable[[str], bool] = lambda line: True
    running: Callable[[], bool] = lambda: False


LogLookup = Callable[[str, str, str], "LogSource | None"]


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sticky-node-agent")])
    now = dt.datetime.now(dt.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
                   .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert, private = directory / "kubelet.crt", directory / "kubelet.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    return cert, private


def select_lines(lines: list[str], tail: int | None, limit: int | None) -> str:
    """``tailLines`` then ``limitBytes``, as the kubelet applies them."""
    chosen = lines[-tail:] if tail is not None and tail >= 0 else lines
    text = "".join(chosen) if tail != 0 else ""
    return text[:limit] if limit is not None else text


class KubeletServer:
    def __init__(self, workdir: Path, lookup: LogLookup) -> None:
        self.workdir = workdir
        self.lookup = lookup
        self.port = free_port()
        self.stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> KubeletServer:
        cert, key = _self_signed(self.workdir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="kubelet-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return None

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                parts = [unquote(part) for part in url.path.strip("/").split("/")]
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self.send_error(404, "this node serves only /containerLogs")
                    return
                _, namespace, pod, container = parts
                source = server.lookup(namespace, pod, container)
                if source is None or not source.path.exists():
                    self.send_error(404, f"no logs for {namespace}/{pod}/{container} on this node")
                    return
                query = {key: values[-1] for key, values in parse_qs(url.query).items()}
                tail = int(query["tailLines"]) if "tailLines" in query else None
                limit = int(query["limitBytes"]) if "limitBytes" in query else None
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                with source.path.open(errors="replace") as log:
                    lines = [line for line in log.readlines() if source.keep(line)]
                    self.wfile.write(select_lines(lines, tail, limit).encode())
                    self.wfile.flush()
                    if query.get("follow") != "true":
                        return
                    with contextlib.suppress(OSError):  # kubectl hung up
                        while not server.stopping.is_set():
                            chunk = "".join(line for line in log.readlines() if source.keep(line))
                            if chunk:
                                self.wfile.write(chunk.encode())
                                self.wfile.flush()
                            elif not source.running():
                                return
                            time.sleep(FOLLOW_INTERVAL)

        return Handler
