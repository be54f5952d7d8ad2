"""The built-in HTTP sources against LocalIssuer over real loopback HTTP (no mocks)."""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import os
import select
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote_plus

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from swr_token._errors import (
    ConfigurationError,
    InvalidTokenError,
    TokenError,
    TokenFetchError,
    TokenRejectedError,
)
from swr_token._http import parse_http_date, parse_retry_after
from swr_token._request import TokenRequest
from swr_token._sources import ClerkBackendSource, OAuth2ClientCredentialsSource
from swr_token._token import Token
from swr_token._version import __version__
from swr_token.testing import LocalIssuer

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SECRET = "sk_test_Xq7very_secret_key_value"
CLIENT_SECRET = "cs+very/secret %value:ü"
TIMEOUT = (2.0, 5.0)
SESSION = TokenRequest(session_id="sess_1")
NO_KEY = TokenRequest()

Source = ClerkBackendSource | OAuth2ClientCredentialsSource


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer(private_key=KEY, secret_key=SECRET, client_id="svc client:1",
                     client_secret=CLIENT_SECRET) as iss:
        yield iss


@pytest.fixture
def make(issuer: LocalIssuer) -> Iterator[Callable[..., Source]]:
    """``make("clerk" | "oauth", **options)``: a source pointed at the issuer, closed after."""
    made: list[Source] = []

    def factory(kind: str, **options: Any) -> Source:
        options.setdefault("timeout", TIMEOUT)
        source: Source
        if kind == "clerk":
            source = ClerkBackendSource(options.pop("secret_key", SECRET),
                                        api_url=issuer.clerk_api_url, **options)
        else:
            source = OAuth2ClientCredentialsSource(
                issuer.token_url, options.pop("client_id", issuer.client_id),
                options.pop("client_secret", CLIENT_SECRET), **options)
        made.append(source)
        return source

    yield factory
    for source in made:
        source.close()


def request_for(kind: str) -> TokenRequest:
    return SESSION if kind == "clerk" else NO_KEY


def receive(token: Token, **bounds: float) -> Token:
    now = time.time()
    return token.received(deadline_now=time.monotonic(), deadline_clock=time.monotonic,
                          wall_now=now, started_wall_now=now, **bounds)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (SECRET, CLIENT_SECRET, "very_secret", "very/secret"):
            assert secret not in text


KINDS = ["clerk", "oauth"]


# -- success --------------------------------------------------------------------------------


def test_clerk_request_shape(issuer: LocalIssuer, make: Callable[..., Source]) -> None:
    token = make("clerk")(SESSION)
    assert token.claims["sid"] == "sess_1"
    sent = issuer.requests("clerk")[0]
    assert sent.path == "/v1/sessions/sess_1/tokens"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert sent.headers["user-agent"] == f"swr_token/{__version__}"
    assert sent.body == b""


def test_clerk_template_and_quoting(issuer: LocalIssuer, make: Callable[..., Source]) -> None:
    source = make("clerk")
    source(TokenRequest(session_id="sess_1", template="supabase"))
    source(TokenRequest(session_id="a?b#c", template="x y"))
    paths = [r.path for r in issuer.requests("clerk")]
    assert paths == ["/v1/sessions/sess_1/tokens/supabase", "/v1/sessions/a%3Fb%23c/tokens/x%20y"]
    with pytest.raises(TokenRejectedError, match="could change the request's path"):
        source(TokenRequest(session_id="a/../b"))  # refused now: see test_hostile_wire.py


def test_clerk_expires_in_seconds(issuer: LocalIssuer, make: Callable[..., Source]) -> None:
    token = receive(make("clerk", expires_in_seconds=30)(SESSION))
    assert token.lifetime == 30
    assert json.loads(issuer.requests("clerk")[0].body) == {"expires_in_seconds": 30}
    with pytest.raises(ConfigurationError):
        make("clerk", expires_in_seconds=0)


