"""Verifying tokens against the issuer's JSON Web Key Set, as a ``TokenClient`` verifier.

``TokenClient(source, verifier=JWKSVerifier(jwks_url, ...))`` checks every fetched token before
it is served or cached. A token that fails is an :class:`InvalidTokenError` (never cached, not
retried; the next call asks the source again); a JWKS endpoint that cannot be read is a
:class:`TokenFetchError`, so the engine retries and keeps serving the token it has.

The key set is fetched with pyjwt's :class:`jwt.PyJWKClient` (its HTTP part replaced by a
``requests`` GET, so proxies, CA bundles and mTLS follow the session) and cached here, on an
injectable clock, with one shared download at a time.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from typing import Any

import jwt
import requests

from . import _fork
from ._checks import seconds
from ._errors import ConfigurationError, InvalidTokenError, TokenError, TokenFetchError
from ._http import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_RETRY_AFTER,
    check_limits,
    check_timeout,
    check_url,
    display_url,
    parse_http_date,
    parse_retry_after,
    send,
)
from ._token import Token, fingerprint
from ._wire import ForkSafeSession

__all__ = ["JWKSVerifier"]

#: Signature algorithms with a public verification key. HMAC (HS*) is never among them: its
#: "key" would be public data, so anyone could sign; and ``none`` is no signature at all.
ASYMMETRIC_ALGORITHMS = frozenset({
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES256K", "ES384", "ES512", "EdDSA",
})
#: (connect, read) seconds for the JWKS request: it runs inside a token fetch.
DEFAULT_JWKS_TIMEOUT: tuple[float, float] = (2.0, 3.0)
#: Seconds the whole JWKS attempt (connect, headers, body) may take.
DEFAULT_JWKS_TOTAL_TIMEOUT = 5.0


@dataclass(frozen=True)
class _KeySet:
    """One downloaded key set, published by a single assignment."""

    keys: dict[str, jwt.PyJWK]  # by kid; only signature keys with a kid
    unnamed: tuple[jwt.PyJWK, ...]  # every signature key (for tokens without a kid)
    fetched_at: float
    generation: int
    unusable: dict[str, str]  # kid -> why a key the document names cannot verify anything


class _JWKSFetcher(jwt.PyJWKClient):
    """PyJWKClient whose download goes through ``requests`` and fails with typed errors."""

    def __init__(self, url: str, *, session: requests.Session | None,
                 timeout: tuple[float, float], limits: tuple[float, int, float]) -> None:
        # Caching is done by JWKSVerifier (own clock, shared downloads), not here.
        super().__init__(url, cache_keys=False, cache_jwk_set=False, timeout=timeout[1])
        self._pair = timeout
        self._limits = limits
        self._session = ForkSafeSession(session, pool_maxsize=4)

    def close(self) -> None:
        self._session.close()

    def fetch_data(self) -> Any:
        where = f"the JWKS request to {display_url(self.uri)}"
        total_timeout, max_body, max_retry_after = self._limits
        answer = send(self._session.get(), "GET", self.uri, what=where, timeout=self._pair,
                      total_timeout=total_timeout, max_body=max_body)
        status = answer.status
        if status != 200:
            retry_after = parse_retry_after(
                answer.headers.get("Retry-After"),
                server_time=parse_http_date(answer.headers.get("Date")), cap=max_retry_after)
            raise TokenFetchError(
                f"{where} answered HTTP {status}; check jwks_url (it must serve the key set "
                "directly, redirects are not followed)",
                status=status, retry_after=retry_after,
            )
        try:
            return json.loads(answer.body)
        except (ValueError, RecursionError):
            # Not chained: a JSON error carries the whole body it failed on.
            raise TokenFetchError(
                f"{where} answered with a body that is not JSON; check jwks_url",
                status=status,
            ) from None


class JWKSVerifier:
    """A ``TokenClient(verifier=...)`` that checks each JWT's signature and claims.

    - ``jwks_url``: the issuer's key set (``https://``; plain ``http://`` only to loopback).
    - ``algorithms`` (``("RS256",)``): the allowlist. Only public-key algorithms are accepted
      here: ``none`` and HS* are refused at construction, so a public key can never be used
      as an HMAC secret. A key is used only with its own algorithm (the JWK's ``alg``, else
      its type's default: RS256 for RSA, by curve for EC, EdDSA for OKP).
    - ``issuer``: the expected ``iss`` (a string, or several), checked when given.
    - ``audience``: the expected ``aud`` (a string, or several: one must match), checked when
      given; when ``None`` the token's ``aud`` is not examined (the holder of a token for many
      APIs is not its audience).
    - ``leeway`` (5.0 s): clock tolerance for ``exp`` and ``nbf``. ``exp`` is required.
    - ``timeout`` (``(2.0, 3.0)``): connect/read seconds for the JWKS request.
    - ``total_timeout`` (5.0 s), ``max_body`` (1 MiB), ``max_retry_after`` (60 s): bounds on
      one JWKS attempt in all, on the key set's size, and on a ``Retry-After``.
    - ``cache_keys_for`` (300 s): how long a downloaded key set is used before it is fetched
      again (on the next verification; a failed download is a :class:`TokenFetchError`).
    - ``refetch_cooldown`` (1.0 s): a token whose ``kid`` is not in the cached set triggers
      one immediate download (the issuer may have rotated its keys) before it is refused;
      at most one such download per this many seconds, so tokens with unknown ``kid`` s
      cannot turn into one JWKS request each.
    - ``session``: a ``requests.Session`` (proxies, CA bundle, mTLS); one is made otherwise.
    - ``clock``: seconds on a monotonic clock, for the cache (tests pass a fake one).

    Thread-safe: concurrent verifications share one download. Fork-safe: a child keeps the
    cached keys and gets its own lock, session and downloads.
    """

    def __init__(
        self,
        jwks_url: str,
        *,
        algorithms: Iterable[str] = ("RS256",),
        issuer: str | Iterable[str] | None = None,
        audience: str | Iterable[str] | None = None,
        leeway: float = 5.0,
        timeout: float | tuple[float, float] = DEFAULT_JWKS_TIMEOUT,
        total_timeout: float = DEFAULT_JWKS_TOTAL_TIMEOUT,
        max_body: int = DEFAULT_MAX_BODY,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        cache_keys_for: float = 300.0,
        refetch_cooldown: float = 1.0,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = check_url(jwks_url, name="jwks_url")
        self._algorithms = _allowlist(algorithms)
        self._issuer = _names("issuer", issuer)
        self._audience = _names("audience", audience)
        self._leeway = seconds("leeway", leeway)
        self._cache_for = seconds("cache_keys_for", cache_keys_for)
        self._cooldown = seconds("refetch_cooldown", refetch_cooldown)
        pair = check_timeout(timeout)
        limits = check_limits(total_timeout=total_timeout, max_body=max_body,
                              max_retry_after=max_retry_after)
        self._wait_limit = min(sum(pair), limits[0]) + 1.0
        self._fetcher = _JWKSFetcher(self._url, session=session, timeout=pair, limits=limits)
        self._clock = clock
        # _lock guards _keys, _pending and _last_forced; the download runs outside it.
        self._lock = threading.Lock()
        self._keys: _KeySet | None = None
        self._pending: Future[_KeySet] | None = None
        self._last_forced = -math.inf
        self._generation = 0
        _fork.register(self)

    # -- verifying ------------------------------------------------------------------------

    def __call__(self, token: Token | str) -> None:
        """Verify ``token``; raise :class:`InvalidTokenError` or :class:`TokenFetchError`."""
        raw = token.raw if isinstance(token, Token) else token
        if not isinstance(raw, str):
            raise InvalidTokenError("only a JWT string or a swr_token.Token can be verified")
        name = f"token {fingerprint(raw)}"
        alg, kid = self._header_of(raw, name)
        key = self._key_for(kid, name)
        if key.algorithm_name != alg:
            raise InvalidTokenError(
                f"{name} refused: it says {alg} but the JWKS key {(kid or '')[:40]!r} is for "
                f"{key.algorithm_name}; a key is only used with its own algorithm"
            )
        self._decode(raw, key, name)

    def _header_of(self, raw: str, name: str) -> tuple[str, str | None]:
        """The token's ``(alg, kid)``, read unverified; an algorithm not allowed is refused
        before any key is looked up."""
        try:
            header = jwt.get_unverified_header(raw)
        except jwt.PyJWTError:
            raise InvalidTokenError(
                f"{name} is not a JWT, so it cannot be verified against a JWKS; do not pass "
                "a JWKSVerifier for opaque tokens"
            ) from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self._algorithms:
            shown = repr(alg)[:20] if isinstance(alg, str) else type(alg).__name__
            raise InvalidTokenError(
                f"{name} refused: its algorithm {shown} is not allowed (allowed: "
                f"{', '.join(sorted(self._algorithms))}); the issuer's tokens must be signed "
                "with one of these"
            )
        if kid is not None and not isinstance(kid, str):
            raise InvalidTokenError(f"{name} refused: its 'kid' header is not a string")
        return alg, kid

    def _decode(self, raw: str, key: jwt.PyJWK, name: str) -> None:
        """Check the signature with ``key`` and the claims (exp required, nbf, iss, aud)."""
        try:
            jwt.decode(
                raw,
                key,
                algorithms=sorted(self._algorithms),
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={
                    "require": ["exp"],
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": False,  # age is the engine's business (issuer clock skew)
                    "verify_iss": self._issuer is not None,
                    "verify_aud": self._audience is not None,
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(f"{name} failed verification: {self._why(exc)}") from None

    def _why(self, exc: jwt.PyJWTError) -> str:
        """What failed and what to do; never the token, never pyjwt's own text."""
        if isinstance(exc, jwt.ExpiredSignatureError):
            return (f"it has expired ('exp' is past, beyond the {self._leeway:g} s leeway); "
                    "check the issuer's and this host's clocks")
        if isinstance(exc, jwt.ImmatureSignatureError):
            return (f"it is not valid yet ('nbf' is ahead, beyond the {self._leeway:g} s "
                    "leeway); check the clocks or raise leeway=")
        if isinstance(exc, jwt.InvalidAudienceError):
            return f"its audience ('aud') is not {self._audience!r}; check audience="
        if isinstance(exc, jwt.InvalidIssuerError):
            return f"its issuer ('iss') is not {self._issuer!r}; check issuer="
        if isinstance(exc, jwt.MissingRequiredClaimError):
            if exc.claim == "aud":
                return (f"it has no audience ('aud') claim but {self._audience!r} is required; "
                        "check audience= and how the token is requested")
            return f"it has no {exc.claim!r} claim, which is required"
        if isinstance(exc, jwt.InvalidSignatureError):
            return ("its signature does not match the issuer's key; it was not signed by "
                    "the issuer at jwks_url")
        if isinstance(exc, jwt.InvalidAlgorithmError):
            return "its algorithm is not allowed for this key"
        if isinstance(exc, jwt.DecodeError):
            return "it is not a well-formed JWT"
        return f"{type(exc).__name__}"

    # -- keys -----------------------------------------------------------------------------

    def _key_for(self, kid: str | None, name: str) -> jwt.PyJWK:
        keys = self._keys
        seen = keys.generation if keys is not None else -1
        if keys is None or self._clock() - keys.fetched_at >= self._cache_for:
            keys = self._download(after=seen, forced=False)
        key = _pick(keys, kid)
        if key is None and kid is not None and keys.generation == seen:
            # Not in a set fetched before this call: maybe the issuer rotated its keys.
            keys = self._download(after=seen, forced=True)
            key = _pick(keys, kid)
        if key is not None:
            return key
        if kid is None:
            raise InvalidTokenError(
                f"{name} refused: it has no 'kid' header and the JWKS holds "
                f"{len(keys.unnamed)} signature keys, so its key is ambiguous"
            )
        age = self._clock() - keys.fetched_at
        if kid in keys.unusable:
            raise InvalidTokenError(
                f"{name} refused: the JWKS at {display_url(self._url)} (fetched {age:.0f} s "
                f"ago) has a key with kid {kid[:40]!r}, but {keys.unusable[kid]}; fix that key "
                "at the issuer"
            )
        raise InvalidTokenError(
            f"{name} refused: no key with kid {kid[:40]!r} in the JWKS at "
            f"{display_url(self._url)} (fetched {age:.0f} s ago); it was not signed by this "
            "issuer's current keys"
        )

    def _download(self, *, after: int, forced: bool) -> _KeySet:
        """A key set newer than generation ``after``: one download shared by all callers."""
        with self._lock:
            keys = self._keys
            if keys is not None and keys.generation > after:
                return keys
            pending = self._pending
            if pending is None:
                if self._refetch_refused(forced, keys):
                    assert keys is not None
                    return keys  # a refetch just happened: do not let bad kids hammer it
                future: Future[_KeySet] = Future()
                self._pending = future
        if pending is not None:
            return self._wait_for(pending)
        return self._run_download(future)

    def _refetch_refused(self, forced: bool, keys: _KeySet | None) -> bool:
        """Under ``_lock``: True if a forced refetch comes within ``refetch_cooldown`` of the
        last one and there are keys to answer with; else a forced one is noted as the last."""
        now = self._clock()
        if forced and keys is not None and now - self._last_forced < self._cooldown:
            return True
        if forced:
            self._last_forced = now
        return False

    def _wait_for(self, pending: Future[_KeySet]) -> _KeySet:
        """The result of the download another caller runs, waited for within a bound."""
        try:
            return pending.result(timeout=self._wait_limit)
        except FuturesTimeout:
            raise TokenFetchError(
                f"timed out waiting for the JWKS at {display_url(self._url)}; check "
                "jwks_url and the issuer's health"
            ) from None

    def _run_download(self, future: Future[_KeySet]) -> _KeySet:
        """Download for everyone waiting on ``future``; it always ends, whatever happens."""
        try:
            keys = self._fetch()
        except TokenError as exc:
            with self._lock:
                self._pending = None
            future.set_exception(exc)
            raise
        except BaseException as exc:  # never leave waiters hanging
            with self._lock:
                self._pending = None
            future.set_exception(TokenFetchError(
                f"fetching the JWKS failed ({type(exc).__name__}); try again"))
            raise
        with self._lock:
            self._keys, self._pending = keys, None
        future.set_result(keys)
        return keys

    def _fetch(self) -> _KeySet:
        document, jwk_set = self._fetch_set()
        signing = _signing_keys(jwk_set)
        by_kid = {k.key_id: k for k in signing if isinstance(k.key_id, str) and k.key_id}
        if not signing:
            raise TokenFetchError(
                f"the JWKS at {display_url(self._url)} holds no public signature keys; "
                "check jwks_url"
            )
        with self._lock:
            self._generation += 1
            generation = self._generation
        return _KeySet(by_kid, signing, self._clock(), generation,
                       _unusable_kids(document, jwk_set, by_kid))

    def _fetch_set(self) -> tuple[dict[str, Any], jwt.PyJWKSet]:
        """The key set document and its parsed keys, or a :class:`TokenFetchError`."""
        try:
            # As PyJWKClient.get_jwk_set, keeping the document: it names the keys that did
            # not parse, which the parsed set silently leaves out.
            document = self._fetcher.fetch_data()
            if not isinstance(document, dict):
                raise jwt.PyJWKClientError("the JWKS endpoint did not answer a JSON object")
            return document, jwt.PyJWKSet.from_dict(document)
        except TokenError:
            raise
        except (jwt.PyJWTError, ValueError, TypeError, AttributeError) as exc:
            raise TokenFetchError(
                f"the JWKS at {display_url(self._url)} is not a usable JWK Set "
                f"({type(exc).__name__}); check jwks_url"
            ) from exc

    def close(self) -> None:
        """Close the HTTP session if this verifier made it (a caller's is left alone)."""
        self._fetcher.close()

    def _after_fork_in_child(self) -> None:
        """A fresh lock, no download in flight (the parent's is not ours); keys kept."""
        self._lock = threading.Lock()
        self._pending = None

    def __repr__(self) -> str:
        return (f"JWKSVerifier({display_url(self._url)!r}, "
                f"algorithms={sorted(self._algorithms)!r}, issuer={self._issuer!r}, "
                f"audience={self._audience!r})")


