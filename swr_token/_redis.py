"""``RedisStore``: one refresh per key across processes and hosts, through Redis.

Layout (every name of one key shares a hash slot through the ``{...}`` hash tag, so the Lua
scripts touch one slot and run on Redis Cluster as on one server):

- ``{prefix}{S.K}:tok``: the newest token of key K under scope S (both hashed to a fixed
  length), with its expiry, written as a versioned, optionally HMAC-signed entry that names
  the scope and the exact key it was written for; it expires with the token;
- ``{prefix}{S.K}:lock``: the fleet-wide refresh lock, ``SET NX PX`` with a random owner id,
  renewed and released only by its owner (compare-and-expire / compare-and-delete in Lua), so
  a crashed owner's lease simply runs out;
- ``{prefix}drops``: drop notices (scope, key, token fingerprint; never a token). New tokens
  are **not** broadcast: a process whose copy turns stale reads the entry (one ``GET``), and a
  process waiting on another's refresh polls that one entry with a growing pause, so a
  process's traffic follows the keys it reads, not the size of the fleet.

Everything read back is untrusted: entries and notices are size-capped, parsed strictly,
checked against the scope and key they are read for (and the signature when ``signing_key``
is set); anything else is ignored, logged once per streak, and the source is asked instead.
Tokens in Redis are as sensitive as passwords: use ``rediss://`` and ACL credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

from ._clock import Clock, SystemClock
from ._errors import ConfigurationError
from ._request import TokenRequest
from ._store import MAX_SHARED_LIFETIME, StoredToken
from ._token import fingerprint

__all__ = ["RedisStore"]

_log = logging.getLogger("swr_token")

#: Largest entry or notice read from Redis (bytes); anything longer is ignored unread.
MAX_ENTRY_BYTES = 65536
MAX_NOTICE_BYTES = 4096
_VERSION = "v2"
_MAX_SCOPES = 256  # scope hashes this process can name in drop notices (its own scopes)

_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
# Compare-and-delete of a token entry: a newer entry written meanwhile survives.
_DELETE = _UNLOCK
# Take the lock and read the entry in one round trip (the entry as it stood when locked).
_LOCK = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('get', KEYS[2]) or ''}
end
return {0, ''}
"""
# The lock owner's put: write the entry and release the lock in one round trip, so waiters
# see the new entry and a free lock together.
_PUT_RELEASE = """
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('get', KEYS[2]) == ARGV[3] then redis.call('del', KEYS[2]) end
return 1
"""
# One poll of a wait: the entry and whether its refresh lock is still held.
_PEEK = """
return {redis.call('get', KEYS[1]), redis.call('exists', KEYS[2])}
"""


def _hash(text: str, size: int) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:size]


def _key_list(key: TokenRequest) -> list[str | None]:
    return list(key)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _entry_token(body: dict[str, Any], scope_hash: str, key: TokenRequest
                 ) -> StoredToken | str:
    """The token in an opened entry's body, or why it is refused (a short reason)."""
    if body.get("s") != scope_hash or body.get("k") != _key_list(key):
        return "an entry written for another key"
    raw, expires_at, issued = body.get("r"), _number(body.get("e")), body.get("i")
    issued_at = None if issued is None else _number(issued)
    if not isinstance(raw, str) or not raw or expires_at is None \
            or (issued is not None and issued_at is None):
        return "an entry with a malformed token or time"
    return StoredToken(raw, expires_at, issued_at)


def _check_seconds(**durations: object) -> None:
    """Each a finite number of seconds: ``wait`` may be 0, the others must be more."""
    for name, value in durations.items():
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or value < 0 or (value == 0 and name != "wait"):
            raise ConfigurationError(
                f"RedisStore {name} must be a finite number of seconds "
                f"({'>= 0' if name == 'wait' else '> 0'}), got {value!r}")


def _check_prefix(prefix: object) -> None:
    """A str without braces: a brace in it would break the keys' hash tags."""
    if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
        raise ConfigurationError(
            "RedisStore prefix must be a str without '{' or '}' (they are hash tags)")


def _signing_bytes(signing_key: bytes | str | None) -> bytes | None:
    """The signing key as bytes (a str is UTF-8 encoded), refused if under 16 bytes."""
    if isinstance(signing_key, str):
        signing_key = signing_key.encode("utf-8")
    if signing_key is not None and (not isinstance(signing_key, bytes)
                                    or len(signing_key) < 16):
        raise ConfigurationError(
            "RedisStore signing_key must be at least 16 bytes (for example "
            "secrets.token_bytes(32)), shared by every process of the fleet")
    return signing_key


