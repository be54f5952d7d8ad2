"""Retries, pacing, fail-fast, no-progress and fail-closed, on a fake clock (no real sleeps)."""

from __future__ import annotations

import itertools
import logging

import pytest
import tenacity

from swr_token import (
    RetryPolicy,
    TokenClient,
    TokenFetchError,
    TokenRejectedError,
)
from swr_token.testing import FakeClock, InlineExecutor

from .conftest import FakeSource, drive


def _gaps(source: FakeSource) -> list[float]:
    times = [t for t, _ in source.calls]
    return [b - a for a, b in itertools.pairwise(times)]


def test_foreground_retries_use_full_jitter_backoff_then_raise_the_last_failure(
        clock: FakeClock, source: FakeSource) -> None:
    failures = [TokenFetchError(f"503 number {i}", status=503) for i in range(4)]
    source.script.extend(failures)
    with TokenClient(source, clock=clock) as client, pytest.raises(TokenFetchError) as info:
        drive(clock, client, lambda: client.get_token("s"))
    # The last failure, raised to the waiter (its own copy: see test_shared_failures).
    assert type(info.value) is TokenFetchError and str(info.value) == "503 number 3"
    assert info.value.status == 503
    assert source.count == 4  # the default policy: four attempts
    gaps = _gaps(source)
    # Full jitter: each wait is drawn from [0, 0.25 * 2**(n-1)] ... but once three attempts
    # failed the source is paced, so the fourth waits for its slot (1.0-1.3 s).
    assert 0 <= gaps[0] <= 0.25 and 0 <= gaps[1] <= 0.5
    assert 1.0 <= gaps[2] <= 1.3 + 0.05 + 1.0
    assert source.calls[-1][0] - source.calls[0][0] < 10.0  # within the documented budget


def test_retry_after_is_honoured(clock: FakeClock, source: FakeSource) -> None:
    source.script.append(TokenFetchError("429", status=429, retry_after=3.0))
    with TokenClient(source, clock=clock) as client:
        token = drive(clock, client, lambda: client.get_token("s"))
    assert token == source.issued[-1]
    assert source.count == 2
    assert _gaps(source)[0] >= 3.0


def test_retry_after_beyond_the_budget_gives_up_at_once(clock: FakeClock,
                                                        source: FakeSource) -> None:
    source.script.append(TokenFetchError("429", status=429, retry_after=60.0))
    with TokenClient(source, clock=clock) as client, pytest.raises(TokenFetchError):
        drive(clock, client, lambda: client.get_token("s"))
    assert source.count == 1


def test_rejection_is_never_retried(clock: FakeClock, source: FakeSource) -> None:
    source.script.append(TokenRejectedError("bad secret key", status=401))
    with TokenClient(source, clock=clock) as client, pytest.raises(TokenRejectedError):
        drive(clock, client, lambda: client.get_token("s"))
    assert source.count == 1


def test_custom_tenacity_policy(clock: FakeClock, source: FakeSource) -> None:
    policy = RetryPolicy(wait=tenacity.wait_fixed(2.0), stop=tenacity.stop_after_attempt(2))
    source.script.extend([TokenFetchError("x"), TokenFetchError("y")])
    with TokenClient(source, clock=clock, retry=policy) as client, \
            pytest.raises(TokenFetchError, match="y"):
        drive(clock, client, lambda: client.get_token("s"))
    assert source.count == 2 and _gaps(source) == [2.0]


class Outage:
    """A source that fails while ``down`` is set, counting requests per second."""

    def __init__(self, source: FakeSource) -> None:
        self.source = source
        self.down = True

    def __call__(self, request):  # type: ignore[no-untyped-def]
        if self.down:
            self.source.calls.append((self.source.clock.deadline(), request))
            raise TokenFetchError("500 from the issuer", status=500)
        return self.source(request)


def test_one_thousand_keys_failing_at_once_still_pace_the_source(clock: FakeClock) -> None:
    source = FakeSource(clock)
    outage = Outage(source)
    outage.down = False
    keys = [f"s{i}" for i in range(1000)]
    with TokenClient(outage, clock=clock, executor=InlineExecutor(),
                     background_refresh_threshold=50.0, poll_interval=5.0) as client:
        for key in keys:
            client.get_token(key)
        assert source.count == 1000
        clock.advance(11)  # every token is stale now (49 s left < 50 s threshold)
        outage.down = True
        start = clock.deadline()
        for _ in range(30):  # 30 s of outage, every key read every second
            for key in keys:
                client.get_token(key)  # the stale token, never an error
            clock.advance(1.0)
        sent = [t for t, _ in source.calls[1000:]]
        assert len(sent) <= 3 + 30 / 1.0 + 1, len(sent)  # quick retries, then ~1 a second
        assert all(t >= start for t in sent)
        # Recovery: within about two seconds some key's probe succeeds and the rest follow.
        outage.down = False
        recovered_at = clock.deadline()
        fresh_at = None
        for _ in range(6):
            for key in keys:
                client.get_token(key)
            if fresh_at is None and any(
                    client.get_token_info(k).remaining() > 55 for k in keys[:1000]):
                fresh_at = clock.deadline()
            clock.advance(0.5)
        assert fresh_at is not None and fresh_at - recovered_at <= 2.0


def test_no_progress_refresh_backs_off(clock: FakeClock, source: FakeSource,
                                       caplog: pytest.LogCaptureFixture) -> None:
    with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
        first = client.get_token("s")
        source.script.extend([lambda _r: first] * 50)  # an issuer re-serving its cached token
        clock.advance(46)
        with caplog.at_level(logging.WARNING, logger="swr_token"):
            for _ in range(50):
                assert client.get_token("s") == first
                clock.advance(0.1)
        assert source.count <= 1 + 3  # not one request per read: backed off after each
        assert sum("no progress" in r.message for r in caplog.records) == 1  # logged once


