"""The echo app's shutdown: with a linger, SIGTERM fails readiness but keeps answering until requests stop.

Behind Istio's stateful sessions a terminating pod's endpoint stays (DRAINING) for its sessions until
its readiness fails; an app that closed its listener at SIGTERM fails them in between (the istiod mesh's
rollout test saw 503s that way).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from harness.core.manifests import APP_SOURCE
from harness.core.timeouts import poll

# The app's quiet period in these tests: long enough that a loaded machine's scheduling delays (seconds at a
# load of 10 on 2 cores) never look like the end of the traffic.
QUIET = 3.0


def start(port: int, linger: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "POD_NAME": "echo-test", "POD_IP": "127.0.0.1", "PORT": str(port),
           "SHUTDOWN_LINGER_SECONDS": linger, "SHUTDOWN_QUIET_SECONDS": str(QUIET)}
    process = subprocess.Popen([sys.executable, str(APP_SOURCE)], env=env, stdout=subprocess.DEVNULL)
    for attempt in poll(10.0, "echo app answering"):
        with attempt:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200
            except httpx.HTTPError as error:
                raise AssertionError(str(error)) from None
    return process


@pytest.fixture
def port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_linger_fails_readiness_and_keeps_serving(port: int) -> None:
    process = start(port, "30")
    try:
        process.send_signal(signal.SIGTERM)
        url = f"http://127.0.0.1:{port}"
        for attempt in poll(10.0, "readiness failing after SIGTERM"):
            with attempt:
                assert httpx.get(f"{url}/healthz", timeout=5.0).status_code == 503
        # Requests keep coming (a draining endpoint's sessions): each is answered, and the app stays.
        for _ in range(8):
            assert httpx.get(url, timeout=5.0).text.startswith("Pod: echo-test")
            time.sleep(0.2)  # a client's pace, well under the app's quiet period
        assert process.poll() is None
        started = time.monotonic()
        process.wait(timeout=20)  # quiet for QUIET seconds: the endpoint has left, the app stops
        assert time.monotonic() - started < 20, "the app waited for its linger, not for quiet"
    finally:
        process.kill()
        process.wait()


def test_without_linger_sigterm_stops_at_once(port: int) -> None:
    process = start(port, "0")
    try:
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=5)
        assert time.monotonic() - started < 1.0
    finally:
        process.kill()
        process.wait()
