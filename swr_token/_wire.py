"""One bounded HTTP exchange: a cap on the body and one deadline for the whole attempt.

``requests`` bounds each socket read, not an attempt: an issuer that trickles a byte a second
keeps a read alive forever, and ``response.content`` reads a body of any size into memory.
:func:`exchange` reads at most ``max_body`` bytes (plus one chunk) and ends the attempt at its
deadline: a single process-wide watchdog thread shuts down the socket of an attempt past its
deadline, which wakes the blocked read. Sessions made by swr_token register their sockets from
the connect on (connect, TLS, headers, body); with a caller's session the socket is known once
the headers have arrived, so there the deadline covers the body and the per-read timeout the
rest.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
import requests.adapters
import urllib3
import urllib3.connection

__all__ = [
    "DEFAULT_MAX_BODY",
    "Answer",
    "BodyTooLarge",
    "DeadlinePassed",
    "ForkSafeSession",
    "exchange",
    "new_session",
]

#: Bytes of response body read at most (token answers and key sets are a few KiB).
DEFAULT_MAX_BODY = 1 << 20
_CHUNK = 64 * 1024


class BodyTooLarge(Exception):
    """The answer's body is over the cap (by ``Content-Length`` or as read)."""


class DeadlinePassed(Exception):
    """The attempt did not finish by its deadline (raised in place of the cut-off read)."""


@dataclass(frozen=True)
class Answer:
    """A response read in full within its bounds."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class _Attempt:
    """One attempt's deadline and the sockets it uses; the watchdog cuts them at the deadline."""

    __slots__ = ("deadline", "done", "expired", "socks")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.socks: list[socket.socket] = []
        self.done = False
        self.expired = False


class _Watchdog:
    """A heap of attempt deadlines and one daemon thread that acts on them (per process)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Attempt]] = []
        self._seq = itertools.count()
        # Which attempt a socket serves now: a kept-alive connection moves between attempts.
        self._owner: dict[socket.socket, _Attempt] = {}
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def arm(self, attempt: _Attempt) -> None:
        with self._cond:
            if self._pid != os.getpid():  # forked: the parent's thread is not here
                self._heap, self._thread, self._pid = [], None, os.getpid()
                self._owner = {}
            heapq.heappush(self._heap, (attempt.deadline, next(self._seq), attempt))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="swr-token-http-deadline")
                self._thread.start()
            self._cond.notify()

    def watch(self, attempt: _Attempt, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._cond:
            if attempt.done:
                return
            if attempt.expired:
                _cut(sock)
                return
            previous = self._owner.get(sock)
            if previous is not None and previous is not attempt:
                previous.socks.remove(sock)
            if previous is not attempt:
                self._owner[sock] = attempt
                attempt.socks.append(sock)

    def finish(self, attempt: _Attempt) -> bool:
        """Mark the attempt over (its sockets are no longer cut); True if it had expired."""
        with self._cond:
            attempt.done = True
            for sock in attempt.socks:
                self._owner.pop(sock, None)
            attempt.socks.clear()
            return attempt.expired

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                left = self._heap[0][0] - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                attempt = heapq.heappop(self._heap)[2]
                # Under the lock: finish() cannot return the socket to a pool meanwhile,
                # so a cut never hits a connection another attempt has taken over.
                attempt.expired = True
                for sock in attempt.socks:
                    self._owner.pop(sock, None)
                    _cut(sock)
                attempt.socks.clear()


def _cut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


_WATCHDOG = _Watchdog()
_current = threading.local()


def _watch_current(sock: socket.socket | None) -> None:
    attempt: _Attempt | None = getattr(_current, "attempt", None)
    if attempt is not None:
        _WATCHDOG.watch(attempt, sock)


class _WatchedMixin:
    """Registers the connection's socket with the attempt running in this thread."""

    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        _watch_current(sock)
        return sock

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _watch_current(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch_current(self.sock)  # a kept-alive connection taken from the pool
        super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_WatchedMixin, urllib3.connection.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedMixin, urllib3.connection.HTTPSConnection):
    pass


