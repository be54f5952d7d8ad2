"""Numbers and clocks from outside are bounded: expires_in, exp, iat, Date, and lifetimes.

An ``InvalidTokenError`` (never an ``OverflowError``, never transient) for numbers that are not
sane; lifetimes capped at ``max_lifetime``; a ``Date`` more than ``max_clock_skew`` off is not
trusted, and a future ``iat`` cannot make honest tokens look older.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest

from swr_token import (
    InvalidTokenError,
    OAuth2ClientCredentialsSource,
    Token,
    TokenClient,
    TokenRequest,
)
from swr_token.testing import FakeClock, InlineExecutor

from .conftest import KEY, FakeSource
from .raw_server import Conn, RawRequest, RawServer, json_answer

HUGE = 10**400  # float() of it raises OverflowError


def _jwt(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, KEY, algorithm="HS256")


def receive(token: Token, clock: FakeClock, **bounds: float) -> Token:
    return token.received(deadline_now=clock.deadline(), deadline_clock=clock.deadline,
                          wall_now=clock.wall(), started_wall_now=clock.wall(), **bounds)


# -- 8. numbers ---------------------------------------------------------------------------------

INSANE = [-5, 0, 0.0, -1e-9, 1e11, float("inf"), float("nan"), HUGE, -HUGE, True, False]


@pytest.mark.parametrize("value", INSANE, ids=repr)
def test_an_insane_expires_in_is_an_invalid_token(value: Any) -> None:
    with pytest.raises(InvalidTokenError, match="expires_in must be a finite number"):
        Token("opaque", expires_in=value)


@pytest.mark.parametrize("claim", ["exp", "iat"])
@pytest.mark.parametrize("value", [*INSANE, "soon", None], ids=repr)
def test_an_insane_exp_or_iat_is_an_invalid_token(claim: str, value: Any,
                                                  clock: FakeClock) -> None:
    claims = {"iat": clock.wall(), "exp": clock.wall() + 60, claim: value}
    with pytest.raises(InvalidTokenError, match=f"'{claim}' claim is not a sane time"):
        Token(_jwt(claims))


def _answer_with(expires_in: bytes) -> Any:
    def answer(conn: Conn, request: RawRequest) -> None:
        body = b'{"access_token": "opaque", "token_type": "Bearer", "expires_in": %s}'
        conn.send(json_answer(200, body % expires_in))
    return answer


@pytest.mark.parametrize("expires_in", [b"-5", b"0", b"1e400", b"1" + b"0" * 399, b"true",
                                        b"1e-9", b"0.5", b'"1e400"', b"1e300"])
def test_an_issuer_sending_insane_numbers_gets_an_invalid_token_error_not_retried(
        expires_in: bytes) -> None:
    with RawServer(_answer_with(expires_in)) as server:
        source = OAuth2ClientCredentialsSource(f"{server.url}/token", "id", "secret")
        with TokenClient(source) as client:
            for calls in (1, 2):  # not retried, no fail-fast window: the next call asks again
                with pytest.raises(InvalidTokenError) as caught:
                    client.get_token(timeout=5.0)
                assert len(server.requests) == calls
                assert "OverflowError" not in repr(caught.value.__cause__)
            assert client.stats()["entries"] <= 1 and client.invalidate() is False
        source.close()


def test_lifetimes_are_capped_at_max_lifetime(clock: FakeClock,
                                              caplog: pytest.LogCaptureFixture) -> None:
    year = 365 * 86400.0
    source = FakeSource(clock)
    source.script = [lambda _r: Token("opaque-1", expires_in=year),
                     lambda _r: _jwt({"iat": clock.wall(), "exp": clock.wall() + year})]
    with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
        assert client.get_token_info("a").remaining() == 86400.0  # the default: a day
        second = client.get_token_info("b")
        assert second.remaining() == second.lifetime == 86400.0
    with TokenClient(source, clock=clock, max_lifetime=600) as client:
        source.script = [lambda _r: Token("opaque-2", expires_in=year)]
        assert client.get_token_info("a").remaining() == 600.0
    assert sum("max_lifetime" in r.getMessage() for r in caplog.records) == 2  # once per client


@pytest.mark.parametrize("left", [1e-9, 0.5, 0.999, 0.0])
def test_a_token_with_under_a_second_left_goes_to_no_one(clock: FakeClock, left: float) -> None:
    source = FakeSource(clock)
    now = clock.wall()
    source.script = [lambda _r: _jwt({"iat": now - 60 + left, "exp": now + left}),
                     lambda _r: Token("opaque", expires_in=left) if left else "not-a-jwt"]
    with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
        for _ in range(2):
            with pytest.raises(InvalidTokenError):
                client.get_token("s")
        assert client.invalidate("s") is False  # nothing was cached
        assert source.count == 2  # and each call asked again


def test_a_critical_arrival_goes_only_to_its_waiters_never_cached_logged_once(
        clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    source = FakeSource(clock)
    aged = [_jwt({"iat": clock.wall() - 57, "exp": clock.wall() + 3, "n": n}) for n in range(3)]
    source.script = list(aged)  # 60 s tokens with 3 s left: inside the 5 s margin
    with TokenClient(source, clock=clock, executor=InlineExecutor(),
                     foreground_executor=InlineExecutor()) as client:
        assert client.get_token("s") == aged[0]  # the waiter gets it
        assert client.get_token("s") == aged[1]  # not cached: the next caller waits again
        assert client.get_token("s") == aged[2]
        assert client.invalidate("s") is False
    logged = [r for r in caplog.records if "arrived with only" in r.getMessage()]
    assert len(logged) == 1 and not any(raw in logged[0].getMessage() for raw in aged)


# -- 9. clocks --------------------------------------------------------------------------------


def _dated(clock: FakeClock, *, issuer_offset: float, lifetime: float = 60.0) -> Any:
    """A source whose issuer clock is ``issuer_offset`` s off: its iat, exp and Date."""
    def mint(_request: TokenRequest) -> Token:
        issuer_now = clock.wall() + issuer_offset
        raw = _jwt({"iat": issuer_now, "exp": issuer_now + lifetime})
        return Token(raw, server_time=float(int(issuer_now)))
    return mint


def test_a_date_within_max_clock_skew_corrects_the_age(clock: FakeClock) -> None:
    token = receive(_dated(clock, issuer_offset=-200.0)(TokenRequest()), clock)
    assert 58.0 <= token.remaining() <= 60.0 and not token.notes  # trusted: 200 s < 300 s


@pytest.mark.parametrize("offset", [-3600.0, -301.5 - 60])
def test_a_date_far_behind_is_not_trusted_and_an_old_token_never_served(
        clock: FakeClock, caplog: pytest.LogCaptureFixture, offset: float) -> None:
    source = FakeSource(clock)
    source.script = [_dated(clock, issuer_offset=offset), _dated(clock, issuer_offset=offset)]
    with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
        for _ in range(2):
            with pytest.raises(InvalidTokenError, match="max_clock_skew=300 s"):
                client.get_token("s")
        assert client.invalidate("s") is False


def test_a_date_far_off_is_logged_once(clock: FakeClock,
                                       caplog: pytest.LogCaptureFixture) -> None:
    source = FakeSource(clock)

    def opaque(_request: TokenRequest) -> Token:
        return Token("opaque-" + str(source.count), expires_in=60,
                     server_time=clock.wall() + 7200)

    source.script = [opaque, opaque, opaque]
    with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
        for _ in range(3):
            assert client.get_token_info("s", skip_cache=True).remaining() == 60.0
    logged = [r for r in caplog.records if "Date header" in r.getMessage()]
    assert len(logged) == 1


def test_a_future_iat_cannot_ratchet_the_freshness_guard(clock: FakeClock) -> None:
    source = FakeSource(clock)
    evil = _dated(clock, issuer_offset=3600.0)  # iat, exp and Date an hour ahead
    source.script = [evil]
    with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
        first = client.get_token_info("s")
        assert first.issued_at is None and {"date", "iat"} <= first.notes
        assert first.remaining() <= 60.0  # not an hour more
        clock.advance(46)  # stale: the background refresh gets an honest token (iat = now)
        client.get_token("s")
        honest = client.get_token_info("s")
        assert honest.raw != first.raw and honest.raw == source.issued[-1]
        assert honest.issued_at == pytest.approx(clock.wall())
        assert client.get_token("s") == honest.raw  # cached and served normally
        assert json.loads(jwt.utils.base64url_decode(honest.raw.split(".")[1]))["iat"] < (
            first.claims["iat"])


def test_max_clock_skew_is_an_option(clock: FakeClock) -> None:
    token = _dated(clock, issuer_offset=-3600.0)(TokenRequest())
    with pytest.raises(InvalidTokenError):
        receive(token, clock)
    trusted = receive(token, clock, max_clock_skew=7200.0)
    assert 58.0 <= trusted.remaining() <= 60.0
