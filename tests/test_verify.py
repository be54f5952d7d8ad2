"""JWKSVerifier against LocalIssuer's real JWKS endpoint on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
import tenacity
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from swr_token import (
    ClerkBackendSource,
    ConfigurationError,
    InvalidTokenError,
    RetryPolicy,
    TokenClient,
    TokenError,
    TokenFetchError,
    TokenRequest,
)
from swr_token._verify import JWKSVerifier
from swr_token.testing import FakeClock, LocalIssuer

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
WAIT = 5.0
ONE_ATTEMPT = RetryPolicy(stop=tenacity.stop_after_attempt(1))


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer(private_key=KEY) as iss:
        yield iss


@pytest.fixture
def other() -> Iterator[LocalIssuer]:
    with LocalIssuer(private_key=OTHER_KEY) as iss:
        yield iss


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(iss: LocalIssuer, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": iss.url, "iat": now, "nbf": now, "exp": now + 60, "sid": "sess_1", **extra}


def hs256_with_public_pem(iss: LocalIssuer) -> str:
    """The classic key-confusion forgery: HMAC-SHA256 keyed with the issuer's public key."""
    pem = KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": iss.kid}).encode())
    body = b64(json.dumps(claims(iss)).encode())
    signature = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


# Each forgery or mistake, and a phrase the refusal must contain.
BAD_TOKENS: dict[str, tuple[Callable[[LocalIssuer, LocalIssuer], str], str]] = {
    "wrong key, same kid": (
        lambda i, o: jwt.encode(claims(i), OTHER_KEY, algorithm="RS256", headers={"kid": i.kid}),
        "signature does not match"),
    "second issuer's key": (lambda i, o: o.mint(iss=i.url), "no key with kid"),
    "wrong algorithm (PS256)": (
        lambda i, o: jwt.encode(claims(i), KEY, algorithm="PS256", headers={"kid": i.kid}),
        "'PS256' is not allowed"),
    "wrong algorithm (ES256)": (
        lambda i, o: jwt.encode(claims(i), ec.generate_private_key(ec.SECP256R1()),
                                algorithm="ES256", headers={"kid": i.kid}),
        "'ES256' is not allowed"),
    "alg none": (
        lambda i, o: jwt.encode(claims(i), "", algorithm="none", headers={"kid": i.kid}),
        "'none' is not allowed"),
    "HS256 keyed with the public key PEM": (lambda i, o: hs256_with_public_pem(i),
                                            "'HS256' is not allowed"),
    "expired": (lambda i, o: i.mint(lifetime=-60), "expired"),
    "wrong audience": (lambda i, o: i.mint(aud="api://billing"), "audience ('aud')"),
    "no audience": (lambda i, o: i.mint(), "audience ('aud')"),
    "wrong issuer": (lambda i, o: i.mint(iss="https://evil.example"), "issuer ('iss')"),
    "not yet valid": (lambda i, o: i.mint(nbf=int(time.time()) + 120), "not valid yet"),
}


class CountingSource:
    """A source that returns ``make()``'s token and counts its calls."""

    def __init__(self, make: Callable[[], str]) -> None:
        self.make = make
        self.issued: list[str] = []

    @property
    def calls(self) -> int:
        return len(self.issued)

    def __call__(self, request: TokenRequest) -> str:
        self.issued.append(self.make())
        return self.issued[-1]


# -- accepting ------------------------------------------------------------------------------

def test_accepts_the_issuers_tokens_and_caches_the_keys(issuer: LocalIssuer) -> None:
    verify = JWKSVerifier(issuer.jwks_url, issuer=issuer.url, audience="api://orders")
    assert issuer.request_count("jwks") == 0  # nothing fetched at construction
    verify(issuer.mint(aud="api://orders"))
    verify(issuer.mint(aud=["api://other", "api://orders"]))
    assert issuer.request_count("jwks") == 1


def test_client_with_verifier_serves_verified_tokens(issuer: LocalIssuer) -> None:
    source = ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url)
    verify = JWKSVerifier(issuer.jwks_url, issuer=issuer.url)
    with TokenClient(source, verifier=verify) as client:
        token = client.get_token("sess_1")
        assert client.get_token("sess_1") == token
    assert jwt.decode(token, options={"verify_signature": False})["sid"] == "sess_1"
    assert issuer.request_count("clerk") == 1


def test_key_rotation_refetches_the_key_set_once(issuer: LocalIssuer) -> None:
    verify = JWKSVerifier(issuer.jwks_url, issuer=issuer.url)
    verify(issuer.mint())
    port = int(issuer.url.rsplit(":", 1)[1])
    issuer.stop()
    with LocalIssuer(private_key=OTHER_KEY, port=port) as rotated:  # same URL, new key
        verify(rotated.mint())
        assert rotated.request_count("jwks") == 1
        verify(rotated.mint())
        assert rotated.request_count("jwks") == 1