def _redis_client(redis_class: Any, url: str | None, client: Any, socket_timeout: float) -> Any:
    """A new client for ``url``, or the caller's ``client`` once it looks like one."""
    if client is None:
        return redis_class.from_url(
            str(url), socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
            retry_on_timeout=False, health_check_interval=30)
    if not all(callable(getattr(client, name, None))
               for name in ("get", "set", "publish", "pubsub", "register_script")):
        raise ConfigurationError(
            "RedisStore client= must be a redis.Redis, a Sentinel master_for(...) client "
            f"or a redis.cluster.RedisCluster, got {type(client).__name__}")
    return client


class _Streak:
    """Logs bad input once per streak of it (a good read ends the streak)."""

    def __init__(self) -> None:
        self.bad_since: str | None = None

    def bad(self, what: str) -> None:
        if self.bad_since is None:
            self.bad_since = what
            _log.warning("ignored %s from Redis; asking the source instead "
                         "(logged once until a good one is read)", what)

    def good(self) -> None:
        self.bad_since = None


class RedisStore:
    """A shared token store on Redis; pass it as ``TokenClient(..., store=RedisStore(url))``.

    ``url`` (``redis://`` or ``rediss://``, ACL user and password in it) or ``client``: a
    ``redis.Redis``, a Sentinel-managed master (``Sentinel(...).master_for(name)``) or a
    ``redis.cluster.RedisCluster`` of yours, left open on close. ``prefix`` namespaces every
    key (no braces: they would break the hash tags); ``lease`` is how long a refresh lock
    lives without renewal (renewed every third of it while the refresh runs); ``wait`` caps
    how long a process waits for another's refresh before fetching itself; ``socket_timeout``
    bounds every Redis call (for clients this store creates); ``signing_key`` (bytes or str)
    HMAC-signs every entry and drop notice and ignores any that are unsigned or wrongly
    signed. Without it, anyone who can write to that Redis can inject tokens into every
    process that uses it. ``clock``: whose wall clock entry lifetimes count from (the
    system's; tests pass the client's ``FakeClock``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        prefix: str = "swr_token:",
        lease: float = 10.0,
        wait: float = 5.0,
        socket_timeout: float = 0.5,
        signing_key: bytes | str | None = None,
        clock: Clock | None = None,
    ) -> None:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise ConfigurationError(
                "RedisStore needs the redis package: pip install 'swr_token[redis]'"
            ) from exc
        if (url is None) == (client is None):
            raise ConfigurationError("give RedisStore either url= or client=, not both/neither")
        _check_seconds(lease=lease, wait=wait, socket_timeout=socket_timeout)
        _check_prefix(prefix)
        signing_key = _signing_bytes(signing_key)
        self._owns_client = client is None
        client = _redis_client(redis.Redis, url, client, socket_timeout)
        self._redis = client
        self._prefix = prefix
        self._channel = f"{prefix}drops"
        self._lease_ms = max(1, int(lease * 1000))
        self._wait = float(wait)
        self._signing_key = signing_key
        self._wall = (clock or SystemClock()).wall
        self._unlock = client.register_script(_UNLOCK)
        self._renew = client.register_script(_RENEW)
        self._delete = client.register_script(_DELETE)
        self._peek = client.register_script(_PEEK)
        self._lock_read = client.register_script(_LOCK)
        self._put_release = client.register_script(_PUT_RELEASE)
        self._entries = _Streak()
        self._notices = _Streak()
        self._scopes: OrderedDict[str, str] = OrderedDict()  # scope hash -> scope
        self._init_threads()

    def _init_threads(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, str] = {}  # lock key -> owner id
        # What the lock script read, for this thread's next get of that entry (one use).
        self._locked_read = threading.local()
        self._stop = threading.Event()
        self._callbacks: list[Callable[[str, TokenRequest, str], None]] = []
        self._subscriber: threading.Thread | None = None
        self._renewer: threading.Thread | None = None
        self._origin = secrets.token_hex(8)
        self._pid = os.getpid()

    def __repr__(self) -> str:
        signed = ", signed" if self._signing_key else ""
        return f"<RedisStore prefix={self._prefix!r}{signed}>"  # never the URL: a password

    # -- names and encoding -------------------------------------------------------------

    def _scope_hash(self, scope: str) -> str:
        scope_hash = _hash(scope, 16)
        if self._scopes.get(scope_hash) != scope:
            with self._lock:
                self._scopes[scope_hash] = scope
                while len(self._scopes) > _MAX_SCOPES:
                    self._scopes.popitem(last=False)
        return scope_hash

    def _names(self, scope: str, key: TokenRequest) -> tuple[str, str, str]:
        """(scope hash, token key, lock key): one hash tag, so one cluster slot."""
        scope_hash = self._scope_hash(scope)
        key_hash = _hash(json.dumps(_key_list(key), separators=(",", ":")), 24)
        base = f"{self._prefix}{{{scope_hash}.{key_hash}}}"
        return scope_hash, f"{base}:tok", f"{base}:lock"

    def _sign(self, label: str, name: str, payload: str) -> str:
        if self._signing_key is None:
            return ""
        message = f"{label}\0{name}\0{payload}".encode()
        return hmac.new(self._signing_key, message, hashlib.sha256).hexdigest()[:32]

    def _seal(self, label: str, name: str, body: dict[str, object]) -> str:
        payload = json.dumps(body, separators=(",", ":"), allow_nan=False)
        return f"{_VERSION}.{self._sign(label, name, payload)}.{payload}"

    def _open(self, label: str, name: str, value: object, limit: int
              ) -> dict[str, Any] | str:
        """The parsed body of an entry or notice, or why it is refused (a short reason)."""
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogatepass")
        if not isinstance(value, bytes):
            return "a value of an unexpected type"
        if len(value) > limit:
            return "an oversized value"
        try:
            version, signature, payload = value.decode("utf-8").split(".", 2)
        except (UnicodeDecodeError, ValueError):
            return "a malformed value"
        if version != _VERSION:
            return "a value of another format version"
        if self._signing_key is not None and not hmac.compare_digest(
                signature, self._sign(label, name, payload)):
            return "an unsigned or wrongly signed value"
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError):
            return "a value that does not parse"
        return body if isinstance(body, dict) else "a value that is not an object"

    def _entry(self, scope_hash: str, key: TokenRequest, name: str, value: object
               ) -> StoredToken | None:
        if value is None:
            return None
        body = self._open("entry", name, value, MAX_ENTRY_BYTES)
        token = body if isinstance(body, str) else _entry_token(body, scope_hash, key)
        if isinstance(token, str):
            self._entries.bad(token)
            return None
        self._entries.good()
        return token

    # -- tokens -------------------------------------------------------------------------

    def get(self, scope: str, key: TokenRequest) -> StoredToken | None:
        scope_hash, name, _ = self._names(scope, key)
        read = getattr(self._locked_read, "value", None)
        self._locked_read.value = None
        # Right after try_lock, the entry as read atomically with the lock: no second GET.
        fresh = read is not None and read[0] == name
        value = read[1] if fresh and read is not None else self._redis.get(name)
        return self._entry(scope_hash, key, name, value)

    def put(self, scope: str, key: TokenRequest, token: StoredToken) -> None:
        scope_hash, name, lock = self._names(scope, key)
        ttl = min(token.expires_at - self._wall(), MAX_SHARED_LIFETIME)
        if not ttl > 0:
            return
        value = self._seal("entry", name, {"s": scope_hash, "k": _key_list(key),
                                           "r": token.raw, "e": token.expires_at,
                                           "i": token.issued_at})
        with self._lock:
            owner = self._held.pop(lock, None)
        ms = max(1, int(ttl * 1000))
        if owner is None:
            self._redis.set(name, value, px=ms)
        else:  # this process's refresh: write and release together (unlock then is free)
            self._put_release(keys=[name, lock], args=[value, ms, owner])

    def delete(self, scope: str, key: TokenRequest, raw: str) -> None:
        """Compare-and-delete (the exact stored value, so a newer entry survives), then tell
        the other processes, which stop serving that token if they hold it."""
        scope_hash, name, _ = self._names(scope, key)
        value = self._redis.get(name)
        stored = self._entry(scope_hash, key, name, value)
        if stored is not None and stored.raw == raw:
            self._delete(keys=[name], args=[value])
        notice = self._seal("drop", self._channel, {"s": scope_hash, "k": _key_list(key),
                                                    "f": fingerprint(raw), "o": self._origin})
        self._redis.publish(self._channel, notice)

    # -- fleet-wide refresh lock --------------------------------------------------------------

    def try_lock(self, scope: str, key: TokenRequest) -> object | None:
        _, entry, name = self._names(scope, key)
        owner = secrets.token_hex(16)
        answer = self._lock_read(keys=[name, entry], args=[owner, self._lease_ms])
        if not (isinstance(answer, list | tuple) and len(answer) == 2 and answer[0] == 1):
            return None
        with self._lock:
            self._held[name] = owner
            self._start_renewer()
        self._locked_read.value = (entry, answer[1] or None)
        return (name, owner)

    def unlock(self, scope: str, key: TokenRequest, handle: object) -> None:
        name, owner = cast("tuple[str, str]", handle)
        self._locked_read.value = None
        with self._lock:
            held = self._held.pop(name, None)
        if held is not None:  # else released already, with this process's put
            self._unlock(keys=[name], args=[owner])

    def _start_renewer(self) -> None:
        if self._renewer is None or not self._renewer.is_alive():
            self._renewer = threading.Thread(target=self._renew_loop, daemon=True,
                                             name="swr-token-redis-lease")
            self._renewer.start()

    def _renew_loop(self) -> None:
        """Extend the leases this process holds while its refreshes run long."""
        while not self._stop.wait(self._lease_ms / 3000):
            with self._lock:
                held = list(self._held.items())
            for name, owner in held:
                try:
                    self._renew(keys=[name], args=[owner, self._lease_ms])
                except Exception:  # Redis down: the lease runs out, as for a crashed owner
                    _log.debug("could not renew a refresh lease", exc_info=True)

    # -- waiting for another process's refresh ----------------------------------------------

    def wait(self, scope: str, key: TokenRequest, timeout: float) -> StoredToken | None:
        """Poll the one entry (and its lock) with a growing pause, 20 ms up to 250 ms, for
        at most ``min(timeout, wait)`` seconds; return early when the entry changes or the
        lock is released. About 5 polls for a 200 ms refresh, 25 at most in 5 s."""
        scope_hash, name, lock = self._names(scope, key)
        deadline = time.monotonic() + max(0.0, min(timeout, self._wait))
        first, held = self._poll(name, lock)
        value, pause = first, 0.02
        while held and value == first:
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.wait(min(pause, left)):
                break
            pause = min(pause * 1.5, 0.25)
            value, held = self._poll(name, lock)
        return self._entry(scope_hash, key, name, value)

    def _poll(self, name: str, lock: str) -> tuple[object, bool]:
        answer = self._peek(keys=[name, lock])
        if not isinstance(answer, list | tuple) or len(answer) != 2:
            return None, False
        return answer[0], bool(answer[1])

    # -- drop notices ---------------------------------------------------------------------

    def listen(self, callback: Callable[[str, TokenRequest, str], None]) -> None:
        with self._lock:
            if callback not in self._callbacks:
                self._callbacks.append(callback)
        self._start_subscriber()

    def _start_subscriber(self) -> None:
        with self._lock:
            if self._subscriber is not None and self._subscriber.is_alive():
                return
            self._subscriber = threading.Thread(target=self._subscribe_loop, daemon=True,
                                                name="swr-token-redis-sub")
            self._subscriber.start()

    def _subscribe_loop(self) -> None:
        pause = 0.5
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self._channel)
                pause = 0.5
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if isinstance(message, dict) and message.get("type") == "message":
                        self._on_notice(message.get("data"))
            except Exception:
                # Redis is down or dropped us: retry with a growing pause, quietly (the
                # client logs the degradation once when its own calls fail).
                self._stop.wait(pause)
                pause = min(pause * 2, 2.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        _log.debug("closing a Redis subscription failed")

    def _on_notice(self, data: object) -> None:
        """One drop notice; whatever it holds, it never raises into the subscriber."""
        try:
            body = self._open("drop", self._channel, data, MAX_NOTICE_BYTES)
            if isinstance(body, str):
                self._notices.bad(body.replace("value", "drop notice"))
                return
            request = TokenRequest.parse(body.get("k"))
            scope, fp = self._scopes.get(str(body.get("s"))), body.get("f")
            if request is None or not (isinstance(fp, str) and len(fp) == 10):
                self._notices.bad("a malformed drop notice")
                return
            self._notices.good()
            if scope is None or body.get("o") == self._origin:
                return  # another service's scope, or our own notice
            for callback in list(self._callbacks):
                callback(scope, request, fp)
        except Exception:
            _log.exception("handling a drop notice failed; listening on")

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        if self._owns_client:
            try:
                self._redis.close()
            except Exception:
                _log.debug("closing the Redis client failed")

    def reset_after_fork(self) -> None:
        """The child must not share the parent's sockets, threads or lock ownership."""
        pool = getattr(self._redis, "connection_pool", None)
        if pool is not None:
            pool.reset()
        self._init_threads()
