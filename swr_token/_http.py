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
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import SplitResult, quote, quote_plus, urlsplit

import requests
import requests.auth
import urllib3.util

from ._checks import seconds
from ._errors import ConfigurationError, TokenFetchError, TokenRejectedError
from ._request import attempt_budget
from ._version import __version__
from ._wire import (
    DEFAULT_MAX_BODY,
    Answer,
    BodyTooLarge,
    DeadlinePassed,
    ForkSafeSession,
    exchange,
)

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_RETRY_AFTER",
    "DEFAULT_TIMEOUT",
    "DEFAULT_TOTAL_TIMEOUT",
    "USER_AGENT",
    "HintFor",
    "Transport",
    "cause_of",
    "check_limits",
    "check_timeout",
    "check_url",
    "display_url",
    "error_code",
    "generic_hint",
    "network_reason",
    "parse_http_date",
    "parse_retry_after",
    "secret_forms",
    "send",
]

logger = logging.getLogger("swr_token")

USER_AGENT = f"swr_token/{__version__}"
_HEADERS = {"User-Agent": USER_AGENT, "Accept": "application/json",
            "Accept-Encoding": "identity"}
#: (connect, read) seconds: a connect a little over a multiple of 3 s (TCP's retransmit).
DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 10.0)
#: Seconds one attempt may take in all (connect, TLS, headers, body): a trickling issuer ends.
DEFAULT_TOTAL_TIMEOUT = 10.0
#: A ``Retry-After`` longer than this (seconds) is taken as this.
DEFAULT_MAX_RETRY_AFTER = 60.0

#: ``hint(status, code)`` -> what the user should do about a failed response.
HintFor = Callable[[int, "str | None"], str]

_REJECTED = frozenset({400, 401, 403, 404, 422})
_TRANSIENT = frozenset({408, 425, 429})
# Matches only from the start of a run (the look-behind) and never backtracks into one
# (possessive): linear in the text, where the plain pattern is quadratic on a long run.
_JWT_LIKE = re.compile(
    r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]*+")
_DETAIL_MAX = 200
#: Scrubbing and shaping a message reads at most this much of what the issuer sent.
_SCRUB_PREFIX = 4096
#: An error body larger than this is not parsed for a code and description: cheap to refuse.
_ERROR_BODY_MAX = 64 * 1024


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: Query parameter names that carry a credential: refused in a configured URL.
_CREDENTIAL_PARAM = re.compile(
    r"secret|passw|pwd|token|key|auth|sig|credential|session|assertion", re.IGNORECASE)


def check_url(url: str, *, name: str) -> str:
    """Return ``url`` if it is ``https://`` (or ``http://`` to loopback); else raise.

    Raises :class:`ConfigurationError` (a ``ValueError`` and a ``TokenError``). The URL is
    checked as ``requests``/``urllib3`` will parse and connect to it, and refused if the
    standard library would read another host out of it (``http://evil\\@localhost/``). A URL
    with credentials in its user-info or query is refused; messages never show either.
    """
    _check_plain(url, name)
    parts, wire = _parse_both(url, name)
    _refuse_credentials(parts, wire, name)
    host = (parts.hostname or "").lower()
    wire_host = (wire.host or "").strip("[]").lower()
    if host != wire_host or (wire.scheme or "") != parts.scheme:
        raise ConfigurationError(
            f"{name} is ambiguous: its host reads differently to different URL parsers; "
            "write it plainly, as https://HOST[:PORT]/PATH")
    _check_scheme(parts.scheme, host, name)
    return url


def _check_plain(url: object, name: str) -> None:
    """A non-empty string with nothing that parsers read differently or a log would hide."""
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"{name} must be a non-empty https:// URL")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 or ch == "\\" for ch in url):
        raise ConfigurationError(
            f"{name} contains a backslash, whitespace or a control character; write the "
            "URL plainly, as https://HOST[:PORT]/PATH")


