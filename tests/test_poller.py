"""The poller refreshes what is being read, lets the rest expire, and stays cheap."""

from __future__ import annotations

import time

from swr_token import TokenClient, TokenRequest
from swr_token.testing import FakeClock, InlineExecutor

from .conftest import FakeSource


def test_a_read_key_is_renewed_with_no_traffic_in_the_stale_zone(
        client: TokenClient, source: FakeSource, clock: FakeClock) -> None:
    first = client.get_token("s")  # the fetch itself does not count as a read
    clock.advance(10)
    assert client.get_token("s") == first  # a read
    for _ in range(12):  # 60 s with no reads at all
        clock.advance(5)
    assert source.count >= 2  # the poller renewed it
    info = client.get_token_info("s")
    assert info.raw != first and info.remaining() > 0


def test_an_unread_key_is_left_to_expire_and_evicted(
        client: TokenClient, source: FakeSource, clock: FakeClock) -> None:
    client.get_token("s")
    assert client.stats()["entries"] == 1
    for _ in range(20):
        clock.advance(5)
    assert source.count == 1  # never refreshed: nobody read it after its fetch
    assert client.stats()["entries"] == 0


def test_poller_spreads_refreshes_with_jitter(clock: FakeClock) -> None:
    source = FakeSource(clock)
    with TokenClient(source, clock=clock, executor=InlineExecutor(),
                     poll_interval=0.1, margin=5.0) as client:
        for i in range(50):
            client.get_token(f"s{i}")
        clock.advance(1)
        for i in range(50):
            client.get_token(f"s{i}")  # read: eligible for the poller
        for _ in range(700):  # the tokens go stale at 45 s
            clock.advance(0.1)
            if source.count >= 100:
                break
        refresh_times = sorted(t for t, _ in source.calls[50:100])
        assert len(refresh_times) == 50
        assert refresh_times[-1] - refresh_times[0] > 0.3  # not all in one lockstep instant


def test_tick_cost_does_not_grow_with_fresh_keys(clock: FakeClock) -> None:
    """Loose guard only; the measured figure is in benchmarks/. 20k fresh keys, one tick."""
    source = FakeSource(clock, lifetime=3600)
    shared = source(TokenRequest("seed"))  # one parsed token for every key: a fast source
    with TokenClient(lambda request: shared, clock=clock, executor=InlineExecutor(),
                     foreground_executor=InlineExecutor(), poll_interval=60,
                     max_entries=100_000) as client:
        for i in range(20_000):
            client.get_token(f"k{i}")
        assert client.stats()["entries"] == 20_000
        clock.advance(11)  # every cold fetch's watchdog fires; the first tick is at 60 s
        assert clock.next_due() == clock.deadline() + 49
        started = time.perf_counter()
        clock.advance(49)  # the tick: nothing is due among the fresh keys
        elapsed = time.perf_counter() - started
        assert client.stats()["background_refreshes"] == 0
        assert elapsed < 0.05, elapsed  # ~microseconds in practice; O(due), not O(keys)


def test_entry_cap_evicts_expired_first_then_least_recently_read(clock: FakeClock) -> None:
    source = FakeSource(clock)
    with TokenClient(source, clock=clock, executor=InlineExecutor(), max_entries=20,
                     poll_interval=1000) as client:
        source.lifetime = 10
        for i in range(5):
            client.get_token(f"short{i}")
        source.lifetime = 600
        for i in range(15):
            client.get_token(f"long{i}")
        clock.advance(20)  # the short ones are dead now
        for i in range(1, 15):
            client.get_token(f"long{i}")  # long0 is the least recently read
        for i in range(2):  # each full insert evicts a tenth of the cap (2 here)
            client.get_token(f"new{i}", template="t")
        # Room was made from the expired entries only: every live one is still here.
        assert client.stats()["entries"] == 20  # 3 short (dead) + 15 long + 2 new
        for i in range(4):
            client.get_token(f"more{i}")
        assert client.stats()["entries"] <= 20
        # Still cached (a read fetches nothing): the live keys but the least recently read.
        # Reads of cached keys insert nothing, so these checks evict nothing themselves.
        fetched = source.count
        for i in range(1, 15):
            client.get_token(f"long{i}")
        for i in range(2):
            client.get_token(f"new{i}", template="t")
        for i in range(4):
            client.get_token(f"more{i}")
        assert source.count == fetched
        assert client.stats()["entries"] == 20
        # Gone: the expired ones, then long0, the least recently read. Each read fetches
        # (the session-only index kept no entry the cache had dropped).
        client.get_token("long0")
        assert source.count == fetched + 1
