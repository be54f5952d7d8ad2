"""Issue 12 points 12-16 against a real redis-server: a dropped token stays dropped fleet-wide,
everything read from Redis is untrusted, signed entries, bounded memory, and store errors
logged once per streak. Two clients with two stores stand for two processes."""

from __future__ import annotations

import json
import logging
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_lib

from swr_token import (
    ClerkBackendSource,
    InvalidTokenError,
    RedisStore,
    StoredToken,
    Token,
    TokenClient,
    TokenRejectedError,
    bearer_session,
    source_identity,
)
from swr_token.testing import FakeClock, InlineExecutor, LocalIssuer

from .conftest import FakeSource, mint, wait_until
from .redis_server import RedisServer
from .test_auth import Api

KEY = ("sess", None, None, None)
SIGNING = b"s" * 32


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"d{abs(hash(request.node.nodeid))}:"


def _store(server: RedisServer, prefix: str, clock: FakeClock | None = None,
           **kw: Any) -> RedisStore:
    return RedisStore(server.url, prefix=prefix, clock=clock, **kw)


def _raw(server: RedisServer) -> redis_lib.Redis:
    return redis_lib.Redis.from_url(server.url)


def _token_name(server: RedisServer, prefix: str) -> str:
    [name] = [n.decode() for n in _raw(server).keys(f"{prefix}*:tok")]
    return name


def _subscribed(server: RedisServer, prefix: str, count: int = 1) -> None:
    """Wait until ``count`` drop-notice subscribers listen (notices before that are lost)."""
    channel = f"{prefix}drops"
    wait_until(lambda: dict(_raw(server).pubsub_numsub(channel)).get(channel.encode(), 0)
               >= count)


@pytest.fixture
def pair(redis_server: RedisServer, prefix: str, clock: FakeClock
         ) -> Iterator[tuple[TokenClient, TokenClient, FakeSource]]:
    """Two 'processes' sharing a token through Redis, both listening for drops."""
    source = FakeSource(clock)
    with TokenClient(source, clock=clock, executor=InlineExecutor(),
                     store=_store(redis_server, prefix, clock)) as a, \
            TokenClient(source, clock=clock, executor=InlineExecutor(),
                        store=_store(redis_server, prefix, clock)) as b:
        token = a.get_token("sess")
        assert b.get_token("sess") == token and source.count == 1
        _subscribed(redis_server, prefix, 2)
        yield a, b, source


# -- point 12: a dropped token stays dropped, fleet-wide ------------------------------------

@pytest.mark.parametrize("how", ["invalidate()", "invalidate(token=t)"])
def test_invalidate_drops_the_token_fleet_wide(
        pair: tuple[TokenClient, TokenClient, FakeSource], redis_server: RedisServer,
        prefix: str, how: str) -> None:
    a, b, source = pair
    dropped = a.get_token("sess")
    assert a.invalidate("sess", token=dropped) if how != "invalidate()" \
        else a.invalidate("sess")
    assert _raw(redis_server).keys(f"{prefix}*:tok") == []  # out of the store
    started = time.monotonic()
    wait_until(lambda: b.stats()["entries"] == 0 or b.get_token("sess") != dropped)
    assert time.monotonic() - started < 3.0  # b stopped serving it within seconds
    fresh = b.get_token("sess")
    assert fresh != dropped and source.count == 2
    assert a.get_token("sess") == fresh  # a adopts b's new token, not the dropped one


def test_compare_and_delete_keeps_a_newer_token(
        pair: tuple[TokenClient, TokenClient, FakeSource], clock: FakeClock) -> None:
    a, b, _ = pair
    old = a.get_token("sess")
    clock.advance(1)
    newer = b.get_token("sess", skip_cache=True)  # written to the store by b
    assert a.invalidate("sess", token=old)
    assert a.get_token("sess") == newer  # the newer entry survived a's delete
    assert b.get_token("sess") == newer  # and b's token is not the dropped one


def test_a_rejection_drops_the_token_fleet_wide(
        redis_server: RedisServer, prefix: str, clock: FakeClock) -> None:
    source = FakeSource(clock)
    with TokenClient(source, clock=clock, executor=InlineExecutor(),
                     store=_store(redis_server, prefix, clock)) as a, \
            TokenClient(source, clock=clock, executor=InlineExecutor(),
                        background_refresh_threshold=5,  # b's copy stays fresh meanwhile
                        store=_store(redis_server, prefix, clock)) as b:
        refused = a.get_token("sess")
        assert b.get_token("sess") == refused
        _subscribed(redis_server, prefix, 2)
        clock.advance(60 - 15 + 1)  # stale for a: its read refreshes, and the issuer refuses
        source.script.append(TokenRejectedError("session ended", status=404))
        a.get_token("sess")  # serves the stale token; the background refresh is rejected
        with pytest.raises(TokenRejectedError):
            a.get_token("sess")  # fails closed here...
        assert _raw(redis_server).keys(f"{prefix}*:tok") == []
        wait_until(lambda: b.stats()["entries"] == 0 or b.get_token("sess") != refused)
        assert b.get_token("sess") != refused  # ...and in the other process
        assert source.count == 3


