"""Decoding and forging stateful-session values (header and cookie forms)."""

from __future__ import annotations

import pytest

from harness.traffic import session_state


def test_header_value_is_base64_of_address() -> None:
    # The seed's example: MTAuMjQ0LjEuNDo1Njc4 -> 10.244.1.4:5678
    assert session_state.decode("MTAuMjQ0LjEuNDo1Njc4").address == "10.244.1.4:5678"
    assert session_state.encode_header("10.244.1.4:5678") == "MTAuMjQ0LjEuNDo1Njc4"


def test_cookie_protobuf_without_expiry_as_envoy_issues_it() -> None:
    # Seen from Envoy 1.40: sticky-session="ChIxMjcuMTgyLjE5Ny4xOjU2Nzg="
    value = session_state.decode('"ChIxMjcuMTgyLjE5Ny4xOjU2Nzg="')
    assert value.address == "127.182.197.1:5678"
    assert value.encoding == "protobuf"
    assert value.expires is None


def test_cookie_round_trip_with_expiry() -> None:
    encoded = session_state.encode_cookie("127.0.0.9:5678", expires=1_795_000_000)
    decoded = session_state.decode(encoded)
    assert (decoded.address, decoded.expires) == ("127.0.0.9:5678", 1_795_000_000)


def test_legacy_plain_cookie_is_decoded() -> None:
    assert session_state.decode(session_state.encode_header("127.0.0.9:5678")).encoding == "plain"


@pytest.mark.parametrize("garbage", ["", "!!!", "bm90IGFuIGFkZHJlc3M=", "Cg==", "MTAuMjQ0LjEuNDo1Njc"])
def test_garbage_is_rejected(garbage: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError names the problem
        session_state.decode(garbage)
