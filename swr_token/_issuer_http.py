"""The wire side of :class:`~swr_token.testing.LocalIssuer`: its HTTP server and handler.

The issuer (:mod:`._issuer`) owns the state — keys, credentials, faults, counters; this module
speaks HTTP on 127.0.0.1: it routes a request to an endpoint, records it, acts out the fault
the issuer hands it, and shapes Clerk and OAuth2 answers and errors.
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
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, unquote_plus

from ._version import __version__

if TYPE_CHECKING:
    from ._issuer import LocalIssuer, _Fault

__all__ = ["Handler", "Server", "number"]

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

    def __init__(self, address: tuple[str, int], issuer: LocalIssuer) -> None:
        self.issuer = issuer
        self.stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
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
        endpoint = _endpoint(path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self.close_connection = True
            self._json(413, {"error": "request_too_large"})
            return
        body = self.rfile.read(length) if length > 0 else b""
        issuer._record(endpoint, method, self.path,
                       {k.lower(): v for k, v in self.headers.items()}, body,
                       self.connection_number)
        delay, fault = issuer._take_faults(endpoint)
        if delay is not None and self.server.stopping.wait(delay.seconds):
            self.close_connection = True
            return
        if fault is not None and not self._apply(fault, endpoint):
            return
        expected = _METHODS.get(endpoint)
        if expected is None:
            self._json(404, {"error": "not_found"})
        elif method != expected:
            self._json(405, {"error": "method_not_allowed"}, {"Allow": expected})
        elif endpoint == "clerk":
            self._clerk(path, body)
        elif endpoint == "m2m":
            self._m2m(body)
        elif endpoint == "oauth":
            self._oauth(body)
        else:
            self._json(200, issuer.jwks())

    # -- faults ---------------------------------------------------------------------------

    def _apply(self, fault: _Fault, endpoint: str) -> bool:
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

    def _hang(self, fault: _Fault) -> bool:
        """Hold the request until the fault is released or its window ends."""
        issuer = self.server.issuer
        released = issuer._hold(fault) or self.server.stopping.is_set()
        if not released:
            left = None if fault.until is None else max(0.0, fault.until - time.monotonic())
            fault.released.wait(left)
        issuer._unhold(fault)
        if self.server.stopping.is_set():
            self.close_connection = True
            return False
        return True

    @staticmethod
    def _retry_after(fault: _Fault) -> dict[str, str]:
        if fault.retry_after is None:
            return {}
        value = fault.retry_after
        return {"Retry-After": value if isinstance(value, str) else f"{value:g}"}

    # -- endpoints ------------------------------------------------------------------------

    def _clerk(self, path: str, body: bytes) -> None:
        issuer = self.server.issuer
        if self.headers.get("Authorization") != f"Bearer {issuer.secret_key}":
            self._error("clerk", 401, "authentication_invalid", "Unauthorized request")
            return
        match = _CLERK_PATH.match(path)
        assert match is not None
        session_id = unquote(match.group(1))
        if issuer._session_ended(session_id):
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
        issuer._issued_one("clerk")
        self._json(200, {"object": "token", "jwt": jwt_})

    def _m2m(self, body: bytes) -> None:
        """Clerk's ``POST /m2m_tokens``: validates like Clerk, answers 201 in milliseconds."""
        issuer = self.server.issuer
        header = self.headers.get("Authorization") or ""
        key = header[7:] if header.startswith("Bearer ") else ""
        try:
            params = json.loads(body) if body.strip() else {}
        except ValueError:
            params = None
        if not isinstance(params, dict):
            self._error("m2m", 400, "malformed_request_body", "Request body is not a JSON object")
            return
        seconds = params.get("seconds_until_expiration")
        claims = params.get("claims")
        token_format = params.get("token_format", "opaque")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)
                                    or seconds <= 0):
            self._error("m2m", 422, "form_param_format_invalid",
                        "seconds_until_expiration must be a positive integer")
            return
        if claims is not None and not isinstance(claims, dict):
            self._error("m2m", 422, "form_param_format_invalid", "claims must be an object")
            return
        if token_format not in ("jwt", "opaque"):
            self._error("m2m", 422, "form_param_value_invalid",
                        "token_format must be jwt or opaque")
            return
        answer = issuer.m2m_token(key, seconds_until_expiration=seconds, claims=claims,
                                  token_format=token_format) if key else None
        if answer is None:
            self._error("m2m", 401, "authentication_invalid",
                        "The provided machine secret key is invalid")
            return
        issuer._issued_one("m2m")
        self._json(201, answer)

    def _oauth(self, body: bytes) -> None:
        issuer = self.server.issuer
        fields = parse_qs(body.decode(errors="replace"))
        form = {k: v[-1] for k, v in fields.items()}
        basic = self._basic_credentials()
        posted = (form.get("client_id"), form.get("client_secret"))
        assertion = form.get("client_assertion")
        methods = (basic is not None) + (posted[1] is not None) + (
            assertion is not None or "client_assertion_type" in form)
        if methods > 1:
            self._error("oauth", 400, "invalid_request", "more than one client authentication")
            return
        if assertion is not None or "client_assertion_type" in form:
            if form.get("client_assertion_type") != _ASSERTION_TYPE or not assertion:
                self._error("oauth", 400, "invalid_request",
                            "client_assertion_type must be jwt-bearer, with a client_assertion")
                return
            failure = issuer.check_client_assertion(assertion, client_id=posted[0])
            if failure is not None:
                self._error("oauth", *failure)
                return
        elif (basic if basic is not None else posted) != (issuer.client_id, issuer.client_secret):
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
            resources = fields.get("resource", [])
            audience: str | list[str] | None = form.get("audience") or (
                resources[0] if len(resources) == 1 else resources or None)
            token = issuer.mint(sub=issuer.client_id, client_id=issuer.client_id,
                                aud=audience, scope=scope)
        issuer._issued_one("oauth")
        answer: dict[str, Any] = {"access_token": token, "token_type": "Bearer",
                                  "expires_in": number(expires_in)}
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