class _WatchedPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedTLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """An adapter whose connections put their sockets under the attempt's deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedPool,
                                                   "https": _WatchedTLSPool}


def new_session(*, pool_maxsize: int = 32) -> requests.Session:
    """A session whose every attempt is bounded from the connect on; no transport retries
    (retrying is the engine's job, with its pacing)."""
    session = requests.Session()
    adapter = _WatchedAdapter(pool_connections=4, pool_maxsize=pool_maxsize)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class ForkSafeSession:
    """The caller's session as given, or one made here and made anew after ``os.fork()``: a
    child never shares its parent's keep-alive sockets (a caller's session is theirs to
    manage)."""

    __slots__ = ("_owned", "_pid", "_pool_maxsize", "_session")

    def __init__(self, session: requests.Session | None, *, pool_maxsize: int = 32) -> None:
        self._owned = session is None
        self._pool_maxsize = pool_maxsize
        self._session = session if session is not None else new_session(
            pool_maxsize=pool_maxsize)
        self._pid = os.getpid()

    def get(self) -> requests.Session:
        """The session to send through in this process."""
        if self._owned and self._pid != os.getpid():
            self._session = new_session(pool_maxsize=self._pool_maxsize)
            self._pid = os.getpid()
        return self._session

    def close(self) -> None:
        """Close the session if it was made here; a caller's session is left alone."""
        if self._owned:
            self._session.close()


def exchange(
    session: requests.Session,
    method: str,
    url: str,
    *,
    total_timeout: float,
    max_body: int,
    **kwargs: Any,
) -> Answer:
    """Send one request and read its answer within ``total_timeout`` s and ``max_body`` bytes.

    Raises :class:`DeadlinePassed`, :class:`BodyTooLarge`, or what ``requests`` raises.
    """
    attempt = _Attempt(time.monotonic() + total_timeout)
    _WATCHDOG.arm(attempt)
    _current.attempt = attempt
    response: requests.Response | None = None
    try:
        try:
            response = session.request(method, url, stream=True, **kwargs)
            raw = response.raw
            _WATCHDOG.watch(attempt, getattr(getattr(raw, "connection", None), "sock", None))
            body = _read_capped(response, max_body)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, zlib.error):
            if attempt.expired:
                raise DeadlinePassed() from None
            raise
        if _WATCHDOG.finish(attempt):
            raise DeadlinePassed()  # cut just as it ended: the body may be short
        return Answer(response.status_code, response.headers, body)
    finally:
        _WATCHDOG.finish(attempt)
        _current.attempt = None
        if response is not None:
            response.close()  # a body left unread closes the connection: never drained


def _read_capped(response: requests.Response, max_body: int) -> bytes:
    """The body, refused with :class:`BodyTooLarge` once over ``max_body`` bytes
    (counted after decompression)."""
    _check_declared_length(response, max_body)
    inflater = _inflater(response)
    parts: list[bytes] = []
    size = 0
    raw = response.raw
    while True:
        chunk = raw.read(_CHUNK, decode_content=False)
        if not chunk:
            break
        if inflater is not None:
            chunk = inflater.decompress(chunk, max_body + 1 - size)
            if inflater.unconsumed_tail:
                raise BodyTooLarge()
        size += len(chunk)
        if size > max_body:
            raise BodyTooLarge()
        parts.append(chunk)
    return b"".join(parts)


def _check_declared_length(response: requests.Response, max_body: int) -> None:
    """Refuse an answer whose ``Content-Length`` says it is over the cap, before reading."""
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_body:
        raise BodyTooLarge()


def _inflater(response: requests.Response) -> Any:
    """A decompressor for the answer's ``Content-Encoding``; None for identity."""
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        # Decompressed here with a bound: urllib3 would inflate a chunk without one.
        return zlib.decompressobj(wbits=47 if encoding != "deflate" else 15)
    if encoding == "identity":
        return None
    raise requests.exceptions.ContentDecodingError(
        f"unsupported Content-Encoding {encoding[:20]!r}")
