"""The built-in token sources: Clerk's Backend API and OAuth2 client credentials.

Each is a callable ``source(request) -> Token`` (SPEC section 6). They know HTTP and nothing
about caching; :mod:`swr_token._http` turns every failure into a typed error.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypedDict, Unpack
from urllib.parse import quote, urlsplit

import requests

from ._assertion import (
    ASSERTION_TYPE,
    DEFAULT_ASSERTION_LIFETIME,
    SECRET_ALGORITHMS,
    ClientAssertion,
    check_key_algorithm,
    load_private_key,
    public_key_thumbprint,
)
from ._errors import ConfigurationError, InvalidTokenError, TokenRejectedError
from ._http import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_RETRY_AFTER,
    DEFAULT_TIMEOUT,
    DEFAULT_TOTAL_TIMEOUT,
    HintFor,
    Transport,
    check_url,
    display_url,
    generic_hint,
)
from ._identity import clerk_identity, oauth2_identity
from ._request import TokenRequest
from ._token import Token

__all__ = ["ClerkBackendSource", "OAuth2ClientCredentialsSource"]

AuthMethod = Literal["client_secret_basic", "client_secret_post", "client_secret_jwt",
                     "private_key_jwt"]
_AUTH_METHODS: tuple[AuthMethod, ...] = ("client_secret_basic", "client_secret_post",
                                         "client_secret_jwt", "private_key_jwt")


def _credential(value: object, *, name: str, how: str, token68: bool = False) -> str:
    """A credential, refused if empty or holding control characters (a stray newline).

    A bearer secret (``token68``) is also stripped and may hold no inner whitespace; OAuth2
    client credentials are form-urlencoded on the wire, so any other character is fine.
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{name} is missing or empty; {how}")
    if token68:
        value = value.strip()
    if any(ord(ch) < 32 or ord(ch) == 127 or (token68 and ch.isspace()) for ch in value):
        # Never echo it: the message would carry the secret.
        raise ConfigurationError(f"{name} contains whitespace or control characters; {how}")
    return value