def test_clerk_secret_from_environment(
    issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLERK_SECRET_KEY", SECRET)
    source = ClerkBackendSource(api_url=issuer.clerk_api_url)
    assert source(SESSION).claims["sid"] == "sess_1"
    monkeypatch.delenv("CLERK_SECRET_KEY")
    with pytest.raises(ConfigurationError, match="CLERK_SECRET_KEY"):
        ClerkBackendSource(api_url=issuer.clerk_api_url)
    with pytest.raises(ConfigurationError, match="whitespace") as caught:
        ClerkBackendSource("sk_test_a b", api_url=issuer.clerk_api_url)
    assert "sk_test_a" not in str(caught.value)


@pytest.mark.parametrize(("request_", "part"), [
    (TokenRequest(), "session_id"),
    (TokenRequest(session_id=""), "session_id"),
    (TokenRequest(session_id="sess_1", organization_id="org_1"), "organization_id"),
    (TokenRequest(session_id="sess_1", audience="api"), "audience"),
])
def test_clerk_refuses_parts_before_any_request(
    issuer: LocalIssuer, make: Callable[..., Source], request_: TokenRequest, part: str
) -> None:
    with pytest.raises(TokenRejectedError, match=part):
        make("clerk")(request_)
    assert issuer.request_count() == 0


@pytest.mark.parametrize(("request_", "part"), [
    (TokenRequest(session_id="sess_1"), "session_id"),
    (TokenRequest(template="t"), "template"),
    (TokenRequest(organization_id="org_1"), "organization_id"),
])
def test_oauth_refuses_parts_before_any_request(
    issuer: LocalIssuer, make: Callable[..., Source], request_: TokenRequest, part: str
) -> None:
    with pytest.raises(TokenRejectedError, match=part):
        make("oauth")(request_)
    assert issuer.request_count() == 0


def test_oauth_basic_auth_is_form_urlencoded(
    issuer: LocalIssuer, make: Callable[..., Source]
) -> None:
    make("oauth")(NO_KEY)
    sent = issuer.requests("oauth")[0]
    scheme, _, encoded = sent.headers["authorization"].partition(" ")
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    assert scheme == "Basic"
    assert ":" not in user  # RFC 6749 2.3.1: encoded before joining
    assert (unquote_plus(user), unquote_plus(password)) == ("svc client:1", CLIENT_SECRET)
    assert sent.form() == {"grant_type": "client_credentials"}
    assert sent.headers["user-agent"] == f"swr_token/{__version__}"


def test_oauth_client_secret_post(issuer: LocalIssuer, make: Callable[..., Source]) -> None:
    make("oauth", auth_method="client_secret_post")(NO_KEY)
    sent = issuer.requests("oauth")[0]
    assert "authorization" not in sent.headers
    assert sent.form() == {"grant_type": "client_credentials", "client_id": "svc client:1",
                           "client_secret": CLIENT_SECRET}
    with pytest.raises(ConfigurationError, match="auth_method"):
        make("oauth", auth_method="tls_client_auth")


def test_oauth_scope_audience_and_override(
    issuer: LocalIssuer, make: Callable[..., Source]
) -> None:
    source = make("oauth", scope=["read", "write"], audience="https://a.example",
                  extra_params={"resource": "https://r.example"})
    configured = source(NO_KEY)
    overridden = source(TokenRequest(audience="https://b.example"))
    assert (configured.claims["aud"], configured.claims["scope"]) == (
        "https://a.example", "read write")
    assert overridden.claims["aud"] == "https://b.example"
    assert issuer.requests("oauth")[0].form()["resource"] == "https://r.example"
    with pytest.raises(ConfigurationError, match="grant_type"):
        make("oauth", extra_params={"grant_type": "password"})


def test_oauth_opaque_token_uses_expires_in(
    issuer: LocalIssuer, make: Callable[..., Source]
) -> None:
    issuer.opaque = True
    issuer.lifetime = 90
    token = receive(make("oauth")(NO_KEY))
    assert token.claims == {}
    assert token.lifetime == 90
    assert 89 <= token.remaining() <= 90


@pytest.mark.parametrize(("expires_in", "lifetime"), [(30, 30), (120, 60)])
def test_oauth_jwt_takes_the_shorter_of_claims_and_expires_in(
    issuer: LocalIssuer, make: Callable[..., Source], expires_in: int, lifetime: int
) -> None:
    issuer.oauth_expires_in = expires_in
    assert receive(make("oauth")(NO_KEY)).lifetime == lifetime


@pytest.mark.parametrize("body", [
    {"access_token": "opaque", "token_type": "bearer", "expires_in": "60"},
    {"access_token": "opaque", "expires_in": 60.5},
])
def test_oauth_lenient_answers(
    issuer: LocalIssuer, make: Callable[..., Source], body: dict[str, object]
) -> None:
    issuer.malformed(body=json.dumps(body))
    assert receive(make("oauth")(NO_KEY)).lifetime == float(body["expires_in"])  # type: ignore


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("status", "error"), [
    (400, TokenRejectedError), (401, TokenRejectedError), (403, TokenRejectedError),
    (404, TokenRejectedError), (422, TokenRejectedError), (405, TokenRejectedError),
    (307, TokenRejectedError), (408, TokenFetchError), (429, TokenFetchError),
    (500, TokenFetchError), (502, TokenFetchError), (503, TokenFetchError),
    (504, TokenFetchError),
])
def test_status_mapping(
    issuer: LocalIssuer, make: Callable[..., Source], kind: str, status: int,
    error: type[TokenError],
) -> None:
    issuer.fail(status, code="issuer_code")
    with pytest.raises(error) as caught:
        make(kind)(request_for(kind))
    assert type(caught.value) is error
    assert (caught.value.status, caught.value.code) == (status, "issuer_code")
    assert f"HTTP {status}" in str(caught.value)
    assert issuer.request_count() == 1  # a source never retries: that is the engine's job


