"""HTTP plumbing shared by the built-in sources: session, timeouts, TLS, and typed errors.

The engine never imports this module. Every failure leaves here as a :class:`TokenError`
subclass carrying the HTTP status and the issuer's error code (SPEC section 6), with a message
that says what to do and holds no secret and no token.
"""

from __future__ import annotations

import datetime
import email.utils
import ipaddress
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters
import requests.auth

from ._errors import ConfigurationError, TokenFetchError, TokenRejectedError
from ._version import __version__

__all__ = [
    "DEFAULT_TIMEOUT",
    "USER_AGENT",
    "HintFor",
    "Transport",
    "check_timeout",
    "check_url",
    "display_url",
    "error_code",
    "generic_hint",
    "parse_http_date",
    "parse_retry_after",
]

logger = logging.getLogger(__name__)

USER_AGENT = f"swr_token/{__version__}"
#: (connect, read) seconds: a connect a little over a multiple of 3 s (TCP's retransmit).
DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 10.0)

#: ``hint(status, code)`` -> what the user should do about a failed response.
HintFor = Callable[[int, "str | None"], str]

_REJECTED = frozenset({400, 401, 403, 404, 422})
_TRANSIENT = frozenset({408, 425, 429})
_JWT_LIKE = re.compile(r"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
_DETAIL_MAX = 200


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, name: str) -> str:
    """Return ``url`` if it is ``https://`` (or ``http://`` to loopback); else raise.

    Raises :class:`ConfigurationError` (a ``ValueError`` and a ``TokenError``). The message
    names the host only: a URL may carry credentials in its user-info part.
    """
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"{name} must be a non-empty https:// URL")
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigurationError(
            f"{name} has an invalid port; use https://HOST[:PORT]/..."
        ) from None
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and host and _is_loopback(host):
        return url
    if parts.scheme == "http":
        raise ConfigurationError(
            f"{name} uses plain http:// to {host!r}, which would send credentials and tokens "
            "unencrypted; use https:// (plain http:// is allowed only to loopback addresses)"
        )
    raise ConfigurationError(f"{name} must be an https:// URL with a host; use https://")


def display_url(url: str) -> str:
    """``url`` fit for messages and reprs: scheme, host, port and path; no user-info, no query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def check_timeout(timeout: float | tuple[float, float]) -> tuple[float, float]:
    """Normalise ``timeout`` to ``(connect, read)`` seconds, both finite and positive."""
    pair = tuple(timeout) if isinstance(timeout, tuple | list) else (timeout, timeout)
    if len(pair) != 2 or not all(
        isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) and t > 0
        for t in pair
    ):
        raise ConfigurationError(
            "timeout must be a positive number of seconds or a (connect, read) pair of them; "
            "timeouts are required so a hung issuer cannot hang a refresh forever"
        )
    return float(pair[0]), float(pair[1])


def parse_http_date(value: str | None) -> float | None:
    """An HTTP-date (``Date``, ``Retry-After``) as epoch seconds, or None if unparseable."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # "-0000": RFC 5322's "UTC, but unknown local zone"
        return parsed.replace(tzinfo=datetime.UTC).timestamp()
    return parsed.timestamp()


def parse_retry_after(value: str | None, *, server_time: float | None) -> float | None:
    """``Retry-After`` in seconds from now: delay-seconds, or an HTTP-date.

    An HTTP-date is measured against the response's own ``Date`` when there is one, so an
    issuer with a skewed clock still means what it says.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        when = parse_http_date(value)
        if when is None:
            return None
        now = server_time if server_time is not None else time.time()
        return max(0.0, when - now)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


_UNPARSEABLE = object()


def _json(content: bytes) -> object:
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _UNPARSEABLE


def error_code(body: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """The issuer's ``(code, message)`` from an error body, when it has them.

    Understands Clerk's ``{"errors": [{"code", "message"}]}``, OAuth2's ``{"error",
    "error_description"}`` and the common ``{"error": {"code", "message"}}``.
    """
    if not body:
        return None, None
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        return _text(first.get("code")), _text(first.get("message"))
    error = body.get("error")
    if isinstance(error, dict):
        return _text(error.get("code")), _text(error.get("message"))
    return _text(error), _text(body.get("error_description") or body.get("message"))


def _text(value: object) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


class _Authorization(requests.auth.AuthBase):
    """Sets (or leaves out) ``Authorization`` last, so neither ``session.auth`` nor a
    ``~/.netrc`` entry can replace the credentials or add a second client authentication."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self._value is None:
            request.headers.pop("Authorization", None)
        else:
            request.headers["Authorization"] = self._value
        return request

    def __repr__(self) -> str:
        return "<Authorization ***>"