def _path_part(value: str, name: str) -> str:
    """``value`` as one URL path segment that can never change the path.

    ``.``, ``..``, empty values, ``/``, ``\\`` and any ``%`` (``%2e``, ``%2f``: a proxy or
    server may decode them) are refused with :class:`TokenRejectedError` before anything is
    sent, as are control characters; anything else is percent-encoded.
    """
    if not value or value.strip(".") == "" or any(
            ch in "/\\%" or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise TokenRejectedError(
            f"ClerkBackendSource refused the {name}: it is empty, only dots, or holds '/', "
            "'\\', '%' or a control character, which could change the request's path; pass "
            f"the {name} exactly as Clerk gave it")
    return quote(value, safe="")


def _reject(source: str, part: str, why: str) -> TokenRejectedError:
    return TokenRejectedError(f"{source} cannot honour {part}: {why}")


def _token(
    raw: str, *, expires_in: float | None, server_time: float | None, what: str, status: int,
    unknown_lifetime: str,
) -> Token:
    try:
        return Token(raw, expires_in=expires_in, server_time=server_time)
    except InvalidTokenError as exc:
        if "not a sane" in str(exc) or "must be a finite" in str(exc):
            # A number out of range (exp, iat, expires_in): say which, from Token's check.
            raise InvalidTokenError(f"{what} got an unusable token: {exc}",
                                    status=status) from None
        # Token's own advice is for hand-written sources; say what is wrong with the answer.
        raise InvalidTokenError(
            f"{what} got a token whose lifetime is unknown: {unknown_lifetime}", status=status
        ) from exc


class _HttpOptions(TypedDict):
    """The HTTP arguments every built-in source takes and hands to its :class:`Transport`."""

    session: requests.Session | None
    timeout: float | tuple[float, float]
    verify: bool | str
    total_timeout: float
    max_body: int
    max_retry_after: float


def _secret_from_env(value: str | None, *, env: str, what: str, how: str) -> str:
    """``value``, or else the environment variable ``env``, as a bearer secret (``what``
    names it in messages, never its value)."""
    if value is None:
        value = os.environ.get(env)
        if not value:
            raise ConfigurationError(f"no {what} was given; {how}")
    return _credential(value, name=f"the {what}", how=how, token68=True)


class _HttpSource:
    """What the built-in sources share: one transport (session, timeouts, TLS)."""

    __slots__ = ("_transport",)
    _transport: Transport

    def __init__(self, *, secrets: Iterable[str], hint: HintFor,
                 **http: Unpack[_HttpOptions]) -> None:
        # Last in each source's __init__: its own arguments are checked (and their errors
        # raised) before the HTTP ones, and ``hint`` may read what they set.
        self._transport = Transport(secrets=secrets, hint=hint, **http)

    @property
    def session(self) -> requests.Session:
        """The ``requests.Session`` this source sends through."""
        return self._transport.session

    def close(self) -> None:
        """Close the HTTP session if this source made it."""
        self._transport.close()


class ClerkBackendSource(_HttpSource):
    """Session tokens from Clerk's Backend API.

    ``POST {api_url}/sessions/{session_id}/tokens[/{template}]`` with the instance's secret key
    (``secret_key=`` or ``CLERK_SECRET_KEY``). Takes no organization and no audience: a request
    with either, or without a session id, is refused before anything is sent.
    ``total_timeout`` (10 s, the whole attempt), ``max_body`` (1 MiB) and ``max_retry_after``
    (60 s) bound what a misbehaving issuer can cost (README: "Limits and hostile input").
    """

    __slots__ = ("_api_url", "_expires_in_seconds", "_secret_key")

    def __init__(
        self,
        secret_key: str | None = None,
        *,
        api_url: str = "https://api.clerk.com/v1",
        session: requests.Session | None = None,
        expires_in_seconds: int | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        verify: bool | str = True,
        total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
        max_body: int = DEFAULT_MAX_BODY,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
    ) -> None:
        self._secret_key = _secret_from_env(
            secret_key, env="CLERK_SECRET_KEY", what="Clerk secret key",
            how="pass secret_key= or set the CLERK_SECRET_KEY environment variable")
        self._api_url = check_url(api_url, name="api_url").rstrip("/")
        if expires_in_seconds is not None and (
            isinstance(expires_in_seconds, bool)
            or not isinstance(expires_in_seconds, int)
            or expires_in_seconds <= 0
        ):
            raise ConfigurationError("expires_in_seconds must be a positive whole number or None")
        self._expires_in_seconds = expires_in_seconds
        super().__init__(
            secrets=(self._secret_key,), hint=self._hint, session=session, timeout=timeout,
            verify=verify, total_timeout=total_timeout, max_body=max_body,
            max_retry_after=max_retry_after,
        )

    def __call__(self, request: TokenRequest) -> Token:
        """Mint a token for ``request.session_id`` (and ``request.template``, if any)."""
        name = "ClerkBackendSource"
        if not request.session_id:
            raise _reject(name, "a request without a session_id",
                          "Clerk mints tokens per session; pass session_id=")
        if request.organization_id is not None:
            raise _reject(name, "organization_id",
                          "the token carries the session's active organization; set that on "
                          "the session in Clerk, or use a key without organization_id")
        if request.audience is not None:
            raise _reject(name, "audience",
                          "Clerk's session tokens take no audience; use a JWT template that "
                          "sets 'aud' and pass template=")
        url = f"{self._api_url}/sessions/{_path_part(request.session_id, 'session_id')}/tokens"
        if request.template is not None:
            url += f"/{_path_part(request.template, 'template')}"
        what = f"Clerk token request for {request.describe()} to {display_url(url)}"
        body = None
        if self._expires_in_seconds is not None:
            body = {"expires_in_seconds": self._expires_in_seconds}
        status, answer, server_time = self._transport.post(
            url, what=what, authorization=f"Bearer {self._secret_key}", json_body=body,
        )
        raw = answer.get("jwt")
        if not isinstance(raw, str) or not raw:
            raise InvalidTokenError(
                f"{what} got HTTP {status} without a 'jwt' string in the answer; "
                "check api_url points at Clerk's Backend API (…/v1)",
                status=status,
            )
        return _token(
            raw, expires_in=None, server_time=server_time, what=what, status=status,
            unknown_lifetime="the 'jwt' is not a JWT with a numeric 'exp' claim; check that "
            "api_url points at Clerk's Backend API",
        )

    @property
    def identity(self) -> str:
        """A stable, non-secret name for this source (API URL and a keyed hash of the
        secret key): shared stores keep each source's tokens apart by it."""
        return clerk_identity(self._api_url, self._secret_key)

    def __repr__(self) -> str:
        return f"ClerkBackendSource(api_url={display_url(self._api_url)!r}, secret_key='***')"

    def _hint(self, status: int, code: str | None) -> str:
        """What to change after a failed answer: the words name this source's arguments."""
        if status in (401, 403):
            return ("check the secret key (secret_key= or CLERK_SECRET_KEY) and that it "
                    "belongs to the Clerk instance that owns the session")
        if status == 404:
            if not urlsplit(self._api_url).path.endswith("/v1"):
                # Without the version prefix every path is unknown: not an ended session.
                return (f"api_url {display_url(self._api_url)!r} does not end in /v1; use "
                        "Clerk's Backend API URL, https://api.clerk.com/v1")
            if code != "resource_not_found":
                return ("nothing at this URL knows the request (no Clerk error code in the "
                        "answer); check api_url: Clerk's Backend API is "
                        "https://api.clerk.com/v1")
            return ("the session was not found or has ended (or the JWT template does not "
                    "exist); sign the user in again or check the template name")
        if status in (400, 422):
            asked = ("the session id, the template name and expires_in_seconds"
                     if self._expires_in_seconds is not None
                     else "the session id and the template name")
            return f"Clerk refused the request as malformed; check {asked}"
        return generic_hint(status, code)


class OAuth2ClientCredentialsSource(_HttpSource):
    """Access tokens from an OAuth2 token endpoint with the client-credentials grant.

    RFC 6749 section 4.4. Client authentication (``auth_method``): ``client_secret_basic``
    (the default with a secret: HTTP Basic, id and secret form-urlencoded per section 2.3.1),
    ``client_secret_post``, ``client_secret_jwt`` (an HS256 assertion over the secret) or
    ``private_key_jwt`` (the default with ``private_key=``: an assertion signed RS256, PS256 or
    ES256; RFC 7523 section 2.2). ``resource`` (RFC 8707, one or more absolute URIs) and
    ``audience`` say which API the token is for; the request's ``audience`` overrides the
    configured one. A ``session_id``, ``template`` or ``organization_id`` has no meaning for
    this grant and is refused before anything is sent. ``total_timeout``, ``max_body`` and
    ``max_retry_after`` bound each attempt as for :class:`ClerkBackendSource`.
    """

    __slots__ = (
        "_assertion", "_audience", "_auth_method", "_basic", "_client_id", "_client_secret",
        "_credential_id", "_extra", "_resource", "_scope", "_token_url",
    )

    _RESERVED = frozenset({"grant_type", "client_id", "client_secret", "scope", "audience",
                           "client_assertion", "client_assertion_type"})

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str | None = None,
        *,
        scope: str | Iterable[str] | None = None,
        audience: str | None = None,
        resource: str | Iterable[str] | None = None,
        session: requests.Session | None = None,
        auth_method: AuthMethod | None = None,
        private_key: Any = None,
        key_id: str | None = None,
        signing_algorithm: str | None = None,
        assertion_lifetime: int = DEFAULT_ASSERTION_LIFETIME,
        assertion_audience: str | None = None,
        extra_params: Mapping[str, str] | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        verify: bool | str = True,
        total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
        max_body: int = DEFAULT_MAX_BODY,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
    ) -> None:
        how = "pass the client credentials registered with the authorization server"
        self._token_url = check_url(token_url, name="token_url")
        self._client_id = _credential(client_id, name="client_id", how=how)
        auth_method = _auth_method_for(auth_method, client_secret=client_secret,
                                       private_key=private_key)
        self._auth_method: AuthMethod = auth_method
        _refuse_assertion_options(
            auth_method, key_id=key_id, signing_algorithm=signing_algorithm,
            assertion_audience=assertion_audience, assertion_lifetime=assertion_lifetime)
        self._client_secret = _client_secret_for(auth_method, client_secret, private_key,
                                                 how=how)
        audience_of_assertion = check_url(
            assertion_audience or self._token_url, name="assertion_audience")
        self._assertion, self._basic, self._credential_id = _client_authentication(
            auth_method, self._client_id, self._client_secret, private_key,
            key_id=key_id, signing_algorithm=signing_algorithm, lifetime=assertion_lifetime,
            audience=audience_of_assertion)
        self._scope = _scope_text(scope)
        self._audience = audience or None
        self._resource = _resources(resource)
        self._extra = self._check_extra(extra_params)
        super().__init__(
            secrets=self._secrets(),
            hint={"private_key_jwt": _assertion_hint, "client_secret_jwt": _secret_jwt_hint}.get(
                auth_method, _oauth2_hint),
            session=session, timeout=timeout, verify=verify, total_timeout=total_timeout,
            max_body=max_body, max_retry_after=max_retry_after,
        )

    def _check_extra(self, extra_params: Mapping[str, str] | None) -> dict[str, str]:
        """A copy of ``extra_params``, refused if it sets what an argument of ours sets."""
        extra = dict(extra_params or {})
        # extra_params={"resource": ...} predates resource=; both at once would be ambiguous.
        reserved = self._RESERVED | ({"resource"} if self._resource else set())
        clash = sorted(reserved.intersection(extra))
        if clash:
            raise ConfigurationError(
                f"extra_params may not set {', '.join(clash)}; use the matching argument"
            )
        return extra

    def _secrets(self) -> list[str]:
        """What the transport scrubs from messages: the secret and the Basic credentials."""
        secrets_ = [s for s in (self._client_secret,) if s]
        if self._basic is not None:
            secrets_.append(self._basic.split(" ", 1)[1])
        return secrets_

    def __call__(self, request: TokenRequest) -> Token:
        """Fetch an access token for the configured scope and ``request.audience``."""
        _refuse_non_grant_parts(request)
        form = self._grant_form(request.audience)
        authorization = self._authenticate(form)
        what = f"OAuth2 token request to {display_url(self._token_url)}"
        if request.audience is not None:
            what += f" for {request.describe()}"
        status, answer, server_time = self._transport.post(
            self._token_url, what=what, authorization=authorization, data=form
        )
        return _access_token(answer, what=what, status=status, server_time=server_time)

    def _grant_form(self, audience: str | None) -> dict[str, str | list[str]]:
        """The grant's form fields (before client authentication); ``audience`` is the
        key's, else the configured one."""
        form: dict[str, str | list[str]] = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        audience = audience if audience is not None else self._audience
        if audience:
            form["audience"] = audience
        if self._resource:
            form["resource"] = list(self._resource)  # repeated: resource=a&resource=b
        form.update(self._extra)
        return form

    def _authenticate(self, form: dict[str, str | list[str]]) -> str | None:
        """Add the client's credentials to ``form`` for the configured method; the
        ``Authorization`` header to send (Basic), or None."""
        if self._basic is not None:
            return self._basic
        form["client_id"] = self._client_id
        if self._assertion is not None:
            # A new assertion (new jti) per request and per retry: servers refuse replays.
            form["client_assertion_type"] = ASSERTION_TYPE
            form["client_assertion"] = self._assertion.make(time.time())
        else:
            assert self._client_secret is not None
            form["client_secret"] = self._client_secret
        return None

    @property
    def identity(self) -> str:
        """A stable, non-secret name for this source (token URL, client id, scope, audience,
        resources and a keyed hash of the client secret, or the public key's thumbprint):
        shared stores keep sources apart by it."""
        return oauth2_identity(self._token_url, self._client_id, self._credential_id,
                               scope=self._scope, audience=self._audience,
                               resource=self._resource)

    def __repr__(self) -> str:
        credential = "client_secret='***'" if self._client_secret else "private_key='***'"
        return (
            f"OAuth2ClientCredentialsSource(token_url={display_url(self._token_url)!r}, "
            f"client_id={self._client_id!r}, {credential}, "
            f"auth_method={self._auth_method!r})"
        )


