"""``requests`` integration: a bearer-token auth hook bound to a ``TokenClient`` and a key.

The token goes only to the origins it was given (scheme, host, port). A 401 from one of them
invalidates exactly the token that was sent — never a newer one another thread already
fetched — and the request is sent once more with a fresh token when its body can be replayed.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urljoin, urlsplit

import cachetools
import requests
import requests.auth

from ._checks import seconds
from ._client import TokenClient
from ._errors import ConfigurationError
from ._http import check_url
from ._request import TokenRequest

__all__ = ["BearerAuth", "bearer_session"]

_log = logging.getLogger("swr_token")

Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}

#: Default ``min_refresh_interval``: at most one 401-driven refresh per key per 30 s.
MIN_REFRESH_INTERVAL = 30.0


class _RefreshThrottle:
    """When each key of one client last had its token replaced because of a 401.

    Shared by every ``BearerAuth`` on that client (one made per request throttles too);
    bounded (least recently refreshed keys forgotten first) and thread-safe.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: key -> (monotonic time of the last 401-driven refresh, throttling logged since)
        self.last: cachetools.LRUCache[TokenRequest, tuple[float, bool]] = \
            cachetools.LRUCache(10_000)


_throttles: weakref.WeakKeyDictionary[TokenClient, _RefreshThrottle] = \
    weakref.WeakKeyDictionary()
_throttles_lock = threading.Lock()


def _throttle_for(client: TokenClient) -> _RefreshThrottle:
    with _throttles_lock:
        throttle = _throttles.get(client)
        if throttle is None:
            throttle = _throttles[client] = _RefreshThrottle()
        return throttle


