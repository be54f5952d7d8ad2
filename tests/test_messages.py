"""Error messages point at what the user can change, in the words of the interface used."""

from __future__ import annotations

import logging
import re
import socket
from typing import Any

import pytest

from swr_token import (
    ClerkBackendSource,
    InvalidTokenError,
    JWKSVerifier,
    OAuth2ClientCredentialsSource,
    TokenFetchError,
    TokenRejectedError,
    TokenRequest,
)
from swr_token.testing import LocalIssuer

from .test_cli import one_line_error, run  # noqa: F401 - `run`: test_cli's fixture

SESSION = TokenRequest("sess_1")
#: The library's Python argument names: none belongs in a message of the command line.
PYTHON_NAMES = re.compile(r"\b(api_url|token_url|client_id|client_secret|secret_key|"
                          r"auth_method|expires_in_seconds|extra_params|jwks_url)\b|"
                          r"\b(scope|audience|verify|secret_key)=")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- Clerk ----------------------------------------------------------------------------------


def test_clerk_api_url_without_v1_is_not_called_an_ended_session(issuer: LocalIssuer) -> None:
    source = ClerkBackendSource(issuer.secret_key, api_url=issuer.url)
    with pytest.raises(TokenRejectedError) as caught:
        source(SESSION)
    message = str(caught.value)
    assert "ended" not in message and "sign the user in" not in message
    assert f"api_url {issuer.url!r} does not end in /v1" in message
    assert "https://api.clerk.com/v1" in message


def test_clerk_404_without_clerks_error_code_says_check_api_url(issuer: LocalIssuer) -> None:
    source = ClerkBackendSource(issuer.secret_key, api_url=issuer.url + "/proxy/v1")
    with pytest.raises(TokenRejectedError) as caught:
        source(SESSION)
    assert "check api_url" in str(caught.value)
    assert "ended" not in str(caught.value)


def test_clerk_ended_session_is_still_called_one(issuer: LocalIssuer) -> None:
    issuer.end_session("sess_gone")
    source = ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url)
    with pytest.raises(TokenRejectedError) as caught:
        source(TokenRequest("sess_gone"))
    assert "not found or has ended" in str(caught.value)


@pytest.mark.parametrize("fault", [401, 404, 503, "network"])
def test_clerk_errors_show_the_url_they_tried(issuer: LocalIssuer, fault: int | str) -> None:
    base = issuer.clerk_api_url if fault != "network" else f"http://127.0.0.1:{closed_port()}/v1"
    secret = "sk_wrong_secret_value" if fault == 401 else issuer.secret_key
    request = TokenRequest(f"sess_url_{fault}")  # its own session: ended for the 404
    if fault == 404:
        issuer.end_session(request.session_id or "")
    elif fault == 503:
        issuer.fail(503, count=1)
    source = ClerkBackendSource(secret, api_url=base)
    try:
        with pytest.raises((TokenRejectedError, TokenFetchError)) as caught:
            source(request)
    finally:
        source.close()
    assert f"to {base}/sessions/{request.session_id}/tokens " in str(caught.value)
    assert "sk_wrong_secret_value" not in str(caught.value)


def test_unreachable_issuer_names_the_cause_and_promises_no_retry() -> None:
    url = f"http://127.0.0.1:{closed_port()}/oauth/token"
    source = OAuth2ClientCredentialsSource(url, "svc", "secret")
    with pytest.raises(TokenFetchError) as caught:
        source(TokenRequest())
    message = str(caught.value)
    assert "Connection refused" in message, message
    assert "retried" not in message
    assert url in message


# -- the key set ----------------------------------------------------------------------------


class _KeySetIssuer(LocalIssuer):
    """Serves its good key under another kid, plus an entry of its own under the real kid."""

    def __init__(self, bad_entry: dict[str, Any]) -> None:
        super().__init__()
        self.bad_entry = bad_entry

    def jwks(self) -> dict[str, Any]:
        good = {**super().jwks()["keys"][0], "kid": "another-kid"}
        return {"keys": [good, {**self.bad_entry, "kid": self.kid}]}


@pytest.mark.parametrize(("entry", "words"), [
    ({"kty": "RSA", "e": "AQAB"}, "that key cannot be parsed"),  # no modulus
    ({"kty": "oct", "k": "c2VjcmV0"}, "that key is not a public signature key"),
])
def test_a_key_with_the_tokens_kid_that_cannot_be_used_says_so(
        entry: dict[str, Any], words: str) -> None:
    with _KeySetIssuer(entry) as issuer:
        verify = JWKSVerifier(issuer.jwks_url)
        try:
            with pytest.raises(InvalidTokenError) as caught:
                verify(issuer.mint())
        finally:
            verify.close()
    message = str(caught.value)
    assert f"has a key with kid {issuer.kid!r}, but {words}" in message, message
    assert "not signed by this issuer" not in message


# -- the command line -----------------------------------------------------------------------


def _cli_cases(issuer: LocalIssuer) -> list[tuple[list[str], dict[str, str], int, str]]:
    clerk = {"CLERK_SECRET_KEY": issuer.secret_key}
    oauth = {"SWR_TOKEN_CLIENT_SECRET": issuer.client_secret}
    dead = f"http://127.0.0.1:{closed_port()}"
    return [
        (["--session", "sess_1", "--api-url", issuer.url], clerk, 3, "--api-url"),
        (["--session", "sess_1", "--api-url", issuer.clerk_api_url],
         {"CLERK_SECRET_KEY": "sk_wrong"}, 3, "CLERK_SECRET_KEY, --secret-file PATH or "
         "--secret-stdin"),
        (["--session", "sess_1", "--api-url", "http://api.example.com/v1"], clerk, 2,
         "--api-url uses plain http://"),
        (["--session", "sess_1", "--api-url", f"{dead}/v1", "--timeout", "1"], clerk, 4,
         "Connection refused"),
        (["--token-url", "http://auth.example.com/token", "--client-id", "c"], oauth, 2,
         "--token-url uses plain http://"),
        (["--token-url", issuer.token_url, "--client-id", "nobody"], oauth, 3,
         "check --client-id and the client secret"),
        (["--token-url", issuer.url + "/nothing", "--client-id", issuer.client_id], oauth, 3,
         "check --token-url"),
    ]