def test_a_dropped_token_written_back_is_never_adopted(
        pair: tuple[TokenClient, TokenClient, FakeSource], redis_server: RedisServer,
        prefix: str, clock: FakeClock) -> None:
    a, b, source = pair
    dropped = a.get_token_info("sess")
    a.invalidate("sess")
    wait_until(lambda: b.stats()["entries"] == 0 or b.get_token("sess") != dropped.raw)
    # A slow writer (or an attacker) puts the dropped token back into Redis.
    _store(redis_server, prefix, clock).put(
        source_identity(source), KEY, StoredToken(dropped.raw, dropped.expires_at,
                                                  dropped.issued_at))
    assert a.get_token("sess") != dropped.raw
    assert b.get_token("sess") != dropped.raw
    assert source.count >= 2


@pytest.mark.parametrize("with_store", [True, False])
def test_bearer_auth_retry_after_a_401_gets_a_different_token(
        redis_server: RedisServer, prefix: str, with_store: bool) -> None:
    issuer = LocalIssuer().start()
    api = Api()
    try:
        def client() -> TokenClient:
            return TokenClient(ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url),
                               store=_store(redis_server, prefix) if with_store else None)

        with client() as first, client() as second:
            sent = first.get_token("sess_1")
            if with_store:
                assert second.get_token("sess_1") == sent  # adopted from Redis
            else:
                sent = second.get_token("sess_1")
            api.revoked.add(sent)
            with bearer_session(second, "sess_1", origins=api.url) as session:
                response = session.get(f"{api.url}/items", timeout=(2, 5))
            assert response.status_code == 200
            retried = response.request.headers["Authorization"]
            assert retried != f"Bearer {sent}"
            assert [r.status_code for r in response.history] == [401]
    finally:
        api.stop()
        issuer.stop()


# -- point 13: anything read from Redis is untrusted --------------------------------------

def _entry_body(server: RedisServer, prefix: str) -> tuple[str, str, dict[str, Any]]:
    name = _token_name(server, prefix)
    value = _raw(server).get(name)
    assert isinstance(value, bytes)
    version, signature, payload = value.decode().split(".", 2)
    return name, f"{version}.{signature}.", json.loads(payload)


def _poison(server: RedisServer, prefix: str, clock: FakeClock, source: FakeSource,
            case: str) -> None:
    """Leave a bad entry for KEY in Redis, written as a hostile or broken writer would."""
    scope = source_identity(source)
    good = mint(clock, claims={"sid": "sess"}, jti=99)
    writer = _store(server, prefix, clock)
    if case == "names another key":
        writer.put(scope, ("someone-else", None, None, None), StoredToken(good, clock.wall() + 60))
        other = _token_name(server, prefix)
        writer.put(scope, KEY, StoredToken("placeholder", clock.wall() + 60))
        target = [n.decode() for n in _raw(server).keys(f"{prefix}*:tok") if n.decode() != other]
        _raw(server).set(target[0], _raw(server).get(other) or b"")
        _raw(server).delete(other)
        return
    writer.put(scope, KEY, StoredToken(good, clock.wall() + 60, clock.wall()))
    name, head, body = _entry_body(server, prefix)
    value: bytes | str
    if case == "does not parse":
        value = head + "{not json"
    elif case == "binary garbage":
        value = b"\xff\xfe{{\x00"
    elif case == "nests deeply":
        value = head + "[" * 50_000 + "]" * 50_000
    elif case == "oversized":
        value = head + json.dumps({**body, "pad": "x" * 200_000})
    elif case == "overflowing expiry":
        value = head + json.dumps(body).replace(str(body["e"]), "1e999")
    elif case == "expiry not a number":
        value = head + json.dumps({**body, "e": "soon"})
    elif case == "wrong scope":
        value = head + json.dumps({**body, "s": "0" * 16})
    elif case == "expired":
        value = head + json.dumps({**body, "e": clock.wall() - 1})
    elif case == "not a token":
        value = head + json.dumps({**body, "r": 12345})
    elif case == "fails the verifier":
        return  # the entry is well formed; the client's verifier refuses jti 99
    else:
        raise AssertionError(case)
    _raw(server).set(name, value)


POISON = ["does not parse", "binary garbage", "nests deeply", "oversized",
          "overflowing expiry", "expiry not a number", "wrong scope", "names another key",
          "expired", "not a token", "fails the verifier"]


