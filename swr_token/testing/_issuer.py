"""A real token issuer on 127.0.0.1 for tests, demos and benchmarks.

:class:`LocalIssuer` serves Clerk-shaped and OAuth2-shaped token endpoints and a JWKS over real
loopback HTTP, mints RS256 JWTs, and injects faults at runtime (a status, latency, a malformed
body, a hang, a reset connection), so code is tested against the wire, not against mocks.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import json
import logging
import re
import secrets
import selectors
import socket
import socketserver
import struct
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, unquote_plus

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from .._version import __version__

__all__ = ["LocalIssuer", "RecordedRequest"]

logger = logging.getLogger(__name__)

_CLERK_PATH = re.compile(r"^/v1/sessions/([^/]+)/tokens(?:/([^/]+))?$")
_TOKEN_ENDPOINTS = frozenset({"clerk", "oauth"})
_CLERK_CODES = {401: "authentication_invalid", 403: "authorization_invalid",
                404: "resource_not_found", 422: "form_param_format_invalid",
                429: "too_many_requests"}
_OAUTH_CODES = {401: "invalid_client", 403: "access_denied", 404: "not_found",
                429: "too_many_requests", 503: "temporarily_unavailable"}
_MAX_BODY = 1 << 20


def _number(value: float) -> float | int:
    return int(value) if value == int(value) else value


@dataclass(frozen=True, repr=False)
class RecordedRequest:
    """One request the issuer received. ``headers`` keys are lower-case."""

    endpoint: str
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    connection: int

    def form(self) -> dict[str, str]:
        """The body as a form (the last value of each field)."""
        return {k: v[-1] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}

    def __repr__(self) -> str:  # headers may hold secrets
        return f"<RecordedRequest {self.endpoint} {self.method} {self.path}>"


@dataclass(eq=False)
class _Fault:
    kind: str
    endpoint: str | None
    remaining: int | None
    until: float | None
    status: int = 500
    retry_after: float | str | None = None
    code: str | None = None
    body: bytes | None = None
    seconds: float = 0.0
    released: threading.Event = field(default_factory=threading.Event)

    def matches(self, endpoint: str, now: float) -> bool:
        wanted = endpoint in _TOKEN_ENDPOINTS if self.endpoint is None else (
            self.endpoint == endpoint)
        return wanted and (self.until is None or now < self.until)


class LocalIssuer:
    """A threaded HTTP token issuer on 127.0.0.1 (a free port unless ``port`` is given).

    Endpoints: ``POST /v1/sessions/{sid}/tokens[/{template}]`` (Clerk, bearer ``secret_key``),
    ``POST /oauth/token`` (client credentials, basic or post), ``GET /.well-known/jwks.json``.
    ``lifetime`` and ``clock_offset`` (seconds the issuer's clock is ahead; it moves ``iat``,
    ``exp`` and the ``Date`` header) may be changed at any time, as may ``opaque`` (OAuth2
    access tokens that are not JWTs) and ``oauth_expires_in`` (an ``expires_in`` that differs
    from the JWT's lifetime). Faults apply to the token endpoints unless ``endpoint=`` names
    one of ``"clerk"``, ``"oauth"``, ``"jwks"``; each lasts ``count`` requests and/or
    ``duration`` seconds, or until :meth:`clear_faults`. Thread-safe.
    """

    def __init__(
        self,
        *,
        secret_key: str = "sk_test_local_issuer",
        client_id: str = "local-client",
        client_secret: str = "local-client-secret",
        lifetime: float = 60.0,
        clock_offset: float = 0.0,
        opaque: bool = False,
        allowed_scopes: Iterable[str] | None = None,
        port: int = 0,
        private_key: rsa.RSAPrivateKey | None = None,
    ) -> None:
        self.secret_key = secret_key
        self.client_id = client_id
        self.client_secret = client_secret
        self.lifetime = lifetime
        self.clock_offset = clock_offset
        self.opaque = opaque
        self.oauth_expires_in: float | None = None
        self.allowed_scopes = None if allowed_scopes is None else frozenset(allowed_scopes)
        self._key = private_key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self._key.public_key().public_numbers()
        self.kid = hashlib.sha256(numbers.n.to_bytes(256, "big")).hexdigest()[:16]
        self._port = port
        self._lock = threading.Condition()
        self._faults: list[_Fault] = []
        self._held: set[_Fault] = set()  # hangs in progress, maybe counted out of _faults
        self._counts: Counter[str] = Counter()
        self._connections = 0
        self._log: deque[RecordedRequest] = deque(maxlen=1000)
        self._ended: set[str] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> LocalIssuer:
        """Bind and serve in a daemon thread; after :meth:`stop`, rebinds the same port."""
        with self._lock:
            if self._server is not None:
                return self
            server = _Server(("127.0.0.1", self._port), _Handler, self)
            self._port = server.server_address[1]
            self._server = server
        self._thread = threading.Thread(
            target=server.serve, name=f"swr-token-issuer-{self._port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; releases hung requests and drops open connections. Within ~1 s."""
        with self._lock:
            server, self._server = self._server, None
            if server is None:
                return
            for fault in (*self._faults, *self._held):
                fault.released.set()
        server.stop()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        server.server_close()
        server.drop_connections()

    def __enter__(self) -> LocalIssuer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT`` (after :meth:`start`)."""
        if not self._port:
            raise RuntimeError("LocalIssuer has no port yet; call start() first")
        return f"http://127.0.0.1:{self._port}"

    @property
    def clerk_api_url(self) -> str:
        """Pass as ``ClerkBackendSource(api_url=...)``."""
        return f"{self.url}/v1"

    @property
    def token_url(self) -> str:
        """Pass as ``OAuth2ClientCredentialsSource(token_url, ...)``."""
        return f"{self.url}/oauth/token"

    @property
    def jwks_url(self) -> str:
        """The JSON Web Key Set with the public key the tokens are signed with."""
        return f"{self.url}/.well-known/jwks.json"

    # -- tokens ---------------------------------------------------------------------------

    def now(self) -> float:
        """The issuer's clock: the wall clock plus ``clock_offset``."""
        return time.time() + self.clock_offset

    def mint(self, *, lifetime: float | None = None, **claims: Any) -> str:
        """An RS256 JWT with ``iat``, ``exp``, ``iss``, a unique ``jti``, and ``claims``."""
        iat = int(self.now())
        life = self.lifetime if lifetime is None else lifetime
        exp: float = iat + life
        payload = {"iss": self.url, "iat": iat, "nbf": iat, "exp": _number(exp),
                   "jti": uuid.uuid4().hex}
        payload.update({k: v for k, v in claims.items() if v is not None})
        return jwt.encode(payload, self._key, algorithm="RS256", headers={"kid": self.kid})

    def jwks(self) -> dict[str, Any]:
        """The JWKS document served at :attr:`jwks_url`."""
        key = jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return {"keys": [{**key, "kid": self.kid, "alg": "RS256", "use": "sig"}]}

    def end_session(self, session_id: str) -> None:
        """From now on the Clerk endpoint answers 404 for ``session_id`` (signed out)."""
        with self._lock:
            self._ended.add(session_id)

    # -- faults ---------------------------------------------------------------------------

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _window(self, count: int | None, duration: float | None) -> dict[str, Any]:
        if (count is not None and count < 1) or (duration is not None and duration <= 0):
            raise ValueError("count must be at least 1 and duration positive (or None)")
        until = None if duration is None else time.monotonic() + duration
        return {"remaining": count, "until": until}

    def fail(
        self, status: int = 500, *, retry_after: float | str | None = None,
        code: str | None = None, body: str | bytes | None = None, count: int | None = None,
        duration: float | None = None, endpoint: str | None = None,
    ) -> None:
        """Answer with ``status`` (an issuer-shaped error body unless ``body`` is given)."""
        if not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        raw = body.encode() if isinstance(body, str) else body
        self._add(_Fault("fail", endpoint, status=status, retry_after=retry_after, code=code,
                         body=raw, **self._window(count, duration)))

    def delay(
        self, seconds: float, *, count: int | None = None, duration: float | None = None,
        endpoint: str | None = None,
    ) -> None:
        """Wait ``seconds`` before answering (stacks with one other fault)."""
        self._add(_Fault("delay", endpoint, seconds=seconds, **self._window(count, duration)))

    def malformed(
        self, *, body: str | bytes | None = None, count: int | None = None,
        duration: float | None = None, endpoint: str | None = None,
    ) -> None:
        """Answer 200 with a body that is not JSON, or with exactly ``body`` when given."""
        raw = body.encode() if isinstance(body, str) else body
        self._add(_Fault("malformed", endpoint, body=raw if raw is not None else b'{"jwt": "',
                         **self._window(count, duration)))

    def hang(
        self, *, count: int | None = None, duration: float | None = None,
        endpoint: str | None = None,
    ) -> None:
        """Hold requests without answering until the window ends, clear_faults() or stop()."""
        self._add(_Fault("hang", endpoint, **self._window(count, duration)))

    def reset(
        self, *, count: int | None = None, duration: float | None = None,
        endpoint: str | None = None,
    ) -> None:
        """Read the request, then close the connection with a TCP reset."""
        self._add(_Fault("reset", endpoint, **self._window(count, duration)))

    def clear_faults(self) -> None:
        """Remove every fault; hung requests are released and answered normally."""
        with self._lock:
            for fault in (*self._faults, *self._held):
                fault.released.set()
            self._faults.clear()

    def _take_faults(self, endpoint: str) -> tuple[_Fault | None, _Fault | None]:
        """The first matching delay and the first matching other fault; counts them down."""
        now = time.monotonic()
        delay: _Fault | None = None
        other: _Fault | None = None
        with self._lock:
            self._faults = [f for f in self._faults if f.until is None or now < f.until]
            for fault in self._faults:
                if not fault.matches(endpoint, now):
                    continue
                if fault.kind == "delay" and delay is None:
                    delay = fault
                elif fault.kind != "delay" and other is None:
                    other = fault
                else:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
            self._faults = [f for f in self._faults if f.remaining is None or f.remaining > 0]
        return delay, other

    # -- counters -------------------------------------------------------------------------

    def request_count(self, endpoint: str | None = None) -> int:
        """Requests received (faulted ones too), for one endpoint or all of them."""
        with self._lock:
            return self._counts[endpoint] if endpoint else sum(self._counts.values())

    def connection_count(self) -> int:
        """TCP connections accepted since start (or :meth:`reset_counts`)."""
        with self._lock:
            return self._connections

    def requests(self, endpoint: str | None = None) -> list[RecordedRequest]:
        """The last (up to 1000) requests received, oldest first."""
        with self._lock:
            return [r for r in self._log if endpoint is None or r.endpoint == endpoint]

    def wait_for_requests(
        self, n: int, endpoint: str | None = None, *, timeout: float = 5.0
    ) -> bool:
        """Block until ``request_count(endpoint) >= n`` or ``timeout``; True if reached."""
        with self._lock:
            return self._lock.wait_for(
                lambda: (self._counts[endpoint] if endpoint else sum(self._counts.values())) >= n,
                timeout=timeout,
            )

    def reset_counts(self) -> None:
        """Zero the request and connection counters and forget the recorded requests."""
        with self._lock:
            self._counts.clear()
            self._connections = 0
            self._log.clear()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._counts[request.endpoint] += 1
            self._log.append(request)
            self._lock.notify_all()

    def _connected(self) -> int:
        with self._lock:
            self._connections += 1
            return self._connections

    def __repr__(self) -> str:
        state = "serving" if self._server is not None else "stopped"
        return f"<LocalIssuer {state} port={self._port}>"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for hung handlers
    timeout = 0.0  # handle_request() is only called when a connection is waiting

    def __init__(self, address: tuple[str, int], handler: type[_Handler], issuer: LocalIssuer):
        self.issuer = issuer
        self.stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        super().__init__(address, handler)

    def serve(self) -> None:
        """Accept until :meth:`stop`; unlike serve_forever, wakes at once when stopped."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self.stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self.socket and not self.stopping.is_set():
                        self.handle_request()  # ready: returns at once (timeout 0)
        self._wake_r.close()

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._wake_w.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can stall on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        with self._open_lock:
            self._open.add(sock)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._open_lock:
            open_now, self._open = list(self._open), set()
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("LocalIssuer: connection from %s ended with an error", client_address,
                     exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"swr_token-LocalIssuer/{__version__}"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection_number = self.server.issuer._connected()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("LocalIssuer: " + format, *args)

    def date_time_string(self, timestamp: float | None = None) -> str:
        return email.utils.formatdate(self.server.issuer.now(), usegmt=True)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        issuer = self.server.issuer
        path = self.path.split("?", 1)[0]
        endpoint = ("clerk" if _CLERK_PATH.match(path) else "oauth" if path == "/oauth/token"
                    else "jwks" if path == "/.well-known/jwks.json" else "other")
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self.close_connection = True
            self._json(413, {"error": "request_too_large"})
            return
        body = self.rfile.read(length) if length > 0 else b""
        issuer._record(RecordedRequest(
            endpoint, method, self.path, {k.lower(): v for k, v in self.headers.items()}, body,
            self.connection_number))
        delay, fault = issuer._take_faults(endpoint)
        stopping = self.server.stopping
        if delay is not None and stopping.wait(delay.seconds):
            self.close_connection = True
            return
        if fault is not None and not self._apply(fault, endpoint):
            return
        expected = {"clerk": "POST", "oauth": "POST", "jwks": "GET"}.get(endpoint)
        if expected is None:
            self._json(404, {"error": "not_found"})
        elif method != expected:
            self._json(405, {"error": "method_not_allowed"}, {"Allow": expected})
        elif endpoint == "clerk":
            self._clerk(path, body)
        elif endpoint == "oauth":
            self._oauth(body)
        else:
            self._json(200, issuer.jwks())

    def _apply(self, fault: _Fault, endpoint: str) -> bool:
        """Act out ``fault``; True if the request should then be answered normally."""
        if fault.kind == "hang":
            issuer = self.server.issuer
            with issuer._lock:
                issuer._held.add(fault)
                released = fault.released.is_set() or self.server.stopping.is_set()
            if not released:
                left = None if fault.until is None else max(0.0, fault.until - time.monotonic())
                fault.released.wait(left)
            with issuer._lock:
                issuer._held.discard(fault)
            if self.server.stopping.is_set():
                self.close_connection = True
                return False
            return True
        self.close_connection = fault.kind == "reset"
        if fault.kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.wfile.close()
            self.connection.close()  # the last reference: the kernel sends RST
        elif fault.kind == "malformed":
            self._send(200, fault.body or b"")
        elif fault.body is not None:
            self._send(fault.status, fault.body, self._retry_after(fault))
        else:
            code = fault.code or (_CLERK_CODES if endpoint == "clerk" else _OAUTH_CODES).get(
                fault.status, "server_error" if fault.status >= 500 else "invalid_request")
            self._error(endpoint, fault.status, code, "injected fault", self._retry_after(fault))
        return False

    @staticmethod
    def _retry_after(fault: _Fault) -> dict[str, str]:
        if fault.retry_after is None:
            return {}
        value = fault.retry_after
        return {"Retry-After": value if isinstance(value, str) else f"{value:g}"}

    def _clerk(self, path: str, body: bytes) -> None:
        issuer = self.server.issuer
        if self.headers.get("Authorization") != f"Bearer {issuer.secret_key}":
            self._error("clerk", 401, "authentication_invalid", "Unauthorized request")
            return
        match = _CLERK_PATH.match(path)
        assert match is not None
        session_id = unquote(match.group(1))
        with issuer._lock:
            ended = session_id in issuer._ended
        if ended:
            self._error("clerk", 404, "resource_not_found", "Session not found")
            return
        lifetime: float | None = None
        if body.strip():
            try:
                params = json.loads(body)
                lifetime = params.get("expires_in_seconds") if isinstance(params, dict) else None
            except ValueError:
                params = None
            if not isinstance(params, dict) or not (
                lifetime is None or (isinstance(lifetime, int) and lifetime > 0)):
                self._error("clerk", 422, "form_param_format_invalid", "Invalid request body")
                return
        jwt_ = issuer.mint(lifetime=lifetime, sid=session_id, sub=f"user_{session_id}")
        self._json(200, {"object": "token", "jwt": jwt_})

    def _oauth(self, body: bytes) -> None:
        issuer = self.server.issuer
        form = {k: v[-1] for k, v in parse_qs(body.decode(errors="replace")).items()}
        basic = self._basic_credentials()
        posted = (form.get("client_id"), form.get("client_secret"))
        if basic is not None and posted[1] is not None:
            self._error("oauth", 400, "invalid_request", "more than one client authentication")
            return
        client = basic if basic is not None else posted
        if client != (issuer.client_id, issuer.client_secret):
            self._error("oauth", 401, "invalid_client", "client authentication failed",
                        {"WWW-Authenticate": 'Basic realm="LocalIssuer"'})
            return
        if form.get("grant_type") != "client_credentials":
            self._error("oauth", 400, "unsupported_grant_type", "use client_credentials")
            return
        scope = form.get("scope")
        if scope and issuer.allowed_scopes is not None and not set(scope.split()) <= (
                issuer.allowed_scopes):
            self._error("oauth", 400, "invalid_scope", "scope not allowed for this client")
            return
        expires_in = issuer.lifetime if issuer.oauth_expires_in is None else (
            issuer.oauth_expires_in)
        if issuer.opaque:
            token = secrets.token_urlsafe(32)
        else:
            token = issuer.mint(sub=issuer.client_id, client_id=issuer.client_id,
                                aud=form.get("audience"), scope=scope)
        answer: dict[str, Any] = {"access_token": token, "token_type": "Bearer",
                                  "expires_in": _number(expires_in)}
        if scope:
            answer["scope"] = scope
        self._json(200, answer, {"Pragma": "no-cache"})

    def _basic_credentials(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization") or ""
        if not header.lower().startswith("basic "):
            return None
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except ValueError:
            return ("", "")
        user, _, password = decoded.partition(":")
        return unquote_plus(user), unquote_plus(password)

    def _error(self, endpoint: str, status: int, code: str, message: str,
               headers: Mapping[str, str] | None = None) -> None:
        if endpoint == "clerk":
            doc: dict[str, Any] = {"errors": [{"code": code, "message": message,
                                               "long_message": message}]}
        else:
            doc = {"error": code, "error_description": message}
        self._json(status, doc, headers)

    def _json(self, status: int, doc: Any, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(doc).encode(), headers)

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