def test_cli_messages_use_the_flags_the_user_typed(
        run: Any, issuer: LocalIssuer) -> None:  # noqa: F811 - the fixture
    for args, env, code, words in _cli_cases(issuer):
        message = one_line_error(run("get", *args, env=env), code)
        assert words in message, (args, message)
        assert not PYTHON_NAMES.search(message), (args, message)
        assert "will be retried" not in message, (args, message)


def test_library_messages_keep_the_python_names(issuer: LocalIssuer) -> None:
    """The same failures, met through Python, name the arguments a Python caller passes."""
    with pytest.raises(TokenRejectedError, match="secret_key= or CLERK_SECRET_KEY"):
        ClerkBackendSource("sk_wrong", api_url=issuer.clerk_api_url)(SESSION)
    with pytest.raises(TokenRejectedError, match="check client_id and client_secret"):
        OAuth2ClientCredentialsSource(issuer.token_url, "nobody", "wrong")(TokenRequest())


# -- log lines ------------------------------------------------------------------------------


def test_log_lines_do_not_repeat_the_logger_name(caplog: pytest.LogCaptureFixture) -> None:
    """The record's logger name says swr_token already ("WARNING:swr_token:..."); the
    message itself starts with what happened."""
    from swr_token import TokenClient
    from swr_token.testing import FakeClock, InlineExecutor

    from .conftest import FakeSource, wait_until

    clock = FakeClock()

    def broken_hook(request: TokenRequest, token: object) -> None:
        raise RuntimeError("hook bug")

    caplog.set_level(logging.DEBUG, logger="swr_token")
    with TokenClient(FakeSource(clock), clock=clock, executor=InlineExecutor(),
                     background_refresh_threshold=120.0, on_token_update=broken_hook) as c:
        c.get_token("sess_1")

        def messages() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name.startswith("swr_token")]

        # The hook runs on the fetching thread after the token is handed over.
        wait_until(lambda: any("event hook raised" in m for m in messages()))
    seen = messages()
    assert any("at least the token lifetime" in m for m in seen), seen
    assert not [m for m in seen if m.lower().startswith("swr_token")], seen


# -- inspect --------------------------------------------------------------------------------


def _jwt() -> str:
    import time

    import jwt

    return jwt.encode({"exp": int(time.time()) + 60, "sub": "user_1"}, "k" * 32)


@pytest.mark.parametrize("argv", [["TOKEN"], ["Bearer", "TOKEN"], ["--json", "TOKEN"]])
def test_inspect_with_the_token_as_an_argument_says_to_pipe_it(
        run: Any, argv: list[str]) -> None:  # noqa: F811 - the fixture
    token = _jwt()
    result = run("inspect", *[token if a == "TOKEN" else a for a in argv])
    message = one_line_error(result, 2)
    assert "reads the token from stdin" in message and "| swr-token inspect" in message
    assert "swr-token inspect -" in message
    assert token not in message and token.split(".")[1] not in message


@pytest.mark.parametrize("pasted", [
    "{token}", "Bearer {token}", "Authorization: Bearer {token}",
    "authorization:   bearer {token}\n",
])
@pytest.mark.parametrize("dash", [[], ["-"]])
def test_inspect_reads_stdin_with_or_without_dash_and_takes_a_header_line(
        run: Any, pasted: str, dash: list[str]) -> None:  # noqa: F811 - the fixture
    token = _jwt()
    result = run("inspect", "--json", *dash, stdin=pasted.format(token=token))
    assert result.returncode == 0, result.stderr
    import json

    document = json.loads(result.stdout)
    assert document["claims"]["sub"] == "user_1" and document["verified"] is False
    assert token not in result.stdout


# -- odds and ends --------------------------------------------------------------------------


def test_an_opaque_token_before_receipt_counts_from_when_it_was_made() -> None:
    import time

    from swr_token import Token

    made = time.time()
    token = Token("opaque-access-token", expires_in=60)
    assert 59.0 <= token.remaining() <= 60.0
    assert made + 59.0 <= token.expires_at <= time.time() + 60.0
    assert "expires_at=0>" not in repr(token)
    assert "opaque-access-token" not in repr(token)


@pytest.mark.parametrize("option", ["on_token_update", "on_refresh_error", "verifier"])
def test_a_hook_that_is_not_callable_is_refused_at_construction(option: str) -> None:
    from swr_token import ConfigurationError, TokenClient

    with pytest.raises(ConfigurationError, match=f"{option} must be a function"):
        TokenClient(lambda request: "x", **{option: "print"})


def test_a_failure_raised_after_giving_up_promises_no_retry() -> None:
    """The wrapped error of a failing source reaches callers once the fetch gave up."""
    from swr_token import TokenClient

    def flaky(request: TokenRequest) -> str:
        raise RuntimeError("backend down")

    with TokenClient(flaky, fetch_timeout=0.5) as client, \
            pytest.raises(TokenFetchError) as caught:
        client.get_token("sess_1", timeout=5)
    message = str(caught.value)
    assert "RuntimeError" in message and "will be retried" not in message, message
