"""Clerk machine-to-machine tokens: ``POST {api_url}/m2m_tokens`` with a machine secret key.

Each creation is billed by Clerk, so this source asks for tokens that expire (an hour unless
told otherwise) and never hands the engine a token it could cache forever.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any, Literal

import requests

from ._errors import ConfigurationError, InvalidTokenError
from ._http import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_RETRY_AFTER,
    DEFAULT_TIMEOUT,
    DEFAULT_TOTAL_TIMEOUT,
    check_url,
    display_url,
    generic_hint,
)
from ._identity import M2M_DEFAULT_SECONDS, clerk_m2m_identity
from ._request import TokenRequest
from ._sources import _HttpSource, _reject, _secret_from_env, _token
from ._token import Token

__all__ = [
    "DEFAULT_SECONDS_UNTIL_EXPIRATION",
    "NON_EXPIRING_CACHE_LIFE",
    "ClerkM2MSource",
]

TokenFormat = Literal["jwt", "opaque"]

#: Sent when the caller sets no ``seconds_until_expiration``: Clerk's own default is a token
#: that never expires, which nobody should hold by accident.
DEFAULT_SECONDS_UNTIL_EXPIRATION = M2M_DEFAULT_SECONDS
#: The longest a token without an expiration is kept (seconds): the TokenClient's default
#: lifetime cap, applied here too so the bound holds with any client.
NON_EXPIRING_CACHE_LIFE = 86400.0

# Milliseconds since the epoch that make sense: 2001-09-09 .. 5138-11-16. A value in seconds
# (1.7e9) falls below and is refused rather than read as 1970.
_MS_MIN, _MS_MAX = 1e12, 1e14
_CLAIMS_MAX = 16 * 1024


def _milliseconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and _MS_MIN <= number <= _MS_MAX else None


class ClerkM2MSource(_HttpSource):
    """Machine-to-machine tokens from Clerk's Backend API.

    ``POST {api_url}/m2m_tokens`` with ``Authorization: Bearer <machine secret key>``
    (``machine_secret_key=`` or ``CLERK_MACHINE_SECRET_KEY``; an ``ak_...`` key). Without
    ``seconds_until_expiration`` it asks for tokens living
    :data:`DEFAULT_SECONDS_UNTIL_EXPIRATION` seconds; ``non_expiring=True`` asks for tokens
    that never expire, which are then kept at most :data:`NON_EXPIRING_CACHE_LIFE` seconds.
    M2M tokens belong to the machine, not to a session: a request with a session id,
    template, organization or audience is refused before anything is sent.
    ``total_timeout``, ``max_body`` and ``max_retry_after`` bound each attempt as for
    :class:`~swr_token.ClerkBackendSource`.
    """

    __slots__ = ("_api_url", "_body", "_claims", "_life_if_unknown", "_machine_secret_key",
                 "_seconds", "_token_format")

    def __init__(
        self,
        machine_secret_key: str | None = None,
        *,
        api_url: str = "https://api.clerk.com/v1",
        seconds_until_expiration: int | None = None,
        claims: Mapping[str, Any] | None = None,
        token_format: TokenFormat = "jwt",
        non_expiring: bool = False,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        verify: bool | str = True,
        total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
        max_body: int = DEFAULT_MAX_BODY,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
    ) -> None:
        self._machine_secret_key = key = _machine_secret_key(machine_secret_key)
        self._api_url = check_url(api_url, name="api_url").rstrip("/")
        if token_format not in ("jwt", "opaque"):
            raise ConfigurationError("token_format must be 'jwt' or 'opaque'")
        self._token_format: TokenFormat = token_format
        self._seconds = _lifetime_asked(seconds_until_expiration, non_expiring=non_expiring)
        # A token that comes back without an expiration is kept no longer than was asked for
        # (or, asked for none, the documented bound).
        self._life_if_unknown = float(
            NON_EXPIRING_CACHE_LIFE if self._seconds is None
            else min(self._seconds, NON_EXPIRING_CACHE_LIFE))
        self._claims = self._check_claims(claims)
        self._body = self._request_body()
        super().__init__(
            secrets=(key,), hint=_m2m_hint, session=session, timeout=timeout, verify=verify,
            total_timeout=total_timeout, max_body=max_body, max_retry_after=max_retry_after,
        )

    def _request_body(self) -> dict[str, Any]:
        """The JSON sent with every creation: the format, and the lifetime and claims if any."""
        body: dict[str, Any] = {"token_format": self._token_format}
        if self._seconds is not None:
            body["seconds_until_expiration"] = self._seconds
        if self._claims is not None:
            body["claims"] = self._claims
        return body

    @staticmethod
    def _check_claims(claims: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if claims is None:
            return None
        if not isinstance(claims, Mapping) or not all(isinstance(k, str) for k in claims):
            raise ConfigurationError("claims must be a mapping with string keys, or None")
        try:
            text = json.dumps(dict(claims), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"claims must be JSON-serialisable ({type(exc).__name__}); use strings, "
                "numbers, booleans, lists and mappings"
            ) from None
        if len(text) > _CLAIMS_MAX:
            raise ConfigurationError(
                f"claims are {len(text)} bytes as JSON; keep them under {_CLAIMS_MAX}"
            )
        parsed: dict[str, Any] = json.loads(text)  # a private copy: later edits change nothing
        return parsed

    @property
    def identity(self) -> str:
        """Names this configuration in a shared store (non-secret, stable across processes).

        api_url, token format, lifetime asked for and claims, plus a keyed hash of the machine
        secret key: two sources that would mint different tokens never share an entry.
        """
        return clerk_m2m_identity(self._api_url, self._machine_secret_key,
                                  token_format=self._token_format,
                                  seconds_until_expiration=self._seconds, claims=self._claims)

    def __call__(self, request: TokenRequest) -> Token:
        """Create one M2M token (billed by Clerk) for this source's configuration."""
        name = "ClerkM2MSource"
        why = ("an M2M token belongs to the machine whose secret key creates it; use a key "
               "with no parts (client.get_token()), and a second source for other claims")
        for part, value in (
            ("session_id", request.session_id),
            ("template", request.template),
            ("organization_id", request.organization_id),
            ("audience", request.audience),
        ):
            if value is not None:
                raise _reject(name, part, why)
        what = f"Clerk M2M token request to {display_url(self._api_url)}/m2m_tokens"
        status, answer, server_time = self._transport.post(
            f"{self._api_url}/m2m_tokens", what=what,
            authorization=f"Bearer {self._machine_secret_key}", json_body=self._body,
        )
        raw = answer.get("token")
        if not isinstance(raw, str) or not raw:
            raise InvalidTokenError(
                f"{what} got HTTP {status} without a 'token' string in the answer; check "
                "api_url points at Clerk's Backend API (…/v1)",
                status=status,
            )
        expires_in = self._expires_in(answer, what=what, status=status, server_time=server_time)
        return _token(
            raw, expires_in=expires_in, server_time=server_time, what=what, status=status,
            unknown_lifetime="the answer's expiration is not usable",
        )

    def _expires_in(
        self, answer: Mapping[str, Any], *, what: str, status: int, server_time: float | None
    ) -> float:
        """Seconds the token lives from now, by Clerk's ``expiration`` (milliseconds).

        Counted from ``created_at`` when the answer has it (both on Clerk's clock, so a skewed
        local clock does not matter), else from the response's ``Date`` or the local clock.
        A JWT's own ``exp`` may be shorter: :class:`Token` takes the shorter of the two.
        """
        if answer.get("expiration") is None:
            return self._life_if_unknown
        expiration = _milliseconds(answer.get("expiration"))
        if expiration is None:
            raise InvalidTokenError(
                f"{what} got an expiration that is not a time in milliseconds since the "
                "epoch; check api_url points at Clerk's Backend API",
                status=status,
            )
        created_at = _milliseconds(answer.get("created_at"))
        if created_at is not None:
            life = (expiration - created_at) / 1000.0
        else:
            life = expiration / 1000.0 - (server_time if server_time is not None else time.time())
        if life <= 0:
            raise InvalidTokenError(
                f"{what} got a token that had already expired (expiration is not after "
                "created_at); check seconds_until_expiration and the Clerk instance",
                status=status,
            )
        return min(life, NON_EXPIRING_CACHE_LIFE) if self._seconds is None else life

    def __repr__(self) -> str:
        return (f"ClerkM2MSource(api_url={display_url(self._api_url)!r}, "
                f"token_format={self._token_format!r}, "
                f"seconds_until_expiration={self._seconds!r}, machine_secret_key='***')")


