"""Secrets, URLs, paths and Basic credentials against an issuer that echoes and parses oddly.

Secrets never show in any encoding an issuer might echo; a URL is checked as ``requests``
will use it; a path part from a request cannot change the path; Basic credentials survive
servers that decode with ``unquote`` and with ``unquote_plus``.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import pytest

from swr_token import (
    ClerkBackendSource,
    ConfigurationError,
    JWKSVerifier,
    OAuth2ClientCredentialsSource,
    TokenClient,
    TokenRejectedError,
    TokenRequest,
)

from .raw_server import Conn, RawRequest, RawServer, json_answer

CLIENT_ID = "my client+id"
SECRET = 'p@ss w"rd/+:%é\\x'
GOOD = json.dumps({"access_token": "opaque", "token_type": "Bearer", "expires_in": 60}).encode()


def _ok(conn: Conn, request: RawRequest) -> None:
    conn.send(json_answer(200, GOOD))


def _forms(secret: str, basic: str) -> list[str]:
    return [secret, quote(secret, safe=""), quote_plus(secret, safe=""),
            quote(secret, safe="").lower(), json.dumps(secret)[1:-1], basic]


# -- 5. scrubbing -------------------------------------------------------------------------------


def test_a_secret_echoed_in_any_encoding_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen: dict[str, str] = {}

    def echo(conn: Conn, request: RawRequest) -> None:
        basic = request.headers.get("authorization", "").partition(" ")[2]
        seen["basic"] = basic
        echoed = " ".join(_forms(SECRET, basic))
        body = json.dumps({"error": "invalid_client", "error_description": echoed})
        conn.send(json_answer(401, body.encode()))

    with RawServer(echo) as server:
        source = OAuth2ClientCredentialsSource(f"{server.url}/token", CLIENT_ID, SECRET)
        with TokenClient(source) as client, pytest.raises(TokenRejectedError) as caught:
            client.get_token(timeout=5.0)
        source.close()
    chain: list[BaseException] = []
    error: BaseException | None = caught.value
    while error is not None and len(chain) < 10:
        chain.append(error)
        error = error.__cause__ or error.__context__
    texts = [str(e) for e in chain] + [repr(e) for e in chain]
    texts += [r.getMessage() for r in caplog.records]
    texts += [str(r.exc_info[1]) for r in caplog.records if r.exc_info]
    assert "***" in str(caught.value)  # it was echoed, and scrubbed
    for form in _forms(SECRET, seen["basic"]):
        for text in texts:
            assert form not in text, (form, text)


# -- 5. URLs with credentials; 7. URLs as requests parses them -----------------------------

REFUSED = [
    ("http://host.example\\@localhost/token", "backslash"),
    ("http://localhost\\@host.example/token", "backslash"),
    ("https://user:hunter2pw@auth.example/token", "credentials"),
    ("https://hunter2pw@auth.example/token", "credentials"),
    ("https://auth.example/token?client_secret=hunter2pw", "credential-like"),
    ("https://auth.example/token?api_key=hunter2pw&x=1", "credential-like"),
    ("http://localhost /token", "whitespace"),
]


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_a_url_with_tricks_or_credentials_is_refused_without_showing_them(url: str,
                                                                          why: str) -> None:
    makers: list[Any] = [
        lambda: OAuth2ClientCredentialsSource(url, "id", "secret"),
        lambda: ClerkBackendSource("sk_test_x", api_url=url),
        lambda: JWKSVerifier(url),
    ]
    for make in makers:
        with pytest.raises(ConfigurationError, match=why) as caught:
            make()
        assert "hunter2pw" not in str(caught.value)


def test_a_plain_query_is_still_allowed() -> None:
    OAuth2ClientCredentialsSource("https://auth.example/token?api-version=2", "id", "s").close()


# -- 7. path parts from the request --------------------------------------------------------


@pytest.mark.parametrize(("session_id", "template"), [
    (".", None), ("..", None), ("a/b", None), ("a\\b", None), ("%2e%2e", None),
    ("sess_1", ""), ("sess_1", ".."), ("sess_1", "x/../../users"), ("sess_1", "%2F"),
    ("sess_1", "..."), ("sess\n1", None)])
def test_a_path_part_that_could_change_the_path_is_refused_before_sending(
        session_id: str, template: str | None) -> None:
    with RawServer(_ok) as server:
        source = ClerkBackendSource("sk_test_x", api_url=f"{server.url}/v1")
        with pytest.raises(TokenRejectedError, match="could change the request's path"):
            source(TokenRequest(session_id, template=template))
        source.close()
        assert server.requests == []


# -- 6. Basic credentials ------------------------------------------------------------------


def test_basic_credentials_read_right_with_unquote_and_unquote_plus() -> None:
    with RawServer(_ok) as server:
        source = OAuth2ClientCredentialsSource(f"{server.url}/token", CLIENT_ID, SECRET)
        source(TokenRequest())
        source.close()
        header = server.requests[0].headers["authorization"]
    scheme, _, encoded = header.partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    for decode in (unquote, unquote_plus):
        assert (decode(user), decode(password)) == (CLIENT_ID, SECRET)
    assert "+" not in user.replace("%2B", "")  # a space is %20, never "+"
