"""``requests`` integration: a bearer-token auth hook bound to a ``TokenClient`` and a key.

The token goes only to the origins it was given (scheme, host, port). A 401 from one of them
invalidates exactly the token that was sent — never a newer one another thread already
fetched — and the request is sent once more with a fresh token when its body can be replayed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import requests.auth

from ._client import TokenClient
from ._errors import ConfigurationError
from ._http import check_url
from ._request import TokenRequest

__all__ = ["BearerAuth", "bearer_session"]

Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}


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
    ) -> None:
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
        # Hooks travel with copies of the request (redirect hops): act only where our token
        # was actually sent, and only on an allowed origin.
        if request.headers.get("Authorization") != f"Bearer {sent}":
            return r
        origin = origin_of(request.url or "")
        if origin not in self._origins:
            return r
        if r.is_redirect:
            _keep_on_origin(r, request, origin)
            return r
        if r.status_code != 401:
            return r
        k = self._key
        self._client.invalidate(k.session_id, template=k.template,
                                organization_id=k.organization_id, audience=k.audience,
                                token=sent)
        if not _replayable(request.body):
            return r
        try:
            fresh = self._token()
        except BaseException:
            r.close()
            raise
        if fresh == sent or r.connection is None:  # the same token would be refused again
            return r
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
) -> requests.Session:
    """A ``requests.Session`` (``session``, or a new one) whose ``auth`` is a
    :class:`BearerAuth` for the key and ``origins``; any ``auth`` it had is replaced."""
    auth = BearerAuth(client, session_id, template=template, organization_id=organization_id,
                      audience=audience, origins=origins)
    s = session if session is not None else requests.Session()
    s.auth = auth
    return s
