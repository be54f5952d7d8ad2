"""The token and its freshness rules: pure functions, table-tested."""

from __future__ import annotations

import math
import time

import jwt
import pytest

from swr_token import Freshness, InvalidTokenError, Token, classify
from swr_token._token import effective_margin, effective_threshold, remaining_at_receipt
from swr_token.testing import FakeClock

F, S, C = Freshness.FRESH, Freshness.STALE, Freshness.CRITICAL


@pytest.mark.parametrize(
    ("remaining", "threshold", "margin", "zone"),
    [
        (60.0, 15.0, 5.0, F),
        (15.0, 15.0, 5.0, F),  # remaining >= threshold is fresh: the boundary is fresh
        (14.999, 15.0, 5.0, S),
        (5.001, 15.0, 5.0, S),
        (5.0, 15.0, 5.0, C),  # remaining <= margin is critical: the boundary is critical
        (0.0, 15.0, 5.0, C),
        (-3.0, 15.0, 5.0, C),  # expired
        (5.001, 5.0, 5.0, F),  # threshold at the floor: no stale zone at all
        (5.0, 5.0, 5.0, C),  # ...and critical still wins at the shared boundary
        (4.999, 5.0, 5.0, C),
    ],
)
def test_classify(remaining: float, threshold: float, margin: float, zone: Freshness) -> None:
    assert classify(remaining, threshold, margin) is zone


@pytest.mark.parametrize(
    ("threshold", "lifetime", "margin", "expected"),
    [
        (15.0, 60.0, 5.0, 15.0),
        (2.0, 60.0, 5.0, 5.0),  # below the floor: raised to the margin
        (0.0, 60.0, 5.0, 5.0),
        (60.0, 60.0, 5.0, 30.0),  # at the lifetime: capped at half of it
        (90.0, 60.0, 5.0, 30.0),
        (59.9, 60.0, 5.0, 59.9),
    ],
)
def test_effective_threshold(threshold: float, lifetime: float, margin: float,
                             expected: float) -> None:
    assert effective_threshold(threshold, lifetime, margin) == expected


@pytest.mark.parametrize(
    ("margin", "lifetime", "expected"),
    [(5.0, 60.0, 5.0), (5.0, 10.1, 5.0), (5.0, 10.0, 2.5), (5.0, 8.0, 2.0), (5.0, 1.0, 0.25)],
)
def test_effective_margin(margin: float, lifetime: float, expected: float) -> None:
    assert effective_margin(margin, lifetime) == expected


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("case", "kwargs", "remaining", "lifetime"),
    [
        ("new jwt", dict(issued_at=NOW, expires=NOW + 60), 60.0, 60.0),
        ("aged 10 s", dict(issued_at=NOW - 10, expires=NOW + 50), 50.0, 60.0),
        ("issued in the future: age clamped to 0",
         dict(issued_at=NOW + 30, expires=NOW + 90), 60.0, 60.0),
        ("older than its lifetime: clamped", dict(issued_at=NOW - 100, expires=NOW - 40),
         0.0, 60.0),
        ("opaque", dict(expires_in=3600.0), 3600.0, 3600.0),
        ("jwt shorter than expires_in", dict(issued_at=NOW, expires=NOW + 60, expires_in=300.0),
         60.0, 60.0),
        ("expires_in shorter than jwt", dict(issued_at=NOW, expires=NOW + 600, expires_in=300.0),
         300.0, 300.0),
        ("no iat", dict(expires=NOW + 42), 42.0, 42.0),
    ],
)
def test_remaining_at_receipt(case: str, kwargs: dict[str, float], remaining: float,
                              lifetime: float) -> None:
    args = dict(issued_at=None, expires=None, expires_in=None, server_time=None,
                wall_now=NOW, started_wall_now=NOW)
    args.update(kwargs)
    assert remaining_at_receipt(**args) == (remaining, lifetime)  # type: ignore[arg-type]


def test_wall_clock_stepped_forward_after_start_does_not_age_a_new_token() -> None:
    # The wall clock jumped an hour ahead after start-up; the token was minted by an issuer
    # on correct time, so its iat is an hour "behind" the local wall clock.
    remaining, _ = remaining_at_receipt(
        issued_at=NOW, expires=NOW + 60, expires_in=None, server_time=None,
        wall_now=NOW + 3600, started_wall_now=NOW)
    assert remaining == 60.0


