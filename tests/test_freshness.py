"""The freshness guard and invalidate(): a late or old result never wins."""

from __future__ import annotations

import threading

from swr_token import DaemonThreadPoolExecutor, TokenClient
from swr_token.testing import FakeClock, InlineExecutor

from .conftest import WAIT, FakeSource, mint, wait_until


def test_slow_refresh_finishing_after_a_faster_skip_cache_fetch_does_not_overwrite_it(
        clock: FakeClock) -> None:
    source = FakeSource(clock)
    pool = DaemonThreadPoolExecutor(max_workers=1)
    slow_go = threading.Event()
    with TokenClient(source, clock=clock, executor=pool) as client:
        client.get_token("s")
        clock.advance(46)
        # The background refresh mints its token now, but is held before it returns.
        slow_token = mint(clock, jti=101)
        source.script.append(lambda _r: (slow_go.wait(WAIT), slow_token)[1])
        client.get_token("s")
        source.wait_for_calls(2)
        fast = client.get_token("s", skip_cache=True)  # same second: equal iat
        assert client.get_token("s") == fast
        slow_go.set()
        wait_until(lambda: client.stats()["in_flight"] == 0)  # the slow one was judged
        assert client.get_token("s") == fast  # the later-started request's token stays


def test_older_token_never_replaces_a_newer_one(client: TokenClient, source: FakeSource,
                                                clock: FakeClock) -> None:
    first = client.get_token("s")
    clock.advance(46)
    older = mint(clock, iat=clock.wall() - 50, jti=7)  # valid, but issued before `first`
    source.script.append(lambda _r: older)
    assert client.get_token("s") == first
    assert client.get_token("s") == first  # not replaced by the older token


def test_invalidate_with_an_old_token_does_not_drop_a_newer_one(
        client: TokenClient, source: FakeSource, clock: FakeClock) -> None:
    old = client.get_token("s")
    clock.advance(1)
    new = client.get_token("s", skip_cache=True)
    assert client.invalidate("s", token=old) is False
    assert client.get_token("s") == new
    assert client.invalidate("s", token=new) is True
    assert client.invalidate("s") is False  # nothing left to drop
    assert client.get_token("s") not in (old, new)


def test_invalidated_token_is_not_resurrected_by_a_refresh_already_running(
        clock: FakeClock) -> None:
    source = FakeSource(clock)
    pool = DaemonThreadPoolExecutor(max_workers=1)
    go = threading.Event()
    with TokenClient(source, clock=clock, executor=pool) as client:
        first = client.get_token("s")
        clock.advance(46)
        # An issuer that re-serves the cached token: the running refresh returns `first`.
        source.script.append(lambda _r: (go.wait(WAIT), first)[1])
        client.get_token("s")
        source.wait_for_calls(2)
        assert client.invalidate("s", token=first) is True
        # A caller arriving now does not join the refresh that may return `first` again.
        got = client.get_token("s")
        assert got != first
        go.set()
        wait_until(lambda: client.stats()["in_flight"] == 0)
        assert client.get_token("s") == got  # the late re-served token was refused
        assert source.count == 3


def test_invalidate_other_keys_untouched(client: TokenClient) -> None:
    a = client.get_token("a")
    client.get_token("b")
    assert client.invalidate("b") is True
    assert client.get_token("a") == a
    assert client.invalidate("a", template="other") is False


def test_hooks_run_for_updates_and_failures_and_never_break_a_read(clock: FakeClock) -> None:
    from swr_token import TokenRejectedError

    source = FakeSource(clock)
    updates: list[str] = []
    errors: list[str] = []

    def on_update(request, token):  # type: ignore[no-untyped-def]
        updates.append(f"{request.session_id}:{token.fingerprint}")
        raise RuntimeError("a broken hook")

    def on_error(request, error):  # type: ignore[no-untyped-def]
        errors.append(type(error).__name__)
        raise RuntimeError("another broken hook")

    with TokenClient(source, clock=clock, executor=InlineExecutor(),
                     on_token_update=on_update, on_refresh_error=on_error) as client:
        token = client.get_token("s")
        assert updates == [f"s:{client.get_token_info('s').fingerprint}"]
        clock.advance(46)
        source.script.append(TokenRejectedError("no"))
        assert client.get_token("s") == token
        assert errors == ["TokenRejectedError"]