def origin_of(url: str) -> Origin | None:
    """``(scheme, host, port)`` of an http(s) URL, default port filled in; None otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def _parse_origin(value: object) -> Origin:
    if not isinstance(value, str):
        raise ConfigurationError(
            f"origins must be strings such as 'https://api.example.com', got "
            f"{type(value).__name__}"
        )
    check_url(value, name="an origin in origins")  # https, or http only to loopback
    parts = urlsplit(value)
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigurationError(
            f"origin {parts.hostname!r} must be only scheme://host[:port], with no path, "
            "query or user-info, e.g. 'https://api.example.com'"
        )
    # Let requests normalise the host as it will on every request (case, IDNA).
    prepared = requests.PreparedRequest()
    prepared.prepare_url(value, None)
    origin = origin_of(prepared.url or "")
    if origin is None:  # pragma: no cover - check_url accepted it
        raise ConfigurationError("origin must be an https:// URL with a host")
    return origin


def _replayable(body: object) -> bool:
    """True if the body is held in memory (can be sent again); a stream cannot."""
    return body is None or isinstance(body, bytes | bytearray | str)


def _show(origin: Origin) -> str:
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" if port == _DEFAULT_PORTS[scheme] else f"{scheme}://{host}:{port}"


def _keep_on_origin(r: requests.Response, template: requests.PreparedRequest,
                    origin: Origin) -> None:
    """Before requests follows redirect ``r``, drop the token from ``template`` (the request
    it copies for the next hop) unless the target is the same origin.

    requests itself strips ``Authorization`` only on a host change, not on, say, an
    ``http://host`` to ``https://host`` redirect; and it never calls the auth hook again.
    """
    if r.is_redirect and origin_of(urljoin(r.url, r.headers["location"])) != origin:
        template.headers.pop("Authorization", None)


class BearerAuth(requests.auth.AuthBase):
    """Sets ``Authorization: Bearer <token>`` from ``client`` on requests to ``origins`` only.

    ``origins``: one origin or several, each ``scheme://host[:port]`` (``https``; plain
    ``http`` only to loopback: 127.0.0.0/8, ::1, localhost). Requests elsewhere are left
    untouched. Redirects keep the token only while they stay on the same origin.

    On a 401 from an allowed origin to a request that carried the token, that token is
    invalidated (``client.invalidate(..., token=sent)``) and the request is sent once more
    with a fresh one, through the same connection adapter, if its body is in memory (none,
    bytes, str, form or JSON; not a generator or a file); the first response is kept in
    ``response.history``. Otherwise, or if the fresh token is the same, the 401 is returned.

    ``min_refresh_interval`` (30 s; 0 turns it off): 401s replace a key's token at most once
    per interval, across every ``BearerAuth`` of the client, so an API that refuses every
    token cannot turn requests into token mints. Inside the interval a 401 on the current
    token is returned as is (no new token, no retry; logged once per interval); a 401 on a
    token older than the client's current one is still retried with the current one.
    Errors getting a token (:class:`TokenError`) propagate from the ``requests`` call.
    Thread-safe: it keeps no per-request state.
    """

    def __init__(
        self,
        client: TokenClient,
        session_id: str | None = None,
        *,
        template: str | None = None,
        organization_id: str | None = None,
        audience: str | None = None,
        origins: str | Iterable[str],
        min_refresh_interval: float = MIN_REFRESH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        interval = seconds("min_refresh_interval", min_refresh_interval,
                           hint="0: no throttle")
        if not (callable(getattr(client, "get_token", None))
                and callable(getattr(client, "invalidate", None))):
            raise ConfigurationError("client must be a swr_token.TokenClient")
        if isinstance(origins, str):
            origins = (origins,)
        parsed = frozenset(_parse_origin(o) for o in origins)
        if not parsed:
            raise ConfigurationError(
                "origins must name at least one origin the token may be sent to, "
                "e.g. origins='https://api.example.com'"
            )
        self._client = client
        self._key = TokenRequest(session_id, template, organization_id, audience)
        self._origins = parsed
        self._interval = interval
        self._clock = clock
        self._throttle = _throttle_for(client) if isinstance(client, TokenClient) \
            else _RefreshThrottle()

    @property
    def origins(self) -> frozenset[Origin]:
        """The ``(scheme, host, port)`` origins the token is sent to."""
        return self._origins

    def _token(self) -> str:
        k = self._key
        return self._client.get_token(k.session_id, template=k.template,
                                      organization_id=k.organization_id, audience=k.audience)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if origin_of(r.url or "") not in self._origins:
            return r
        token = self._token()
        r.headers["Authorization"] = f"Bearer {token}"
        r.hooks["response"].append(functools.partial(self._on_response, token))
        return r

    def _on_response(self, sent: str, r: requests.Response, **kwargs: Any) -> requests.Response:
        request = r.request
        origin = self._origin_sent_to(request, sent)
        if origin is None:
            return r
        if r.is_redirect:
            _keep_on_origin(r, request, origin)
            return r
        if r.status_code != 401:
            return r
        self._drop_refused(sent)
        if not _replayable(request.body):
            return r
        fresh = self._fresh_token(r)
        if fresh == sent or r.connection is None:  # the same token would be refused again
            return r
        return self._retry(r, request, origin, fresh, kwargs)

    def _origin_sent_to(self, request: requests.PreparedRequest, sent: str) -> Origin | None:
        """The origin ``request`` went to if it carried ``sent`` and is allowed, else None."""
        # Hooks travel with copies of the request (redirect hops): act only where our token
        # was actually sent, and only on an allowed origin.
        if request.headers.get("Authorization") != f"Bearer {sent}":
            return None
        origin = origin_of(request.url or "")
        return origin if origin in self._origins else None

    def _fresh_token(self, r: requests.Response) -> str:
        """The key's token after a 401; ``r`` is closed if getting it fails."""
        try:
            return self._token()
        except BaseException:
            r.close()
            raise

    @staticmethod
    def _retry(r: requests.Response, request: requests.PreparedRequest, origin: Origin,
               fresh: str, kwargs: dict[str, Any]) -> requests.Response:
        """Send ``request`` again with ``fresh`` on the connection that answered ``r``."""
        r.content  # noqa: B018 - read it so the connection can be reused for the retry
        r.close()
        retry = request.copy()
        retry.headers["Authorization"] = f"Bearer {fresh}"
        response: requests.Response = r.connection.send(retry, **kwargs)
        response.history = [*r.history, r]
        response.request = retry
        if response.is_redirect:
            # requests builds the next hop from the original request, not from ``retry``:
            # give it the fresh token (not the refused one), or none off this origin.
            request.headers["Authorization"] = f"Bearer {fresh}"
            _keep_on_origin(response, request, origin)
        return response

    def _drop_refused(self, sent: str) -> None:
        """Invalidate the refused token unless the key's last 401-driven refresh was less
        than ``min_refresh_interval`` ago (then the 401 stands and the token stays)."""
        k = self._key
        throttle = self._throttle
        # Under the throttle's lock, so that of two threads refused together one refreshes
        # and the other, finding the token already dropped, waits for that same refresh.
        with throttle.lock:
            now = self._clock()
            last = throttle.last.get(k)
            if last is not None and now - last[0] < self._interval:
                if not last[1]:
                    throttle.last[k] = (last[0], True)
                    _log.warning(
                        "a 401 for %s within %g s of the last 401-driven refresh: returned "
                        "as is, without a new token (BearerAuth min_refresh_interval)",
                        k.describe(), self._interval)
                return
            if self._client.invalidate(k.session_id, template=k.template,
                                       organization_id=k.organization_id,
                                       audience=k.audience, token=sent):
                throttle.last[k] = (now, False)

    def __repr__(self) -> str:
        origins = ", ".join(sorted(_show(o) for o in self._origins))
        return f"<BearerAuth {self._key.describe()} origins=[{origins}]>"


def bearer_session(
    client: TokenClient,
    session_id: str | None = None,
    *,
    template: str | None = None,
    organization_id: str | None = None,
    audience: str | None = None,
    origins: str | Iterable[str],
    session: requests.Session | None = None,
    min_refresh_interval: float = MIN_REFRESH_INTERVAL,
) -> requests.Session:
    """A ``requests.Session`` (``session``, or a new one) whose ``auth`` is a
    :class:`BearerAuth` for the key and ``origins``; any ``auth`` it had is replaced."""
    auth = BearerAuth(client, session_id, template=template, organization_id=organization_id,
                      audience=audience, origins=origins,
                      min_refresh_interval=min_refresh_interval)
    s = session if session is not None else requests.Session()
    s.auth = auth
    return s
