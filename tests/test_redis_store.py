"""RedisStore against a real redis-server: shared tokens, the fleet lock, announcements, and
Redis failing. Processes are simulated by separate clients with separate stores here; the
multi-process proof is in test_redis_fleet.py."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
import redis as redis_lib

from swr_token import RedisStore, StoredToken, Token, TokenClient, source_identity
from swr_token.testing import FakeClock, InlineExecutor

from .conftest import FakeSource, wait_until
from .redis_server import RedisServer

KEY = ("sess", None, None, None)
SCOPE = "tests.scope"


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"t{abs(hash(request.node.nodeid))}:"


def _store(server: RedisServer, prefix: str, clock: FakeClock | None = None,
           **kw: Any) -> RedisStore:
    return RedisStore(server.url, prefix=prefix, clock=clock, **kw)


def _raw(server: RedisServer) -> redis_lib.Redis:
    return redis_lib.Redis.from_url(server.url)


def _names(server: RedisServer, prefix: str, suffix: str) -> list[str]:
    return sorted(n.decode() for n in _raw(server).keys(f"{prefix}*:{suffix}"))


def test_put_get_and_expiry(redis_server: RedisServer, prefix: str) -> None:
    store = _store(redis_server, prefix)
    assert store.get(SCOPE, KEY) is None
    stored = StoredToken("opaque-token", time.time() + 5, issued_at=time.time())
    store.put(SCOPE, KEY, stored)
    assert store.get(SCOPE, KEY) == stored
    assert "opaque-token" not in repr(stored)
    [name] = _names(redis_server, prefix, "tok")
    assert 0 < _raw(redis_server).pttl(name) <= 5000  # expires with the token
    store.put(SCOPE, KEY, StoredToken("dead", time.time() - 1))  # already expired: not kept
    assert store.get(SCOPE, KEY) == stored
    store.close()


def test_key_names_carry_the_scope_and_share_a_hash_slot(redis_server: RedisServer,
                                                        prefix: str) -> None:
    store = _store(redis_server, prefix)
    one = StoredToken("token-of-instance-one", time.time() + 30)
    store.put("clerk:https://one.example", KEY, one)
    assert store.get("clerk:https://two.example", KEY) is None  # same prefix, other scope
    handle = store.try_lock("clerk:https://one.example", KEY)
    assert handle is not None
    assert store.try_lock("clerk:https://two.example", KEY) is not None  # its own lock
    [token_name] = _names(redis_server, prefix, "tok")
    lock_names = _names(redis_server, prefix, "lock")
    tag = token_name[token_name.index("{"):token_name.index("}") + 1]
    assert any(name.startswith(f"{prefix}{tag}") for name in lock_names)  # one slot
    assert "sess" not in token_name  # fixed-length hashes, not the key's text
    store.unlock("clerk:https://one.example", KEY, handle)
    store.close()


def test_lock_is_exclusive_and_released_only_by_its_owner(redis_server: RedisServer,
                                                          prefix: str) -> None:
    one, two = _store(redis_server, prefix), _store(redis_server, prefix)
    handle = one.try_lock(SCOPE, KEY)
    assert handle is not None
    assert two.try_lock(SCOPE, KEY) is None
    [name] = _names(redis_server, prefix, "lock")
    two.unlock(SCOPE, KEY, (name, "not-the-owner"))
    assert two.try_lock(SCOPE, KEY) is None  # a stranger's unlock did nothing
    one.unlock(SCOPE, KEY, handle)
    assert two.try_lock(SCOPE, KEY) is not None
    one.close()
    two.close()


def test_lease_runs_out_when_the_owner_stops_renewing(redis_server: RedisServer,
                                                      prefix: str) -> None:
    crashed = _store(redis_server, prefix, lease=0.3)
    assert crashed.try_lock(SCOPE, KEY) is not None
    crashed.close()  # stops renewing without unlocking, as a crashed process would
    store = _store(redis_server, prefix)
    assert store.try_lock(SCOPE, KEY) is None
    wait_until(lambda: store.try_lock(SCOPE, KEY) is not None, timeout=3)
    store.close()


def test_lease_is_renewed_while_a_refresh_runs_long(redis_server: RedisServer,
                                                    prefix: str) -> None:
    store = _store(redis_server, prefix, lease=0.3)
    other = _store(redis_server, prefix, lease=0.3)
    handle = store.try_lock(SCOPE, KEY)
    assert handle is not None
    done = threading.Event()
    done.wait(1.0)  # three leases long: held only because it is renewed
    assert other.try_lock(SCOPE, KEY) is None
    store.unlock(SCOPE, KEY, handle)
    assert other.try_lock(SCOPE, KEY) is not None
    store.close()
    other.close()


def test_wait_returns_when_the_owner_puts_and_is_bounded(redis_server: RedisServer,
                                                         prefix: str) -> None:
    owner, waiter = _store(redis_server, prefix), _store(redis_server, prefix)
    handle = owner.try_lock(SCOPE, KEY)
    fresh = StoredToken("the-new-token", time.time() + 30)
    threading.Timer(0.2, lambda: owner.put(SCOPE, KEY, fresh)).start()
    started = time.monotonic()
    assert waiter.wait(SCOPE, KEY, timeout=3) == fresh
    assert time.monotonic() - started < 1.5
    assert _names(redis_server, prefix, "lock") == []  # the owner's put released the lock
    owner.unlock(SCOPE, KEY, handle)  # so this sends nothing (and must not fail)
    handle = owner.try_lock(SCOPE, KEY)
    assert handle is not None
    started = time.monotonic()  # locked, and nobody puts: bounded by the timeout
    assert waiter.wait(SCOPE, KEY, timeout=0.3) == fresh
    assert 0.25 <= time.monotonic() - started < 1.5
    owner.unlock(SCOPE, KEY, handle)
    started = time.monotonic()  # lock released: no point waiting
    assert waiter.wait(SCOPE, KEY, timeout=3) == fresh
    assert time.monotonic() - started < 0.5
    owner.close()
    waiter.close()


def test_second_client_uses_the_shared_token_without_a_request(
        redis_server: RedisServer, prefix: str, clock: FakeClock) -> None:
    source = FakeSource(clock)
    with TokenClient(source, clock=clock, store=_store(redis_server, prefix, clock)) as a, \
            TokenClient(source, clock=clock, store=_store(redis_server, prefix, clock)) as b:
        token = a.get_token("sess")
        assert b.get_token("sess") == token
        assert source.count == 1


def test_opaque_tokens_are_shared_with_their_expiry(redis_server: RedisServer, prefix: str,
                                                    clock: FakeClock) -> None:
    source = FakeSource(clock)
    source.script.append(Token("opaque-access-token", expires_in=120))
    with TokenClient(source, clock=clock, store=_store(redis_server, prefix, clock)) as a, \
            TokenClient(source, clock=clock, store=_store(redis_server, prefix, clock)) as b:
        assert a.get_token("sess") == "opaque-access-token"
        clock.advance(30)
        info = b.get_token_info("sess")
        assert info.raw == "opaque-access-token"
        assert info.remaining() == pytest.approx(90, abs=1)  # the writer's expiry, not fresh
        assert source.count == 1


def test_a_stale_copy_is_replaced_by_the_shared_entry(redis_server: RedisServer, prefix: str,
                                                      clock: FakeClock) -> None:
    source = FakeSource(clock)
    with TokenClient(source, clock=clock, executor=InlineExecutor(),
                     store=_store(redis_server, prefix, clock)) as a, \
            TokenClient(source, clock=clock, executor=InlineExecutor(),
                        store=_store(redis_server, prefix, clock)) as b:
        first = a.get_token("sess")
        assert b.get_token("sess") == first
        clock.advance(2)
        newer = a.get_token("sess", skip_cache=True)
        assert b.get_token("sess") == first  # no broadcast: b keeps its copy while fresh
        clock.advance(60 - 15 - 2 + 1)  # b's copy turns stale: it reads the shared entry
        b.get_token("sess")
        wait_until(lambda: b.get_token("sess") == newer)
        assert source.count == 2


def test_redis_down_keeps_working_per_process_and_recovers(
        prefix: str, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer()
    server.start()
    source = FakeSource(clock)
    try:
        with caplog.at_level(logging.WARNING, logger="swr_token"), TokenClient(
                source, clock=clock, executor=InlineExecutor(),
                store=_store(server, prefix, clock, socket_timeout=0.2)) as client:
            client.get_token("sess")
            server.stop()
            for i in range(5):  # Redis gone: every fetch still works, locally
                assert client.get_token(f"other{i}") == source.issued[-1]
            assert sum("unavailable" in r.message for r in caplog.records) == 1
            server.start()  # same port
            clock.advance(3)  # past the store's retry pause
            client.get_token("back", timeout=5)
            assert any("is back" in r.message for r in caplog.records)
            assert RedisStore(server.url, prefix=prefix, clock=clock).get(
                source_identity(source), ("back", None, None, None))
    finally:
        server.stop()


def test_repr_and_errors_hide_the_url_password(redis_server: RedisServer) -> None:
    store = RedisStore(f"redis://user:hunter2@127.0.0.1:{redis_server.port}/0")
    assert "hunter2" not in repr(store)
    with pytest.raises(redis_lib.exceptions.RedisError) as info:
        store.get(SCOPE, KEY)  # wrong ACL credentials: the store raises, the client degrades
    assert "hunter2" not in str(info.value)


def test_close_stops_the_subscriber_thread(redis_server: RedisServer, prefix: str,
                                           clock: FakeClock) -> None:
    import threading as th

    source = FakeSource(clock)
    client = TokenClient(source, clock=clock, store=_store(redis_server, prefix, clock))
    client.get_token("sess")
    wait_until(lambda: any(t.name == "swr-token-redis-sub" for t in th.enumerate()))
    client.close()
    wait_until(lambda: not any(t.name == "swr-token-redis-sub" and t.is_alive()
                               for t in th.enumerate()), timeout=3)


def test_fork_gives_the_child_its_own_redis_connections(redis_server: RedisServer) -> None:
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, time, jwt, swr_token
        def source(req):
            now = time.time()
            return jwt.encode({{"iat": now, "exp": now + 60, "pid": os.getpid(),
                               "sid": req.session_id}}, "k" * 32, algorithm="HS256")
        store = swr_token.RedisStore({redis_server.url!r}, prefix="forktest:")
        client = swr_token.TokenClient(source, store=store)
        parent = client.get_token("a")
        pid = os.fork()
        if pid == 0:
            ok = client.get_token("a") == parent
            child = client.get_token("b", timeout=5)     # through Redis, new connections
            fresh = swr_token.RedisStore({redis_server.url!r}, prefix="forktest:")
            ok = ok and fresh.get("__main__.source", ("b", None, None, None)).raw == child
            import threading
            ok = ok and any(t.name == "swr-token-redis-sub" and t.is_alive()
                            for t in threading.enumerate())  # a subscriber of its own
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        print("parent", client.get_token("b", timeout=5) is not None)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=30, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert "child 0" in result.stdout, result.stdout + result.stderr
    assert "parent True" in result.stdout


def test_refresh_if_stale_with_a_store_fetches_rather_than_rereading_the_same_token(
        redis_server: RedisServer, prefix: str, clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    source = FakeSource(clock)
    with caplog.at_level(logging.WARNING, logger="swr_token"), TokenClient(
            source, clock=clock, store=_store(redis_server, prefix, clock)) as client:
        first = client.get_token("sess")
        clock.advance(60 - 15 + 1)  # stale; the store still holds this very token
        fresh = client.get_token("sess", refresh_if_stale=True)
        assert fresh != first and source.count == 2
    assert not any("no progress" in r.message for r in caplog.records)