def test_fail_fast_window_then_the_next_caller_asks_again(clock: FakeClock,
                                                          source: FakeSource) -> None:
    policy = RetryPolicy(stop=tenacity.stop_after_attempt(1))
    source.script.append(TokenFetchError("503", status=503))
    with TokenClient(source, clock=clock, retry=policy) as client:
        with pytest.raises(TokenFetchError):
            client.get_token("s")
        for _ in range(20):  # callers during the window: the failure at once, no request
            with pytest.raises(TokenFetchError, match="503"):
                client.get_token("s")
        assert source.count == 1
        clock.advance(1.31)
        assert client.get_token("s") == source.issued[-1]
        assert source.count == 2


def test_rejection_during_background_refresh_fails_closed(clock: FakeClock,
                                                          source: FakeSource) -> None:
    with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
        first = client.get_token("s")
        clock.advance(46)
        source.script.append(TokenRejectedError("session ended", status=404))
        assert client.get_token("s") == first  # served; the refresh is rejected behind it
        with pytest.raises(TokenRejectedError, match="session ended"):
            client.get_token("s")  # the issuer said no: the token is dropped
        assert source.count == 2


def test_background_refresh_stops_at_the_critical_deadline(clock: FakeClock,
                                                           source: FakeSource) -> None:
    outage = Outage(source)
    outage.down = False
    with TokenClient(outage, clock=clock, executor=InlineExecutor()) as client:
        client.get_token("s")
        outage.down = True
        clock.advance(54)  # 6 s left: stale, one second before the critical zone
        client.get_token("s")
        for _ in range(40):
            clock.advance(0.05)
        # Every attempt of that refresh started before the key went critical at 55 s.
        assert all(t < clock.deadline() - 2 + 1.0 for t, _ in source.calls[1:])
        assert all(t - source.calls[0][0] < 55 for t, _ in source.calls[1:])


def test_failures_are_logged_once_per_streak(clock: FakeClock, source: FakeSource,
                                             caplog: pytest.LogCaptureFixture) -> None:
    outage = Outage(source)
    outage.down = False
    with TokenClient(outage, clock=clock, executor=InlineExecutor()) as client, \
            caplog.at_level(logging.WARNING, logger="swr_token"):
        client.get_token("s")
        outage.down = True
        clock.advance(46)
        for _ in range(80):
            client.get_token("s")
            clock.advance(0.1)
        assert sum("failing" in r.message for r in caplog.records) == 1


def test_a_fetch_out_of_budget_raises_the_last_failure_not_a_time_out(clock: FakeClock) -> None:
    """Found through ``swr-token get --timeout 1``: the budget ran out during a backoff wait
    and the 503 (with its status) was replaced by a made-up "may be hanging" error."""
    calls: list[float] = []

    def source(request: object) -> str:
        calls.append(clock.deadline())
        raise TokenFetchError("the issuer answered HTTP 503", status=503, retry_after=None)

    with TokenClient(source, clock=clock, fetch_timeout=3.0,
                     retry=RetryPolicy(wait=tenacity.wait_fixed(2.0))) as client, \
            pytest.raises(TokenFetchError) as caught:
        drive(clock, client, lambda: client.get_token("s1"))
    assert len(calls) == 2  # at 0 s and 2 s; the next would start at 4 s, past the budget
    assert caught.value.status == 503


def test_watchdog_during_a_pacer_wait_raises_the_last_failure(clock: FakeClock) -> None:
    source = FakeSource(clock)
    outage = Outage(source)
    with TokenClient(outage, clock=clock, fetch_timeout=1.5,
                     retry=RetryPolicy(wait=tenacity.wait_fixed(0.1),
                                       stop=tenacity.stop_after_attempt(10))) as client, \
            pytest.raises(TokenFetchError, match="500 from the issuer"):
        drive(clock, client, lambda: client.get_token("s1"))


def test_in_a_steady_outage_a_waited_on_fetch_makes_one_paced_attempt(clock: FakeClock) -> None:
    source = FakeSource(clock)
    outage = Outage(source)
    with TokenClient(outage, clock=clock) as client:
        with pytest.raises(TokenFetchError):  # a fresh outage: the quick retries, then a slot
            drive(clock, client, lambda: client.get_token("a"))
        assert len(source.calls) == 4
        clock.advance(2.0)  # past the fail-fast window
        started = clock.deadline()
        with pytest.raises(TokenFetchError, match="500"):
            drive(clock, client, lambda: client.get_token("b"))
        assert len(source.calls) == 5  # one paced attempt, then the failure at once
        assert clock.deadline() - started <= 1.3 + 0.05  # at most one pacer slot of waiting


def test_a_fetch_waiting_for_a_pacer_slot_starts_at_once_when_the_source_recovers(
        clock: FakeClock) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from .conftest import WAIT, wait_until

    source = FakeSource(clock)
    outage = Outage(source)
    with TokenClient(outage, clock=clock) as client:
        with pytest.raises(TokenFetchError):
            drive(clock, client, lambda: client.get_token("a"))  # now paced
        calls = len(source.calls)
        with ThreadPoolExecutor(1) as caller:
            waiting = caller.submit(client.get_token, "b", timeout=WAIT)
            # queued for a slot
            wait_until(lambda: client.stats()["waiting_for_slot"] == 1)
            outage.down = False
            fresh = client.get_token("c", skip_cache=True)  # any success ends the outage
            token = waiting.result(WAIT)  # ...and "b" went without its slot coming
        assert token and fresh and token != fresh
        assert len(source.calls) == calls + 2