def _unusable_kids(document: dict[str, Any], jwk_set: jwt.PyJWKSet,
                   usable: dict[str, jwt.PyJWK]) -> dict[str, str]:
    """The kids in ``document`` with no usable signature key, and why (for messages)."""
    parsed = {k.key_id for k in jwk_set.keys if isinstance(k.key_id, str)}
    reasons: dict[str, str] = {}
    for kid in _listed_kids(document):
        if kid in usable or kid in reasons:
            continue
        reasons[kid] = ("that key is not a public signature key for an allowed algorithm "
                        "(its 'use', 'kty' or 'alg')" if kid in parsed
                        else "that key cannot be parsed (a malformed or unsupported JWK)")
    return reasons


def _listed_kids(document: dict[str, Any]) -> list[str]:
    """The kids the document's ``keys`` entries name (non-empty strings), in order."""
    entries = document.get("keys")
    kids: list[str] = []
    for entry in entries if isinstance(entries, list) else ():
        kid = entry.get("kid") if isinstance(entry, dict) else None
        if isinstance(kid, str) and kid:
            kids.append(kid)
    return kids


def _signing_keys(jwk_set: jwt.PyJWKSet) -> tuple[jwt.PyJWK, ...]:
    """The set's public signature keys for an allowed algorithm (no HMAC ``oct`` keys)."""
    return tuple(
        k for k in jwk_set.keys
        if k.public_key_use in ("sig", None) and k.key_type != "oct"
        and k.algorithm_name in ASYMMETRIC_ALGORITHMS
    )


