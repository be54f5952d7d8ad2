"""SPEC section 3: what get_token does in each state, on a fake clock, every boundary."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from swr_token import TokenClient, TokenFetchError
from swr_token.testing import FakeClock, InlineExecutor

from .conftest import FakeSource


@dataclass
class Row:
    name: str
    at: float  # seconds after the token's iat (60 s tokens)
    kwargs: dict[str, object]
    serves_cached: bool  # the caller gets the token it had
    requests: int  # upstream requests this call causes
    waits: bool  # the caller waited for a fetch


ROWS = [
    Row("fresh at issue", 0, {}, True, 0, False),
    Row("fresh at exactly the threshold (15 s left)", 45, {}, True, 0, False),
    Row("stale just past the threshold", 45.5, {}, True, 1, False),
    Row("stale just above the margin", 54.9, {}, True, 1, False),
    Row("critical at exactly the margin (5 s left)", 55, {}, False, 1, True),
    Row("critical at 1 s left", 59, {}, False, 1, True),
    Row("expired", 61, {}, False, 1, True),
    Row("long expired", 3600, {}, False, 1, True),
    Row("per-call threshold 30: fresh at 30 s", 30, {"background_refresh_threshold": 30}, True,
        0, False),
    Row("per-call threshold 30: stale at 31 s", 31, {"background_refresh_threshold": 30}, True,
        1, False),
    Row("threshold below the floor is raised to the margin: fresh at 54.9",
        54.9, {"background_refresh_threshold": 1}, True, 0, False),
    Row("threshold at the floor: no stale zone, critical at 55",
        55, {"background_refresh_threshold": 0}, False, 1, True),
    Row("threshold above lifetime capped at 30: fresh at 30", 30,
        {"background_refresh_threshold": 600}, True, 0, False),
    Row("threshold above lifetime capped at 30: stale at 31", 31,
        {"background_refresh_threshold": 600}, True, 1, False),
    Row("refresh_if_stale on a fresh token: cached", 10, {"refresh_if_stale": True}, True, 0,
        False),
    Row("refresh_if_stale on a stale token: waits for a new one", 46,
        {"refresh_if_stale": True}, False, 1, True),
    Row("skip_cache on a fresh token: its own request", 0, {"skip_cache": True}, False, 1, True),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_decision_table(row: Row, client: TokenClient, source: FakeSource,
                        clock: FakeClock) -> None:
    first = client.get_token("s1")
    assert source.count == 1
    waits_before = client.stats()["waits"]
    clock.advance(row.at)
    got = client.get_token("s1", **row.kwargs)  # type: ignore[arg-type]
    assert (got == first) is row.serves_cached
    assert source.count == 1 + row.requests
    assert (client.stats()["waits"] > waits_before) is row.waits
    if not row.serves_cached:
        assert got == source.issued[-1]


def test_stale_read_publishes_the_refreshed_token_for_the_next_call(
        client: TokenClient, source: FakeSource, clock: FakeClock) -> None:
    first = client.get_token("s1")
    clock.advance(46)
    assert client.get_token("s1") == first  # served stale, refresh ran (inline executor)
    assert source.count == 2
    assert client.get_token("s1") == source.issued[-1] != first
    assert source.count == 2


def test_margin_is_a_quarter_of_a_short_lifetime(clock: FakeClock) -> None:
    source = FakeSource(clock, lifetime=8.0)  # 8 <= 2 * 5: margin 2, threshold capped at 4
    with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
        first = client.get_token("s")
        clock.advance(4)  # 4 left: fresh (>= 4)
        assert client.get_token("s") == first and source.count == 1
        clock.advance(0.5)  # 3.5 left: stale, served, refreshed in the background
        assert client.get_token("s") == first and source.count == 2
        second = source.issued[-1]
        # 2 left on the second token: critical (nobody read it, so the poller tick at 10 s
        # left it alone)
        clock.advance(6)
        assert client.get_token("s") not in (first, second)


def test_skip_cache_result_is_cached_when_newer(client: TokenClient, source: FakeSource,
                                                clock: FakeClock) -> None:
    client.get_token("s1")
    clock.advance(1)
    fresh = client.get_token("s1", skip_cache=True)
    assert client.get_token("s1") == fresh
    assert source.count == 2


def test_skip_cache_failure_leaves_the_cache_untouched(client: TokenClient, source: FakeSource,
                                                       clock: FakeClock) -> None:
    from swr_token import TokenRejectedError

    first = client.get_token("s1")
    source.script.append(TokenRejectedError("no"))
    with pytest.raises(TokenRejectedError):
        client.get_token("s1", skip_cache=True)
    assert client.get_token("s1") == first
    assert source.count == 2


def test_refresh_if_stale_rejection_raises_and_fails_closed(
        client: TokenClient, source: FakeSource, clock: FakeClock) -> None:
    from swr_token import TokenRejectedError

    first = client.get_token("s1")
    clock.advance(46)
    source.script.append(TokenRejectedError("the issuer refused"))
    with pytest.raises(TokenRejectedError):
        client.get_token("s1", refresh_if_stale=True)
    # A rejection fails closed: the refused token is no longer served, and callers in the
    # fail-fast window get the rejection at once, without a new request.
    with pytest.raises(TokenRejectedError):
        client.get_token("s1")
    assert source.count == 2
    clock.advance(1.5)  # after the window the source is asked again
    assert client.get_token("s1") != first
    assert source.count == 3


def test_refresh_if_stale_transient_failure_keeps_stale_for_others(
        client: TokenClient, source: FakeSource, clock: FakeClock) -> None:
    first = client.get_token("s1")
    clock.advance(46)
    source.script.extend([TokenFetchError("down")] * 3)
    with pytest.raises(TokenFetchError):
        client.get_token("s1", refresh_if_stale=True, timeout=2)
    assert client.get_token("s1") == first


def test_timeout_bounds_the_wait_but_the_fetch_goes_on(clock: FakeClock) -> None:
    import threading

    source = FakeSource(clock)
    source.gate = threading.Event()
    with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
        with pytest.raises(TokenFetchError, match=r"timed out after 0\.05 s"):
            client.get_token("s1", timeout=0.05)
        source.gate.set()
        token = client.get_token("s1", timeout=5)
        assert source.count == 1  # the second caller joined the same fetch
        assert token == source.issued[-1]


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "1", True])
def test_bad_timeout_is_a_clear_error(client: TokenClient, bad: object) -> None:
    from swr_token import ConfigurationError

    with pytest.raises(ConfigurationError, match="timeout"):
        client.get_token("s1", timeout=bad)  # type: ignore[arg-type]