def _refuse_non_grant_parts(request: TokenRequest) -> None:
    """The client-credentials grant has only an audience: any other key part is refused."""
    name = "OAuth2ClientCredentialsSource"
    why = "the client-credentials grant has no sessions, templates or organizations"
    for part, value in (
        ("session_id", request.session_id),
        ("template", request.template),
        ("organization_id", request.organization_id),
    ):
        if value is not None:
            raise _reject(name, part, f"{why}; use a key with only audience= (or none)")


def _auth_method_for(auth_method: AuthMethod | None, *, client_secret: str | None,
                     private_key: object) -> AuthMethod:
    """The client authentication asked for (by default, the one the credential given is
    for); refused when the credential given is for another."""
    if auth_method is None:
        auth_method = "private_key_jwt" if private_key is not None else "client_secret_basic"
    if auth_method not in _AUTH_METHODS:
        raise ConfigurationError(f"auth_method must be one of {', '.join(_AUTH_METHODS)}")
    uses_key = auth_method == "private_key_jwt"
    if uses_key and client_secret is not None:
        raise ConfigurationError(
            "private_key_jwt authenticates with the private key; leave client_secret out")
    if not uses_key and private_key is not None:
        raise ConfigurationError(
            f"private_key is for auth_method='private_key_jwt', not {auth_method!r}")
    return auth_method


