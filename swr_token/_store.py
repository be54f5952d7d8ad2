"""Sharing tokens between processes: the store protocol (v2) and the engine's side of it.

The engine asks a store only off the hot path (on a miss, a critical read or a refresh). A
store that fails, hangs past its own short timeouts or returns garbage never fails a
``get_token``: :class:`SharedStore` stops asking it for a while and the client carries on
per process, logging the degradation once and the recovery once (reads and writes apart, so
a Redis that refuses only writes logs one pair, not one every few seconds).

Protocol v2, in short: every call names the **scope** (the source's identity, see
:func:`source_identity`) and the key; tokens travel as :class:`StoredToken` with their
absolute expiry, so opaque tokens are shared as well as JWTs; ``delete`` is compare-and-delete
and announces the drop; ``wait`` is bounded by the caller; ``listen`` hears only drops (never
new tokens: a process whose copy turns stale reads the shared entry instead, so traffic grows
with the keys a process reads, not with the fleet).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from ._request import TokenRequest
from ._token import Token, fingerprint

__all__ = ["SharedStore", "StoredToken", "TokenStore", "source_identity"]

_log = logging.getLogger("swr_token")
_T = TypeVar("_T")

#: A shared token is never believed to live longer than this (seconds), whatever the store
#: says: an entry written by anyone who can write to the store cannot pin a token for years.
MAX_SHARED_LIFETIME = 86400.0
#: Fingerprints of dropped tokens remembered per client (oldest forgotten first).
MAX_DROPPED = 4096
#: The lock handle meaning "no store available": fetch locally, nothing to unlock.
_LOCAL = object()


class _Adopted(Generic[_T]):
    """What :meth:`SharedStore._lock_or_wait` returns when it adopted another's token."""

    __slots__ = ("token",)

    def __init__(self, token: _T) -> None:
        self.token = token


@dataclass(frozen=True, slots=True)
class StoredToken:
    """A token as stores keep it: the raw string and its absolute times (epoch seconds).

    ``expires_at`` is the writer's estimate of absolute expiry; ``issued_at`` is the JWT's
    ``iat`` or the issuer's time when known (it orders tokens: newer wins). The ``repr``
    shows a fingerprint, never the token.
    """

    raw: str
    expires_at: float
    issued_at: float | None = None

    def __repr__(self) -> str:
        return (f"StoredToken({fingerprint(self.raw)}, expires_at={self.expires_at:.0f}, "
                f"issued_at={self.issued_at})")

    @classmethod
    def of(cls, token: Token) -> StoredToken:
        """The storable form of a received token (its expiry as the client estimated it)."""
        return cls(token.raw, token.expires_at, issued_estimate(token))


def issued_estimate(token: Token) -> float:
    """When ``token`` was issued, in epoch seconds: its ``iat``, else its estimated expiry
    minus its lifetime (opaque tokens). Orders tokens of one key across processes."""
    iat = token.issued_at
    return iat if iat is not None else token.expires_at - token.lifetime


def token_from_stored(stored: StoredToken, wall_now: float,
                      max_lifetime: float = MAX_SHARED_LIFETIME) -> Token | None:
    """Rebuild an unreceived :class:`Token` from a stored one, or ``None`` if it is unusable.

    ``expires_in`` is what is left of the stored expiry on this host's wall clock, bounded by
    ``max_lifetime``; a JWT's own claims still win when they say less (``Token.received``).
    """
    left = stored.expires_at - wall_now
    if not (isinstance(stored.raw, str) and stored.raw and math.isfinite(left) and left > 0):
        return None
    if stored.raw.count(".") == 2:
        # A JWT's own exp/iat give its lifetime (and so its thresholds) on every host; the
        # writer's expiry is used only when it says less (an issuer's shorter expires_in).
        try:
            jwt_token = Token(stored.raw)
        except Exception:
            jwt_token = None  # an opaque token with two dots
        if jwt_token is not None and jwt_token.expires_at <= stored.expires_at + 1.0:
            return jwt_token
    try:
        return Token(stored.raw, expires_in=min(left, max_lifetime))
    except Exception:  # a malformed raw value: not a token
        return None


def source_identity(source: object) -> str:
    """The scope a source's tokens are stored under: ``source.identity`` when it is a
    non-empty ``str``, else ``module.qualname`` of the callable.

    Give your own source an ``identity`` (non-secret, stable across processes) when two
    differently configured instances share one store: without it they share entries.
    """
    identity = getattr(source, "identity", None)
    if isinstance(identity, str) and identity:
        return identity
    target = source if hasattr(source, "__qualname__") else type(source)
    module = getattr(target, "__module__", None) or "?"
    qualname = getattr(target, "__qualname__", None) or type(source).__name__
    return f"{module}.{qualname}"


