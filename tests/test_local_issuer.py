"""LocalIssuer: the real loopback issuer every test, demo and benchmark talks to."""

from __future__ import annotations

import base64
import email.utils
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from swr_token.testing import FakeClock, LocalIssuer

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
T = (2.0, 5.0)  # (connect, read) for every request in this module


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer(private_key=KEY) as iss:
        yield iss


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def clerk_post(
    http: requests.Session, iss: LocalIssuer, sid: str = "sess_1", **kw: object
) -> requests.Response:
    headers = {"Authorization": f"Bearer {iss.secret_key}"}
    return http.post(f"{iss.clerk_api_url}/sessions/{sid}/tokens", headers=headers, timeout=T,
                     **kw)  # type: ignore[arg-type]


def oauth_post(http: requests.Session, iss: LocalIssuer, **form: str) -> requests.Response:
    data = {"grant_type": "client_credentials", "client_id": iss.client_id,
            "client_secret": iss.client_secret, **form}
    return http.post(iss.token_url, data=data, timeout=T)


def claims_of(raw: str, iss: LocalIssuer, **options: object) -> dict[str, object]:
    jwk = jwt.PyJWK(iss.jwks()["keys"][0])
    return jwt.decode(raw, jwk.key, algorithms=["RS256"], options={"verify_aud": False},
                      leeway=abs(iss.clock_offset) + 5, **options)  # type: ignore[arg-type]


# -- lifecycle ------------------------------------------------------------------------------


def test_urls_port_and_context_manager() -> None:
    iss = LocalIssuer(private_key=KEY)
    with pytest.raises(RuntimeError, match="start"):
        _ = iss.url
    with iss:
        assert iss.url.startswith("http://127.0.0.1:")
        assert iss.clerk_api_url == iss.url + "/v1"
        assert iss.token_url == iss.url + "/oauth/token"
        assert iss.jwks_url == iss.url + "/.well-known/jwks.json"
        assert "serving" in repr(iss)
    assert "stopped" in repr(iss)
    with pytest.raises(requests.ConnectionError):
        requests.get(iss.jwks_url, timeout=T)


def test_restart_rebinds_the_same_port(issuer: LocalIssuer, http: requests.Session) -> None:
    url = issuer.jwks_url
    issuer.stop()
    issuer.stop()  # idempotent
    issuer.start()
    assert issuer.jwks_url == url
    assert http.get(url, timeout=T).status_code == 200


def test_stop_returns_quickly_with_hung_requests(issuer: LocalIssuer) -> None:
    issuer.hang()
    outcomes: list[object] = []

    def call() -> None:
        try:
            outcomes.append(clerk_post(requests.Session(), issuer).status_code)
        except requests.RequestException as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=call, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    assert issuer.wait_for_requests(3, "clerk", timeout=5)
    started = time.monotonic()
    issuer.stop()
    assert time.monotonic() - started < 1.0
    for thread in threads:
        thread.join(timeout=5)
    assert len(outcomes) == 3
    assert all(isinstance(o, requests.ConnectionError) for o in outcomes)


# -- tokens ---------------------------------------------------------------------------------


def test_clerk_token_is_a_verifiable_rs256_jwt(
    issuer: LocalIssuer, http: requests.Session
) -> None:
    response = clerk_post(http, issuer, "sess_42")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "token"
    assert jwt.get_unverified_header(body["jwt"])["kid"] == issuer.kid
    served = http.get(issuer.jwks_url, timeout=T).json()
    jwk = jwt.PyJWK(served["keys"][0])
    claims = jwt.decode(body["jwt"], jwk.key, algorithms=["RS256"])
    assert claims["sid"] == "sess_42"
    assert claims["sub"] == "user_sess_42"
    assert claims["iss"] == issuer.url
    assert claims["exp"] - claims["iat"] == 60
    assert claims["jti"]


def test_tokens_in_the_same_second_differ(issuer: LocalIssuer, http: requests.Session) -> None:
    tokens = {clerk_post(http, issuer).json()["jwt"] for _ in range(5)}
    assert len(tokens) == 5


def test_lifetime_and_expires_in_seconds(issuer: LocalIssuer, http: requests.Session) -> None:
    issuer.lifetime = 5
    claims = claims_of(clerk_post(http, issuer).json()["jwt"], issuer)
    assert claims["exp"] - claims["iat"] == 5  # type: ignore[operator]
    raw = clerk_post(http, issuer, json={"expires_in_seconds": 30}).json()["jwt"]
    claims = claims_of(raw, issuer)
    assert claims["exp"] - claims["iat"] == 30  # type: ignore[operator]
    bad = clerk_post(http, issuer, json={"expires_in_seconds": -1})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["code"] == "form_param_format_invalid"


