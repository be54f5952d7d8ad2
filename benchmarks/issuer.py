"""``LocalIssuer`` in a child process, driven over a pipe.

The issuer runs in its own interpreter so that its request handling (HTTP parsing, RS256
signing) never holds the GIL of the process being measured: in-process, an adapter that
hammers the issuer would also slow itself and everyone else down through the issuer's own CPU
use, and the request counts would be capped by it. Every adapter still reaches it over
loopback HTTP, exactly as it would reach a remote issuer.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["IssuerProcess", "Minted"]

_MAX_CHILD_SECONDS = 4 * 3600.0  # the child never outlives a forgotten parent for long
_REPLY_TIMEOUT = 30.0


@dataclass(frozen=True)
class Minted:
    """One token the issuer minted: when (wall clock), its ``exp`` and its ``jti``."""

    at: float
    exp: float
    jti: str


def _child(conn: Any, lifetime: float, latency: float) -> None:
    """Child process main: serve, obey commands, exit on ``stop`` or when the parent dies."""
    import socketserver

    import jwt

    from swr_token.testing import LocalIssuer

    # socketserver's listen backlog is 5: 64 clients connecting at once (``cold``, and
    # google-auth's unshared refreshes) overflow it and get connection resets, which a real
    # issuer behind a normal backlog would not cause. Raised here, in this process only.
    socketserver.TCPServer.request_queue_size = 128

    class RecordingIssuer(LocalIssuer):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.minted: list[tuple[float, float, str]] = []

        def mint(self, *, lifetime: float | None = None, **claims: Any) -> str:
            raw = super().mint(lifetime=lifetime, **claims)
            decoded = jwt.decode(raw, options={"verify_signature": False})
            self.minted.append((time.time(), float(decoded["exp"]), str(decoded["jti"])))
            return raw

    parent = os.getppid()
    issuer = RecordingIssuer(lifetime=lifetime).start()
    if latency > 0:
        issuer.delay(latency)
    conn.send(("ready", {"token_url": issuer.token_url, "client_id": issuer.client_id,
                         "client_secret": issuer.client_secret}))
    ends = time.monotonic() + _MAX_CHILD_SECONDS
    try:
        while time.monotonic() < ends and os.getppid() == parent:
            if not conn.poll(0.5):
                continue
            command, kwargs = conn.recv()
            if command == "stop":
                conn.send(("ok", None))
                return
            if command == "count":
                reply: Any = issuer.request_count("oauth")
            elif command == "fail":
                issuer.fail(**kwargs)
                reply = time.time()
            elif command == "clear":
                issuer.clear_faults()
                if latency > 0:
                    issuer.delay(latency)
                reply = None
            elif command == "minted":
                reply = list(issuer.minted)
            elif command == "mint":
                reply = issuer.mint(**kwargs)
            else:
                reply = None
            conn.send(("ok", reply))
    finally:
        issuer.stop()


@dataclass(frozen=True)
class IssuerInfo:
    token_url: str
    client_id: str
    client_secret: str


class IssuerProcess:
    """A ``LocalIssuer`` (OAuth2 client-credentials endpoint used) in a spawned process.

    ``latency`` seconds are added to every token request, failed ones included.
    """

    def __init__(self, *, lifetime: float, latency: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._lock = threading.Lock()
        self._process = ctx.Process(target=_child, args=(child, lifetime, latency),
                                    name="bench-issuer", daemon=True)
        self._process.start()
        child.close()
        if not self._conn.poll(_REPLY_TIMEOUT):
            self.close()
            raise RuntimeError("the issuer process did not start within 30 s")
        _, info = self._conn.recv()
        self.info = IssuerInfo(**info)

    def _call(self, command: str, **kwargs: Any) -> Any:
        with self._lock:
            self._conn.send((command, kwargs))
            if not self._conn.poll(_REPLY_TIMEOUT):
                raise RuntimeError(f"the issuer process did not answer {command!r}")
            _, reply = self._conn.recv()
            return reply

    def request_count(self) -> int:
        """Requests the token endpoint received so far (failed ones included)."""
        return int(self._call("count"))

    def fail(self, status: int, *, duration: float) -> float:
        """Answer ``status`` for ``duration`` seconds from now; returns the wall time it began."""
        return float(self._call("fail", status=status, duration=duration))

    def minted(self) -> list[Minted]:
        return [Minted(*row) for row in self._call("minted")]

    def mint(self, **kwargs: Any) -> str:
        return str(self._call("mint", **kwargs))

    def close(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(RuntimeError, OSError, EOFError):
                self._call("stop")
            self._process.join(5.0)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(2.0)
        self._conn.close()

    def __enter__(self) -> IssuerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