@pytest.mark.parametrize(("kind", "status", "code", "hint"), [
    ("clerk", 401, "authentication_invalid", "secret key"),
    ("clerk", 403, "authorization_invalid", "secret key"),
    ("clerk", 404, "resource_not_found", "session was not found or has ended"),
    ("clerk", 400, "invalid_request", "malformed"),
    ("clerk", 422, "form_param_format_invalid", "malformed"),
    ("oauth", 401, "invalid_client", "client_secret"),
    ("oauth", 403, "access_denied", "client_secret"),
    ("oauth", 404, "not_found", "token_url"),
    ("oauth", 400, "invalid_request", "malformed"),
    ("oauth", 500, "server_error", "try again later"),
])
def test_issuer_codes_and_hints(
    issuer: LocalIssuer, make: Callable[..., Source], kind: str, status: int, code: str,
    hint: str,
) -> None:
    issuer.fail(status)
    with pytest.raises(TokenError) as caught:
        make(kind)(request_for(kind))
    assert caught.value.code == code
    assert hint in str(caught.value)


def test_wrong_clerk_secret(issuer: LocalIssuer, make: Callable[..., Source]) -> None:
    source = make("clerk", secret_key="sk_test_wrong_very_secret")
    with pytest.raises(TokenRejectedError) as caught:
        source(SESSION)
    assert (caught.value.status, caught.value.code) == (401, "authentication_invalid")
    assert "sk_test_wrong" not in str(caught.value) + repr(caught.value) + repr(source)


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
def test_wrong_client_secret(make: Callable[..., Source], auth_method: str) -> None:
    source = make("oauth", client_secret="nope_very_secret", auth_method=auth_method)
    with pytest.raises(TokenRejectedError) as caught:
        source(NO_KEY)
    assert (caught.value.status, caught.value.code) == (401, "invalid_client")
    assert "nope_very_secret" not in str(caught.value) + repr(source)


def test_oauth_invalid_scope_hint(make: Callable[..., Source]) -> None:
    with LocalIssuer(private_key=KEY, client_id="c", client_secret="s",
                     allowed_scopes={"read"}) as iss:
        source = OAuth2ClientCredentialsSource(iss.token_url, "c", "s", scope="admin")
        with pytest.raises(TokenRejectedError, match=r"check the scope \(scope=\)") as caught:
            source(NO_KEY)
        source.close()
    assert (caught.value.status, caught.value.code) == (400, "invalid_scope")


