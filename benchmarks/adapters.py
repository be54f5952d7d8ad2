"""One adapter per library under test, all reading the same issuer with the same thresholds.

Every adapter exposes ``get_token()`` (no arguments, returns the raw token string) and
``close()``. The thresholds are the same for all: refresh once less than 15 s is left, and a
hard margin of 5 s where the library has one. Every adapter fetches over loopback HTTP from
the OAuth2 client-credentials endpoint of ``LocalIssuer`` and learns the expiry from the JWT's
``exp`` claim (decoded without verification), which is exact: no adapter gains or loses from
the issuer's whole-second ``iat``. The peers make one HTTP attempt per refresh; swr_token
retries with its own engine (that is part of what is compared).

- ``swr_token``: ``TokenClient(OAuth2ClientCredentialsSource(...), poll_interval=5,
  background_refresh_threshold=15, margin=5)`` (the defaults, spelled out).
- ``google_auth``: a ``google.auth.credentials.Credentials`` subclass whose ``refresh()``
  POSTs through google-auth's own ``google.auth.transport.requests.Request``; switched to
  ``with_non_blocking_refresh()``; ``google.auth._helpers.REFRESH_THRESHOLD`` (a module
  constant with no setter, 3 min 45 s by default) is set to 15 s for the whole run; ``expiry``
  is the naive-UTC datetime of ``exp``. google-auth has no hard margin: a token is INVALID
  only at ``exp`` itself. Read through ``before_request()``, the call ``AuthorizedSession``
  makes before every request; the token is taken from the ``authorization`` header it sets.
- ``botocore``: ``RefreshableCredentials.create_from_metadata(..., advisory_timeout=15,
  mandatory_timeout=5)`` over placeholder metadata that is already expired (so the first read
  fetches, like ``DeferredRefreshableCredentials``); ``refresh_using`` returns the JWT as
  ``token`` and ``exp`` as ``expiry_time`` (ISO 8601, UTC); read through
  ``get_frozen_credentials().token``; default ``time_fetcher`` (local wall clock).
- ``naive``: a dict behind a ``threading.Lock``; with less than 15 s left the caller fetches
  synchronously while holding the lock; a failed fetch raises to that caller.
- ``baseline`` (``hot`` only): ``dict.get`` plus ``time.monotonic()`` and one comparison, in a
  method called exactly like the adapters' ``get_token``.
"""

from __future__ import annotations

import base64
import datetime
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import jwt
import requests

from .issuer import IssuerInfo

__all__ = ["ADAPTERS", "Adapter", "Baseline", "UpstreamError", "make_adapter"]

REFRESH_BEFORE = 15.0  # seconds before expiry: background/advisory refresh
HARD_MARGIN = 5.0  # seconds before expiry: callers must wait (where the library has it)
_TIMEOUT = (3.05, 10.0)
_GRANT = b"grant_type=client_credentials"


class UpstreamError(Exception):
    """The issuer answered something other than 200 (peers' fetch)."""


def jwt_exp(raw: str) -> float:
    """The JWT's ``exp``, decoded without verification."""
    return float(jwt.decode(raw, options={"verify_signature": False})["exp"])


def _access_token(status: int, body: bytes | str) -> str:
    if status != 200:
        raise UpstreamError(f"token endpoint answered HTTP {status}")
    return str(json.loads(body)["access_token"])


class Adapter:
    name = "adapter"
    get_token: Callable[[], str]

    def close(self) -> None:
        """Release what the adapter holds (threads, sessions)."""


class Baseline(Adapter):
    """``dict.get`` + ``time.monotonic()``: the floor any in-process cache read must pay."""

    name = "baseline"

    def __init__(self, raw: str = "x" * 700) -> None:
        self._table: dict[str | None, tuple[str, float]] = {None: (raw, time.monotonic() + 3600)}
        self.get_token = self._get  # a bound method, called like every adapter's

    def _get(self, key: str | None = None) -> str:
        entry = self._table.get(key)
        if entry is not None and entry[1] - time.monotonic() > REFRESH_BEFORE:
            return entry[0]
        raise LookupError("the baseline has no refresh")


class SwrToken(Adapter):
    name = "swr_token"

    def __init__(self, issuer: IssuerInfo) -> None:
        import swr_token

        self.source = swr_token.OAuth2ClientCredentialsSource(
            issuer.token_url, issuer.client_id, issuer.client_secret, timeout=_TIMEOUT)
        self.client = swr_token.TokenClient(
            self.source, poll_interval=5.0, background_refresh_threshold=REFRESH_BEFORE,
            margin=HARD_MARGIN)
        self.get_token = self.client.get_token  # the public call, nothing wrapped around it

    def close(self) -> None:
        self.client.close()
        self.source.close()