def _refuse_assertion_options(
    auth_method: AuthMethod, *, key_id: str | None, signing_algorithm: str | None,
    assertion_audience: str | None, assertion_lifetime: int,
) -> None:
    """The assertion's options given to a method that sends no assertion are a mistake."""
    if auth_method in ("private_key_jwt", "client_secret_jwt"):
        return
    if (key_id is not None or signing_algorithm is not None or assertion_audience is not None
            or assertion_lifetime != DEFAULT_ASSERTION_LIFETIME):
        raise ConfigurationError(
            "key_id, signing_algorithm, assertion_audience and assertion_lifetime are for "
            "auth_method='private_key_jwt' or 'client_secret_jwt'")


def _client_secret_for(auth_method: AuthMethod, client_secret: str | None,
                       private_key: object, *, how: str) -> str | None:
    """The checked client secret (None for ``private_key_jwt``, which needs the key)."""
    if auth_method == "private_key_jwt":
        if private_key is None:
            raise ConfigurationError(
                "auth_method='private_key_jwt' needs private_key= (PEM text, a path, or a "
                "cryptography key object)")
        return None
    if client_secret is None:
        raise ConfigurationError(
            f"client_secret is missing; {how}, or use private_key= for private_key_jwt")
    return _credential(client_secret, name="client_secret", how=how)