def _refuse_jti_99(token: Token) -> None:
    if token.claims.get("jti") == 99:
        raise InvalidTokenError("not signed by our issuer")


@pytest.mark.parametrize("case", POISON)
def test_a_poisoned_entry_is_ignored_and_the_source_asked(
        redis_server: RedisServer, prefix: str, clock: FakeClock, case: str,
        caplog: pytest.LogCaptureFixture) -> None:
    source = FakeSource(clock)
    _poison(redis_server, prefix, clock, source, case)
    with caplog.at_level(logging.WARNING, logger="swr_token"), TokenClient(
            source, clock=clock, verifier=_refuse_jti_99,
            store=_store(redis_server, prefix, clock)) as client:
        token = client.get_token("sess", timeout=5)  # never raised, never blocked
        assert token == source.issued[-1] and source.count == 1
        client.get_token("second", timeout=5)  # the key is usable, the store too
    ignored = [r for r in caplog.records if "ignored" in r.message]
    assert len(ignored) <= 1  # logged once per streak (a verifier refusal is not the store's)
    assert all(token not in r.getMessage() for r in caplog.records)


def test_bad_entries_log_once_per_streak(redis_server: RedisServer, prefix: str,
                                         clock: FakeClock,
                                         caplog: pytest.LogCaptureFixture) -> None:
    store = _store(redis_server, prefix, clock)
    raw = _raw(redis_server)
    with caplog.at_level(logging.WARNING, logger="swr_token"):
        for i in range(5):
            store.put("scope", (f"k{i}", None, None, None), StoredToken("t", clock.wall() + 60))
        for name in raw.keys(f"{prefix}*:tok"):
            raw.set(name, b"garbage")
        for i in range(5):
            assert store.get("scope", (f"k{i}", None, None, None)) is None
        assert sum("ignored" in r.message for r in caplog.records) == 1
        store.put("scope", ("good", None, None, None), StoredToken("t", clock.wall() + 60))
        assert store.get("scope", ("good", None, None, None)) is not None  # streak ends
        assert store.get("scope", ("k0", None, None, None)) is None
        assert sum("ignored" in r.message for r in caplog.records) == 2


def test_the_subscriber_survives_any_message(
        pair: tuple[TokenClient, TokenClient, FakeSource], redis_server: RedisServer,
        prefix: str) -> None:
    a, b, _ = pair
    channel = f"{prefix}drops"
    raw = _raw(redis_server)
    for junk in [b"\xff\x00", b"v2..[", b"v2.." + b"[" * 50_000, b"v2.." + b"x" * 100_000,
                 b'v2..{"k": 1}', b'v2..{"k": ["a", null, null, null], "f": []}', b"v9..{}",
                 b'v2..{"s": "0000000000000000", "k": ["sess", null, null, null], '
                 b'"f": "0123456789"}', b"[]", b"null"]:
        raw.publish(channel, junk)
    dropped = b.get_token("sess")
    a.invalidate("sess")  # a real notice after the junk is still delivered
    wait_until(lambda: b.stats()["entries"] == 0 or b.get_token("sess") != dropped)


def test_a_drop_notice_for_another_key_drops_nothing(
        pair: tuple[TokenClient, TokenClient, FakeSource], clock: FakeClock) -> None:
    a, b, _ = pair
    kept = b.get_token("sess")
    a.invalidate("sess", token="a-token-nobody-holds")  # same key, another fingerprint
    a.invalidate("third")  # a key b does not hold
    other = a.get_token("other")
    assert b.get_token("other") == other
    a.invalidate("other")  # a notice b acts on, after the two above
    wait_until(lambda: b.get_token("other") != other)
    assert b.get_token("sess") == kept


# -- point 14: signed entries and notices -------------------------------------------------

@pytest.mark.parametrize("writer_key", [None, b"w" * 32])
def test_a_signed_store_ignores_unsigned_or_wrongly_signed_entries(
        redis_server: RedisServer, prefix: str, clock: FakeClock,
        writer_key: bytes | None) -> None:
    source = FakeSource(clock)
    injected = mint(clock, claims={"sid": "sess"}, jti=99)
    _store(redis_server, prefix, clock, signing_key=writer_key).put(
        source_identity(source), KEY, StoredToken(injected, clock.wall() + 60))
    with TokenClient(source, clock=clock,
                     store=_store(redis_server, prefix, clock, signing_key=SIGNING)) as client:
        assert client.get_token("sess") != injected
        assert source.count == 1