class GoogleAuth(Adapter):
    name = "google_auth"

    def __init__(self, issuer: IssuerInfo) -> None:
        import google.auth._helpers as helpers
        import google.auth.credentials as gcreds
        import google.auth.exceptions as gexc
        import google.auth.transport.requests as greq

        helpers.REFRESH_THRESHOLD = datetime.timedelta(seconds=REFRESH_BEFORE)
        token_url = issuer.token_url
        pair = f"{issuer.client_id}:{issuer.client_secret}".encode()
        basic = "Basic " + base64.b64encode(pair).decode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": basic}

        class IssuerCredentials(gcreds.Credentials):  # type: ignore[misc]
            """Access tokens from LocalIssuer; the refresh is google-auth's to schedule."""

            def refresh(self, request: Any) -> None:
                try:
                    response = request(url=token_url, method="POST", body=_GRANT,
                                       headers=headers, timeout=_TIMEOUT)
                    raw = _access_token(response.status, response.data)
                except UpstreamError as exc:
                    raise gexc.RefreshError(str(exc), retryable=True) from exc
                exp = datetime.datetime.fromtimestamp(jwt_exp(raw), datetime.UTC)
                self.token = raw
                self.expiry = exp.replace(tzinfo=None)  # google-auth compares naive UTC

        self._session = requests.Session()
        self._request = greq.Request(self._session)
        self.credentials = IssuerCredentials()
        self.credentials.with_non_blocking_refresh()
        self.get_token = self._get

    def _get(self) -> str:
        headers: dict[str, str] = {}
        self.credentials.before_request(self._request, "GET", "https://api.example/", headers)
        return headers["authorization"][7:]  # "Bearer <token>"

    def close(self) -> None:
        worker = self.credentials._refresh_worker._worker
        if worker is not None:
            worker.join(2.0)  # a plain (non-daemon) thread; do not leave it mid-request
        self._session.close()


class Botocore(Adapter):
    name = "botocore"

    def __init__(self, issuer: IssuerInfo) -> None:
        from botocore.credentials import RefreshableCredentials

        self._session = requests.Session()
        self._issuer = issuer
        placeholder = {"access_key": "bench", "secret_key": "bench", "token": "",
                       "expiry_time": "1970-01-01T00:00:00Z"}
        self.credentials = RefreshableCredentials.create_from_metadata(
            placeholder, refresh_using=self._refresh, method="swr-bench",
            advisory_timeout=REFRESH_BEFORE, mandatory_timeout=HARD_MARGIN)
        self.get_token = self._get

    def _refresh(self) -> dict[str, str]:
        issuer = self._issuer
        response = self._session.post(
            issuer.token_url, data=_GRANT, auth=(issuer.client_id, issuer.client_secret),
            headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=_TIMEOUT)
        raw = _access_token(response.status_code, response.content)
        exp = datetime.datetime.fromtimestamp(jwt_exp(raw), datetime.UTC)
        return {"access_key": "bench", "secret_key": "bench", "token": raw,
                "expiry_time": exp.isoformat()}

    def _get(self) -> str:
        return str(self.credentials.get_frozen_credentials().token)

    def close(self) -> None:
        self._session.close()


class Naive(Adapter):
    name = "naive"

    def __init__(self, issuer: IssuerInfo) -> None:
        self._session = requests.Session()
        self._issuer = issuer
        self._lock = threading.Lock()
        self._cache: dict[str | None, tuple[str, float]] = {}
        self.get_token = self._get

    def _get(self, key: str | None = None) -> str:
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None and entry[1] - time.monotonic() > REFRESH_BEFORE:
                return entry[0]
            issuer = self._issuer
            response = self._session.post(
                issuer.token_url, data=_GRANT, auth=(issuer.client_id, issuer.client_secret),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                timeout=_TIMEOUT)
            raw = _access_token(response.status_code, response.content)
            deadline = time.monotonic() + (jwt_exp(raw) - time.time())
            self._cache[key] = (raw, deadline)
            return raw

    def close(self) -> None:
        self._session.close()


ADAPTERS: dict[str, Callable[[IssuerInfo], Adapter]] = {
    "swr_token": SwrToken,
    "google_auth": GoogleAuth,
    "botocore": Botocore,
    "naive": Naive,
}


def make_adapter(name: str, issuer: IssuerInfo) -> Adapter:
    return ADAPTERS[name](issuer)
