"""A source that returns junk or raises: a typed error, nothing cached, the next call retries."""

from __future__ import annotations

from typing import Any

import pytest

from swr_token import (
    ConfigurationError,
    InvalidTokenError,
    Token,
    TokenClient,
    TokenError,
    TokenFetchError,
    TokenRejectedError,
)
from swr_token.testing import FakeClock

from .conftest import FakeSource, drive, mint


def _expired(clock: FakeClock) -> str:
    return mint(clock, iat=clock.wall() - 120, lifetime=60)


JUNK: list[tuple[str, Any, type[TokenError], str]] = [
    ("not a JWT", "definitely-not-a-jwt", InvalidTokenError, "not a parseable JWT"),
    ("JWT without exp", "NOEXP", InvalidTokenError, "no numeric 'exp'"),
    ("already expired", "EXPIRED", InvalidTokenError, "already expired"),
    ("not a string", 42, InvalidTokenError, "returned int"),
    ("None", None, InvalidTokenError, "returned NoneType"),
    ("bytes", b"abc.def.ghi", InvalidTokenError, "returned bytes"),
]


@pytest.mark.parametrize(("case", "value", "error", "message"), JUNK, ids=[j[0] for j in JUNK])
def test_junk_is_a_typed_error_nothing_cached_next_call_asks_again(
        client: TokenClient, source: FakeSource, clock: FakeClock, case: str, value: Any,
        error: type[TokenError], message: str) -> None:
    import jwt as pyjwt

    if value == "NOEXP":
        value = pyjwt.encode({"iat": clock.wall()}, "k" * 32, algorithm="HS256")
    elif value == "EXPIRED":
        value = _expired(clock)
    source.script.append(lambda _req: value)
    with pytest.raises(error, match=message) as info:
        client.get_token("s1")
    if isinstance(value, str):
        assert value not in str(info.value)
    assert client.stats()["entries"] <= 1 and client.invalidate("s1") is False  # no token
    # No fail-fast window for an unusable token: the very next call asks the source again.
    assert client.get_token("s1") == source.issued[-1]
    assert source.count == 2


def test_source_exception_is_wrapped_with_cause_and_retried(
        clock: FakeClock, source: FakeSource) -> None:
    boom = ConnectionResetError("peer said secret-value-123")
    source.script.extend([boom] * 4)
    with TokenClient(source, clock=clock) as client:
        with pytest.raises(TokenFetchError) as info:
            drive(clock, client, lambda: client.get_token("s1"))
        assert info.value.__cause__ is boom
        assert "ConnectionResetError" in str(info.value)
        assert "secret-value-123" not in str(info.value)  # the source's own text stays out
        assert source.count == 4  # the default policy: four attempts
        # Within the fail-fast window the failure is raised at once, without a request.
        with pytest.raises(TokenFetchError):
            client.get_token("s1")
        assert source.count == 4
        clock.advance(1.5)
        assert client.get_token("s1") == source.issued[-1]


def test_rejection_is_not_retried(client: TokenClient, source: FakeSource) -> None:
    source.script.append(TokenRejectedError("session ended", status=404))
    with pytest.raises(TokenRejectedError, match="session ended") as info:
        client.get_token("s1")
    assert info.value.status == 404
    assert source.count == 1


def test_opaque_token_from_source(client: TokenClient, source: FakeSource) -> None:
    source.script.append(lambda _req: Token("opaque-abc", expires_in=300))
    info = client.get_token_info("s1")
    assert info.raw == "opaque-abc"
    assert info.remaining() == 300
    assert client.get_token("s1") == "opaque-abc"
    assert source.count == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"poll_interval": 0}, "poll_interval"),
        ({"poll_interval": -1}, "poll_interval"),
        ({"background_refresh_threshold": -1}, "background_refresh_threshold"),
        ({"background_refresh_threshold": "15"}, "background_refresh_threshold"),
        ({"margin": float("inf")}, "margin"),
        ({"max_entries": 0}, "max_entries"),
        ({"fetch_timeout": 0}, "fetch_timeout"),
    ],
)
def test_bad_options_are_clear_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        TokenClient(lambda req: "x", **kwargs)
    assert isinstance(info.value, ValueError)


def test_source_must_be_callable() -> None:
    with pytest.raises(ConfigurationError, match="source must be callable"):
        TokenClient("https://example.com")  # type: ignore[arg-type]


def test_plain_callable_source(clock: FakeClock) -> None:
    with TokenClient(lambda req: mint(clock, claims={"sid": req.session_id}),
                     clock=clock) as client:
        import jwt as pyjwt

        raw = client.get_token("sess_42")
        assert pyjwt.decode(raw, options={"verify_signature": False})["sid"] == "sess_42"


def test_verifier_refusal_is_invalid_and_never_cached(clock: FakeClock,
                                                      source: FakeSource) -> None:
    seen: list[str] = []

    def verifier(token: Token) -> None:
        seen.append(token.fingerprint)
        if len(seen) == 1:
            raise InvalidTokenError("signature does not verify")

    with TokenClient(source, clock=clock, verifier=verifier) as client:
        with pytest.raises(InvalidTokenError, match="signature"):
            client.get_token("s1")
        assert client.get_token("s1") == source.issued[-1]  # asked again, verified, cached
        assert client.get_token("s1") == source.issued[-1]
        assert source.count == 2 and len(seen) == 2
