"""A real token issuer on 127.0.0.1 for tests, demos and benchmarks.

Published as :class:`swr_token.testing.LocalIssuer`; it lives outside the test kit so that
``swr-token demo`` runs on it without importing ``swr_token.testing``.

:class:`LocalIssuer` serves Clerk-shaped and OAuth2-shaped token endpoints and a JWKS over real
loopback HTTP, mints RS256 JWTs, and injects faults at runtime (a status, latency, a malformed
body, a hang, a reset connection), so code is tested against the wire, not against mocks.
This module holds the issuer's state (keys, credentials, faults, counters);
:mod:`._issuer_http` speaks HTTP for it, knowing the issuer only through its ``Issuer``
protocol (the handler-facing section at the end of :class:`LocalIssuer`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from ._issuer_fault import Fault
from ._issuer_http import Server, number

__all__ = ["LocalIssuer", "RecordedRequest"]

_SIGNED_WITH_A_KEY = ("RS256", "PS256", "ES256")


class _WallClock(Protocol):
    """Anything with a ``wall()`` in epoch seconds: ``swr_token.testing.FakeClock``, or the
    ``SystemClock`` a ``TokenClient`` uses by default."""

    @property
    def wall(self) -> Callable[[], float]: ...


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

    def form_values(self, name: str) -> list[str]:
        """Every value of form field ``name``, in order (``resource`` may repeat)."""
        return parse_qs(self.body.decode(), keep_blank_values=True).get(name, [])

    def __repr__(self) -> str:  # headers may hold secrets
        return f"<RecordedRequest {self.endpoint} {self.method} {self.path}>"


class LocalIssuer:
    """A threaded HTTP token issuer on 127.0.0.1 (a free port unless ``port`` is given).

    Endpoints: ``POST /v1/sessions/{sid}/tokens[/{template}]`` (Clerk, bearer ``secret_key``),
    ``POST /v1/m2m_tokens`` (Clerk M2M, bearer ``machine_secret_key``; JWT or opaque ``mt_``
    tokens, ``expiration`` in milliseconds, ``null`` when no lifetime is asked for),
    ``POST /oauth/token`` (client credentials: basic, post, or a ``client_secret_jwt`` /
    ``private_key_jwt`` assertion verified against ``client_secret`` or the keys given to
    :meth:`register_client_key`, replays refused), ``GET /.well-known/jwks.json``.
    ``lifetime`` and ``clock_offset`` (seconds the issuer's clock is ahead; it moves ``iat``,
    ``exp`` and the ``Date`` header) may be changed at any time, as may ``opaque`` (OAuth2
    access tokens that are not JWTs) and ``oauth_expires_in`` (an ``expires_in`` that differs
    from the JWT's lifetime). ``clock`` is the wall clock the issuer mints on (the system
    clock by default): pass the ``FakeClock`` a ``TokenClient`` runs on, and issued tokens and
    ``Date`` headers follow the test's time. Faults apply to the token endpoints unless
    ``endpoint=`` names one of ``"clerk"``, ``"m2m"``, ``"oauth"``, ``"jwks"``; each lasts ``count``
    requests and/or ``duration`` seconds (real time), or until :meth:`clear_faults`.
    Thread-safe.
    """

    def __init__(
        self,
        *,
        secret_key: str = "sk_test_local_issuer",
        machine_secret_key: str = "ak_test_local_issuer",
        client_id: str = "local-client",
        client_secret: str = "local-client-secret",
        lifetime: float = 60.0,
        clock_offset: float = 0.0,
        opaque: bool = False,
        allowed_scopes: Iterable[str] | None = None,
        port: int = 0,
        private_key: rsa.RSAPrivateKey | None = None,
        clock: _WallClock | None = None,
    ) -> None:
        self.secret_key = secret_key
        self.machine_secret_key = machine_secret_key
        self.client_id = client_id
        self.client_secret = client_secret
        self.lifetime = lifetime
        self.clock_offset = clock_offset
        self._wall: Callable[[], float] = time.time if clock is None else clock.wall
        self.opaque = opaque
        self.oauth_expires_in: float | None = None
        self.allowed_scopes = None if allowed_scopes is None else frozenset(allowed_scopes)
        self._key = private_key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self._key.public_key().public_numbers()
        self.kid = hashlib.sha256(numbers.n.to_bytes(256, "big")).hexdigest()[:16]
        self._port = port
        self._lock = threading.Condition()
        self._faults: list[Fault] = []
        self._held: set[Fault] = set()  # hangs in progress, maybe counted out of _faults
        self._counts: Counter[str] = Counter()
        self._connections = 0
        self._log: deque[RecordedRequest] = deque(maxlen=1000)
        self._ended: set[str] = set()
        self._machines: dict[str, str] = {}  # machine secret key -> machine id
        self._revoked_keys: set[str] = set()
        self._issued: Counter[str] = Counter()
        self._client_keys: dict[str | None, Any] = {}  # kid -> public key (None: no kid)
        self._seen_jti: dict[str, float] = {}  # client assertion jti -> its exp
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> LocalIssuer:
        """Bind and serve in a daemon thread; after :meth:`stop`, rebinds the same port."""
        with self._lock:
            if self._server is not None:
                return self
            server = Server(("127.0.0.1", self._port), self)
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
            # Stopping before releasing: a released hang must see it and drop, not answer.
            server.stop()
            for fault in (*self._faults, *self._held):
                fault.released.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        server.server_close()
        server.drop_connections()
        # Requests still being answered end quickly once their connection is dropped; none
        # may outlive the caller (see Server._handlers).
        server.wait_for_handlers(1.0)

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
        """The issuer's clock: its wall clock (``clock``) plus ``clock_offset``."""
        return self._wall() + self.clock_offset

    def mint(self, *, lifetime: float | None = None, **claims: Any) -> str:
        """An RS256 JWT with ``iat``, ``exp``, ``iss``, a unique ``jti``, and ``claims``."""
        iat = int(self.now())
        life = self.lifetime if lifetime is None else lifetime
        exp: float = iat + life
        payload = {"iss": self.url, "iat": iat, "nbf": iat, "exp": number(exp),
                   "jti": uuid.uuid4().hex}
        payload.update({k: v for k, v in claims.items() if v is not None})
        return jwt.encode(payload, self._key, algorithm="RS256", headers={"kid": self.kid})

    def jwks(self) -> dict[str, Any]:
        """The JWKS document served at :attr:`jwks_url`."""
        key = jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return {"keys": [{**key, "kid": self.kid, "alg": "RS256", "use": "sig"}]}

    def add_machine(self, machine_secret_key: str) -> str:
        """Accept another machine secret key on the M2M endpoint; returns its machine id."""
        machine_id = f"mch_{hashlib.sha256(machine_secret_key.encode()).hexdigest()[:24]}"
        with self._lock:
            return self._machines.setdefault(machine_secret_key, machine_id)

    def revoke_machine_key(self, machine_secret_key: str) -> None:
        """From now on the M2M endpoint answers 401 for ``machine_secret_key``."""
        with self._lock:
            self._revoked_keys.add(machine_secret_key)

    def m2m_token(
        self, machine_secret_key: str, *, seconds_until_expiration: int | None,
        claims: Mapping[str, Any] | None, token_format: str,
    ) -> dict[str, Any] | None:
        """Clerk's 201 answer for a created M2M token, or None if the key is not accepted."""
        with self._lock:
            if machine_secret_key in self._revoked_keys:
                return None
            subject = self._machines.get(machine_secret_key)
        if subject is None:
            if machine_secret_key != self.machine_secret_key:
                return None
            subject = self.add_machine(machine_secret_key)
        now_ms = int(self.now() * 1000)
        expiration = (None if seconds_until_expiration is None
                      else now_ms + seconds_until_expiration * 1000)
        token_id = f"mt_{uuid.uuid4().hex}"
        if token_format == "opaque":
            token = f"mt_{secrets.token_urlsafe(24)}"
        else:
            payload: dict[str, Any] = {"iss": self.url, "sub": subject, "iat": now_ms // 1000,
                                       "nbf": now_ms // 1000, "jti": token_id}
            if expiration is not None:
                payload["exp"] = expiration // 1000
            payload.update(claims or {})
            token = jwt.encode(payload, self._key, algorithm="RS256", headers={"kid": self.kid})
        return {"object": "machine_to_machine_token", "id": token_id, "token": token,
                "subject": subject, "claims": dict(claims) if claims else None, "scopes": [],
                "revoked": False, "revocation_reason": None, "expired": False,
                "expiration": expiration, "created_at": now_ms, "updated_at": now_ms}

    def register_client_key(self, key: Any, *, kid: str | None = None) -> None:
        """Accept client assertions (``private_key_jwt``) signed by ``key`` for ``client_id``.

        ``key``: a cryptography public or private key, or PEM text or bytes of either (only
        the public part is kept). With ``kid``, assertions must name it in their header.
        """
        from cryptography.hazmat.primitives import serialization

        if isinstance(key, str):
            key = key.encode()
        if isinstance(key, bytes):
            try:
                key = serialization.load_pem_public_key(key)
            except ValueError:
                key = serialization.load_pem_private_key(key, password=None)
        public = key.public_key() if hasattr(key, "private_bytes") else key
        with self._lock:
            self._client_keys[kid] = public

    def check_client_assertion(
        self, assertion: str, *, client_id: str | None
    ) -> tuple[int, str, str] | None:
        """Why ``assertion`` does not authenticate the client, as ``(status, code,
        description)``, or None when it does (RFC 7523 section 3: signature, iss = sub = the
        client, aud = the token endpoint, exp, iat, and a jti never seen before)."""
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return 401, "invalid_client", "client_assertion is not a JWT"
        # In this order: a replayed jti is only remembered once everything else passed.
        why = (self._assertion_signature_fault(assertion, header.get("alg"), header.get("kid"))
               or self._assertion_claims_fault(claims, client_id))
        return None if why is None else (401, "invalid_client", why)

    def _assertion_signature_fault(self, assertion: str, algorithm: Any, kid: Any) -> str | None:
        """Why the assertion's signature does not verify, or None."""
        if algorithm == "HS256":
            if _hs256_signed(assertion, self.client_secret):
                return None
            return "client_assertion signature does not verify (HS256)"
        if algorithm not in _SIGNED_WITH_A_KEY:
            return f"client_assertion algorithm {str(algorithm)[:20]!r} not allowed"
        with self._lock:
            keys = ([self._client_keys[kid]] if kid in self._client_keys
                    else [] if kid is not None else list(self._client_keys.values()))
        if not keys:
            return f"no registered client key for kid {kid!r}"
        if any(_signed_by(assertion, key, algorithm) for key in keys):
            return None
        return f"client_assertion signature does not verify ({algorithm})"

    def _assertion_claims_fault(self, claims: Mapping[str, Any], client_id: str | None
                                ) -> str | None:
        """Why the (signed) assertion's claims do not authenticate the client, or None; a
        jti that passes is remembered, so the assertion cannot be used again."""
        if not (claims.get("iss") == claims.get("sub") == self.client_id):
            return "client_assertion iss and sub must both be the client id"
        if client_id is not None and client_id != self.client_id:
            return "client_id does not match the assertion"
        audience = claims.get("aud")
        if self.token_url not in (audience if isinstance(audience, list) else [audience]):
            return "client_assertion aud must be the token endpoint"
        now = self.now()
        why = _assertion_time_fault(claims.get("exp"), claims.get("iat"), now)
        return why or self._replay_fault(claims.get("jti"), claims["exp"], now)  # exp: a number

    def _replay_fault(self, jti: Any, exp: float, now: float) -> str | None:
        """Why ``jti`` cannot be accepted (missing, or seen before), or None after noting it
        until ``exp`` (plus the 5 s leeway)."""
        if not isinstance(jti, str) or not jti:
            return "client_assertion needs a jti"
        with self._lock:
            self._seen_jti = {j: e for j, e in self._seen_jti.items() if e > now - 5}
            if jti in self._seen_jti:
                return "client_assertion jti was already used (replay)"
            self._seen_jti[jti] = float(exp)
        return None

    def end_session(self, session_id: str) -> None:
        """From now on the Clerk endpoint answers 404 for ``session_id`` (signed out)."""
        with self._lock:
            self._ended.add(session_id)

    # -- faults ---------------------------------------------------------------------------

    def _add(self, fault: Fault) -> None:
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
        self._add(Fault("fail", endpoint, status=status, retry_after=retry_after, code=code,
                         body=raw, **self._window(count, duration)))

    def delay(
        self, seconds: float, *, count: int | None = None, duration: float | None = None,
        endpoint: str | None = None,
    ) -> None:
        """Wait ``seconds`` before answering (stacks with one other fault)."""
        self._add(Fault("delay", endpoint, seconds=seconds, **self._window(count, duration)))

    def malformed(
        self, *, body: str | bytes | None = None, count: int | None = None,
        duration: float | None = None, endpoint: str | None = None,
    ) -> None:
        """Answer 200 with a body that is not JSON, or with exactly ``body`` when given."""
        raw = body.encode() if isinstance(body, str) else body
        self._add(Fault("malformed", endpoint, body=raw if raw is not None else b'{"jwt": "',
                         **self._window(count, duration)))

    def hang(
        self, *, count: int | None = None, duration: float | None = None,
        endpoint: str | None = None,
    ) -> None:
        """Hold requests without answering until the window ends, clear_faults() or stop()."""
        self._add(Fault("hang", endpoint, **self._window(count, duration)))

    def reset(
        self, *, count: int | None = None, duration: float | None = None,
        endpoint: str | None = None,
    ) -> None:
        """Read the request, then close the connection with a TCP reset."""
        self._add(Fault("reset", endpoint, **self._window(count, duration)))

    def clear_faults(self) -> None:
        """Remove every fault; hung requests are released and answered normally."""
        with self._lock:
            for fault in (*self._faults, *self._held):
                fault.released.set()
            self._faults.clear()

    # -- counters -------------------------------------------------------------------------

    def request_count(self, endpoint: str | None = None) -> int:
        """Requests received (faulted ones too), for one endpoint or all of them."""
        with self._lock:
            return self._counts[endpoint] if endpoint else sum(self._counts.values())

    def issued_count(self, endpoint: str | None = None) -> int:
        """Tokens actually issued (successful answers), for one endpoint or all of them.

        For Clerk M2M this is the number of billed creations.
        """
        with self._lock:
            return self._issued[endpoint] if endpoint else sum(self._issued.values())

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
            self._issued.clear()
            self._connections = 0
            self._log.clear()

    # -- called by the HTTP handler (the ._issuer_http.Issuer protocol) --------------------

    def session_ended(self, session_id: str) -> bool:
        """True once :meth:`end_session` was called for ``session_id``."""
        with self._lock:
            return session_id in self._ended

    def connection_opened(self) -> int:
        """Count a connection the server accepted; returns its number (1 for the first)."""
        with self._lock:
            self._connections += 1
            return self._connections

    def record_request(self, endpoint: str, method: str, path: str,
                       headers: Mapping[str, str], body: bytes, connection: int) -> None:
        """Count and record a request, waking :meth:`wait_for_requests`."""
        request = RecordedRequest(endpoint, method, path, headers, body, connection)
        with self._lock:
            self._counts[request.endpoint] += 1
            self._log.append(request)
            self._lock.notify_all()

    def take_faults(self, endpoint: str) -> tuple[Fault | None, Fault | None]:
        """The first matching delay and the first matching other fault for a request to
        ``endpoint``; each counts one request down, and spent or expired faults are dropped."""
        now = time.monotonic()
        with self._lock:
            self._faults = [f for f in self._faults if f.live(now)]
            delay, other = _first_delay_and_other(
                [f for f in self._faults if f.matches(endpoint, now)])
            for fault in (delay, other):
                if fault is not None:
                    fault.count_down()
            self._faults = [f for f in self._faults if not f.spent]
        return delay, other

    def hold(self, fault: Fault) -> bool:
        """A request starts hanging on ``fault``; True if it was already released."""
        with self._lock:
            self._held.add(fault)
            return fault.released.is_set()

    def unhold(self, fault: Fault) -> None:
        """The request hanging on ``fault`` goes on (released, timed out or stopping)."""
        with self._lock:
            self._held.discard(fault)

    def token_issued(self, endpoint: str) -> None:
        """Count a token the handler answered with (:meth:`issued_count`)."""
        with self._lock:
            self._issued[endpoint] += 1

    def __repr__(self) -> str:
        state = "serving" if self._server is not None else "stopped"
        return f"<LocalIssuer {state} port={self._port}>"


def _first_delay_and_other(faults: list[Fault]) -> tuple[Fault | None, Fault | None]:
    """The first delay in ``faults`` and the first fault of another kind: a delay stacks with
    one other fault."""
    return (next((f for f in faults if f.kind == "delay"), None),
            next((f for f in faults if f.kind != "delay"), None))


def _hs256_signed(assertion: str, secret: str) -> bool:
    """True if ``assertion`` carries the HS256 signature of its signing input under ``secret``
    (compared in constant time)."""
    signing_input, _, signature = assertion.rpartition(".")
    expected = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(base64.urlsafe_b64encode(expected).rstrip(b"="),
                               signature.encode())


def _signed_by(assertion: str, key: Any, algorithm: str) -> bool:
    """True if ``key`` verifies the signature (only the signature: claims are checked apart)."""
    try:
        jwt.decode(assertion, key, algorithms=[algorithm],
                   options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                            "verify_aud": False})
    except (jwt.PyJWTError, TypeError, ValueError):  # also: a key of another type
        return False
    return True


def _assertion_time_fault(exp: Any, iat: Any, now: float) -> str | None:
    """Why an assertion's ``exp`` and ``iat`` are not acceptable at ``now`` (5 s leeway, at
    most an hour ahead), or None."""
    if not isinstance(exp, int | float) or exp <= now - 5:
        return "client_assertion has expired"
    if isinstance(iat, int | float) and iat > now + 5:
        return "client_assertion iat is in the future"
    if exp > now + 3600:  # Okta's bound; authlib signs for an hour by default
        return "client_assertion lives too long (exp more than 1 h ahead)"
    return None