def test_clock_offset_moves_iat_and_date(issuer: LocalIssuer, http: requests.Session) -> None:
    issuer.clock_offset = -3600
    response = clerk_post(http, issuer)
    date = email.utils.parsedate_to_datetime(response.headers["Date"]).timestamp()
    iat = jwt.decode(response.json()["jwt"], options={"verify_signature": False})["iat"]
    assert abs(date - (time.time() - 3600)) < 5
    assert abs(iat - date) <= 1


def test_clock_follows_a_fake_clock(http: requests.Session) -> None:
    clock = FakeClock(wall=1_700_000_000.0)
    with LocalIssuer(private_key=KEY, clock=clock, clock_offset=-3600) as issuer:
        first = clerk_post(http, issuer)
        clock.advance(100.5)
        second = clerk_post(http, issuer)
    for response, now in ((first, 1_699_996_400), (second, 1_699_996_500)):
        date = email.utils.parsedate_to_datetime(response.headers["Date"]).timestamp()
        claims = jwt.decode(response.json()["jwt"], options={"verify_signature": False})
        assert date == claims["iat"] == now
        assert claims["exp"] == now + 60


def test_clerk_checks_the_secret_and_ended_sessions(
    issuer: LocalIssuer, http: requests.Session
) -> None:
    url = f"{issuer.clerk_api_url}/sessions/sess_1/tokens"
    for headers in ({}, {"Authorization": "Bearer sk_wrong"}):
        response = http.post(url, headers=headers, timeout=T)
        assert response.status_code == 401
        assert response.json()["errors"][0]["code"] == "authentication_invalid"
    issuer.end_session("sess_1")
    response = clerk_post(http, issuer)
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "resource_not_found"
    assert clerk_post(http, issuer, "sess_2").status_code == 200


