"""The words the e2e tests share: session header and cookie names, the manifests they apply, how a client
carries a session, and the one way to attach features to parameters.

A test module defines only what is its own; anything two modules say goes here, so a renamed header or
manifest changes in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from harness.core.mesh import PERSISTENT_SESSION_FLAG, Mesh
from harness.core.needs import needs
from harness.traffic.probe import Probe, Reply, Session

HEADER = "x-session-id"  # the hash key of the header rules, and the header label's session header
COOKIE = "sticky-session"  # the cookie label's session cookie
HASH_COOKIE = "sticky-hash"  # the cookie the hash rules without a ttl read

# Manifests (under manifests/) more than one module applies.
SESSION_HEADER_SERVICE = "services/session-header.yml"
SESSION_COOKIE_SERVICE = "services/session-cookie.yml"
HASH_HEADER_RULE = "destinationrules/hash-header.yml"

# Why the live-upgrade tests are left out of a run without --upgrade-to (e2e/conftest.py, at collection).
NEEDS_UPGRADE_TARGET = "live upgrade needs --upgrade-to (local: an Envoy binary; kind: an Istio version)"


def keyed(keys: list[str]) -> list[Session]:
    """One client per key, each sending its key in the hash header."""
    return [Session(headers={HEADER: key}) for key in keys]


def with_features(items: list[Any], *features: Callable[[Any], str] | str,
                  marks: tuple[pytest.MarkDecorator, ...] = ()) -> list[Any]:
    """Parameters (each with an ``id``) carrying their ``feature`` marks, so feature selection sees them at
    collection: a feature is a name, or a function of the item that gives one."""
    return [
        pytest.param(item, id=item.id, marks=[pytest.mark.feature(
            *[f if isinstance(f, str) else f(item) for f in features]), *marks])
        for item in items
    ]


# -- stateful sessions ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mode:
    """Header or cookie sessions: which Service manifest, and how a client carries the value."""

    id: str
    service: str
    feature: str
    new_session: Callable[[], Session]
    issued: Callable[[Reply], str | None]  # the value a reply hands out, if any
    carrying: Callable[[str], Session]  # a client that presents `value`

    def value_of(self, session: Session) -> str | None:
        return session.headers.get(HEADER) if self.id == "header" else session.cookies.get(COOKIE)


def issued_cookie(reply: Reply) -> str | None:
    """The session cookie a reply sets, if any."""
    for raw in reply.set_cookies():
        name, _, rest = raw.partition("=")
        if name.strip() == COOKIE:
            return rest.split(";", 1)[0]
    return None


HEADER_MODE = Mode("header", SESSION_HEADER_SERVICE, "stateful-header",
                   lambda: Session(keep_header=HEADER), lambda r: r.header(HEADER),
                   lambda value: Session(headers={HEADER: value}, keep_header=HEADER))
COOKIE_MODE = Mode("cookie", SESSION_COOKIE_SERVICE, "stateful-cookie",
                   Session, issued_cookie, lambda value: Session(cookies={COOKIE: value}))
# Both modes as parameters: each with its feature, and the need every stateful-session test has.
MODES = with_features([HEADER_MODE, COOKIE_MODE], lambda m: m.feature, marks=(needs("istiod-env"),))


def enable(mesh: Mesh, service: str) -> None:
    """Persistent sessions on: the Service with its session label, and the flag on in istiod (a test that
    calls this declares ``needs("istiod-env")``)."""
    mesh.apply(service)
    mesh.set_istiod_env(PERSISTENT_SESSION_FLAG, "true")


def establish(probe: Probe, sessions: list[Session]) -> list[Session]:
    """Send each session's first requests (the probe's rounds), so each is placed on a pod."""
    probe.run(sessions)
    return sessions
