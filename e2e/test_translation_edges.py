"""What users meet where the local mesh's translation once differed from istiod (issue 11).

- A pod a key hashes to refuses connections (its process died before Kubernetes removed its endpoint):
  istiod gives a route with a consistent hash its default retry policy *without* the ``previous_hosts``
  predicate, so the retries pick the same pod and the keys on it fail; they do not move. Without a hash,
  the same retries go to another pod and nothing fails.
- Both session labels on one Service: the cookie wins and no header value is issued.
- ``ringHash: {}``: no ring config reaches the gateway, and keys still pin.
- What the gateway's connection manager shows clients: ``server: istio-envoy`` (``envoy`` through a sidecar's
  outbound one), normalized paths, websocket upgrades allowed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from e2e.vocabulary import COOKIE, HEADER
from harness.core.mesh import PERSISTENT_SESSION_FLAG, Mesh
from harness.core.needs import needs
from harness.core.stats import ALPHA, binomial_acceptance, samples_to_see_all, samples_to_see_two, share_interval
from harness.core.verdicts import unsupported
from harness.hashing.algorithms import Algorithm, algorithm
from harness.hashing.owners import owned_shares
from harness.traffic import session_state
from harness.traffic.affinity import assert_not_sticky, assert_sticky
from harness.traffic.probe import Probe, Session

DEAD_POD_KEYS = 600  # keys per dead-pod check: +-0.07 at alpha 1e-4 around a share of 1/3
RETRIED_REQUESTS = 300  # sequential requests of the no-hash dead-pod check


HASH_RULES = [algorithm("ring-1024"), algorithm("maglev")]


def kill(mesh: Mesh, name: str) -> None:
    try:
        mesh.kill_pod_process(name)
    except NotImplementedError as error:
        unsupported(str(error))


# -- a dead pod behind a consistent hash ----------------------------------------------------------------
@pytest.mark.parametrize("rule", [
    pytest.param(rule, id=rule.id, marks=pytest.mark.feature("consistent-hash-header", rule.feature))
    for rule in HASH_RULES
])
@needs("pod-kill")
def test_dead_pod_keys_follow_the_retry_policy(rule: Algorithm, mesh: Mesh, probe: Probe,
                                               figures: dict[str, Any]) -> None:
    """A pod's process dies while its endpoint is still ready. What happens to its keys depends on the
    route's retry policy, which istiod builds differently per front door:

    - Gateway: istiod's retry policy for a hash route has no ``previous_hosts`` predicate (release-1.30
      pilot/pkg/networking/core/route/retry/retry.go DefaultConsistentHashPolicy), so Envoy's retries pick
      the same host by the same hash: every key on the dead pod fails with 503 and no key moves. The share
      of failing keys is the dead pod's share of the hash space, which the reference model gives exactly
      for the actual pod addresses; keys hash uniformly, so the failing count is Binomial(n, share), and
      the bound is its acceptance interval at ALPHA (a correct mesh fails it with probability <= 1e-4).
    - Sidecar outbound: the Service's default route keeps the predicate (release-1.31 route.go
      buildSidecarVirtualHostForService, ``ConvertPolicy(nil, false)``), so the dead pod's keys are retried
      on other pods and (nearly) all succeed, while keys of live pods keep their pods.

    Which case applies is read from the route in the gateway's config (``retries_other_hosts``, which the
    fidelity test compares with real istiod's), so the test checks that Envoy does what that route says.
    The dead pod is chosen from the model (its largest owner), not from the measured keys.
    """
    mesh.apply(rule.manifest)
    pods = mesh.pods()
    by_name = {pod.name: pod for pod in pods}
    shares = owned_shares(rule.build([pod.address for pod in pods]))
    victim = max(pods, key=lambda pod: shares[pod.address])
    keys = [f"dead-pod-{i}" for i in range(DEAD_POD_KEYS)]
    before = [Session(headers={HEADER: key}) for key in keys]
    probe.run(before)
    assert all(s.replies[-1].status == 200 and s.last_pod in by_name for s in before), "not every key was served"

    kill(mesh, victim.name)
    after = [Session(headers={HEADER: key}) for key in keys]
    probe.run(after)

    on_victim = {i for i, s in enumerate(before) if s.last_pod == victim.name}
    failed = {i for i, s in enumerate(after) if s.replies[-1].status >= 500}
    moved = {i for i, s in enumerate(after) if i not in failed and s.last_pod != before[i].last_pod}
    statuses = Counter(s.replies[-1].status for s in after)
    expected = shares[victim.address]
    bound = share_interval(DEAD_POD_KEYS, expected)
    figures.update(keys=DEAD_POD_KEYS, statuses=dict(statuses), keys_on_dead_pod=len(on_victim),
                   failed_share=len(failed) / DEAD_POD_KEYS, failed_share_n=DEAD_POD_KEYS,
                   failed_share_expected=expected, moved_keys=len(moved))
    retries_other_hosts = all(route["retries_other_hosts"] for route in mesh.gateway_facts()["routes"])
    figures["retries_other_hosts"] = retries_other_hosts
    if retries_other_hosts:
        # Envoy re-hashes each host re-selection attempt (ring and maglev alike), so a key fails only when all
        # its re-hashed picks land on the dead pod again: a few keys per run, never most of them.
        figures.update(retried_share=len(moved & on_victim) / max(1, len(on_victim)),
                       retried_share_n=len(on_victim))
        assert failed <= on_victim, f"{len(failed - on_victim)} keys of live pods failed: {dict(statuses)}"
        assert moved <= on_victim, f"{len(moved - on_victim)} keys of live pods changed pod after {victim.name} died"
        assert len(moved) > len(on_victim) / 2, (
            f"only {len(moved)} of the dead pod's {len(on_victim)} keys were answered by another pod, although "
            "the route retries on other hosts")
        return
    moved_off_victim = moved & on_victim
    assert not moved_off_victim, (
        f"{len(moved_off_victim)}/{len(on_victim)} keys of the dead pod were answered by other pods: a retry "
        "picked another host, which istiod's retry policy for a hash route does not do")
    assert not moved, f"{len(moved)} keys of live pods changed pod after {victim.name} died"
    assert failed == on_victim, (
        f"{len(failed - on_victim)} keys of live pods failed, {len(on_victim - failed)} keys of the dead pod "
        "did not")
    assert set(statuses) <= {200, 503}, f"unexpected statuses {dict(statuses)}"
    assert len(failed) / DEAD_POD_KEYS in bound, (
        f"{len(failed) / DEAD_POD_KEYS:.3f} of keys failed; the model gives the dead pod {expected:.3f} of the "
        f"hash space (acceptance {bound} at alpha {ALPHA})")


@pytest.mark.feature("load-balancing")
@needs("pod-kill")
def test_dead_pod_without_hash_is_retried_on_another_pod(mesh: Mesh, probe: Probe,
                                                         figures: dict[str, Any]) -> None:
    """The negative side: without a consistent hash istiod's default retry policy keeps ``previous_hosts``
    (retry.go DefaultPolicy), so a request that met the dead pod is retried on another one.

    A request fails only if its first attempt and both retries (each re-selecting up to 5 more times while
    it draws a host already tried) all pick the dead pod: 13 draws. Sequential requests leave every host
    idle, so LEAST_REQUEST draws each host with probability 1/3; the bound allows 1/2 per draw, so a
    request fails with probability at most 2^-13, and the failed count's acceptance bound at ALPHA comes
    from Binomial(n, 2^-13). Were the predicate missing, 1/27 of requests would fail (about 11 of 300).
    """
    victim = mesh.pods()[0]
    kill(mesh, victim.name)
    sessions = [Session() for _ in range(RETRIED_REQUESTS)]
    probe.like(concurrency=1).run(sessions)
    statuses = Counter(s.replies[-1].status for s in sessions)
    failed = sum(count for status, count in statuses.items() if status >= 500)
    on_victim = sum(1 for s in sessions if s.last_pod == victim.name)
    per_request = 0.5 ** 13
    _, allowed = binomial_acceptance(RETRIED_REQUESTS, per_request)
    figures.update(requests=RETRIED_REQUESTS, statuses=dict(statuses), failed=failed, allowed_failures=allowed,
                   pods_reached=len({s.last_pod for s in sessions} - {None}))
    assert on_victim == 0, f"{on_victim} requests were answered by the dead pod {victim.name}"
    assert failed <= allowed, (
        f"{failed}/{RETRIED_REQUESTS} requests failed with a dead pod and no hash (at most {allowed} at alpha "
        f"{ALPHA}): the retries did not move to another pod")


# -- both session labels on one Service --------------------------------------------------------------------
@pytest.mark.feature("stateful-cookie", "stateful-header")
@pytest.mark.istiod_env({PERSISTENT_SESSION_FLAG: "true"})
@needs("istiod-env")
def test_both_session_labels_cookie_wins(mesh: Mesh, probe: Probe, figures: dict[str, Any]) -> None:
    """Cookie and header labels on one Service: istiod uses the cookie and ignores the header label
    (release-1.30 pilot/pkg/networking/util/util.go MaybeBuildStatefulSessionFilterConfig). New sessions
    get the cookie and no header; a header value naming a pod pins nothing (the negative side); a cookie
    naming one pod wins over a header naming another."""
    mesh.apply("services/session-both-labels.yml")
    mesh.set_istiod_env(PERSISTENT_SESSION_FLAG, "true")
    pods = mesh.pods()
    by_name = {pod.name: pod for pod in pods}

    fresh = [Session(keep_header=HEADER) for _ in range(samples_to_see_all(len(pods), ALPHA))]
    probe.run(fresh)
    for session in fresh:
        reply = session.replies[0]
        assert reply.header(HEADER) is None, f"a header value was issued: {HEADER}: {reply.header(HEADER)}"
        assert COOKIE in session.cookies, f"no {COOKIE} cookie issued: {reply.set_cookies()}"
        assert session_state.decode(session.cookies[COOKIE]).address == by_name[reply.pod or ""].address

    target, other = pods[0], pods[1]
    header_only = Session(headers={HEADER: session_state.encode_header(target.address)}, keep_cookies=False)
    probe.run([header_only], rounds=samples_to_see_two(), fresh_connections=True)
    assert all(r.header(HEADER) is None for r in header_only.replies), "a header value was issued"
    assert_not_sticky(header_only, "a header value naming a pod, with both labels on the Service")

    both = Session(cookies={COOKIE: session_state.encode_cookie(target.address)},
                   headers={HEADER: session_state.encode_header(other.address)})
    probe.run([both], rounds=4)
    assert both.distinct_pods() == {target.name}, f"the cookie named {target.name}, requests reached {both.pods}"
    figures.update(new_sessions=len(fresh), header_only_requests=len(header_only.replies),
                   header_only_pods=len(header_only.distinct_pods()))


# -- ringHash without a size --------------------------------------------------------------------------------
@pytest.mark.feature("config", "consistent-hash-header", "ring-hash")
def test_ring_hash_without_size_sends_no_ring_config(mesh: Mesh, probe: Probe) -> None:
    """``ringHash: {}`` (a size of 0): istiod sends RING_HASH with no ring config (release-1.30
    pilot/pkg/networking/core/cluster_traffic_policy.go ApplyRingHashLoadBalancer), so Envoy's own default
    minimum applies; keys still pin."""
    mesh.apply("destinationrules/hash-header-ring-empty.yml")
    facts = mesh.gateway_facts()
    assert facts["cluster"]["lb_policy"] == "RING_HASH", facts["cluster"]
    assert facts["cluster"]["minimum_ring_size"] == "", f"a ring size reached the gateway: {facts['cluster']}"
    sessions = [Session(headers={HEADER: f"ring-empty-{i}"}) for i in range(100)]
    probe.run(sessions, rounds=2)
    assert_sticky(sessions, "ringHash: {}")


# -- the connection manager as clients see it ---------------------------------------------------------------
@pytest.mark.feature("config")
def test_gateway_answers_like_an_istio_gateway(mesh: Mesh, probe: Probe, figures: dict[str, Any]) -> None:
    """What istiod's gateway connection manager shows clients (release-1.30 pilot/pkg/networking/core/
    listener_builder.go buildHTTPConnectionManager, util/proxy_headers.go): the server header is
    ``istio-envoy`` whatever the app sends; paths are normalized before routing (``/x/../healthz`` reaches
    the pod as ``/healthz``, its readiness endpoint); a websocket upgrade request is forwarded to the pod.
    Each fails without its setting (checked on Envoy 1.40: ``server: envoy``, the pod's identity, 403)."""
    reply = probe.get()[0]
    assert reply.status == 200, reply
    # A sidecar's outbound connection manager sets no server name (release-1.31 util/proxy_headers.go
    # GetProxyHeadersFromProxyConfig: "Likely due to a mistake, outbound uses envoy"), still OVERWRITE.
    server = "envoy" if mesh.front_door == "sidecar" else "istio-envoy"
    assert reply.header("server") == server, f"server: {reply.header('server')} (expected {server})"

    normalized = Session(path="/x/../healthz")
    probe.run([normalized])
    answered = normalized.replies[-1]
    assert (answered.status, answered.body) == (200, "ok\n"), (
        f"/x/../healthz was not normalized to /healthz: {answered.status} {answered.body[:80]!r}")

    upgrade = Session(headers={"connection": "Upgrade", "upgrade": "websocket"})
    probe.run([upgrade], fresh_connections=True)
    answer = upgrade.replies[-1]
    figures.update(server=reply.header("server"), upgrade_status=answer.status)
    # The echo app answers the upgrade as a plain GET: 200 from the pod (Envoy then passes on no body and
    # closes the connection, as for any upgrade the upstream declined).
    assert answer.status == 200, f"the gateway refused a websocket upgrade: {answer.status}"