def test_server_date_wins_over_a_wrong_local_clock() -> None:
    # Local clock an hour behind from the start; the issuer's Date says the token is new.
    remaining, _ = remaining_at_receipt(
        issued_at=NOW, expires=NOW + 60, expires_in=None, server_time=NOW,
        wall_now=NOW - 3600, started_wall_now=NOW - 3600)
    assert remaining == 59.0  # end of the Date's second: age never undercounted


def test_server_date_within_the_same_second_uses_the_local_clock() -> None:
    remaining, _ = remaining_at_receipt(
        issued_at=NOW, expires=NOW + 60, expires_in=None, server_time=NOW,
        wall_now=NOW + 0.25, started_wall_now=NOW + 0.25)
    assert remaining == pytest.approx(59.75)


def _jwt(claims: dict[str, object]) -> str:
    return jwt.encode(claims, "k" * 32, algorithm="HS256")


@pytest.mark.parametrize(
    ("raw", "kwargs", "message"),
    [
        ("not-a-jwt", {}, "not a parseable JWT"),
        ("", {}, "non-empty string"),
        (_jwt({"iat": NOW}), {}, "no numeric 'exp'"),
        (_jwt({"iat": NOW, "exp": "soon"}), {}, "'exp' claim is not a sane time"),
        (_jwt({"iat": NOW, "exp": True}), {}, "'exp' claim is not a sane time"),
        ("opaque", {"expires_in": float("nan")}, "finite"),
    ],
)
def test_unusable_tokens_are_invalid(raw: str, kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(InvalidTokenError, match=message) as info:
        Token(raw, **kwargs)
    if raw:
        assert raw not in str(info.value)


def test_non_string_is_invalid() -> None:
    with pytest.raises(InvalidTokenError, match="got int"):
        Token(12345)  # type: ignore[arg-type]


def test_expired_on_arrival_is_invalid() -> None:
    token = Token(_jwt({"iat": NOW - 120, "exp": NOW - 60}))
    with pytest.raises(InvalidTokenError, match="already expired"):
        token.received(deadline_now=0.0, deadline_clock=lambda: 0.0, wall_now=NOW,
                       started_wall_now=NOW)


def test_received_token_counts_down_on_the_deadline_clock() -> None:
    now = [100.0]
    token = Token(_jwt({"iat": NOW - 10, "exp": NOW + 50})).received(
        deadline_now=100.0, deadline_clock=lambda: now[0], wall_now=NOW, started_wall_now=NOW)
    assert token.remaining() == 50.0
    now[0] = 130.0
    assert token.remaining() == 20.0
    assert token.expires_at == NOW + 50
    assert token.lifetime == 60.0
    assert token.issued_at == NOW - 10


def test_repr_never_shows_the_token() -> None:
    raw = _jwt({"iat": NOW, "exp": NOW + 60})
    token = Token(raw)
    for text in (repr(token), str(token)):
        assert raw not in text
        for part in raw.split("."):
            assert part not in text
    assert token.fingerprint in repr(token)


def test_opaque_token_with_expires_in() -> None:
    token = Token("opaque-access-token", expires_in=300)
    assert token.claims == {}
    assert token.issued_at is None


def test_hot_path_bounds_never_serve_what_classify_would_not() -> None:
    """The precomputed fast bounds agree with classify() at and around every boundary,
    including awkward floats, the threshold at its floor, and clocks offset by epoch-sized
    amounts: a reading within both bounds is a fresh token on the deadline clock."""
    import random

    from swr_token._entry import Offsets, Published

    rng = random.Random(7)
    for _ in range(3000):
        deadline = rng.uniform(0, 1e7)
        margin = rng.choice([5.0, 0.1, rng.uniform(0, 10)])
        threshold = rng.choice([margin, margin + rng.uniform(0, 20)])
        token = Token(_jwt({"iat": NOW, "exp": NOW + 60})).received(
            deadline_now=deadline - 60, deadline_clock=lambda: 0.0, wall_now=NOW,
            started_wall_now=NOW)
        clock = FakeClock(deadline=deadline - 60, wall=rng.uniform(1e9, 2e9),
                          monotonic=rng.uniform(0, 1e6))
        offsets = Offsets(clock, clock.monotonic)
        snap = Published(token, threshold=threshold, margin=margin,
                         order=(0.0, 0), offsets=offsets)
        for now in (snap.fresh_until, math.nextafter(snap.fresh_until, math.inf),
                    snap.fresh_until - 1e-7, token.deadline - threshold,
                    token.deadline - margin):
            if now <= snap.fresh_until:
                assert classify(token.deadline - now, threshold, margin) is F
            # The clocks as they would read at deadline-clock time ``now``.
            mono_now, wall_now = now + offsets.monotonic, now + offsets.wall
            if mono_now <= snap.mono_until and wall_now <= snap.wall_until:
                assert now <= snap.fresh_until
                assert classify(token.deadline - now, threshold, margin) is F


def _receive(token: Token, *, max_clock_skew: float = 300.0, max_lifetime: float = 86_400.0,
             wall_now: float = NOW) -> Token:
    return token.received(deadline_now=100.0, deadline_clock=lambda: 100.0, wall_now=wall_now,
                          started_wall_now=wall_now, max_clock_skew=max_clock_skew,
                          max_lifetime=max_lifetime)


def test_a_received_copy_shares_the_string_and_claims_and_leaves_its_source_as_it_was() -> None:
    source = Token(_jwt({"iat": NOW - 10, "exp": NOW + 50, "sid": "sess_1"}))
    copy = _receive(source)
    assert copy is not source and copy == source and hash(copy) == hash(source)
    assert copy.raw is source.raw and copy.claims is source.claims
    assert copy.fingerprint == source.fingerprint and copy.issued_at == NOW - 10
    assert (copy.remaining(), copy.lifetime, copy.deadline) == (50.0, 60.0, 150.0)
    # The source is still unreceived: no lifetime, no deadline, counted by the wall clock.
    assert (source.lifetime, source.deadline, source.notes) == (0.0, 0.0, frozenset())
    assert source.expires_at == NOW + 50
    assert _receive(source).remaining() == 50.0  # and can be received again


def test_remaining_before_receipt_counts_expires_in_from_construction() -> None:
    before = time.time()
    token = Token("opaque-access-token", expires_in=300)
    after = time.time()
    assert before + 300 <= token.expires_at <= after + 300
    left = token.remaining()
    assert token.expires_at - time.time() <= left <= 300.0
    assert token.lifetime == 0.0 and token.notes == frozenset()


def test_remaining_before_receipt_of_a_jwt_is_the_shorter_of_exp_and_expires_in() -> None:
    exp = time.time() + 600
    assert Token(_jwt({"exp": exp})).expires_at == exp
    shorter = Token(_jwt({"exp": exp}), expires_in=60)
    assert shorter.expires_at <= time.time() + 60 and 0 < shorter.remaining() <= 60.0
    assert Token(_jwt({"exp": exp}), expires_in=6000).expires_at == exp


def test_receipt_notes_are_what_the_client_adjusted() -> None:
    honest = Token(_jwt({"iat": NOW, "exp": NOW + 60}), server_time=NOW)
    assert _receive(honest).notes == frozenset()
    odd = Token(_jwt({"iat": NOW + 3600, "exp": NOW + 93_600}), server_time=NOW - 7200)
    copy = _receive(odd)
    assert copy.notes == {"date", "lifetime", "iat"}
    assert copy.issued_at is None and copy.lifetime == 86_400.0
    assert odd.issued_at == NOW + 3600 and odd.notes == frozenset()  # the source keeps its iat


def test_receiving_a_received_copy_judges_the_token_afresh() -> None:
    # A token another client received (and whose future iat it set aside) is judged by the
    # next client on the token's own claims, as if the source had returned the string.
    future = Token(_jwt({"iat": NOW + 600, "exp": NOW + 660}))
    first = _receive(future, max_clock_skew=300.0)
    assert first.issued_at is None and first.notes == {"iat"}
    second = _receive(first, max_clock_skew=900.0)
    assert second.issued_at == NOW + 600 and second.notes == frozenset()
    assert (second.lifetime, second.remaining()) == (60.0, 60.0)
