"""A raw-socket HTTP server on 127.0.0.1 that answers with any bytes at any pace.

LocalIssuer speaks correct HTTP; a hostile issuer does not. ``RawServer(answer)`` reads each
request (request line, headers, a ``Content-Length`` body), records it, and hands the
connection to ``answer(conn, request)``, which sends what it likes: an endless chunked body,
one byte a second, a ``Content-Length`` of 500 MB. Every send and pause ends when the client
goes away or the server stops, so no test can hang on it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType


@dataclass
class RawRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Conn:
    """One accepted connection, as the answer function sees it."""

    sock: socket.socket
    stopping: threading.Event
    sent: int = 0
    gone: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, data: bytes) -> bool:
        """Send ``data``; False once the client has gone (or the server stops)."""
        if self.gone or self.stopping.is_set():
            return False
        try:
            self.sock.sendall(data)
        except OSError:
            self.gone = True
            return False
        self.sent += len(data)
        return True

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` (real time); False if the server stops meanwhile."""
        return not self.stopping.wait(seconds)

    def trickle(self, data: bytes, every: float) -> bool:
        """Send ``data`` one byte per ``every`` seconds."""
        return all(self.send(data[i:i + 1]) and self.pause(every) for i in range(len(data)))


Answer = Callable[[Conn, RawRequest], None]


def head(status: int = 200, headers: dict[str, str] | None = None) -> bytes:
    """A status line and headers (add ``Content-Length`` or ``Transfer-Encoding`` yourself)."""
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    fields = {"Content-Type": "application/json", "Content-Length": str(len(body)),
              **(headers or {})}
    return head(status, fields) + body


class RawServer:
    """Serves ``answer`` on a free loopback port in daemon threads; a context manager."""

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.requests: list[RawRequest] = []
        self.conns: list[Conn] = []
        self.requested = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True,
                                        name=f"raw-server-{self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            conns = list(self.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.sock.close()
        self._thread.join(timeout=2.0)

    def sent(self) -> int:
        """Bytes sent on every connection so far."""
        with self._lock:
            return sum(conn.sent for conn in self.conns)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock, self._stopping)
            with self._lock:
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name=f"raw-server-conn-{self.port}").start()

    def _serve(self, conn: Conn) -> None:
        try:
            conn.sock.settimeout(5.0)  # a client that never sends its request is dropped
            for request in _requests(conn.sock):
                with self._lock:
                    self.requests.append(request)
                self.requested.set()
                conn.sock.settimeout(None)
                self._answer(conn, request)
                if conn.gone:
                    break
                conn.sock.settimeout(5.0)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.sock.close()


def _requests(sock: socket.socket) -> Iterator[RawRequest]:
    """Requests read off a keep-alive connection until the client closes it."""
    buffer = b""
    while True:
        while b"\r\n\r\n" not in buffer:
            data = sock.recv(65536)
            if not data:
                return
            buffer += data
        raw_head, buffer = buffer.split(b"\r\n\r\n", 1)
        lines = raw_head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        while len(buffer) < length:
            data = sock.recv(65536)
            if not data:
                return
            buffer += data
        body, buffer = buffer[:length], buffer[length:]
        yield RawRequest(method, path, headers, body)
