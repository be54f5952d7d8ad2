"""Clerk's own stale-while-revalidate cases (clerk-js, design B), ported to threads.

60 s tokens; times are seconds after the token's issue time.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from swr_token import DaemonThreadPoolExecutor, TokenClient, TokenFetchError
from swr_token.testing import FakeClock, InlineExecutor

from .conftest import WAIT, FakeSource


@pytest.fixture
def threaded(clock: FakeClock, source: FakeSource):  # type: ignore[no-untyped-def]
    """A client whose background refreshes run on real daemon workers."""
    pool = DaemonThreadPoolExecutor(max_workers=2)
    client = TokenClient(source, clock=clock, executor=pool)
    yield client
    client.close()
    pool.shutdown()


def test_at_46s_three_concurrent_calls_get_the_stale_token_with_one_request(
        threaded: TokenClient, source: FakeSource, clock: FakeClock) -> None:
    first = threaded.get_token("sess")
    clock.advance(46)
    source.gate = threading.Event()  # hold the background request pending
    barrier = threading.Barrier(3)

    def call() -> str:
        barrier.wait(WAIT)
        return threaded.get_token("sess")

    with ThreadPoolExecutor(3) as callers:
        results = [f.result(WAIT) for f in [callers.submit(call) for _ in range(3)]]
    assert results == [first] * 3
    source.wait_for_calls(2)
    source.gate.set()
    assert source.count == 2  # the cold fetch plus exactly one background refresh


def test_failed_background_refresh_still_serves_the_stale_token(
        client: TokenClient, source: FakeSource, clock: FakeClock) -> None:
    first = client.get_token("sess")
    clock.advance(46)
    source.script.extend([TokenFetchError("network down")] * 10)
    assert client.get_token("sess") == first
    clock.advance(0.1)
    assert client.get_token("sess") == first
    # Unlike clerk-js, the failed refresh is retried; while the source keeps failing the
    # stale token is still served, up to the margin.
    for _ in range(40):
        clock.advance(0.2)
        assert client.get_token("sess") == first
    assert 2 <= source.count <= 11


def test_successful_refresh_is_served_next_call_with_no_request(
        client: TokenClient, source: FakeSource, clock: FakeClock) -> None:
    first = client.get_token("sess")
    clock.advance(46)
    assert client.get_token("sess") == first
    clock.advance(0.1)
    assert client.get_token("sess") == source.issued[-1] != first
    assert source.count == 2


def test_refresh_if_stale_at_46s_blocks_and_returns_the_new_token(
        client: TokenClient, source: FakeSource, clock: FakeClock) -> None:
    first = client.get_token("sess")
    clock.advance(46)
    new = client.get_token("sess", refresh_if_stale=True)
    assert new != first and new == source.issued[-1]
    assert source.count == 2


def test_refresh_if_stale_at_10s_returns_the_cached_token(
        client: TokenClient, source: FakeSource, clock: FakeClock) -> None:
    first = client.get_token("sess")
    clock.advance(10)
    assert client.get_token("sess", refresh_if_stale=True) == first
    assert source.count == 1


def test_threshold_30_triggers_a_refresh_at_35s(
        client: TokenClient, source: FakeSource, clock: FakeClock) -> None:
    first = client.get_token("sess")
    clock.advance(35)
    assert client.get_token("sess", background_refresh_threshold=30) == first
    assert source.count == 2


def test_threshold_10_triggers_a_refresh_at_52s(
        client: TokenClient, source: FakeSource, clock: FakeClock) -> None:
    first = client.get_token("sess")
    clock.advance(52)
    assert client.get_token("sess", background_refresh_threshold=10) == first
    assert source.count == 2


def test_at_20s_nothing_happens(client: TokenClient, source: FakeSource,
                                clock: FakeClock) -> None:
    first = client.get_token("sess")
    clock.advance(20)
    assert client.get_token("sess") == first
    assert source.count == 1


def test_three_concurrent_cold_calls_make_one_request(clock: FakeClock) -> None:
    source = FakeSource(clock)
    source.gate = threading.Event()
    barrier = threading.Barrier(3)
    with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
        def call() -> str:
            barrier.wait(WAIT)
            return client.get_token("sess")

        with ThreadPoolExecutor(3) as callers:
            futures = [callers.submit(call) for _ in range(3)]
            source.wait_for_calls(1)
            # All three are waiting on the one fetch before it is allowed to finish.
            assert not any(f.done() for f in futures)
            source.gate.set()
            results = [f.result(WAIT) for f in futures]
    assert source.count == 1
    assert results == [source.issued[0]] * 3


@pytest.mark.parametrize(
    "variants",
    [
        [{"template": "a"}, {"template": "b"}],
        [{"organization_id": "org_1"}, {"organization_id": "org_2"}],
        [{"audience": "api-1"}, {"audience": "api-2"}],
        [{}, {"template": "a"}],
    ],
)
def test_different_keys_make_separate_requests(
        client: TokenClient, source: FakeSource, variants: list[dict[str, str]]) -> None:
    tokens = [client.get_token("sess", **v) for v in variants]
    assert source.count == 2
    assert tokens[0] != tokens[1]
    assert next(req for _, req in source.calls) != source.calls[1][1]
    assert [client.get_token("sess", **v) for v in variants] == tokens
    assert source.count == 2