def test_ended_session_is_a_rejection(issuer: LocalIssuer, make: Callable[..., Source]) -> None:
    issuer.end_session("sess_1")
    with pytest.raises(TokenRejectedError, match="ended") as caught:
        make("clerk")(SESSION)
    assert (caught.value.status, caught.value.code) == (404, "resource_not_found")


@pytest.mark.parametrize("kind", KINDS)
def test_retry_after_seconds(
    issuer: LocalIssuer, make: Callable[..., Source], kind: str
) -> None:
    issuer.fail(429, retry_after=7)
    with pytest.raises(TokenFetchError) as caught:
        make(kind)(request_for(kind))
    assert caught.value.retry_after == 7.0
    assert "retry after 7 s" in str(caught.value)


def test_retry_after_date_is_read_on_the_issuers_clock(
    issuer: LocalIssuer, make: Callable[..., Source]
) -> None:
    issuer.clock_offset = 3600  # the issuer's clock is an hour ahead of ours
    issuer.fail(503, retry_after=email.utils.formatdate(issuer.now() + 30, usegmt=True))
    with pytest.raises(TokenFetchError) as caught:
        make("clerk")(SESSION)
    assert caught.value.retry_after is not None
    assert 28 <= caught.value.retry_after <= 31


def test_no_retry_after(issuer: LocalIssuer, make: Callable[..., Source]) -> None:
    issuer.fail(429)
    with pytest.raises(TokenFetchError) as caught:
        make("clerk")(SESSION)
    assert caught.value.retry_after is None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("body", [None, "<html>proxy error</html>", ""])
def test_unparseable_body_is_transient(
    issuer: LocalIssuer, make: Callable[..., Source], kind: str, body: str | None
) -> None:
    issuer.malformed(body=body)
    with pytest.raises(TokenFetchError, match="not JSON") as caught:
        make(kind)(request_for(kind))
    assert caught.value.status == 200


@pytest.mark.parametrize(("kind", "body"), [
    ("clerk", {"object": "token"}),
    ("clerk", {"object": "token", "jwt": ""}),
    ("clerk", {"object": "token", "jwt": 42}),
    ("clerk", {"object": "token", "jwt": "tok_Zq9xW"}),
    ("clerk", []),
    ("oauth", {"token_type": "Bearer", "expires_in": 60}),
    ("oauth", {"access_token": "tok_Zq9xW", "token_type": "Bearer"}),
    ("oauth", {"access_token": "tok_Zq9xW", "token_type": "mac", "expires_in": 60}),
    ("oauth", {"access_token": "tok_Zq9xW", "expires_in": "soon"}),
    ("oauth", {"access_token": "tok_Zq9xW", "expires_in": True}),
])
def test_parsed_body_without_a_usable_token(
    issuer: LocalIssuer, make: Callable[..., Source], kind: str, body: object
) -> None:
    issuer.malformed(body=json.dumps(body))
    with pytest.raises(InvalidTokenError) as caught:
        make(kind)(request_for(kind))
    assert caught.value.status == 200
    assert "Zq9xW" not in str(caught.value)  # the token never appears in the message


def test_jwt_without_exp_is_invalid(issuer: LocalIssuer, make: Callable[..., Source]) -> None:
    no_exp = jwt.encode({"sub": "user_1"}, KEY, algorithm="RS256")
    issuer.malformed(body=json.dumps({"object": "token", "jwt": no_exp}))
    with pytest.raises(InvalidTokenError, match="exp") as caught:
        make("clerk")(SESSION)
    assert no_exp not in str(caught.value)