def _client_authentication(
    auth_method: AuthMethod, client_id: str, client_secret: str | None, private_key: object,
    *, key_id: str | None, signing_algorithm: str | None, lifetime: int, audience: str,
) -> tuple[ClientAssertion | None, str | None, str]:
    """How the client proves itself: ``(assertion maker, Basic header, credential id)``; the
    credential id (the secret, or the key's algorithm and thumbprint) feeds the identity."""
    if auth_method == "private_key_jwt":
        key = load_private_key(private_key)
        algorithm = check_key_algorithm(key, signing_algorithm)
        assertion = ClientAssertion(
            client_id=client_id, audience=audience, algorithm=algorithm, key_id=key_id,
            lifetime=lifetime, private_key=key)
        return assertion, None, f"{algorithm}:{public_key_thumbprint(key)}"
    assert client_secret is not None
    if auth_method == "client_secret_jwt":
        if signing_algorithm not in (None, *SECRET_ALGORITHMS):
            raise ConfigurationError(
                f"client_secret_jwt signs with {', '.join(SECRET_ALGORITHMS)}; for "
                f"{signing_algorithm!r} use private_key_jwt with a private key")
        assertion = ClientAssertion(
            client_id=client_id, audience=audience, algorithm="HS256", key_id=key_id,
            lifetime=lifetime, secret=client_secret)
        return assertion, None, client_secret
    if auth_method == "client_secret_basic":
        return None, _basic_authorization(client_id, client_secret), client_secret
    return None, None, client_secret  # client_secret_post: sent in the form


def _basic_authorization(client_id: str, client_secret: str) -> str:
    """The ``Authorization`` value for ``client_secret_basic``.

    RFC 6749 section 2.3.1 / Appendix B: form-urlencoded, with a space as %20 (not "+"), so
    servers that decode with unquote and those that decode with unquote_plus both read the
    same id and secret.
    """
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def _scope_text(scope: str | Iterable[str] | None) -> str | None:
    """``scope`` as the space-separated string sent, or None for none."""
    if scope is not None and not isinstance(scope, str):
        scope = " ".join(scope)
    return scope or None


def _resources(resource: str | Iterable[str] | None) -> tuple[str, ...]:
    """RFC 8707 resource indicators: absolute URIs without a fragment, in order, once each."""
    if resource is None:
        return ()
    values = [resource] if isinstance(resource, str) else list(resource)
    seen: dict[str, None] = {}
    for value in values:
        seen.setdefault(_resource(value), None)
    return tuple(seen)