def _parse_both(url: str, name: str) -> tuple[SplitResult, urllib3.util.Url]:
    """``url`` as the standard library reads it and as ``requests`` will connect to it."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - validates the port
        wire = urllib3.util.parse_url(url)  # what requests connects to
    except ValueError:
        raise ConfigurationError(
            f"{name} has an invalid host or port; use https://HOST[:PORT]/..."
        ) from None
    return parts, wire


def _refuse_credentials(parts: SplitResult, wire: urllib3.util.Url, name: str) -> None:
    """Credentials belong in a source's arguments: a URL is shown and logged."""
    if parts.username is not None or parts.password is not None or wire.auth is not None \
            or "@" in parts.netloc:
        raise ConfigurationError(
            f"{name} has credentials in it (user-info before '@'); remove them and pass the "
            "credentials as the source's own arguments")
    if any(_CREDENTIAL_PARAM.search(field.split("=", 1)[0])
           for field in parts.query.split("&") if field):
        raise ConfigurationError(
            f"{name} has a credential-like parameter in its query string; remove it and pass "
            "credentials as the source's own arguments")


def _check_scheme(scheme: str, host: str, name: str) -> None:
    """``https://`` with a host, or plain ``http://`` to a loopback host only."""
    if scheme == "https" and host:
        return
    if scheme == "http" and host and _is_loopback(host):
        return
    if scheme == "http":
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


def parse_retry_after(value: str | None, *, server_time: float | None,
                      cap: float = DEFAULT_MAX_RETRY_AFTER) -> float | None:
    """``Retry-After`` in seconds from now: delay-seconds, or an HTTP-date; at most ``cap``.

    An HTTP-date is measured against the response's own ``Date`` when there is one, so an
    issuer with a skewed clock still means what it says. A value past ``cap`` (``1e9``, a
    date years ahead) is taken as ``cap``: an issuer cannot switch a client off.
    """
    if not value:
        return None
    value = value.strip()[:64]
    try:
        seconds = float(value)
    except ValueError:
        when = parse_http_date(value)
        if when is None:
            return None
        now = server_time if server_time is not None else time.time()
        seconds = max(0.0, when - now)
    if math.isnan(seconds) or seconds < 0:
        return None
    return min(seconds, cap)


_UNPARSEABLE = object()


def _int_or_inf(digits: str) -> float | int:
    # A number with more digits than any sane one stays out of int(): no 4,300-digit
    # ValueError (which would make the body "unparseable", hence transient) and no slow parse.
    return int(digits) if len(digits) <= 40 else math.inf


def _json(content: bytes) -> object:
    try:
        return json.loads(content, parse_int=_int_or_inf)
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


def check_limits(
    *, total_timeout: float, max_body: int, max_retry_after: float
) -> tuple[float, int, float]:
    """Validate the hostile-input bounds every HTTP source and the verifier take."""
    total = seconds("total_timeout", total_timeout, allow_zero=False,
                    hint="one deadline for connect, headers and body, so a trickling issuer "
                    "cannot hold a fetch")
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1024:
        raise ConfigurationError("max_body must be a whole number of bytes, at least 1024")
    return total, max_body, seconds("max_retry_after", max_retry_after, allow_zero=False)