class TokenStore(Protocol):
    """What a shared store implements (``RedisStore`` and ``FileStore`` are two).

    Every call must be bounded in time; any exception means "unavailable" (the client
    degrades to per process). ``scope`` is the source's identity, ``key`` the token's key
    (a 4-tuple of ``str | None``). Values read back must be for exactly that scope and key.
    """

    def get(self, scope: str, key: TokenRequest) -> StoredToken | None:
        """The shared token for ``key``, if any."""

    def put(self, scope: str, key: TokenRequest, token: StoredToken) -> None:
        """Store ``token`` for ``key``, kept until ``token.expires_at``."""

    def delete(self, scope: str, key: TokenRequest, raw: str) -> None:
        """Remove the entry only if it still holds ``raw`` (a newer token survives), and
        announce the drop to other processes where the store can."""

    def try_lock(self, scope: str, key: TokenRequest) -> object | None:
        """Take the fleet-wide refresh lock for ``key``: a handle, or ``None`` if another
        process holds it."""

    def unlock(self, scope: str, key: TokenRequest, handle: object) -> None:
        """Release a lock this process holds (only if it still owns it)."""

    def wait(self, scope: str, key: TokenRequest, timeout: float) -> StoredToken | None:
        """Wait at most ``timeout`` seconds for another process's ``put`` of ``key``; the
        newest entry then (possibly the old one), or ``None``."""

    def listen(self, callback: Callable[[str, TokenRequest, str], None]) -> None:
        """Call ``callback(scope, key, fingerprint)`` when another process drops a token
        (``fingerprint`` as in ``Token.fingerprint``); a no-op for stores that cannot."""

    def close(self) -> None:
        """Stop listening and release connections."""

    def reset_after_fork(self) -> None:
        """In a forked child: drop the parent's threads, locks and connections."""


