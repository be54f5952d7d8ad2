"""Waiters never queue behind background work (issue 12, point 11).

A caller whose key is critical joins the key's refresh; if that refresh is still queued
behind other keys' refreshes, the caller takes it over and runs it at once.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from swr_token import ClerkBackendSource, DaemonThreadPoolExecutor, TokenClient, TokenRequest
from swr_token.testing import FakeClock, LocalIssuer

from .conftest import WAIT, mint


def test_a_critical_caller_takes_over_its_keys_refresh_queued_behind_a_busy_worker(
        clock: FakeClock) -> None:
    busy = threading.Event()
    release = threading.Event()
    calls: list[str | None] = []
    lock = threading.Lock()

    def source(request: TokenRequest) -> str:
        with lock:
            calls.append(request.session_id)
        if request.session_id == "busy" and len([c for c in calls if c == "busy"]) > 1:
            busy.set()
            assert release.wait(WAIT), "test never released the busy refresh"
        return mint(clock, jti=len(calls), claims={"sid": request.session_id})

    pool = DaemonThreadPoolExecutor(max_workers=1)
    try:
        with TokenClient(source, clock=clock, executor=pool) as client:
            client.get_token("busy")
            first = client.get_token("s")
            clock.advance(46)  # both stale (14 s left)
            client.get_token("busy")  # its refresh takes the only worker, and hangs
            assert busy.wait(WAIT)
            assert client.get_token("s") == first  # stale: served, its refresh queued
            clock.advance(10)  # critical (4 s left): the caller must wait for a fetch
            with ThreadPoolExecutor(1) as caller:
                waiting = caller.submit(client.get_token, "s")
                token = waiting.result(WAIT)  # while the only worker is still busy
            assert token != first and not release.is_set()
            release.set()
            assert client.stats()["background_refreshes"] == 2
    finally:
        release.set()
        pool.shutdown(wait=True)
    # The queued attempt, picked up by the worker later, did not ask the source again.
    assert calls.count("s") == 2


def test_with_keys_going_stale_together_no_caller_waits_behind_the_queue(
        clock: FakeClock) -> None:
    """24 keys, a 0.5 s issuer and 2 workers: their refreshes take 6 s to drain. Callers
    whose keys then turn critical each wait about one round trip, not for the queue."""
    keys = [f"sess_{i}" for i in range(24)]
    with LocalIssuer(clock=clock) as issuer:
        source = ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url)
        pool = DaemonThreadPoolExecutor(max_workers=2)
        with TokenClient(source, clock=clock, executor=pool) as client, \
                ThreadPoolExecutor(len(keys)) as callers:
            list(callers.map(client.get_token, keys))  # warm
            issuer.delay(0.5)
            clock.advance(46)  # all stale together
            for key in keys:
                client.get_token(key)  # served stale; 24 refreshes queue on 2 workers
            clock.advance(10)  # all critical before the queue has drained

            def timed(key: str) -> float:
                started = time.monotonic()
                client.get_token(key)
                return time.monotonic() - started

            waits = list(callers.map(timed, keys, timeout=WAIT * 2))
        pool.shutdown(wait=True)
        source.close()
        requests = issuer.request_count("clerk")
    longest = max(waits)
    print(f"\nlongest get_token wait: {longest:.2f} s (issuer round trip 0.5 s, "
          f"{len(keys)} keys, 2 workers)")
    # One round trip plus scheduling; queued behind the others it would be up to 6 s.
    assert longest < 1.5, f"a caller waited {longest:.2f} s"
    assert requests == 2 * len(keys)  # one warm-up and one refresh per key, no duplicate
