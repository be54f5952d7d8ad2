"""Many threads at once: single-flight, shared failure, joins, and the worker pool."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from swr_token import (
    ClientClosedError,
    DaemonThreadPoolExecutor,
    TokenClient,
    TokenFetchError,
    TokenRejectedError,
)
from swr_token.testing import FakeClock

from .conftest import WAIT, FakeSource


def _call_all(n: int, fn):  # type: ignore[no-untyped-def]
    barrier = threading.Barrier(n)

    def go() -> object:
        barrier.wait(WAIT)
        try:
            return fn()
        except Exception as exc:
            return exc

    pool = ThreadPoolExecutor(n)
    return pool, [pool.submit(go) for _ in range(n)]


def test_32_threads_on_a_fresh_key_make_no_requests(client: TokenClient,
                                                    source: FakeSource) -> None:
    first = client.get_token("s")
    pool, futures = _call_all(32, lambda: [client.get_token("s") for _ in range(200)])
    with pool:
        results = [f.result(WAIT) for f in futures]
    assert all(r == [first] * 200 for r in results)
    assert source.count == 1


def test_failure_of_the_shared_fetch_reaches_every_waiter(clock: FakeClock) -> None:
    source = FakeSource(clock)
    source.gate = threading.Event()
    source.script.append(TokenRejectedError("unknown session", status=404))
    with TokenClient(source, clock=clock) as client:
        pool, futures = _call_all(8, lambda: client.get_token("s"))
        with pool:
            source.wait_for_calls(1)
            source.gate.set()
            results = [f.result(WAIT) for f in futures]
    assert source.count == 1
    assert all(isinstance(r, TokenRejectedError) for r in results)
    # The one failure, shared: the same error, raised by each caller as its own copy.
    assert {(str(r), r.status) for r in results} == {("unknown session", 404)}
    assert len({id(r) for r in results}) == len(results)


def test_critical_caller_joins_the_running_background_refresh(clock: FakeClock) -> None:
    source = FakeSource(clock)
    pool = DaemonThreadPoolExecutor(max_workers=1)
    with TokenClient(source, clock=clock, executor=pool) as client:
        client.get_token("s")
        clock.advance(46)  # stale
        source.gate = threading.Event()
        client.get_token("s")  # starts the background refresh, held at the gate
        source.wait_for_calls(2)
        clock.advance(10)  # now critical (4 s left): past the refresh's own deadline
        with ThreadPoolExecutor(1) as caller:
            waiting = caller.submit(client.get_token, "s")
            with pytest.raises(TimeoutError):
                waiting.result(timeout=0.05)  # it waits on the running refresh...
            source.gate.set()
            assert waiting.result(WAIT) == source.issued[-1]
        assert source.count == 2  # ...and did not start a request of its own


def test_foreground_fetch_never_waits_for_a_busy_worker(clock: FakeClock) -> None:
    source = FakeSource(clock)
    pool = DaemonThreadPoolExecutor(max_workers=1)
    hold = threading.Event()
    with TokenClient(source, clock=clock, executor=pool) as client:
        client.get_token("busy")
        clock.advance(46)
        source.script.append(lambda req: (hold.wait(WAIT), source.issued[0])[1])
        client.get_token("busy")  # the only worker is now stuck in this refresh
        source.wait_for_calls(2)
        assert client.get_token("cold", timeout=WAIT) == source.issued[-1]
        hold.set()


def test_close_releases_every_blocked_caller_at_once(clock: FakeClock) -> None:
    source = FakeSource(clock)
    source.gate = threading.Event()
    client = TokenClient(source, clock=clock)
    pool, futures = _call_all(4, lambda: client.get_token("s"))
    with pool:
        source.wait_for_calls(1)
        closer = threading.Thread(target=client.close)
        closer.start()
        closer.join(1.0)
        assert not closer.is_alive(), "close() must return within a second"
        results = [f.result(1.0) for f in futures]
    source.gate.set()
    assert all(isinstance(r, ClientClosedError) for r in results)
    with pytest.raises(ClientClosedError):
        client.get_token("s")
    client.close()  # idempotent


def test_caller_timeout_does_not_cancel_the_fetch_for_others(clock: FakeClock) -> None:
    source = FakeSource(clock)
    source.gate = threading.Event()
    with TokenClient(source, clock=clock) as client, ThreadPoolExecutor(1) as patient:
        later = patient.submit(client.get_token, "s", timeout=WAIT)
        source.wait_for_calls(1)
        with pytest.raises(TokenFetchError, match="timed out"):
            client.get_token("s", timeout=0.02)
        source.gate.set()
        assert later.result(WAIT) == source.issued[-1]
    assert source.count == 1