def _resource(value: object) -> str:
    """One resource indicator, checked: an absolute URI without whitespace or fragment."""
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ConfigurationError(
            "resource must be an absolute URI (or a list of them) without whitespace, "
            "e.g. 'https://api.example.com/'")
    parts = urlsplit(value)
    if not parts.scheme or parts.fragment or "#" in value:
        raise ConfigurationError(
            f"resource {value[:100]!r} is not an absolute URI without a fragment "
            "(RFC 8707 section 2); e.g. 'https://api.example.com/'")
    return value


def _access_token(
    answer: Mapping[str, Any], *, what: str, status: int, server_time: float | None
) -> Token:
    raw = answer.get("access_token")
    if not isinstance(raw, str) or not raw:
        raise InvalidTokenError(
            f"{what} got HTTP {status} without an 'access_token' string in the answer; "
            "check token_url points at the token endpoint",
            status=status,
        )
    token_type = answer.get("token_type")
    if token_type is not None and str(token_type).lower() != "bearer":
        raise InvalidTokenError(
            f"{what} got a token of type {str(token_type)[:40]!r}; only Bearer tokens are "
            "supported",
            status=status,
        )
    expires_in = _response_seconds(answer.get("expires_in"))
    if expires_in is None and answer.get("expires_in") is not None:
        raise InvalidTokenError(
            f"{what} got an expires_in that is not a number of seconds", status=status
        )
    return _token(
        raw, expires_in=expires_in, server_time=server_time, what=what, status=status,
        unknown_lifetime="the access token is not a JWT with a numeric 'exp' and the answer "
        "has no expires_in; configure the provider to send expires_in",
    )


def _response_seconds(value: object) -> float | None:
    """An answer's ``expires_in`` as a number, or None if it is none; some providers send
    it as a numeric string.

    It parses what an issuer sent, not an option (that is :func:`swr_token._checks.seconds`),
    and does not range-check it: :class:`Token` refuses what is not finite, positive and sane
    (converting a 400-digit integer to float would raise OverflowError, so it is not).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value[:64])
        except ValueError:
            return None
    if isinstance(value, int | float):
        return value
    return None


def _oauth2_hint(status: int, code: str | None) -> str:
    by_code = {
        "invalid_client": "check client_id and client_secret (and auth_method: some servers "
        "want 'client_secret_post')",
        "unauthorized_client": "this client may not use the client_credentials grant; "
        "allow it at the authorization server",
        "unsupported_grant_type": "the server does not offer the client_credentials grant",
        "invalid_scope": "check the scope (scope=): the client may not ask for it",
        "invalid_target": "check the audience (audience=) and resource (resource=): the server "
        "does not know them or the client may not ask for them",
    }
    if code in by_code:
        return by_code[code]
    if status in (401, 403):
        return ("check client_id and client_secret (and auth_method: some servers want "
                "'client_secret_post'), and that the client may ask for this scope (scope=) "
                "and audience (audience=)")
    if status == 404:
        return "the token endpoint was not found; check token_url"
    if status in (400, 422):
        return ("the server refused the request as malformed; check the scope (scope=), "
                "the audience (audience=) and the resource (resource=)")
    return generic_hint(status, code)


#: Codes whose hint does not depend on how the client authenticated.
_GRANT_CODES = frozenset({"unauthorized_client", "unsupported_grant_type", "invalid_scope",
                          "invalid_target"})


def _assertion_hint(status: int, code: str | None) -> str:
    """Hints for ``private_key_jwt``: the credential is a key the server must know."""
    if code == "invalid_client" or (status in (401, 403) and code not in _GRANT_CODES):
        return ("check client_id, the private key and key_id: the server must have the public "
                "key registered for this client (with that kid), accept the signing_algorithm, "
                "and take the token endpoint (or assertion_audience) as the assertion's "
                "audience; a clock far off also fails the assertion's iat/exp")
    return _oauth2_hint(status, code)


def _secret_jwt_hint(status: int, code: str | None) -> str:
    if code == "invalid_client" or (status in (401, 403) and code not in _GRANT_CODES):
        return ("check client_id and client_secret, that the client is registered for "
                "client_secret_jwt, and that the server takes the token endpoint (or "
                "assertion_audience) as the assertion's audience")
    return _oauth2_hint(status, code)