def test_signed_stores_share_tokens_and_drops(redis_server: RedisServer, prefix: str,
                                              clock: FakeClock) -> None:
    source = FakeSource(clock)
    with TokenClient(source, clock=clock,
                     store=_store(redis_server, prefix, clock, signing_key=SIGNING)) as a, \
            TokenClient(source, clock=clock,
                        store=_store(redis_server, prefix, clock, signing_key=SIGNING)) as b, \
            TokenClient(source, clock=clock, store=_store(redis_server, prefix, clock)) as c:
        token = a.get_token("sess")
        assert b.get_token("sess") == token and source.count == 1
        c.get_token("sess")  # an unsigned process of the same prefix
        other = a.get_token("other")
        assert b.get_token("other") == other
        _subscribed(redis_server, prefix, 3)
        c.invalidate("sess")  # its unsigned notice is ignored by the signed processes
        a.invalidate("other")  # a signed notice after it is honoured...
        wait_until(lambda: b.get_token("other") != other)
        assert b.get_token("sess") == token  # ...and b has handled both, in order


def test_signing_key_must_be_long_enough(redis_server: RedisServer) -> None:
    from swr_token import ConfigurationError

    with pytest.raises(ConfigurationError, match="16 bytes"):
        RedisStore(redis_server.url, signing_key=b"short")
    assert "s" * 32 not in repr(RedisStore(redis_server.url, signing_key=SIGNING))


# -- point 15: bounded memory --------------------------------------------------------------

def test_a_flood_of_notices_for_other_keys_does_not_grow_memory(
        pair: tuple[TokenClient, TokenClient, FakeSource], redis_server: RedisServer,
        prefix: str) -> None:
    a, b, _ = pair
    _, _, body = _entry_body(redis_server, prefix)
    scope_hash = body["s"]  # a valid-looking notice names the scope's hash: read it off a's entry
    channel = f"{prefix}drops"
    raw = _raw(redis_server)

    def flood(count: int, offset: int) -> None:
        pipe = raw.pipeline(transaction=False)
        for i in range(count):
            pipe.publish(channel, "v2.." + json.dumps(
                {"s": scope_hash, "k": [f"other-{offset + i}", None, None, None],
                 "f": f"{i:010d}", "o": "x"}))
        pipe.execute()

    def drained() -> None:  # a real drop after the flood: all of it has been handled
        token = b.get_token("sess")
        a.invalidate("sess", token=token)
        wait_until(lambda: b.stats()["entries"] == 0 or b.get_token("sess") != token,
                   timeout=20)

    flood(2_000, 0)
    drained()
    # Count only what swr_token's own code holds: redis-py's socket buffer may keep the last
    # burst of raw bytes for a while, which is bounded by the socket, not by the notices.
    ours = [tracemalloc.Filter(True, "*/swr_token/*")]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(ours)
        flood(10_000, 10_000)
        drained()
        after = tracemalloc.take_snapshot().filter_traces(ours)
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 200_000, grown  # nothing kept per notice for keys b does not hold
    assert b.stats()["entries"] <= 1


# -- point 16: store errors log once per streak ---------------------------------------------

@pytest.mark.parametrize("refusal", ["OOM", "READONLY"])
def test_a_redis_refusing_writes_logs_once_when_it_starts_and_once_when_it_ends(
        prefix: str, clock: FakeClock, caplog: pytest.LogCaptureFixture, refusal: str) -> None:
    server = RedisServer()
    server.start()
    admin = _raw(server)
    source = FakeSource(clock)
    try:
        with caplog.at_level(logging.WARNING, logger="swr_token"), TokenClient(
                source, clock=clock, executor=InlineExecutor(),
                store=_store(server, prefix, clock)) as client:
            client.get_token("warm")
            if refusal == "OOM":
                admin.config_set("maxmemory-policy", "noeviction")
                admin.config_set("maxmemory", "1")
            else:
                admin.execute_command("REPLICAOF", "127.0.0.1", "1")  # nobody there
            for i in range(12):  # 12 fetches over 24 s: each retry of the store fails again
                assert client.get_token(f"k{i}", timeout=5) == source.issued[-1]
                clock.advance(2.1)
            if refusal == "OOM":
                admin.config_set("maxmemory", "0")
            else:
                admin.execute_command("REPLICAOF", "NO", "ONE")
            for i in range(3):
                client.get_token(f"after{i}", timeout=5)
                clock.advance(2.1)
        messages = [r.getMessage() for r in caplog.records if "shared token store" in r.message]
        assert len(messages) == 2, messages
        assert "refuses writes" in messages[0] and "is back" in messages[1]
    finally:
        server.stop()


def test_a_request_through_the_auth_hook_never_raises_a_store_error(
        prefix: str, clock: FakeClock) -> None:
    """invalidate() with Redis gone: the drop is best effort; the caller is not failed."""
    server = RedisServer()
    server.start()
    source = FakeSource(clock)
    with TokenClient(source, clock=clock,
                     store=_store(server, prefix, clock, socket_timeout=0.2)) as client:
        token = client.get_token("sess")
        server.stop()
        assert client.invalidate("sess", token=token)
        assert client.get_token("sess") != token