@pytest.mark.parametrize("kind", KINDS)
def test_reset_connection(issuer: LocalIssuer, make: Callable[..., Source], kind: str) -> None:
    issuer.reset(count=1)
    source = make(kind)
    with pytest.raises(TokenFetchError, match="network error") as caught:
        source(request_for(kind))
    assert isinstance(caught.value.__cause__, requests.ConnectionError)
    assert caught.value.status is None
    assert source(request_for(kind)).raw  # the next request opens a new connection


@pytest.mark.parametrize("kind", KINDS)
def test_hang_hits_the_read_timeout(
    issuer: LocalIssuer, make: Callable[..., Source], kind: str
) -> None:
    issuer.hang(count=1)
    started = time.monotonic()
    with pytest.raises(TokenFetchError, match="timed out") as caught:
        make(kind, timeout=(2.0, 0.2))(request_for(kind))
    assert time.monotonic() - started < 2.0
    assert isinstance(caught.value.__cause__, requests.Timeout)


def test_issuer_down(make: Callable[..., Source], issuer: LocalIssuer) -> None:
    source = make("clerk")
    issuer.stop()
    with pytest.raises(TokenFetchError, match="network error"):
        source(SESSION)


# -- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://api.clerk.com/v1", "http://10.0.0.1/v1",
                                 "http://127.example.com/v1", "ftp://api.clerk.com/v1",
                                 "https:///v1", "api.clerk.com/v1", "https://h:99999/v1"])
def test_plain_http_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="https://") as caught:
        ClerkBackendSource(SECRET, api_url=url)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, TokenError)
    with pytest.raises(ValueError, match="https://"):
        OAuth2ClientCredentialsSource(url, "id", "secret")


def test_plain_http_message_hides_userinfo() -> None:
    with pytest.raises(ConfigurationError) as caught:
        OAuth2ClientCredentialsSource("http://user:pw_very_secret@auth.example/token", "i", "s")
    assert "pw_very_secret" not in str(caught.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/v1", "http://127.8.9.10/v1",
                                 "http://[::1]:8080/v1", "http://localhost/v1",
                                 "https://api.clerk.com/v1"])
def test_loopback_and_https_allowed(url: str) -> None:
    ClerkBackendSource(SECRET, api_url=url).close()


@pytest.mark.parametrize("timeout", [0, -1, (1.0,), (1.0, float("inf")), "3", True])
def test_timeouts_are_checked(timeout: object) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        ClerkBackendSource(SECRET, timeout=timeout)  # type: ignore[arg-type]


def test_verify_false_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="swr_token"):
        ClerkBackendSource(SECRET, verify=False).close()
    assert "verify=False" in caplog.text
    assert_no_secret(caplog.text)


def test_reprs_redact_secrets(issuer: LocalIssuer, make: Callable[..., Source]) -> None:
    clerk, oauth = make("clerk"), make("oauth")
    assert "***" in repr(clerk) and "***" in repr(oauth)
    assert "svc client:1" in repr(oauth)
    assert_no_secret(repr(clerk), repr(oauth), repr(clerk(SESSION)), repr(oauth(NO_KEY)))


def test_no_secret_or_token_in_any_message(
    issuer: LocalIssuer, make: Callable[..., Source]
) -> None:
    """Even an issuer that echoes the secret and a token back has them scrubbed."""
    echo = issuer.mint(sub="echoed")
    body = {"errors": [{"code": "bad", "message": f"key {SECRET} token {echo}"}]}
    issuer.fail(401, body=json.dumps(body), count=1)
    issuer.fail(500, body=json.dumps({"error": "x", "error_description": CLIENT_SECRET}),
                count=1)
    messages = []
    for source, request_ in ((make("clerk"), SESSION), (make("oauth"), NO_KEY)):
        with pytest.raises(TokenError) as caught:
            source(request_)
        messages.append(str(caught.value) + repr(caught.value))
    assert_no_secret(*messages)
    assert echo not in messages[0] and "<token>" in messages[0]


# -- the wire -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_one_connection_for_many_fetches(
    issuer: LocalIssuer, make: Callable[..., Source], kind: str
) -> None:
    source = make(kind)
    raws = {source(request_for(kind)).raw for _ in range(20)}
    assert len(raws) == 20
    assert issuer.connection_count() == 1