def test_unknown_kids_refetch_at_most_once_per_cooldown(
        issuer: LocalIssuer, other: LocalIssuer) -> None:
    clock = FakeClock()
    verify = JWKSVerifier(issuer.jwks_url, refetch_cooldown=10.0, clock=clock.deadline)
    verify(issuer.mint())
    for _ in range(3):
        with pytest.raises(InvalidTokenError, match="no key with kid"):
            verify(other.mint())
    assert issuer.request_count("jwks") == 2  # the first fetch and one refetch
    clock.advance(10.0)
    with pytest.raises(InvalidTokenError):
        verify(other.mint())
    assert issuer.request_count("jwks") == 3


def test_keys_are_fetched_again_after_cache_keys_for(issuer: LocalIssuer) -> None:
    clock = FakeClock()
    verify = JWKSVerifier(issuer.jwks_url, cache_keys_for=60.0, clock=clock.deadline)
    verify(issuer.mint())
    clock.advance(59.0)
    verify(issuer.mint())
    assert issuer.request_count("jwks") == 1
    clock.advance(1.0)
    verify(issuer.mint())
    assert issuer.request_count("jwks") == 2


def test_concurrent_verifications_share_one_download(issuer: LocalIssuer) -> None:
    verify = JWKSVerifier(issuer.jwks_url)
    issuer.delay(0.2, endpoint="jwks", count=1)  # callers pile up behind the first download
    token = issuer.mint()
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait(WAIT)
            verify(token)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert issuer.request_count("jwks") == 1


# -- refusing -------------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_refused_tokens_are_invalid_and_never_cached(
        case: str, issuer: LocalIssuer, other: LocalIssuer) -> None:
    make, phrase = BAD_TOKENS[case]
    verify = JWKSVerifier(issuer.jwks_url, issuer=issuer.url, audience="api://orders")
    source = CountingSource(lambda: make(issuer, other))
    with TokenClient(source, verifier=verify, retry=ONE_ATTEMPT) as client:
        for calls in (1, 2):  # not retried, not cached: the next call asks the source again
            with pytest.raises(InvalidTokenError) as info:
                client.get_token("sess_1")
            assert source.calls == calls
            assert phrase in str(info.value)
            assert not any(part and part in str(info.value)
                           for part in source.issued[-1].split("."))


def test_refuses_a_key_used_with_an_algorithm_not_its_own(issuer: LocalIssuer) -> None:
    # Both algorithms allowed, but the JWK says RS256: a PS256 token must not use it.
    verify = JWKSVerifier(issuer.jwks_url, algorithms=("RS256", "PS256"))
    forged = jwt.encode(claims(issuer), KEY, algorithm="PS256", headers={"kid": issuer.kid})
    with pytest.raises(InvalidTokenError, match=r"key .* is for RS256"):
        verify(forged)


def test_refuses_tokens_without_exp_and_opaque_tokens(issuer: LocalIssuer) -> None:
    verify = JWKSVerifier(issuer.jwks_url)
    no_exp = jwt.encode({"iss": issuer.url, "iat": int(time.time())}, KEY, algorithm="RS256",
                        headers={"kid": issuer.kid})
    with pytest.raises(InvalidTokenError, match="no 'exp' claim"):
        verify(no_exp)
    with pytest.raises(InvalidTokenError, match="not a JWT"):
        verify("opaque-access-token-0123456789")


def test_leeway_tolerates_a_little_clock_skew(issuer: LocalIssuer) -> None:
    just_expired = issuer.mint(lifetime=-2)
    JWKSVerifier(issuer.jwks_url, leeway=5.0)(just_expired)
    with pytest.raises(InvalidTokenError, match="expired"):
        JWKSVerifier(issuer.jwks_url, leeway=0.0)(just_expired)


def test_token_without_kid_uses_the_only_key(issuer: LocalIssuer) -> None:
    verify = JWKSVerifier(issuer.jwks_url)
    verify(jwt.encode(claims(issuer), KEY, algorithm="RS256"))


# -- JWKS endpoint trouble is transient -----------------------------------------------------

@pytest.mark.parametrize("fault", ["503", "not json", "not a key set", "no keys", "reset"])
def test_jwks_endpoint_trouble_is_a_fetch_error(fault: str, issuer: LocalIssuer) -> None:
    if fault == "503":
        issuer.fail(503, endpoint="jwks", retry_after=2)
    elif fault == "not json":
        issuer.malformed(body="<html>oops</html>", endpoint="jwks")
    elif fault == "not a key set":
        issuer.malformed(body="[1, 2]", endpoint="jwks")
    elif fault == "no keys":
        issuer.malformed(body='{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "x"}]}',
                         endpoint="jwks")
    else:
        issuer.reset(endpoint="jwks")
    verify = JWKSVerifier(issuer.jwks_url)
    token = issuer.mint()
    with pytest.raises(TokenFetchError) as info:
        verify(token)
    assert "JWKS" in str(info.value)
    if fault == "503":
        assert info.value.status == 503
        assert info.value.retry_after == 2
    issuer.clear_faults()
    verify(token)  # recovered: nothing bad was cached


