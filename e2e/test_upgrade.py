"""The regression gate's live part: upgrade the data plane under established sessions.

Sessions are established on version A; the gateway's data plane moves to version B (local mesh: another
Envoy binary on the same port, pods unchanged; kind: a helm upgrade of istiod and the gateway); the suite
measures which sessions kept their pod. Runs only with ``--upgrade-to``, e.g.
``pytest e2e/test_upgrade.py --envoy-bin <envoy 1.38> --upgrade-to <envoy 1.40>``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from e2e.vocabulary import (
    COOKIE,
    HASH_HEADER_RULE,
    HEADER,
    SESSION_COOKIE_SERVICE,
    SESSION_HEADER_SERVICE,
    enable,
)
from harness.core.mesh import PERSISTENT_SESSION_FLAG, Mesh
from harness.core.needs import needs
from harness.core.versions import parse
from harness.traffic import session_state
from harness.traffic.affinity import assert_sticky, placement
from harness.traffic.probe import Probe, Session

SESSIONS = 200


@dataclass(frozen=True)
class Mechanism:
    id: str
    setup: Callable[[Mesh], None]
    new_session: Callable[[int], Session]


SESSIONS_ON = [pytest.mark.istiod_env({PERSISTENT_SESSION_FLAG: "true"}), needs("istiod-env")]
MECHANISMS = [
    pytest.param(Mechanism("stateful-header", lambda mesh: enable(mesh, SESSION_HEADER_SERVICE),
                           lambda i: Session(keep_header=HEADER)),
                 id="stateful-header", marks=[pytest.mark.feature("stateful-header"), *SESSIONS_ON]),
    pytest.param(Mechanism("stateful-cookie", lambda mesh: enable(mesh, SESSION_COOKIE_SERVICE), lambda i: Session()),
                 id="stateful-cookie", marks=[pytest.mark.feature("stateful-cookie"), *SESSIONS_ON]),
    pytest.param(Mechanism("hash-ring", lambda mesh: mesh.apply(HASH_HEADER_RULE),
                           lambda i: Session(headers={HEADER: f"upgrade-{i}"})),
                 id="hash-ring", marks=pytest.mark.feature("consistent-hash-header", "ring-hash")),
    pytest.param(Mechanism("hash-maglev", lambda mesh: mesh.apply("destinationrules/hash-header-maglev.yml"),
                           lambda i: Session(headers={HEADER: f"upgrade-{i}"})),
                 id="hash-maglev", marks=pytest.mark.feature("consistent-hash-header", "maglev")),
]


@pytest.fixture
def upgrade_target(request: pytest.FixtureRequest, session_mesh: Mesh) -> Iterator[str]:
    """The data plane to upgrade to; the mesh returns to where it started afterwards."""
    target = request.config.getoption("--upgrade-to")
    assert target, "e2e/conftest.py excludes every test using this fixture at collection without --upgrade-to"
    original = session_mesh.data_plane_target
    yield str(target)
    session_mesh.upgrade_data_plane(original)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sessions_survive_a_data_plane_upgrade(mechanism: Mechanism, mesh: Mesh, probe: Probe, upgrade_target: str,
                                               figures: dict[str, Any]) -> None:
    """Every session established on A reaches the same pod on B: stateful values name unchanged pods,
    and both versions hash keys to hosts the same way. A change here is a finding for the upgrade."""
    mechanism.setup(mesh)
    sessions = [mechanism.new_session(i) for i in range(SESSIONS)]
    probe.run(sessions, rounds=2)
    assert_sticky(sessions, f"{mechanism.id} before the upgrade")
    before = placement(sessions)
    version_before = mesh.versions()["envoy"]

    mesh.upgrade_data_plane(upgrade_target)
    version_after = mesh.versions()["envoy"]
    probe.run(sessions, rounds=2, fresh_connections=True)
    failed = sum(1 for s in sessions for r in s.replies[-2:] if r.status != 200)
    after = placement(sessions)
    kept = sum(1 for key in before if after[key] == before[key])
    figures.update(envoy_before=version_before, envoy_after=version_after, sessions=SESSIONS,
                   kept_share=kept / SESSIONS, kept_share_n=SESSIONS, failed_requests=failed)
    assert failed == 0, f"{failed} requests failed after the upgrade"
    assert kept == SESSIONS, (
        f"{mechanism.id}: {SESSIONS - kept}/{SESSIONS} sessions changed pod across {version_before} -> {version_after}"
    )


@pytest.mark.feature("stateful-cookie")
@needs("boot-clock", "istiod-env")
def test_ttl_cookie_clock_across_the_upgrade(mesh: Mesh, probe: Probe, upgrade_target: str,
                                            figures: dict[str, Any]) -> None:
    """A real difference between Envoy versions: a stateful cookie's expiry is seconds since boot up to
    1.38 and Unix seconds from 1.39, so a cookie with a TTL issued before the upgrade is already expired
    after it, and its session is re-balanced. Istio issues these cookies without a TTL (since 1.22), so
    Istio users only meet this with a TTL set another way (EnvoyFilter, another control plane); the
    stateful-cookie case above shows TTL-less cookies survive. Here each issued cookie is given the
    expiry A writes for a 3600 s TTL, on A's clock, and the test checks what B makes of it.
    """
    enable(mesh, SESSION_COOKIE_SERVICE)
    sessions = [Session() for _ in range(SESSIONS // 2)]
    probe.run(sessions)
    version_a = parse(mesh.versions()["envoy"])
    for session in sessions:
        address = session_state.decode(session.cookies[COOKIE]).address
        ttl_value = session_state.encode_cookie(address, expires=session_state.expiry_now(version_a) + 3600)
        session.cookies[COOKIE] = f'"{ttl_value}"'
    probe.run(sessions)
    assert not any(s.replies[-1].set_cookies() for s in sessions), "version A did not honour its own TTL cookies"

    mesh.upgrade_data_plane(upgrade_target)
    version_b = parse(mesh.versions()["envoy"])
    probe.run(sessions)
    reissued = sum(1 for s in sessions if s.replies[-1].set_cookies())
    same_clock = (version_a >= session_state.UNIX_CLOCK_SINCE) == (version_b >= session_state.UNIX_CLOCK_SINCE)
    figures.update(envoy_before=mesh_version(version_a), envoy_after=mesh_version(version_b),
                   cookies=len(sessions), expired_after_upgrade=reissued)
    if same_clock:
        assert reissued == 0, f"{reissued}/{len(sessions)} TTL cookies were rejected although both use one clock"
    else:
        assert reissued == len(sessions), (
            f"only {reissued}/{len(sessions)} TTL cookies issued on the old clock were treated as expired"
        )


def mesh_version(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))