class Transport:
    """POSTs to one issuer and turns every outcome into a JSON object or a typed error.

    Thread-safe as far as ``requests.Session`` is: its connection pool is. A session made here
    is replaced after ``os.fork()`` so a child never shares a parent's keep-alive socket.
    Every attempt is bounded: ``max_body`` bytes, ``total_timeout`` seconds in all, and a
    ``Retry-After`` of at most ``max_retry_after`` seconds.
    """

    __slots__ = ("_hint", "_limits", "_secrets", "_session", "_timeout", "_verify")

    def __init__(
        self,
        *,
        session: requests.Session | None,
        timeout: float | tuple[float, float],
        verify: bool | str,
        secrets: Iterable[str],
        hint: HintFor,
        total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
        max_body: int = DEFAULT_MAX_BODY,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
    ) -> None:
        self._timeout = check_timeout(timeout)
        self._limits = check_limits(total_timeout=total_timeout, max_body=max_body,
                                    max_retry_after=max_retry_after)
        if verify is False:
            logger.warning(
                "TLS certificate verification is off (verify=False): anyone on the network "
                "path can read the credentials and tokens; pass a CA bundle path instead"
            )
        # None defers to the session (a user's CA bundle) and to REQUESTS_CA_BUNDLE.
        self._verify: bool | str | None = None if verify is True else verify
        self._secrets = secret_forms(secrets)
        self._hint = hint
        self._session = ForkSafeSession(session)

    @property
    def session(self) -> requests.Session:
        """The session in use (the caller's, or one made here)."""
        return self._session.get()

    def close(self) -> None:
        """Close the session if it was made here; a caller's session is left alone."""
        self._session.close()

    def scrub(self, text: str) -> str:
        """``text`` without any secret, any JWT-looking string, newlines, or excess length.

        Linear in a bounded prefix, whatever the issuer sent.
        """
        text = text[:_SCRUB_PREFIX]
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
        data: Mapping[str, str | list[str]] | None = None,
        json_body: Mapping[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any], float | None]:
        """POST and return ``(status, JSON object, server_time)`` for a 2xx answer.

        Raises :class:`TokenRejectedError` or :class:`TokenFetchError` for a failed exchange.
        A 2xx body that is JSON but not an object comes back as ``{}``: the caller finds no
        token in it. An unparseable one is a :class:`TokenFetchError` (SPEC section 6).
        ``what`` names the request in messages ("Clerk token request for {session=...}");
        ``authorization`` is the whole ``Authorization`` header value, if any.
        """
        total_timeout, max_body, _ = self._limits
        timeout = self._timeout
        budget = attempt_budget()
        if budget is not None:
            # Callers wait longer than this source's own limits (a get_token timeout=, the
            # CLI's --timeout): one slow answer may take that long instead of failing early.
            # A little past the budget, so that the budget (whose message names the knob the
            # caller has) ends the wait, not this attempt's own limit.
            budget += 0.5
            total_timeout = max(total_timeout, budget)
            timeout = (timeout[0], max(timeout[1], budget))
        answer = send(self.session, "POST", url, what=what, timeout=timeout,
                      total_timeout=total_timeout, max_body=max_body,
                      auth=_Authorization(authorization), data=data, json=json_body,
                      verify=self._verify)
        return self._outcome(answer, what)

    def _outcome(self, answer: Answer, what: str) -> tuple[int, dict[str, Any], float | None]:
        status = answer.status
        server_time = parse_http_date(answer.headers.get("Date"))
        if 200 <= status < 300:
            return status, _success_body(answer, what), server_time
        raise self._failure(answer, what, server_time)

    def _failure(self, answer: Answer, what: str,
                 server_time: float | None) -> TokenFetchError | TokenRejectedError:
        """The typed error for a non-2xx answer: transient (retried) or a rejection."""
        status = answer.status
        message, code = self._error_message(answer, what)
        if status in _TRANSIENT or 500 <= status < 600:
            retry_after = parse_retry_after(
                answer.headers.get("Retry-After"), server_time=server_time,
                cap=self._limits[2],
            )
            if retry_after is not None:
                message += f"; retry after {retry_after:g} s"
            return TokenFetchError(
                f"{message}; {self._hint(status, code)}",
                status=status,
                code=code,
                retry_after=retry_after,
            )
        if 300 <= status < 400:
            hint = "the URL redirects; configure the final https:// URL (no redirects followed)"
        else:
            hint = self._hint(status, code)
        return TokenRejectedError(f"{message}; {hint}", status=status, code=code)

    def _error_message(self, answer: Answer, what: str) -> tuple[str, str | None]:
        """``(message, code)``: the status, and the issuer's code and words, scrubbed."""
        # An error body is only parsed when small: its code and description are a courtesy.
        parsed = _json(answer.body) if len(answer.body) <= _ERROR_BODY_MAX else None
        code, detail = error_code(parsed if isinstance(parsed, dict) else None)
        code = code[:80] if code else None
        message = f"{what} failed with HTTP {answer.status}"
        if code:
            message += f" ({self.scrub(code)})"
        if detail:
            message += f": {self.scrub(detail)}"
        return message, code


def _success_body(answer: Answer, what: str) -> dict[str, Any]:
    """A 2xx answer's JSON object; ``{}`` for JSON that is not one (the caller finds no token
    in it: InvalidTokenError); an unparseable body is a :class:`TokenFetchError`."""
    parsed = _json(answer.body)
    if parsed is _UNPARSEABLE:
        raise TokenFetchError(
            f"{what} got HTTP {answer.status} with a body that is not JSON; check that the "
            "URL is the token endpoint (a proxy in between may also have answered)",
            status=answer.status,
        )
    return parsed if isinstance(parsed, dict) else {}


