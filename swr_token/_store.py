"""Sharing tokens between processes: the store interface and the engine's side of it.

The engine asks a store only off the hot path (on a miss, a critical read or a refresh). A
store that fails, hangs past its own short timeouts or returns garbage never fails a
``get_token``: :class:`SharedStore` stops asking it for a while and the client carries on
per process, logging the degradation once and the recovery once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from ._cache import Key

__all__ = ["SharedStore", "TokenStore"]

_log = logging.getLogger("swr_token")
_T = TypeVar("_T")


class TokenStore(Protocol):
    """What a shared store implements (``RedisStore`` is one). Every call must be bounded
    in time; any exception means "unavailable"."""

    def get(self, key: Key) -> str | None:
        """The shared token for ``key``, if any."""

    def put(self, key: Key, raw: str, ttl: float) -> None:
        """Store ``raw`` for ``ttl`` seconds and announce it to the other processes."""

    def try_lock(self, key: Key) -> object | None:
        """Take the fleet-wide refresh lock for ``key``: a handle, or ``None`` if another
        process holds it."""

    def unlock(self, key: Key, handle: object) -> None:
        """Release a lock this process holds (only if it still owns it)."""

    def wait(self, key: Key) -> str | None:
        """Wait, bounded, for another process to announce a token for ``key``."""

    def listen(self, callback: Callable[[Key, str], None]) -> None:
        """Call ``callback(key, raw)`` for tokens announced by other processes."""

    def close(self) -> None:
        """Stop listening and release connections."""

    def reset_after_fork(self) -> None:
        """In a forked child: drop the parent's threads, locks and connections."""


class SharedStore:
    """The engine's guarded view of a :class:`TokenStore`."""

    def __init__(self, store: TokenStore, *, clock: Callable[[], float],
                 retry_after: float = 2.0) -> None:
        self.store = store
        self._clock = clock
        self._retry_after = retry_after
        self._degraded_until = float("-inf")
        self._degraded = False
        self._lock = threading.Lock()
        self._listening = False

    def _call(self, what: str, fn: Callable[[], _T], default: _T) -> _T:
        now = self._clock()
        if now < self._degraded_until:
            return default
        try:
            result = fn()
        except Exception as exc:
            with self._lock:
                first = not self._degraded
                self._degraded = True
                self._degraded_until = now + self._retry_after
            if first:
                _log.warning(
                    "swr_token: shared token store unavailable (%s during %s); carrying on "
                    "per process and trying it again every %.0f s", type(exc).__name__, what,
                    self._retry_after)
            return default
        if self._degraded:
            with self._lock:
                recovered, self._degraded = self._degraded, False
            if recovered:
                _log.warning("swr_token: shared token store is back")
        return result

    def listen(self, callback: Callable[[Key, str], None]) -> None:
        if not self._listening:
            self._listening = True
            self._call("listen", lambda: self.store.listen(callback), None)

    def put(self, key: Key, raw: str, ttl: float) -> None:
        if ttl > 0:
            self._call("put", lambda: self.store.put(key, raw, ttl), None)

    def fetch(self, key: Key, call_source: Callable[[], _T],
              accept: Callable[[str], _T | None], raw_of: Callable[[_T], tuple[str, float]]
              ) -> tuple[_T, bool]:
        """Get a token for ``key`` with at most one source call fleet-wide.

        ``accept(raw)`` turns a shared token into one the caller can use, or ``None``.
        Returns the token and whether this process called the source.
        """
        shared = self._call("get", lambda: self.store.get(key), None)
        token = accept(shared) if shared else None
        if token is not None:
            return token, False
        handle: object | None = self._call("lock", lambda: self.store.try_lock(key), _LOCAL)
        if handle is None:
            # Another process is fetching: wait for its announcement, then fall back to
            # fetching here if it never comes (its owner may have died mid-fetch).
            shared = self._call("wait", lambda: self.store.wait(key), None)
            token = accept(shared) if shared else None
            if token is not None:
                return token, False
            handle = self._call("lock", lambda: self.store.try_lock(key), _LOCAL)
        try:
            if handle is not None and handle is not _LOCAL:
                # The previous owner may have published between our read and our lock.
                shared = self._call("get", lambda: self.store.get(key), None)
                token = accept(shared) if shared else None
                if token is not None:
                    return token, False
            token = call_source()
            self.put(key, *raw_of(token))
            return token, True
        finally:
            if handle is not None and handle is not _LOCAL:
                held = handle
                self._call("unlock", lambda: self.store.unlock(key, held), None)

    def close(self) -> None:
        try:
            self.store.close()
        except Exception:  # closing must never raise
            _log.debug("swr_token: closing the shared store failed", exc_info=True)

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._listening = False
        self.store.reset_after_fork()


_LOCAL = object()  # "no store available": fetch locally, nothing to unlock