def test_users_session_is_used(issuer: LocalIssuer, make: Callable[..., Source]) -> None:
    with requests.Session() as session:
        session.headers["X-Trace"] = "mine"
        source = make("clerk", session=session)
        assert source.session is session
        source(SESSION)
        source.close()  # not ours to close: it keeps working
        source(SESSION)
    sent = issuer.requests("clerk")[0]
    assert sent.headers["x-trace"] == "mine"
    assert sent.headers["user-agent"] == f"swr_token/{__version__}"
    assert issuer.connection_count() == 1


def test_session_auth_and_netrc_cannot_replace_the_credentials(
    issuer: LocalIssuer, make: Callable[..., Source], tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login netrc_user password netrc_password\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with requests.Session() as session:
        session.auth = ("session_user", "session_password")
        make("clerk", session=session)(SESSION)
        make("oauth", session=session, auth_method="client_secret_post")(NO_KEY)
    make("oauth", auth_method="client_secret_post")(NO_KEY)  # our own session reads netrc too
    assert issuer.requests("clerk")[0].headers["authorization"] == f"Bearer {SECRET}"
    assert all("authorization" not in r.headers for r in issuer.requests("oauth"))


@pytest.mark.parametrize("offset", [-3600, 3600])
@pytest.mark.parametrize("kind", KINDS)
def test_issuer_clock_an_hour_off(
    issuer: LocalIssuer, make: Callable[..., Source], kind: str, offset: int
) -> None:
    issuer.clock_offset = offset
    started = time.time()
    token = make(kind)(request_for(kind))
    received = receive(token, max_clock_skew=7200.0)  # a Date an hour off, trusted
    elapsed = time.time() - started
    assert received.lifetime == 60
    # The full lifetime, less the real age and the up to 2 s the whole-second iat and Date add.
    assert 58.0 - elapsed <= received.remaining() <= 60
    assert started + 58.0 <= received.expires_at <= time.time() + 60
    if offset < 0:  # without the Date, our clock would call it long expired
        with pytest.raises(InvalidTokenError):
            receive(Token(token.raw), max_clock_skew=7200.0)
    # By default (max_clock_skew=300) a Date an hour off is not trusted: a token an hour old
    # by the local clock is never served; one from an hour ahead is taken as new, no newer.
    if offset < 0:
        with pytest.raises(InvalidTokenError, match="max_clock_skew=300 s"):
            receive(token)
    else:
        default = receive(token)
        assert default.lifetime == 60 and default.remaining() <= 60
        assert default.issued_at is None and {"date", "iat"} <= default.notes


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_its_own_session(
    issuer: LocalIssuer, make: Callable[..., Source]
) -> None:
    source = make("clerk")
    source(SESSION)
    parent_session = source.session
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            ok = source.session is not parent_session and bool(source(SESSION).raw)
            os.write(write_end, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], 10)
    answer = os.read(read_end, 1) if ready else b""
    os.close(read_end)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert source.session is parent_session
    assert issuer.connection_count() == 2


# -- helpers --------------------------------------------------------------------------------


def test_parse_http_date() -> None:
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 -0000") == 784111777
    assert parse_http_date("garbage") is None
    assert parse_http_date(None) is None


def test_parse_retry_after() -> None:
    assert parse_retry_after("120", server_time=None, cap=600) == 120
    assert parse_retry_after("120", server_time=None) == 60  # the default cap
    assert parse_retry_after("1e9", server_time=None) == 60
    assert parse_retry_after("inf", server_time=None) == 60
    assert parse_retry_after("nan", server_time=None) is None
    assert parse_retry_after("Sun, 06 Nov 2094 08:49:37 GMT", server_time=784111767) == 60
    assert parse_retry_after("0.5", server_time=None) == 0.5
    assert parse_retry_after("-1", server_time=None) is None
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", server_time=784111767) == 10
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", server_time=784111800) == 0
    assert parse_retry_after("soon", server_time=None) is None
