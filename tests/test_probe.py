"""The probe's parsing and client-state keeping (no gateway needed)."""

from __future__ import annotations

from harness.traffic.probe import Probe, Reply, Session, parse_identity


def reply(body: str = "Pod: app-abc-x1 - IP: 127.0.0.5\n", **headers: str) -> Reply:
    return Reply(200, body, tuple((k.replace("_", "-"), v) for k, v in headers.items()), connection=1)


def test_identity_is_parsed_from_the_echo_body() -> None:
    assert parse_identity("Pod: sticky-session-app-7d9f-abcde - IP: 10.244.1.4") == (
        "sticky-session-app-7d9f-abcde", "10.244.1.4")
    assert parse_identity("upstream connect error") is None
    assert reply().pod == "app-abc-x1"
    assert reply().ip == "127.0.0.5"


def test_session_keeps_cookies_verbatim_like_a_browser() -> None:
    session = Session()
    session.remember(reply(set_cookie='sticky-session="ChIxMjcuMTgyLjE5Ny4xOjU2Nzg="; Path=/; HttpOnly'))
    assert session.cookies == {"sticky-session": '"ChIxMjcuMTgyLjE5Ny4xOjU2Nzg="'}
    assert ("cookie", 'sticky-session="ChIxMjcuMTgyLjE5Ny4xOjU2Nzg="') in session.request_headers()


def test_session_keeps_the_session_header_only_when_asked() -> None:
    plain = Session()
    plain.remember(reply(x_session_id="MTI3LjAuMC41OjU2Nzg="))
    assert "x-session-id" not in plain.headers
    keeping = Session(keep_header="x-session-id")
    keeping.remember(reply(x_session_id="MTI3LjAuMC41OjU2Nzg="))
    assert keeping.headers["x-session-id"] == "MTI3LjAuMC41OjU2Nzg="


def test_query_parameters_go_into_the_target() -> None:
    assert Session(query={"session": "u 1"}).request_target() == "/?session=u+1"


def test_probe_refuses_non_http_urls() -> None:
    import pytest

    with pytest.raises(ValueError, match="plain HTTP"):
        Probe("https://127.0.0.1:1")