class SharedStore:
    """The engine's guarded view of a :class:`TokenStore` for one client (one scope)."""

    def __init__(self, store: TokenStore, *, scope: str, clock: Callable[[], float],
                 wall: Callable[[], float], retry_after: float = 2.0,
                 wait: float = 5.0) -> None:
        self.store = store
        self.scope = scope
        self._clock = clock
        self._wall = wall
        self._retry_after = retry_after
        self._wait = wait
        # None (healthy), "writes" (writes refused: OOM, READONLY) or "all" (unreachable).
        self._degraded: str | None = None
        self._degraded_until = float("-inf")
        self._lock = threading.Lock()
        self._listening = False
        self._dropped: OrderedDict[str, float] = OrderedDict()  # fingerprint -> wall expiry

    def _call(self, what: str, fn: Callable[[], _T], default: _T, *, write: bool = False
              ) -> _T:
        """Run one store call, or skip it while the store is degraded for that kind.

        A failed read means the store is unreachable (everything pauses); a failed write
        alone means it refuses writes (reads go on). Each streak logs once when it starts
        and once when it ends.
        """
        now = self._clock()
        mode = self._degraded
        if mode is not None and (write or mode == "all") and now < self._degraded_until:
            return default
        try:
            result = fn()
        except Exception as exc:
            self._failed(what, exc, write=write, mode=mode, now=now)
            return default
        if mode is not None and (write or mode == "all"):
            self._recovered()
        return result

    def _failed(self, what: str, exc: Exception, *, write: bool, mode: str | None,
                now: float) -> None:
        """A failed read means the store is unreachable; a failed write alone, that it
        refuses writes. Logged when a streak starts (or worsens)."""
        new = "writes" if write and mode != "all" else "all"
        with self._lock:
            first = self._degraded is None or (new == "all" and self._degraded != "all")
            self._degraded = new
            self._degraded_until = now + self._retry_after
        _log.debug("swr_token: shared store call %s failed", what, exc_info=True)
        if first:
            state = "refuses writes" if new == "writes" else "unavailable"
            _log.warning(
                "shared token store %s (%s during %s); carrying on per process "
                "and trying it again every %.0f s", state, type(exc).__name__, what,
                self._retry_after)

    def _recovered(self) -> None:
        with self._lock:
            recovered = self._degraded is not None
            self._degraded = None
        if recovered:
            _log.warning("shared token store is back")

    # -- dropped tokens -------------------------------------------------------------------

    def forget(self, raw_or_fingerprint: str, expires_at: float, *, is_fingerprint: bool = False
               ) -> None:
        """Remember a dropped token so it is never adopted again from the store."""
        fp = raw_or_fingerprint if is_fingerprint else fingerprint(raw_or_fingerprint)
        with self._lock:
            self._dropped[fp] = expires_at
            self._dropped.move_to_end(fp)
            while len(self._dropped) > MAX_DROPPED:
                self._dropped.popitem(last=False)

    def was_dropped(self, raw: str) -> bool:
        return fingerprint(raw) in self._dropped

    def drop(self, key: TokenRequest, raw: str, expires_at: float) -> None:
        """A token was invalidated or rejected here: never adopt it again, remove it from the
        store unless a newer one replaced it, and let the store tell the others."""
        self.forget(raw, expires_at)
        self._call("delete", lambda: self.store.delete(self.scope, key, raw), None, write=True)

    # -- reading and writing --------------------------------------------------------------

    def listen(self, callback: Callable[[TokenRequest, str], None]) -> None:
        """``callback(key, fingerprint)`` for drops in this client's scope elsewhere."""
        if self._listening:
            return
        self._listening = True
        scope = self.scope

        def on_drop(dropped_scope: str, key: TokenRequest, fp: str) -> None:
            if dropped_scope == scope:
                callback(key, fp)

        self._call("listen", lambda: self.store.listen(on_drop), None)

    def put(self, key: TokenRequest, token: StoredToken) -> None:
        if token.expires_at > self._wall():
            self._call("put", lambda: self.store.put(self.scope, key, token), None, write=True)

    def _usable(self, stored: object) -> StoredToken | None:
        if not isinstance(stored, StoredToken) or self.was_dropped(stored.raw):
            return None
        return stored

    def get(self, key: TokenRequest) -> StoredToken | None:
        return self._usable(self._call("get", lambda: self.store.get(self.scope, key), None))

    def fetch(self, key: TokenRequest, call_source: Callable[[], _T],
              accept: Callable[[StoredToken], _T | None], stored_of: Callable[[_T], StoredToken],
              wait: float) -> tuple[_T, bool]:
        """Get a token for ``key`` with at most one source call fleet-wide.

        ``accept(stored)`` turns a shared token into one the caller can use, or ``None``;
        ``wait`` bounds the wait for another process's refresh (capped by the store's own
        default). Returns the token and whether this process called the source.
        """
        token = self._adopt(key, accept)
        if token is not None:
            return token, False
        handle = self._lock_or_wait(key, accept, wait)
        if isinstance(handle, _Adopted):
            return handle.token, False
        try:
            if handle is not None and handle is not _LOCAL:
                # The previous owner may have published between our read and our lock.
                token = self._adopt(key, accept)
                if token is not None:
                    return token, False
            token = call_source()
            self.put(key, stored_of(token))
            return token, True
        finally:
            if handle is not None and handle is not _LOCAL:
                held = handle
                self._call("unlock", lambda: self.store.unlock(self.scope, key, held), None,
                           write=True)

    def _adopt(self, key: TokenRequest, accept: Callable[[StoredToken], _T | None]
               ) -> _T | None:
        shared = self.get(key)
        return accept(shared) if shared else None

    def _lock_or_wait(self, key: TokenRequest, accept: Callable[[StoredToken], _T | None],
                      wait: float) -> object | None:
        """The fleet-wide lock's handle (``_LOCAL`` with no store, ``None`` if another
        process still holds it), or an :class:`_Adopted` token that process published
        while this one waited (at most ``wait`` s, capped by the store's default)."""
        handle: object | None = self._call(
            "lock", lambda: self.store.try_lock(self.scope, key), _LOCAL, write=True)
        if handle is not None:
            return handle
        # Another process is fetching: wait for its entry, then fall back to fetching here
        # if it never comes (its owner may have died mid-fetch).
        timeout = max(0.0, min(wait, self._wait))
        shared = self._usable(self._call(
            "wait", lambda: self.store.wait(self.scope, key, timeout), None))
        token = accept(shared) if shared else None
        if token is not None:
            return _Adopted(token)
        return self._call("lock", lambda: self.store.try_lock(self.scope, key), _LOCAL,
                          write=True)

    def close(self) -> None:
        try:
            self.store.close()
        except Exception:  # closing must never raise
            _log.debug("closing the shared store failed", exc_info=True)

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._listening = False
        self.store.reset_after_fork()