def secret_forms(secrets: Iterable[str]) -> tuple[str, ...]:
    """Every form in which an issuer might echo a secret: raw, ``quote``, ``quote_plus``
    (each also with lower-case hex) and JSON-escaped; longest first, so no form is left
    half-replaced by a shorter one."""
    forms: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        for form in (secret, quote(secret, safe=""), quote_plus(secret, safe=""),
                     json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]):
            forms.add(form)
            forms.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), form))
    return tuple(sorted(forms, key=len, reverse=True))


def send(session: requests.Session, method: str, url: str, *, what: str,
         timeout: tuple[float, float], total_timeout: float, max_body: int,
         **kwargs: Any) -> Answer:
    """One bounded exchange with an issuer, JSON asked for, no redirect followed.

    An attempt that gets no whole answer raises :func:`network_error`'s
    :class:`TokenFetchError` naming ``what``, chained only as :func:`cause_of` allows.
    """
    try:
        return exchange(session, method, url, total_timeout=total_timeout, max_body=max_body,
                        headers=dict(_HEADERS), timeout=timeout, allow_redirects=False,
                        **kwargs)
    except Exception as exc:
        error = network_error(exc, what, timeout=timeout, total_timeout=total_timeout,
                              max_body=max_body)
        if error is exc:
            raise
        raise error from cause_of(exc)


def cause_of(exc: BaseException) -> BaseException | None:
    """What may be kept as ``__cause__`` of a network error: the ``requests`` exception
    without the request it holds (its headers carry the credentials); nothing for our own."""
    if isinstance(exc, DeadlinePassed | BodyTooLarge):
        return None
    if isinstance(exc, requests.RequestException):
        exc.request = None
        exc.response = None
    return exc


def network_error(exc: BaseException, what: str, *, timeout: tuple[float, float],
                  total_timeout: float, max_body: int) -> BaseException:
    """The typed error for an attempt that did not get a whole answer.

    The message names the exception's type only (its text may hold the issuer's bytes).
    """
    kind = type(exc).__name__
    if isinstance(exc, DeadlinePassed):
        return TokenFetchError(
            f"{what} did not finish within total_timeout={total_timeout:g} s (connect, "
            "headers and body); the issuer is slow or trickling its answer: check its health"
        )
    if isinstance(exc, BodyTooLarge):
        return TokenFetchError(
            f"{what} got an answer larger than max_body={max_body} bytes; it was not read "
            "past that; check the URL, or raise max_body if the issuer's answers are that "
            "large"
        )
    if isinstance(exc, requests.Timeout):
        return TokenFetchError(
            f"{what} timed out ({kind}, timeout={timeout}); the issuer is slow or "
            "unreachable: check the URL and the issuer's health"
        )
    if isinstance(exc, requests.exceptions.SSLError):
        return TokenFetchError(
            f"{what} failed: TLS error ({kind}); check the issuer's certificate and the CA "
            "bundle (verify=, REQUESTS_CA_BUNDLE)"
        )
    if isinstance(exc, requests.RequestException | OSError | ValueError) or (
            type(exc).__module__.startswith(("urllib3", "zlib", "http"))):
        return TokenFetchError(
            f"{what} failed: network error ({network_reason(exc)}); check the URL and that "
            "this host can reach the issuer"
        )
    return exc


def network_reason(exc: BaseException) -> str:
    """The exception's type and, when found, the operating system's words for the failure.

    ``requests`` buries the cause ("Connection refused", "Name or service not known") a few
    levels down. Only an ``OSError``'s ``strerror`` is shown: the operating system's text,
    never the exception's own, which may repeat the URL's query or the issuer's bytes.
    """
    seen: list[BaseException] = []
    todo: list[object] = [exc]
    while todo and len(seen) < 8:
        item = todo.pop(0)
        if not isinstance(item, BaseException) or any(item is s for s in seen):
            continue
        seen.append(item)
        if isinstance(item, OSError) and isinstance(item.strerror, str) and item.strerror:
            return f"{type(exc).__name__}: {' '.join(item.strerror.split())[:80]}"
        todo.extend([getattr(item, "reason", None), item.__cause__, item.__context__,
                     *item.args[:1]])
    return type(exc).__name__


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
        return "the issuer is rate limiting; ask less often or try again later"
    if status == 408 or status == 425:
        return "the issuer gave up waiting; try again later"
    if 500 <= status < 600:
        return "the issuer failed; try again later"
    if status in _REJECTED or 400 <= status < 500:
        return "the issuer refused the request; asking again will not help"
    return "unexpected answer from the issuer"
