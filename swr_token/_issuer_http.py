"""The wire side of :class:`~swr_token.testing.LocalIssuer`: its HTTP server and handler.

The issuer (:mod:`._issuer`) owns the state — keys, credentials, faults, counters; this module
speaks HTTP on 127.0.0.1: it routes a request to an endpoint, records it, acts out the fault
the issuer hands it, and shapes Clerk and OAuth2 answers and errors. It knows the issuer only
through :class:`Issuer`, the members it calls, and imports nothing from :mod:`._issuer`.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
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
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, unquote_plus

from ._issuer_fault import Fault
from ._version import __version__

__all__ = ["Handler", "Issuer", "Server", "number"]

# The testing package's own logger: a child of the library's, so a test that captures
# "swr_token" sees the issuer's lines too, and one that wants only the library filters them.
logger = logging.getLogger("swr_token.testing")

_CLERK_PATH = re.compile(r"^/v1/sessions/([^/]+)/tokens(?:/([^/]+))?$")
_CLERK_CODES = {401: "authentication_invalid", 403: "authorization_invalid",
                404: "resource_not_found", 422: "form_param_format_invalid",
                429: "too_many_requests"}
_M2M_CODES = {**_CLERK_CODES, 403: "machine_not_allowed", 409: "conflict"}
_OAUTH_CODES = {401: "invalid_client", 403: "access_denied", 404: "not_found",
                429: "too_many_requests", 503: "temporarily_unavailable"}
_METHODS = {"clerk": "POST", "m2m": "POST", "oauth": "POST", "jwks": "GET"}
_CLERK_SHAPED = frozenset({"clerk", "m2m"})
_MAX_BODY = 1 << 20
_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class Issuer(Protocol):
    """What the handler needs from the issuer: its settings, its minting, and the calls that
    record a request, hand out its faults and count what was issued."""

    @property
    def secret_key(self) -> str: ...
    @property
    def client_id(self) -> str: ...
    @property
    def client_secret(self) -> str: ...
    @property
    def lifetime(self) -> float: ...
    @property
    def oauth_expires_in(self) -> float | None: ...
    @property
    def opaque(self) -> bool: ...
    @property
    def allowed_scopes(self) -> frozenset[str] | None: ...

    def now(self) -> float: ...
    def mint(self, *, lifetime: float | None = None, **claims: Any) -> str: ...
    def jwks(self) -> dict[str, Any]: ...
    def m2m_token(
        self, machine_secret_key: str, *, seconds_until_expiration: int | None,
        claims: Mapping[str, Any] | None, token_format: str,
    ) -> dict[str, Any] | None: ...
    def check_client_assertion(
        self, assertion: str, *, client_id: str | None
    ) -> tuple[int, str, str] | None: ...
    def session_ended(self, session_id: str) -> bool: ...

    def connection_opened(self) -> int: ...
    def record_request(self, endpoint: str, method: str, path: str,
                       headers: Mapping[str, str], body: bytes, connection: int) -> None: ...
    def take_faults(self, endpoint: str) -> tuple[Fault | None, Fault | None]: ...
    def hold(self, fault: Fault) -> bool: ...
    def unhold(self, fault: Fault) -> None: ...
    def token_issued(self, endpoint: str) -> None: ...


class _Refused(Exception):
    """An endpoint turns the request down: answered as that endpoint's error document."""

    def __init__(self, status: int, code: str, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, code, message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def number(value: float) -> float | int:
    """``value`` as JSON would best show it: ``60`` rather than ``60.0``."""
    return int(value) if value == int(value) else value


def _endpoint(path: str) -> str:
    if _CLERK_PATH.match(path):
        return "clerk"
    if path == "/v1/m2m_tokens":
        return "m2m"
    if path == "/oauth/token":
        return "oauth"
    if path == "/.well-known/jwks.json":
        return "jwks"
    return "other"


class Server(ThreadingHTTPServer):
    """A threaded HTTP server that stops at once and can drop its open connections."""

    daemon_threads = True
    # socketserver's default backlog of 5 resets connections when 64 threads start at once
    # (seen in the cold benchmark); an issuer under test must take a burst.
    request_queue_size = 128
    block_on_close = False  # stop() must not wait for hung handlers
    timeout = 0.0  # handle_request() is only called when a connection is waiting

    def __init__(self, address: tuple[str, int], issuer: Issuer) -> None:
        self.issuer = issuer
        self.stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        # Handler threads running: stop() waits (bounded) for them to end, so none is inside
        # a C extension (an RSA signature) when the interpreter finalizes. On Python 3.11 a
        # daemon thread coming back from one after finalization is exited by unwinding its
        # stack, which aborts the whole process when that stack holds Rust frames
        # ("FATAL: exception not rethrown", SIGABRT): seen as the demo's Ctrl-C ending -6.
        self._handlers = 0
        self._idle = threading.Condition(self._open_lock)
        self._wake_r, self._wake_w = socket.socketpair()
        super().__init__(address, Handler)

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

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._handlers += 1
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: nothing will count it down
            self._handler_done()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._handler_done()

    def _handler_done(self) -> None:
        with self._open_lock:
            self._handlers -= 1
            if not self._handlers:
                self._idle.notify_all()

    def wait_for_handlers(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for every handler thread to end; whether they did."""
        with self._open_lock:
            return self._idle.wait_for(lambda: not self._handlers, timeout)

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


class Handler(BaseHTTPRequestHandler):
    """One connection: routes, records, applies the issuer's faults, answers."""

    protocol_version = "HTTP/1.1"
    server_version = f"swr_token-LocalIssuer/{__version__}"
    sys_version = ""
    server: Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection_number = self.server.issuer.connection_opened()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("LocalIssuer: " + format, *args)

    def date_time_string(self, timestamp: float | None = None) -> str:
        return email.utils.formatdate(self.server.issuer.now(), usegmt=True)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        endpoint = _endpoint(path)
        body = self._read_body()
        if body is None:
            return
        self.server.issuer.record_request(
            endpoint, method, self.path, {k.lower(): v for k, v in self.headers.items()}, body,
            self.connection_number)
        if not self._faulted(endpoint):
            self._answer(method, endpoint, path, body)

    def _read_body(self) -> bytes | None:
        """The request body, or None once a body over the cap was answered 413."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self.close_connection = True
            self._json(413, {"error": "request_too_large"})
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _answer(self, method: str, endpoint: str, path: str, body: bytes) -> None:
        expected = _METHODS.get(endpoint)
        if expected is None:
            self._json(404, {"error": "not_found"})
        elif method != expected:
            self._json(405, {"error": "method_not_allowed"}, {"Allow": expected})
        elif endpoint == "jwks":
            self._json(200, self.server.issuer.jwks())
        else:
            try:
                self._token(endpoint, path, body)
            except _Refused as refused:
                self._error(endpoint, refused.status, refused.code, refused.message,
                            refused.headers)

    def _token(self, endpoint: str, path: str, body: bytes) -> None:
        if endpoint == "clerk":
            self._clerk(path, body)
        elif endpoint == "m2m":
            self._m2m(body)
        else:
            self._oauth(body)

    # -- faults ---------------------------------------------------------------------------

    def _faulted(self, endpoint: str) -> bool:
        """Act out the issuer's faults for this request; True if that answered it (or dropped
        it), False if it should now be answered normally."""
        delay, fault = self.server.issuer.take_faults(endpoint)
        if delay is not None and self.server.stopping.wait(delay.seconds):
            self.close_connection = True
            return True
        return fault is not None and not self._apply(fault, endpoint)

    def _apply(self, fault: Fault, endpoint: str) -> bool:
        """Act out ``fault``; True if the request should then be answered normally."""
        if fault.kind == "hang":
            return self._hang(fault)
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
            table = {"clerk": _CLERK_CODES, "m2m": _M2M_CODES}.get(endpoint, _OAUTH_CODES)
            code = fault.code or table.get(
                fault.status, "server_error" if fault.status >= 500 else "invalid_request")
            self._error(endpoint, fault.status, code, "injected fault", self._retry_after(fault))
        return False

    def _hang(self, fault: Fault) -> bool:
        """Hold the request until the fault is released or its window ends."""
        issuer = self.server.issuer
        released = issuer.hold(fault) or self.server.stopping.is_set()
        if not released:
            left = None if fault.until is None else max(0.0, fault.until - time.monotonic())
            fault.released.wait(left)
        issuer.unhold(fault)
        if self.server.stopping.is_set():
            self.close_connection = True
            return False
        return True

    @staticmethod
    def _retry_after(fault: Fault) -> dict[str, str]:
        if fault.retry_after is None:
            return {}
        value = fault.retry_after
        return {"Retry-After": value if isinstance(value, str) else f"{value:g}"}

    # -- endpoints (each raises _Refused for an error answer) -----------------------------

    def _clerk(self, path: str, body: bytes) -> None:
        issuer = self.server.issuer
        if self.headers.get("Authorization") != f"Bearer {issuer.secret_key}":
            raise _Refused(401, "authentication_invalid", "Unauthorized request")
        match = _CLERK_PATH.match(path)
        assert match is not None
        session_id = unquote(match.group(1))
        if issuer.session_ended(session_id):
            raise _Refused(404, "resource_not_found", "Session not found")
        params = _json_object(body)
        lifetime = None if params is None else params.get("expires_in_seconds")
        if params is None or not (
                lifetime is None or (isinstance(lifetime, int) and lifetime > 0)):
            raise _Refused(422, "form_param_format_invalid", "Invalid request body")
        jwt_ = issuer.mint(lifetime=lifetime, sid=session_id, sub=f"user_{session_id}")
        issuer.token_issued("clerk")
        self._json(200, {"object": "token", "jwt": jwt_})

    def _m2m(self, body: bytes) -> None:
        """Clerk's ``POST /m2m_tokens``: validates like Clerk, answers 201 in milliseconds."""
        issuer = self.server.issuer
        header = self.headers.get("Authorization") or ""
        key = header[7:] if header.startswith("Bearer ") else ""
        seconds, claims, token_format = _m2m_params(body)
        answer = issuer.m2m_token(key, seconds_until_expiration=seconds, claims=claims,
                                  token_format=token_format) if key else None
        if answer is None:
            raise _Refused(401, "authentication_invalid",
                           "The provided machine secret key is invalid")
        issuer.token_issued("m2m")
        self._json(201, answer)

    def _oauth(self, body: bytes) -> None:
        issuer = self.server.issuer
        fields = parse_qs(body.decode(errors="replace"))
        form = {k: v[-1] for k, v in fields.items()}
        self._authenticate_client(form)
        if form.get("grant_type") != "client_credentials":
            raise _Refused(400, "unsupported_grant_type", "use client_credentials")
        scope = form.get("scope")
        if scope and issuer.allowed_scopes is not None and not set(scope.split()) <= (
                issuer.allowed_scopes):
            raise _Refused(400, "invalid_scope", "scope not allowed for this client")
        expires_in = issuer.lifetime if issuer.oauth_expires_in is None else (
            issuer.oauth_expires_in)
        if issuer.opaque:
            token = secrets.token_urlsafe(32)
        else:
            token = issuer.mint(sub=issuer.client_id, client_id=issuer.client_id,
                                aud=_audience(form, fields), scope=scope)
        issuer.token_issued("oauth")
        answer: dict[str, Any] = {"access_token": token, "token_type": "Bearer",
                                  "expires_in": number(expires_in)}
        if scope:
            answer["scope"] = scope
        self._json(200, answer, {"Pragma": "no-cache"})

    def _authenticate_client(self, form: Mapping[str, str]) -> None:
        """Exactly one client authentication, and a valid one: HTTP basic, a posted secret,
        or a client assertion (RFC 7523)."""
        issuer = self.server.issuer
        basic = self._basic_credentials()
        posted = (form.get("client_id"), form.get("client_secret"))
        by_assertion = "client_assertion" in form or "client_assertion_type" in form
        if (basic is not None) + (posted[1] is not None) + by_assertion > 1:
            raise _Refused(400, "invalid_request", "more than one client authentication")
        if by_assertion:
            _check_assertion(issuer, form)
        elif (basic if basic is not None else posted) != (issuer.client_id, issuer.client_secret):
            raise _Refused(401, "invalid_client", "client authentication failed",
                           {"WWW-Authenticate": 'Basic realm="LocalIssuer"'})

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

    # -- answers --------------------------------------------------------------------------

    def _error(self, endpoint: str, status: int, code: str, message: str,
               headers: Mapping[str, str] | None = None) -> None:
        if endpoint in _CLERK_SHAPED:
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


def _json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object (``{}`` when empty), or None when it is not one."""
    try:
        doc = json.loads(body) if body.strip() else {}
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _m2m_params(body: bytes) -> tuple[int | None, dict[str, Any] | None, str]:
    """``seconds_until_expiration``, ``claims`` and ``token_format`` of an M2M request, checked
    as Clerk checks them."""
    params = _json_object(body)
    if params is None:
        raise _Refused(400, "malformed_request_body", "Request body is not a JSON object")
    seconds = params.get("seconds_until_expiration")
    claims = params.get("claims")
    token_format = params.get("token_format", "opaque")
    if seconds is not None and not _positive_int(seconds):
        raise _Refused(422, "form_param_format_invalid",
                       "seconds_until_expiration must be a positive integer")
    if claims is not None and not isinstance(claims, dict):
        raise _Refused(422, "form_param_format_invalid", "claims must be an object")
    if token_format not in ("jwt", "opaque"):
        raise _Refused(422, "form_param_value_invalid", "token_format must be jwt or opaque")
    return seconds, claims, token_format


def _check_assertion(issuer: Issuer, form: Mapping[str, str]) -> None:
    assertion = form.get("client_assertion")
    if form.get("client_assertion_type") != _ASSERTION_TYPE or not assertion:
        raise _Refused(400, "invalid_request",
                       "client_assertion_type must be jwt-bearer, with a client_assertion")
    failure = issuer.check_client_assertion(assertion, client_id=form.get("client_id"))
    if failure is not None:
        raise _Refused(*failure)


def _audience(form: Mapping[str, str], fields: Mapping[str, list[str]]) -> str | list[str] | None:
    """The ``aud`` an OAuth2 token gets: ``audience``, else the ``resource`` value(s)."""
    resources = fields.get("resource", [])
    return form.get("audience") or (resources[0] if len(resources) == 1 else resources or None)