_KEY_HOW = ("pass machine_secret_key= or set the CLERK_MACHINE_SECRET_KEY environment "
            "variable to a machine's secret key (ak_...) from the Clerk Dashboard")


def _machine_secret_key(value: str | None) -> str:
    """The machine secret key given (or from the environment), refused if it is an
    instance's secret key: that one mints session tokens, not M2M tokens."""
    key = _secret_from_env(value, env="CLERK_MACHINE_SECRET_KEY",
                           what="Clerk machine secret key", how=_KEY_HOW)
    if key.startswith(("sk_live_", "sk_test_")):
        raise ConfigurationError(
            "the Clerk machine secret key looks like an instance secret key (sk_...); "
            f"M2M tokens are created with a machine's own secret key: {_KEY_HOW}"
        )
    return key


def _lifetime_asked(seconds_until_expiration: int | None, *, non_expiring: bool) -> int | None:
    """The ``seconds_until_expiration`` to send: the one given, the default, or None for
    tokens that never expire."""
    if seconds_until_expiration is not None and (
        isinstance(seconds_until_expiration, bool)
        or not isinstance(seconds_until_expiration, int)
        or seconds_until_expiration <= 0
    ):
        raise ConfigurationError(
            "seconds_until_expiration must be a positive whole number of seconds, or None "
            f"for the default ({DEFAULT_SECONDS_UNTIL_EXPIRATION})"
        )
    if non_expiring and seconds_until_expiration is not None:
        raise ConfigurationError(
            "non_expiring=True asks for tokens that never expire; leave "
            "seconds_until_expiration unset with it"
        )
    if non_expiring:
        return None
    return seconds_until_expiration or DEFAULT_SECONDS_UNTIL_EXPIRATION


def _m2m_hint(status: int, code: str | None) -> str:
    if status == 401:
        return ("check the machine secret key (machine_secret_key= or CLERK_MACHINE_SECRET_KEY): "
                "it must be a machine's secret key (ak_...) of this Clerk instance, not revoked")
    if status == 403:
        return ("this machine may not create M2M tokens; check the machine and its secret "
                "key in the Clerk Dashboard")
    if status == 404:
        return "Clerk's M2M endpoint was not found; check api_url (…/v1)"
    if status in (400, 422):
        return ("Clerk refused the request as malformed; check claims, "
                "seconds_until_expiration and token_format")
    if status == 409:
        return ("Clerk refused the request as conflicting with the machine's state; check "
                "the machine in the Clerk Dashboard")
    if status == 429:
        return ("Clerk is rate limiting token creation (each creation is billed); ask less "
                "often: share tokens between processes with a store")
    return generic_hint(status, code)