def test_oauth_client_authentication(issuer: LocalIssuer, http: requests.Session) -> None:
    form = {"grant_type": "client_credentials"}
    pair = f"{issuer.client_id}:{issuer.client_secret}".encode()
    basic = {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    assert http.post(issuer.token_url, data=form, headers=basic, timeout=T).status_code == 200
    assert oauth_post(http, issuer).status_code == 200
    both = http.post(issuer.token_url, headers=basic, timeout=T,
                     data={**form, "client_id": issuer.client_id,
                           "client_secret": issuer.client_secret})
    assert (both.status_code, both.json()["error"]) == (400, "invalid_request")
    wrong = oauth_post(http, issuer, client_secret="nope")
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
    assert wrong.headers["WWW-Authenticate"].startswith("Basic")
    grant = oauth_post(http, issuer, grant_type="password")
    assert (grant.status_code, grant.json()["error"]) == (400, "unsupported_grant_type")


def test_oauth_answer_scope_audience_and_opaque(http: requests.Session) -> None:
    with LocalIssuer(private_key=KEY, allowed_scopes={"read", "write"}, lifetime=120) as iss:
        response = oauth_post(http, iss, scope="read write", audience="https://api.example")
        assert response.headers["Cache-Control"] == "no-store"
        body = response.json()
        assert (body["token_type"], body["expires_in"], body["scope"]) == (
            "Bearer", 120, "read write")
        claims = claims_of(body["access_token"], iss, audience="https://api.example")
        assert (claims["aud"], claims["scope"], claims["sub"]) == (
            "https://api.example", "read write", iss.client_id)
        denied = oauth_post(http, iss, scope="admin")
        assert (denied.status_code, denied.json()["error"]) == (400, "invalid_scope")
        iss.opaque = True
        iss.oauth_expires_in = 30
        body = oauth_post(http, iss).json()
        assert body["access_token"].count(".") == 0
        assert body["expires_in"] == 30


def test_unknown_path_and_wrong_method(issuer: LocalIssuer, http: requests.Session) -> None:
    assert http.get(issuer.url + "/nope", timeout=T).status_code == 404
    response = http.get(issuer.token_url, timeout=T)
    assert (response.status_code, response.headers["Allow"]) == (405, "POST")
    assert http.post(issuer.jwks_url, timeout=T).status_code == 405


def test_every_response_has_a_date_header(issuer: LocalIssuer, http: requests.Session) -> None:
    issuer.fail(503, count=1)
    issuer.malformed(count=1)
    responses = [clerk_post(http, issuer) for _ in range(3)]
    responses.append(http.get(issuer.url + "/nope", timeout=T))
    responses.append(oauth_post(http, issuer, client_secret="nope"))
    assert [r.status_code for r in responses] == [503, 200, 200, 404, 401]
    for response in responses:
        assert email.utils.parsedate_to_datetime(response.headers["Date"])


# -- faults ---------------------------------------------------------------------------------


def test_fail_for_a_count_with_retry_after(issuer: LocalIssuer, http: requests.Session) -> None:
    issuer.fail(429, retry_after=7, count=2)
    first, second, third = (clerk_post(http, issuer) for _ in range(3))
    assert (first.status_code, first.headers["Retry-After"]) == (429, "7")
    assert first.json()["errors"][0]["code"] == "too_many_requests"
    assert second.status_code == 429
    assert third.status_code == 200


def test_fail_shapes_follow_the_endpoint(issuer: LocalIssuer, http: requests.Session) -> None:
    issuer.fail(500, code="boom")
    assert clerk_post(http, issuer).json() == {
        "errors": [{"code": "boom", "message": "injected fault", "long_message": "injected fault"}]
    }
    assert oauth_post(http, issuer).json()["error"] == "boom"
    assert http.get(issuer.jwks_url, timeout=T).status_code == 200  # not a token endpoint
    issuer.clear_faults()
    issuer.fail(502, body="<html>bad gateway</html>", endpoint="jwks")
    response = http.get(issuer.jwks_url, timeout=T)
    assert (response.status_code, response.text) == (502, "<html>bad gateway</html>")
    assert clerk_post(http, issuer).status_code == 200


def test_fail_for_a_time_window(issuer: LocalIssuer, http: requests.Session) -> None:
    issuer.fail(500, duration=0.2)
    window_over = time.monotonic() + 0.2  # taken after fail(): never before the window's end
    assert clerk_post(http, issuer).status_code == 500
    time.sleep(max(0.0, window_over - time.monotonic()))  # waiting out the window, not a sync
    assert clerk_post(http, issuer).status_code == 200


def test_delay(issuer: LocalIssuer, http: requests.Session) -> None:
    issuer.delay(0.2, count=1)
    started = time.monotonic()
    assert clerk_post(http, issuer).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_delay_stacks_with_a_status(issuer: LocalIssuer, http: requests.Session) -> None:
    issuer.delay(0.1, count=1)
    issuer.fail(503, count=1)
    started = time.monotonic()
    assert clerk_post(http, issuer).status_code == 503
    assert time.monotonic() - started >= 0.1
    assert clerk_post(http, issuer).status_code == 200


def test_malformed(issuer: LocalIssuer, http: requests.Session) -> None:
    issuer.malformed(count=1)
    response = clerk_post(http, issuer)
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    issuer.malformed(body='{"object": "token"}', count=1)
    assert clerk_post(http, issuer).json() == {"object": "token"}


def test_hang_times_out_the_client_then_serves(issuer: LocalIssuer) -> None:
    issuer.hang(count=1)
    with pytest.raises(requests.ReadTimeout):
        requests.post(f"{issuer.clerk_api_url}/sessions/s/tokens", timeout=(2.0, 0.2),
                      headers={"Authorization": f"Bearer {issuer.secret_key}"})
    with requests.Session() as http:
        assert clerk_post(http, issuer).status_code == 200


def test_hang_released_by_clear_faults(issuer: LocalIssuer) -> None:
    issuer.hang()
    statuses: list[int] = []
    thread = threading.Thread(
        target=lambda: statuses.append(clerk_post(requests.Session(), issuer).status_code),
        daemon=True,
    )
    thread.start()
    assert issuer.wait_for_requests(1, "clerk", timeout=5)
    issuer.clear_faults()
    thread.join(timeout=5)
    assert statuses == [200]


def test_hang_for_a_window_then_answers(issuer: LocalIssuer, http: requests.Session) -> None:
    issuer.hang(duration=0.2)
    started = time.monotonic()
    assert clerk_post(http, issuer).status_code == 200
    assert time.monotonic() - started >= 0.15


def test_reset_closes_the_connection(issuer: LocalIssuer, http: requests.Session) -> None:
    issuer.reset(count=1)
    with pytest.raises(requests.ConnectionError):
        clerk_post(http, issuer)
    assert clerk_post(http, issuer).status_code == 200
    assert issuer.connection_count() == 2


def test_fault_arguments_are_checked(issuer: LocalIssuer) -> None:
    with pytest.raises(ValueError):
        issuer.fail(700)
    with pytest.raises(ValueError):
        issuer.hang(count=0)
    with pytest.raises(ValueError):
        issuer.delay(1, duration=-1)


# -- counters -------------------------------------------------------------------------------


def test_counts_per_endpoint_and_connections(
    issuer: LocalIssuer, http: requests.Session
) -> None:
    for _ in range(3):
        clerk_post(http, issuer)
    oauth_post(http, issuer)
    http.get(issuer.jwks_url, timeout=T)
    assert issuer.request_count("clerk") == 3
    assert issuer.request_count("oauth") == 1
    assert issuer.request_count("jwks") == 1
    assert issuer.request_count() == 5
    assert issuer.connection_count() == 1  # one keep-alive connection for one session
    with requests.Session() as other:
        clerk_post(other, issuer)
    assert issuer.connection_count() == 2
    recorded = issuer.requests("clerk")
    assert [r.connection for r in recorded] == [1, 1, 1, 2]
    assert recorded[0].headers["authorization"] == f"Bearer {issuer.secret_key}"
    assert issuer.secret_key not in repr(recorded[0])
    assert issuer.requests("oauth")[0].form()["grant_type"] == "client_credentials"
    issuer.reset_counts()
    assert (issuer.request_count(), issuer.connection_count(), issuer.requests()) == (0, 0, [])


def test_wait_for_requests_is_bounded(issuer: LocalIssuer) -> None:
    started = time.monotonic()
    assert not issuer.wait_for_requests(1, timeout=0.05)
    assert time.monotonic() - started < 1.0


# -- pytest plugin --------------------------------------------------------------------------

_PLUGIN_TEST = """
def test_uses_issuer(local_issuer):
    assert local_issuer.url.startswith("http://127.0.0.1:")
"""


def run_pytest(tmp_path: Path, *args: str, ini: str = "") -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_it.py").write_text(textwrap.dedent(_PLUGIN_TEST))
    (tmp_path / "pytest.ini").write_text("[pytest]\n" + ini)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "swr_token.testing._plugin", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def test_plugin_is_off_until_enabled(tmp_path: Path) -> None:
    result = run_pytest(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "fixture 'local_issuer' not found" in result.stdout


@pytest.mark.parametrize(("args", "ini"), [(("--swr-token-issuer",), ""),
                                           ((), "swr_token_issuer = true\n")])
def test_plugin_gives_the_fixture_when_enabled(
    tmp_path: Path, args: tuple[str, ...], ini: str
) -> None:
    result = run_pytest(tmp_path, *args, ini=ini)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_pytest_plugin_loads_no_issuer_until_a_test_asks_for_it() -> None:
    """The plugin loads in every pytest run of every project that installs swr_token: it
    must not pull in the issuer, JWT or cryptography until the fixture is used."""
    import subprocess
    import sys

    probe = ("import sys, swr_token.testing._plugin, swr_token.testing as t\n"
             "heavy = [m for m in ('swr_token._issuer', 'jwt', 'cryptography', 'requests')"
             " if m in sys.modules]\n"
             "assert not heavy, heavy\n"
             "assert t.LocalIssuer.__name__ == 'LocalIssuer' and 'jwt' in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def test_stop_returns_only_when_no_request_is_still_being_answered() -> None:
    """A handler thread still answering when the caller's interpreter exits can abort the
    process (a daemon thread unwound through a C extension's frames on Python 3.11: the
    demo's Ctrl-C ended with SIGABRT about once in 30 under load). stop() waits for them."""
    import threading

    import requests

    def handlers() -> list[threading.Thread]:
        return [t for t in threading.enumerate()
                if "process_request_thread" in t.name and t.is_alive()]

    issuer = LocalIssuer().start()
    issuer.delay(0.5)
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            requests.post(issuer.token_url, timeout=5,
                          data={"grant_type": "client_credentials"})
        except requests.RequestException as exc:  # dropped by stop(): expected
            errors.append(exc)

    caller = threading.Thread(target=ask)
    caller.start()
    issuer.wait_for_requests(1)
    assert handlers()  # the request is being answered (delayed)
    issuer.stop()
    assert not handlers()
    caller.join(5)