def test_unreachable_and_hung_jwks_are_fetch_errors(issuer: LocalIssuer) -> None:
    token = issuer.mint()
    issuer.hang(endpoint="jwks")
    with pytest.raises(TokenFetchError, match="timed out"):
        JWKSVerifier(issuer.jwks_url, timeout=0.3)(token)
    issuer.clear_faults()
    issuer.stop()
    with pytest.raises(TokenFetchError, match="network error"):
        JWKSVerifier(issuer.jwks_url)(token)


def test_jwks_down_keeps_the_stale_token_served(issuer: LocalIssuer) -> None:
    """A refresh that cannot verify (keys expired, JWKS down) is transient: the cached token
    is still served, and the next refresh after recovery publishes a verified one."""
    clock = FakeClock(wall=time.time())
    verify = JWKSVerifier(issuer.jwks_url, issuer=issuer.url, cache_keys_for=30.0,
                          clock=clock.deadline)
    failed: list[TokenError] = []
    failure, published = threading.Event(), threading.Event()
    source = ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url)

    def on_error(request: TokenRequest, error: TokenError) -> None:
        failed.append(error)
        failure.set()

    with TokenClient(source, clock=clock, verifier=verify, retry=ONE_ATTEMPT,
                     on_refresh_error=on_error,
                     on_token_update=lambda request, token: published.set()) as client:
        first = client.get_token("sess_1")
        published.clear()
        issuer.fail(503, endpoint="jwks")
        clock.advance(50.0)  # 10 s left: stale; the 30 s key cache has expired
        assert client.get_token("sess_1") == first  # served at once; refresh in background
        assert failure.wait(WAIT)
        assert isinstance(failed[0], TokenFetchError) and failed[0].status == 503
        assert client.get_token("sess_1") == first  # still served while backing off
        assert issuer.request_count("jwks") == 2

        issuer.clear_faults()
        clock.advance(2.0)  # past the key's backoff
        assert client.get_token("sess_1") == first
        assert published.wait(WAIT)
        assert client.get_token("sess_1") != first


# -- configuration --------------------------------------------------------------------------

@pytest.mark.parametrize("algorithms", [("HS256",), ("none",), ("RS256", "HS512"), ("NONE",),
                                        ("RS257",), ()])
def test_refuses_unsafe_or_unknown_algorithms(algorithms: tuple[str, ...]) -> None:
    with pytest.raises(ConfigurationError):
        JWKSVerifier("https://issuer.example/.well-known/jwks.json", algorithms=algorithms)


def test_refuses_plain_http_except_loopback() -> None:
    with pytest.raises(ConfigurationError, match="https://") as info:
        JWKSVerifier("http://issuer.example/.well-known/jwks.json")
    assert isinstance(info.value, ValueError)
    JWKSVerifier("http://127.0.0.1:9/.well-known/jwks.json")
    JWKSVerifier("http://localhost:9/.well-known/jwks.json")


@pytest.mark.parametrize("kwargs", [{"leeway": -1}, {"cache_keys_for": float("nan")},
                                    {"timeout": 0}, {"issuer": ""}, {"audience": []}])
def test_refuses_bad_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        JWKSVerifier("https://issuer.example/jwks", **kwargs)


def test_repr_names_the_endpoint_only() -> None:
    text = repr(JWKSVerifier("https://issuer.example/jwks?x=1", issuer="https://i"))
    assert "issuer.example/jwks" in text
    assert "x=1" not in text
    with pytest.raises(ConfigurationError, match="credentials") as caught:
        JWKSVerifier("https://user:pw@issuer.example/jwks", issuer="https://i")
    assert "pw" not in str(caught.value)


# -- processes ------------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_during_a_jwks_download_leaves_the_child_working() -> None:
    """The parent's download is not the child's: the child downloads on its own at once
    instead of waiting for a result that will never come."""
    script = textwrap.dedent("""
        import os, threading, time
        from swr_token._verify import JWKSVerifier
        from swr_token.testing import LocalIssuer, FakeClock
        with LocalIssuer() as issuer:
            clock = FakeClock()
            verify = JWKSVerifier(issuer.jwks_url, cache_keys_for=10, clock=clock.deadline)
            token = issuer.mint()
            verify(token)
            clock.advance(10)                         # keys expired: the next call downloads
            issuer.hang(endpoint="jwks", count=1)     # ... and the parent's download hangs
            threading.Thread(target=verify, args=(token,), daemon=True).start()
            assert issuer.wait_for_requests(2, "jwks")
            pid = os.fork()
            if pid == 0:
                started = time.monotonic()
                try:
                    verify(token)                     # answered by the parent's server
                    os._exit(0 if time.monotonic() - started < 2 else 4)
                except BaseException:
                    os._exit(3)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    print("child", os.waitstatus_to_exitcode(status))
                    break
                threading.Event().wait(0.01)
            else:
                os.kill(pid, 9)
                print("child stuck")
            issuer.clear_faults()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30)
    assert "child 0" in done.stdout, done.stdout + done.stderr