class Transport:
    """POSTs to one issuer and turns every outcome into a JSON object or a typed error.

    Thread-safe as far as ``requests.Session`` is: its connection pool is. A session made here
    is replaced after ``os.fork()`` so a child never shares a parent's keep-alive socket.
    """

    __slots__ = ("_hint", "_owned", "_pid", "_secrets", "_session", "_timeout", "_verify")

    def __init__(
        self,
        *,
        session: requests.Session | None,
        timeout: float | tuple[float, float],
        verify: bool | str,
        secrets: Iterable[str],
        hint: HintFor,
    ) -> None:
        self._timeout = check_timeout(timeout)
        if verify is False:
            logger.warning(
                "TLS certificate verification is off (verify=False): anyone on the network "
                "path can read the credentials and tokens; pass a CA bundle path instead"
            )
        # None defers to the session (a user's CA bundle) and to REQUESTS_CA_BUNDLE.
        self._verify: bool | str | None = None if verify is True else verify
        self._secrets = tuple(s for s in secrets if s)
        self._hint = hint
        self._owned = session is None
        self._session = session if session is not None else self._new_session()
        self._pid = os.getpid()

    @staticmethod
    def _new_session() -> requests.Session:
        session = requests.Session()
        # Room for concurrent refreshes without discarding connections; no transport retries:
        # retrying is the engine's job, with its pacing.
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    @property
    def session(self) -> requests.Session:
        """The session in use (the caller's, or one made here)."""
        if self._owned and self._pid != os.getpid():
            self._session, self._pid = self._new_session(), os.getpid()
        return self._session

    def close(self) -> None:
        """Close the session if it was made here; a caller's session is left alone."""
        if self._owned:
            self._session.close()

    def scrub(self, text: str) -> str:
        """``text`` without any secret, any JWT-looking string, newlines, or excess length."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = _JWT_LIKE.sub("<token>", " ".join(text.split()))
        return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 1] + "…"

    def post(
        self,
        url: str,
        *,
        what: str,
        authorization: str | None,
        data: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any], float | None]:
        """POST and return ``(status, JSON object, server_time)`` for a 2xx answer.

        Raises :class:`TokenRejectedError` or :class:`TokenFetchError` for a failed exchange.
        A 2xx body that is JSON but not an object comes back as ``{}``: the caller finds no
        token in it. An unparseable one is a :class:`TokenFetchError` (SPEC section 6).
        ``what`` names the request in messages ("Clerk token request for {session=...}");
        ``authorization`` is the whole ``Authorization`` header value, if any.
        """
        try:
            response = self.session.post(
                url,
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                auth=_Authorization(authorization),
                data=data,
                json=json_body,
                timeout=self._timeout,
                verify=self._verify,
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            raise TokenFetchError(
                f"{what} timed out ({type(exc).__name__}, timeout={self._timeout}); "
                "the issuer is slow or unreachable, it will be retried"
            ) from exc
        except requests.exceptions.SSLError as exc:
            raise TokenFetchError(
                f"{what} failed: TLS error ({type(exc).__name__}); check the issuer's "
                "certificate and the CA bundle (verify=, REQUESTS_CA_BUNDLE)"
            ) from exc
        except requests.RequestException as exc:
            raise TokenFetchError(
                f"{what} failed: network error ({type(exc).__name__}); check connectivity to "
                "the issuer, it will be retried"
            ) from exc
        with response:
            return self._outcome(response, what)

    def _outcome(
        self, response: requests.Response, what: str
    ) -> tuple[int, dict[str, Any], float | None]:
        status = response.status_code
        server_time = parse_http_date(response.headers.get("Date"))
        parsed = _json(response.content)
        body = parsed if isinstance(parsed, dict) else None
        if 200 <= status < 300:
            if parsed is _UNPARSEABLE:
                raise TokenFetchError(
                    f"{what} got HTTP {status} with a body that is not JSON; the issuer or a "
                    "proxy in between answered oddly, it will be retried",
                    status=status,
                )
            # Parsed but not an object: the caller finds no token in it (InvalidTokenError).
            return status, body or {}, server_time
        code, detail = error_code(body)
        message = f"{what} failed with HTTP {status}"
        if code:
            message += f" ({self.scrub(code)})"
        if detail:
            message += f": {self.scrub(detail)}"
        if status in _TRANSIENT or 500 <= status < 600:
            retry_after = parse_retry_after(
                response.headers.get("Retry-After"), server_time=server_time
            )
            if retry_after is not None:
                message += f"; retry after {retry_after:g} s"
            raise TokenFetchError(
                f"{message}; {self._hint(status, code)}",
                status=status,
                code=code,
                retry_after=retry_after,
            )
        if 300 <= status < 400:
            hint = "the URL redirects; configure the final https:// URL (no redirects followed)"
        else:
            hint = self._hint(status, code)
        raise TokenRejectedError(f"{message}; {hint}", status=status, code=code)


def generic_hint(status: int, code: str | None) -> str:
    """Hints that do not depend on the issuer; sources refine the ones that do."""
    del code
    if status in (401, 403):
        return "check the credentials"
    if status in (400, 422):
        return "the issuer refused the request as malformed; check what was asked for"
    if status == 404:
        return "the issuer does not know what was asked for; check the URL"
    if status == 429:
        return "the issuer is rate limiting; it will be retried later"
    if status == 408 or status == 425:
        return "the issuer gave up waiting; it will be retried"
    if 500 <= status < 600:
        return "the issuer failed; it will be retried"
    if status in _REJECTED or 400 <= status < 500:
        return "the issuer refused the request; asking again will not help"
    return "unexpected answer from the issuer"
