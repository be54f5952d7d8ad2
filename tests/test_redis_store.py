"""RedisStore against a real redis-server: shared tokens, the fleet lock, announcements, and
Redis failing. Processes are simulated by separate clients with separate stores here; the
multi-process proof is in test_redis_fleet.py."""

from __future__ import annotations

import json
import logging
import threading

import pytest
import redis as redis_lib

from swr_token import RedisStore, TokenClient
from swr_token.testing import FakeClock, InlineExecutor

from .conftest import FakeSource, mint, wait_until
from .redis_server import RedisServer

KEY = ("sess", None, None, None)


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"t{abs(hash(request.node.nodeid))}:"


def _store(server: RedisServer, prefix: str, **kw: float) -> RedisStore:
    return RedisStore(server.url, prefix=prefix, **kw)  # type: ignore[arg-type]


def test_put_get_and_expiry(redis_server: RedisServer, prefix: str) -> None:
    store = _store(redis_server, prefix)
    assert store.get(KEY) is None
    store.put(KEY, "raw-token", ttl=5)
    assert store.get(KEY) == "raw-token"
    ttl = redis_lib.Redis.from_url(redis_server.url).pttl(f"{prefix}tok:" + json.dumps(
        list(KEY), separators=(",", ":")))
    assert 0 < ttl <= 5000  # expires with the token
    store.close()


def test_lock_is_exclusive_and_released_only_by_its_owner(redis_server: RedisServer,
                                                          prefix: str) -> None:
    one, two = _store(redis_server, prefix), _store(redis_server, prefix)
    handle = one.try_lock(KEY)
    assert handle is not None
    assert two.try_lock(KEY) is None
    name = f"{prefix}lock:" + json.dumps(list(KEY), separators=(",", ":"))
    two.unlock(KEY, (name, "not-the-owner"))
    assert two.try_lock(KEY) is None  # a stranger's unlock did nothing
    one.unlock(KEY, handle)
    assert two.try_lock(KEY) is not None
    one.close()
    two.close()


def test_lease_runs_out_when_the_owner_stops_renewing(redis_server: RedisServer,
                                                      prefix: str) -> None:
    raw = redis_lib.Redis.from_url(redis_server.url)
    name = f"{prefix}lock:" + json.dumps(list(KEY), separators=(",", ":"))
    raw.set(name, "a-dead-owner", nx=True, px=300)  # as a crashed process would leave it
    store = _store(redis_server, prefix)
    assert store.try_lock(KEY) is None
    wait_until(lambda: store.try_lock(KEY) is not None, timeout=3)
    store.close()


def test_lease_is_renewed_while_a_refresh_runs_long(redis_server: RedisServer,
                                                    prefix: str) -> None:
    store = _store(redis_server, prefix, lease=0.3)
    other = _store(redis_server, prefix, lease=0.3)
    handle = store.try_lock(KEY)
    assert handle is not None
    done = threading.Event()
    done.wait(1.0)  # three leases long: held only because it is renewed
    assert other.try_lock(KEY) is None
    store.unlock(KEY, handle)
    assert other.try_lock(KEY) is not None
    store.close()
    other.close()


def test_second_client_uses_the_shared_token_without_a_request(
        redis_server: RedisServer, prefix: str, clock: FakeClock) -> None:
    source = FakeSource(clock)
    with TokenClient(source, clock=clock, store=_store(redis_server, prefix)) as a, \
            TokenClient(source, clock=clock, store=_store(redis_server, prefix)) as b:
        token = a.get_token("sess")
        assert b.get_token("sess") == token
        assert source.count == 1


def test_announcement_replaces_other_processes_copies(redis_server: RedisServer, prefix: str,
                                                      clock: FakeClock) -> None:
    source = FakeSource(clock)
    with TokenClient(source, clock=clock, store=_store(redis_server, prefix)) as a, \
            TokenClient(source, clock=clock, store=_store(redis_server, prefix)) as b:
        first = a.get_token("sess")
        assert b.get_token("sess") == first
        clock.advance(2)
        newer = a.get_token("sess", skip_cache=True)
        wait_until(lambda: b.get_token("sess") == newer)
        assert source.count == 2