def _pick(keys: _KeySet, kid: str | None) -> jwt.PyJWK | None:
    if kid is not None:
        return keys.keys.get(kid)
    return keys.unnamed[0] if len(keys.unnamed) == 1 else None


def _allowlist(algorithms: Iterable[str]) -> frozenset[str]:
    if isinstance(algorithms, str):
        algorithms = (algorithms,)
    chosen = frozenset(algorithms)
    if not chosen:
        raise ConfigurationError("algorithms must name at least one algorithm, e.g. ('RS256',)")
    for alg in sorted(chosen):
        if not isinstance(alg, str):
            raise ConfigurationError("algorithms must be names such as 'RS256'")
        if alg.lower() == "none" or alg.upper().startswith("HS"):
            raise ConfigurationError(
                f"algorithm {alg!r} is refused: tokens verified against a public key set "
                "must use a public-key algorithm (RS*, PS*, ES*, EdDSA), never 'none' or "
                "HMAC (HS*), which would accept tokens anyone can forge"
            )
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise ConfigurationError(
                f"unknown algorithm {alg!r}; use one of {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}"
            )
    return chosen


def _names(what: str, value: str | Iterable[str] | None) -> str | tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not value:
            raise ConfigurationError(f"{what} must be a non-empty string, several, or None")
        return value
    names = tuple(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigurationError(f"{what} must be a non-empty string, several, or None")
    return names
