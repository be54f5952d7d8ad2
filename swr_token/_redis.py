"""``RedisStore``: one refresh per key across processes and hosts, through Redis.

- shared tokens: ``{prefix}tok:{key}`` holds the newest raw token, expiring with the token;
- fleet-wide single-flight: ``{prefix}lock:{key}`` taken with ``SET NX PX`` and a random owner
  id, released and renewed only by its owner (compare-and-delete / compare-and-expire in Lua),
  so a crashed owner's lease simply runs out;
- announcements: new tokens are published on ``{prefix}tokens``; other processes adopt one
  only after the same checks clerk-js makes on a broadcast (done by the client).

Tokens in Redis are as sensitive as passwords: use ``rediss://`` and ACL credentials, and never
log them (nothing here does). All calls have short socket timeouts; the client stops asking a
failing Redis for a while and carries on per process.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from ._cache import Key
from ._errors import ConfigurationError

__all__ = ["RedisStore"]

_log = logging.getLogger("swr_token")

_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


def _encode_key(key: Key) -> str:
    return json.dumps(list(key), separators=(",", ":"))


def _decode_key(value: object) -> Key | None:
    if (isinstance(value, list) and len(value) == 4
            and all(part is None or isinstance(part, str) for part in value)):
        return (value[0], value[1], value[2], value[3])
    return None


class RedisStore:
    """A shared token store on Redis; pass it as ``TokenClient(..., store=RedisStore(url))``.

    ``url`` (``redis://`` or ``rediss://``, ACL user and password in it) or ``client`` (a
    ``redis.Redis`` of yours, left open on close); ``prefix`` namespaces every key; ``lease``
    is how long a refresh lock lives without renewal (renewed every third of it while the
    refresh runs); ``wait`` bounds how long a process waits for another's refresh before
    fetching itself; ``socket_timeout`` bounds every Redis call.
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
    ) -> None:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise ConfigurationError(
                "RedisStore needs the redis package: pip install 'swr_token[redis]'"
            ) from exc
        if (url is None) == (client is None):
            raise ConfigurationError("give RedisStore either url= or client=, not both/neither")
        if lease <= 0 or wait < 0 or socket_timeout <= 0:
            raise ConfigurationError("lease and socket_timeout must be > 0 and wait >= 0")
        self._owns_client = client is None
        if client is None:
            client = redis.Redis.from_url(
                str(url), socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                retry_on_timeout=False, health_check_interval=30)
        self._redis = client
        self._prefix = prefix
        self._channel = f"{prefix}tokens"
        self._lease_ms = int(lease * 1000)
        self._wait = wait
        self._unlock = client.register_script(_UNLOCK)
        self._renew = client.register_script(_RENEW)
        self._origin = secrets.token_hex(8)
        self._init_threads()

    def _init_threads(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._announced: dict[Key, tuple[int, str]] = {}  # key -> (version, raw)
        self._held: dict[str, str] = {}  # lock key -> owner id
        self._stop = threading.Event()
        self._callback: Callable[[Key, str], None] | None = None
        self._subscriber: threading.Thread | None = None
        self._renewer: threading.Thread | None = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"<RedisStore prefix={self._prefix!r}>"  # never the URL: it may hold a password

    # -- tokens -------------------------------------------------------------------------

    def get(self, key: Key) -> str | None:
        value = self._redis.get(f"{self._prefix}tok:{_encode_key(key)}")
        if value is None:
            return None
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    def put(self, key: Key, raw: str, ttl: float) -> None:
        encoded = _encode_key(key)
        self._redis.set(f"{self._prefix}tok:{encoded}", raw, px=max(1, int(ttl * 1000)))
        message = json.dumps({"k": list(key), "t": raw, "o": self._origin})
        self._redis.publish(self._channel, message)

    # -- fleet-wide refresh lock --------------------------------------------------------------

    def try_lock(self, key: Key) -> object | None:
        name = f"{self._prefix}lock:{_encode_key(key)}"
        owner = secrets.token_hex(16)
        if not self._redis.set(name, owner, nx=True, px=self._lease_ms):
            return None
        with self._cond:
            self._held[name] = owner
            self._start_renewer()
        return (name, owner)

    def unlock(self, key: Key, handle: object) -> None:
        name, owner = cast("tuple[str, str]", handle)
        with self._cond:
            self._held.pop(name, None)
        self._unlock(keys=[name], args=[owner])

    def _start_renewer(self) -> None:
        if self._renewer is None or not self._renewer.is_alive():
            self._renewer = threading.Thread(target=self._renew_loop, daemon=True,
                                             name="swr-token-redis-lease")
            self._renewer.start()

    def _renew_loop(self) -> None:
        """Extend the leases this process holds while its refreshes run long."""
        while not self._stop.wait(self._lease_ms / 3000):
            with self._cond:
                held = list(self._held.items())
            for name, owner in held:
                try:
                    self._renew(keys=[name], args=[owner, self._lease_ms])
                except Exception:  # Redis down: the lease runs out, as for a crashed owner
                    _log.debug("swr_token: could not renew a refresh lease", exc_info=True)

    # -- announcements --------------------------------------------------------------------

    def listen(self, callback: Callable[[Key, str], None]) -> None:
        self._callback = callback
        self._start_subscriber()

    def _start_subscriber(self) -> None:
        with self._cond:
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
                    if message is not None and message.get("type") == "message":
                        self._on_message(message.get("data"))
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
                        _log.debug("swr_token: closing a Redis subscription failed")

    def _on_message(self, data: object) -> None:
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else str(data)
            message = json.loads(text)
            key = _decode_key(message.get("k"))
            raw = message.get("t")
            origin = message.get("o")
        except (ValueError, AttributeError, UnicodeDecodeError):
            return  # garbage on the channel: ignored
        if key is None or not isinstance(raw, str) or not raw:
            return
        with self._cond:
            version = self._announced.get(key, (0, ""))[0] + 1
            self._announced[key] = (version, raw)
            self._cond.notify_all()
        callback = self._callback
        if callback is not None and origin != self._origin:
            try:
                callback(key, raw)
            except Exception:
                _log.exception("swr_token: adopting an announced token failed")

    def wait(self, key: Key) -> str | None:
        """Wait (at most ``wait`` seconds) for an announcement for ``key``; then read once."""
        self._start_subscriber()
        deadline = time.monotonic() + self._wait
        with self._cond:
            seen = self._announced.get(key, (0, ""))[0]
            while True:
                version, raw = self._announced.get(key, (0, ""))
                if version != seen:
                    return raw
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                # Bounded slices: a message lost while the subscriber reconnected is caught
                # by the read below, not by polling fast.
                self._cond.wait(min(left, 1.0))
        return self.get(key)

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._owns_client:
            try:
                self._redis.close()
            except Exception:
                _log.debug("swr_token: closing the Redis client failed")

    def reset_after_fork(self) -> None:
        """The child must not share the parent's sockets, threads or lock ownership."""
        pool = getattr(self._redis, "connection_pool", None)
        if pool is not None:
            pool.reset()
        self._init_threads()