def _announce(server: RedisServer, prefix: str, key: list[object], raw: object) -> None:
    redis_lib.Redis.from_url(server.url).publish(
        f"{prefix}tokens", json.dumps({"k": key, "t": raw, "o": "someone-else"}))


@pytest.mark.parametrize("case", ["older", "malformed", "expired", "wrong key", "garbage",
                                  "not a key"])
def test_bad_announcements_are_ignored(redis_server: RedisServer, prefix: str,
                                       clock: FakeClock, case: str) -> None:
    source = FakeSource(clock)
    store = _store(redis_server, prefix)
    with TokenClient(source, clock=clock, store=store) as client:
        current = client.get_token("sess")
        clock.advance(1)
        good = mint(clock, claims={"sid": "sess"}, jti=99)
        bad = {
            "older": mint(clock, iat=clock.wall() - 5, claims={"sid": "sess"}, jti=98),
            "malformed": "not.a.jwt",
            "expired": mint(clock, iat=clock.wall() - 100, claims={"sid": "sess"}),
            "wrong key": mint(clock, claims={"sid": "another-session"}, jti=97),
            "garbage": 12345,
            "not a key": good,
        }[case]
        key: list[object] = list(KEY) if case != "not a key" else ["sess", 7]
        _announce(redis_server, prefix, key, bad)
        if case == "garbage":
            redis_lib.Redis.from_url(redis_server.url).publish(f"{prefix}tokens", b"\xff{{")
        _announce(redis_server, prefix, list(KEY), good)  # a valid one after it...
        wait_until(lambda: client.get_token("sess") == good)  # ...is adopted, in order
        assert current != good
        assert source.count == 1


def test_redis_down_keeps_working_per_process_and_recovers(
        prefix: str, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer()
    server.start()
    source = FakeSource(clock)
    try:
        with caplog.at_level(logging.WARNING, logger="swr_token"), TokenClient(
                source, clock=clock, executor=InlineExecutor(),
                store=_store(server, prefix, socket_timeout=0.2)) as client:
            client.get_token("sess")
            server.stop()
            for i in range(5):  # Redis gone: every fetch still works, locally
                assert client.get_token(f"other{i}") == source.issued[-1]
            assert sum("unavailable" in r.message for r in caplog.records) == 1
            server.start()  # same port
            clock.advance(3)  # past the store's retry pause
            client.get_token("back", timeout=5)
            assert any("is back" in r.message for r in caplog.records)
            assert RedisStore(server.url, prefix=prefix).get(("back", None, None, None))
    finally:
        server.stop()


def test_redis_garbage_in_the_token_slot_is_not_used(redis_server: RedisServer,
                                                     prefix: str, clock: FakeClock) -> None:
    store = _store(redis_server, prefix)
    store.put(KEY, "garbage-not-a-token", ttl=30)
    source = FakeSource(clock)
    with TokenClient(source, clock=clock, store=store) as client:
        assert client.get_token("sess") == source.issued[-1]
        assert source.count == 1


def test_repr_and_errors_hide_the_url_password(redis_server: RedisServer) -> None:
    store = RedisStore(f"redis://user:hunter2@127.0.0.1:{redis_server.port}/0")
    assert "hunter2" not in repr(store)
    with pytest.raises(redis_lib.exceptions.RedisError) as info:
        store.get(KEY)  # wrong ACL credentials: the store raises, the client degrades
    assert "hunter2" not in str(info.value)


def test_close_stops_the_subscriber_thread(redis_server: RedisServer, prefix: str,
                                           clock: FakeClock) -> None:
    import threading as th

    source = FakeSource(clock)
    client = TokenClient(source, clock=clock, store=_store(redis_server, prefix))
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
            ok = ok and fresh.get(("b", None, None, None)) == child
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
