"""OAuth2 private_key_jwt / client_secret_jwt and RFC 8707 resource=, against LocalIssuer,
which verifies every assertion (signature, iss/sub, aud, exp, iat, replayed jti)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from swr_token import (
    ConfigurationError,
    OAuth2ClientCredentialsSource,
    TokenClient,
    TokenError,
    TokenFetchError,
    TokenRejectedError,
    TokenRequest,
)
from swr_token.testing import LocalIssuer

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
SECRET = "cs_0123456789abcdef0123456789abcdef_very_secret"  # 32+ bytes: fit for HS256
CLIENT = "svc-assert"
KID = "key-2026"
TIMEOUT = (2.0, 5.0)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
NO_KEY = TokenRequest()


def pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


PEM_BODY = pem(RSA_KEY).decode().splitlines()[5]  # a line from inside the key


@pytest.fixture(scope="module")
def shared_issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer(private_key=RSA_KEY, client_id=CLIENT, client_secret=SECRET) as iss:
        iss.register_client_key(RSA_KEY, kid=KID)
        iss.register_client_key(EC_KEY.public_key())  # registered without a kid
        yield iss


@pytest.fixture
def issuer(shared_issuer: LocalIssuer) -> Iterator[LocalIssuer]:
    shared_issuer.reset_counts()
    yield shared_issuer
    shared_issuer.clear_faults()
    shared_issuer.clock_offset = 0.0


@pytest.fixture
def make(issuer: LocalIssuer) -> Iterator[Callable[..., OAuth2ClientCredentialsSource]]:
    made: list[OAuth2ClientCredentialsSource] = []

    def factory(*args: Any, **options: Any) -> OAuth2ClientCredentialsSource:
        options.setdefault("timeout", TIMEOUT)
        if not args and "private_key" not in options and "client_secret" not in options:
            options.update(private_key=RSA_KEY, key_id=KID)
        source = OAuth2ClientCredentialsSource(issuer.token_url, CLIENT, *args, **options)
        made.append(source)
        return source

    yield factory
    for source in made:
        source.close()


def assertion_of(issuer: LocalIssuer, index: int = -1) -> tuple[dict[str, Any], dict[str, Any]]:
    raw = issuer.requests("oauth")[index].form()["client_assertion"]
    return jwt.get_unverified_header(raw), jwt.decode(raw, options={"verify_signature": False})


def assert_clean(text: str) -> None:
    for secret in (SECRET, "very_secret", PEM_BODY, "PRIVATE KEY"):
        assert secret not in text


# -- private_key_jwt ----------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "options", "algorithm", "public"), [
    (RSA_KEY, {"key_id": KID}, "RS256", RSA_KEY.public_key()),
    (RSA_KEY, {"key_id": KID, "signing_algorithm": "PS256"}, "PS256", RSA_KEY.public_key()),
    (EC_KEY, {}, "ES256", EC_KEY.public_key()),
])
def test_private_key_jwt_request_and_assertion(
    issuer: LocalIssuer, make: Callable[..., OAuth2ClientCredentialsSource], key: Any,
    options: dict[str, Any], algorithm: str, public: Any,
) -> None:
    token = make(private_key=key, **options)(NO_KEY)
    assert token.claims["sub"] == CLIENT  # the issuer accepted the assertion
    sent = issuer.requests("oauth")[0]
    assert "authorization" not in sent.headers
    form = sent.form()
    assert set(form) == {"grant_type", "client_id", "client_assertion_type", "client_assertion"}
    assert (form["client_id"], form["client_assertion_type"]) == (CLIENT, ASSERTION_TYPE)
    header = jwt.get_unverified_header(form["client_assertion"])
    assert header["alg"] == algorithm and header.get("kid") == options.get("key_id")
    claims = jwt.decode(form["client_assertion"], public, algorithms=[algorithm],
                        audience=issuer.token_url)
    assert claims["iss"] == claims["sub"] == CLIENT
    assert claims["exp"] - claims["iat"] == 60
    assert abs(claims["iat"] - time.time()) < 5
    assert len(claims["jti"]) >= 16


def test_every_request_gets_a_new_jti(
    issuer: LocalIssuer, make: Callable[..., OAuth2ClientCredentialsSource]
) -> None:
    source = make()
    for _ in range(3):
        source(NO_KEY)
    jtis = {assertion_of(issuer, i)[1]["jti"] for i in range(3)}
    assert len(jtis) == 3


def test_a_retry_after_a_failure_signs_a_new_assertion(
    issuer: LocalIssuer, make: Callable[..., OAuth2ClientCredentialsSource]
) -> None:
    issuer.fail(503, count=1)
    with TokenClient(make()) as client:
        assert client.get_token()  # the engine retried; the retry was not a replay
    assert issuer.request_count("oauth") == 2
    assert assertion_of(issuer, 0)[1]["jti"] != assertion_of(issuer, 1)[1]["jti"]


def test_replayed_assertion_is_refused(
    issuer: LocalIssuer, make: Callable[..., OAuth2ClientCredentialsSource]
) -> None:
    make()(NO_KEY)
    captured = issuer.requests("oauth")[0].body
    replay = requests.post(issuer.token_url, data=captured, timeout=TIMEOUT,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert replay.status_code == 401
    assert replay.json() == {"error": "invalid_client",
                             "error_description": "client_assertion jti was already used "
                                                  "(replay)"}


@pytest.mark.parametrize("form", [
    lambda key: pem(key).decode(),
    lambda key: pem(key),
    lambda key: "\n  " + pem(key).decode() + "\n",
    lambda key: key.private_bytes(serialization.Encoding.DER,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
    lambda key: key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()).decode(),
    "path-str", "path",
])
def test_key_as_pem_der_path_or_object(
    issuer: LocalIssuer, make: Callable[..., OAuth2ClientCredentialsSource], form: Any,
    tmp_path: Path,
) -> None:
    if isinstance(form, str):
        file = tmp_path / "client.pem"
        file.write_bytes(pem(EC_KEY))
        value: Any = str(file) if form == "path-str" else file
    else:
        value = form(EC_KEY)
    assert make(private_key=value)(NO_KEY).claims["sub"] == CLIENT


# -- what the server refuses, and what the user reads ------------------------------------------


@pytest.mark.parametrize(("options", "offset", "says"), [
    ({"private_key": OTHER_RSA_KEY}, 0, "signature does not verify (RS256)"),
    ({"private_key": RSA_KEY, "key_id": "retired"}, 0, "no registered client key for kid"),
    ({"private_key": RSA_KEY, "key_id": KID, "assertion_audience": "https://other.example/t"},
     0, "aud must be the token endpoint"),
    ({"private_key": RSA_KEY, "key_id": KID}, 3600, "has expired"),  # issuer clock an hour on
    ({"private_key": RSA_KEY, "key_id": KID}, -3600, "iat is in the future"),
    ({"private_key": RSA_KEY, "key_id": KID, "assertion_lifetime": 601}, 0, "assertion_lifetime"),
])
def test_refused_assertions(
    issuer: LocalIssuer, make: Callable[..., OAuth2ClientCredentialsSource],
    options: dict[str, Any], offset: float, says: str,
) -> None:
    issuer.clock_offset = offset
    try:
        source = make(**options)
    except ConfigurationError as exc:  # refused before any request: assertions stay short
        assert says in str(exc)
        return
    with pytest.raises(TokenRejectedError) as caught:
        source(NO_KEY)
    message = str(caught.value)
    assert (caught.value.status, caught.value.code) == (401, "invalid_client")
    assert says in message
    assert "the server must have the public key registered" in message
    assert_clean(message + repr(caught.value) + repr(source))


def test_issuer_refuses_mixed_or_malformed_client_authentication(issuer: LocalIssuer) -> None:
    url = issuer.token_url
    for data, auth, code in [
        ({"grant_type": "client_credentials", "client_assertion_type": "urn:x",
          "client_assertion": "a.b.c"}, None, "invalid_request"),
        ({"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
          "client_assertion": "a.b.c"}, (CLIENT, SECRET), "invalid_request"),
        ({"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
          "client_assertion": "not-a-jwt"}, None, "invalid_client"),
    ]:
        got = requests.post(url, data=data, auth=auth, timeout=TIMEOUT)
        assert got.json()["error"] == code, data


def test_unsigned_assertion_is_refused(issuer: LocalIssuer) -> None:
    now = int(time.time())
    unsigned = jwt.encode({"iss": CLIENT, "sub": CLIENT, "aud": issuer.token_url, "jti": "x1",
                           "iat": now, "exp": now + 60}, None, algorithm="none")
    got = requests.post(issuer.token_url, timeout=TIMEOUT, data={
        "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": unsigned})
    assert got.status_code == 401 and "not allowed" in got.json()["error_description"]


@pytest.mark.parametrize(("status", "code", "error"), [
    (400, "invalid_request", TokenRejectedError), (401, "invalid_client", TokenRejectedError),
    (403, "access_denied", TokenRejectedError), (409, "conflict", TokenRejectedError),
    (422, "invalid_request", TokenRejectedError), (429, "too_many_requests", TokenFetchError),
    (500, "server_error", TokenFetchError), (503, "temporarily_unavailable", TokenFetchError),
])
def test_error_table_with_an_assertion(
    issuer: LocalIssuer, make: Callable[..., OAuth2ClientCredentialsSource], status: int,
    code: str, error: type[TokenError],
) -> None:
    issuer.fail(status, code=code)
    with pytest.raises(error) as caught:
        make()(NO_KEY)
    assert type(caught.value) is error
    assert (caught.value.status, caught.value.code) == (status, code)
    assert f"HTTP {status} ({code})" in str(caught.value)
    assert_clean(str(caught.value))
    if status in (401, 403):  # the hint is about the key, never about a client secret
        assert "the server must have the public key registered" in str(caught.value)
        assert "client_secret" not in str(caught.value)


# -- client_secret_jwt --------------------------------------------------------------------------


def test_client_secret_jwt(
    issuer: LocalIssuer, make: Callable[..., OAuth2ClientCredentialsSource]
) -> None:
    source = make(SECRET, auth_method="client_secret_jwt")
    assert source(NO_KEY).claims["sub"] == CLIENT
    form = issuer.requests("oauth")[0].form()
    assert "client_secret" not in form and form["client_assertion_type"] == ASSERTION_TYPE
    claims = jwt.decode(form["client_assertion"], SECRET, algorithms=["HS256"],
                        audience=issuer.token_url)
    assert claims["iss"] == claims["sub"] == CLIENT
    assert jwt.get_unverified_header(form["client_assertion"]) == {"alg": "HS256", "typ": "JWT"}
    assert_clean(repr(source) + source.identity)


def test_client_secret_jwt_wrong_secret(
    make: Callable[..., OAuth2ClientCredentialsSource]
) -> None:
    source = make("wrong_0123456789abcdef0123456789abcdef", auth_method="client_secret_jwt")
    with pytest.raises(TokenRejectedError) as caught:
        source(NO_KEY)
    assert caught.value.code == "invalid_client"
    assert "signature does not verify (HS256)" in str(caught.value)
    assert "wrong_0123" not in str(caught.value)


def test_short_secret_for_hs256_warns_once_at_construction(
    issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="swr_token"):
        source = OAuth2ClientCredentialsSource(issuer.token_url, CLIENT, "short_secret",
                                               auth_method="client_secret_jwt", timeout=TIMEOUT)
    assert [r.message for r in caplog.records if "32 bytes" in r.message]
    assert "short_secret" not in caplog.text
    source.close()


# -- configuration ------------------------------------------------------------------------------


def _encrypted() -> bytes:
    return EC_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(b"pw"))


@pytest.mark.parametrize(("args", "options", "says"), [
    (("s",), {"private_key": EC_KEY}, "leave client_secret out"),
    ((), {"auth_method": "private_key_jwt"}, "needs private_key="),
    ((), {}, "client_secret is missing"),
    (("s",), {"key_id": "k"}, "are for auth_method='private_key_jwt'"),
    (("s",), {"auth_method": "client_secret_post", "private_key": EC_KEY}, "private_key is for"),
    ((SECRET,), {"auth_method": "client_secret_jwt", "signing_algorithm": "RS256"},
     "signs with HS256"),
    ((), {"private_key": EC_KEY.public_key()}, "is a public key"),
    ((), {"private_key": _encrypted()}, "encrypted with a password"),
    ((), {"private_key": PEM_BODY}, "could not be read"),  # key material, not a path
    ((), {"private_key": f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----"},
     "could not be parsed"),
    ((), {"private_key": Path("/nonexistent/key.pem")}, "'/nonexistent/key.pem' could not be"),
    ((), {"private_key": 42}, "has type int"),
    ((), {"private_key": rsa.generate_private_key(public_exponent=65537, key_size=1024)},
     "at least 2048"),
    ((), {"private_key": ec.generate_private_key(ec.SECP384R1())}, "needs a P-256 key"),
    ((), {"private_key": EC_KEY, "signing_algorithm": "RS256"}, "does not fit an EC key"),
    ((), {"private_key": RSA_KEY, "signing_algorithm": "ES256"}, "does not fit an RSA key"),
    ((), {"private_key": RSA_KEY, "signing_algorithm": "HS256"}, "does not fit an RSA key"),
    ((), {"private_key": EC_KEY, "assertion_lifetime": 0}, "assertion_lifetime"),
    ((), {"private_key": EC_KEY, "key_id": ""}, "key_id"),
    ((), {"private_key": EC_KEY, "assertion_audience": "http://example.com/t"}, "https://"),
    ((), {"private_key": EC_KEY, "auth_method": "tls_client_auth"}, "auth_method must be"),
])
def test_bad_configuration(args: tuple[Any, ...], options: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        OAuth2ClientCredentialsSource("https://auth.example.com/token", CLIENT, *args, **options)
    assert says in str(caught.value)
    assert_clean(str(caught.value))
    assert caught.value.__cause__ is None  # a parser's exception might quote the key


def test_repr_and_identity_hold_no_key(make: Callable[..., OAuth2ClientCredentialsSource]) -> None:
    source = make()
    assert "private_key='***'" in repr(source)
    assert_clean(repr(source) + source.identity)


def test_identity_follows_the_key_and_the_resource(issuer: LocalIssuer) -> None:
    url = issuer.token_url

    def identity(**options: Any) -> str:
        source = OAuth2ClientCredentialsSource(url, CLIENT, **options)
        source.close()
        return source.identity

    base = identity(private_key=RSA_KEY, key_id=KID)
    assert base == identity(private_key=pem(RSA_KEY), key_id=KID)  # same key, other form
    others = {identity(private_key=OTHER_RSA_KEY, key_id=KID),
              identity(private_key=RSA_KEY, key_id=KID, signing_algorithm="PS256"),
              identity(private_key=RSA_KEY, key_id=KID, resource="https://a.example/"),
              identity(private_key=RSA_KEY, key_id=KID,
                       resource=["https://a.example/", "https://b.example/"]),
              identity(client_secret=SECRET)}
    assert base not in others and len(others) == 5


# -- RFC 8707 resource indicators ---------------------------------------------------------------


def test_resource_one_or_many_beside_audience(
    issuer: LocalIssuer, make: Callable[..., OAuth2ClientCredentialsSource]
) -> None:
    one = make(resource="https://orders.example.com/")(NO_KEY)
    assert one.claims["aud"] == "https://orders.example.com/"
    many = make(resource=["https://a.example/", "https://b.example/", "https://a.example/"],
                audience="urn:auth0-style")(NO_KEY)
    sent = issuer.requests("oauth")[1]
    assert sent.form_values("resource") == ["https://a.example/", "https://b.example/"]
    assert sent.form()["audience"] == "urn:auth0-style" == many.claims["aud"]


@pytest.mark.parametrize(("resource", "says"), [
    ("orders", "absolute URI"), ("https://a.example/#frag", "fragment"), ("", "absolute URI"),
    (["https://a.example/", 3], "absolute URI"), ("https://a.example/ x", "whitespace"),
])
def test_bad_resource(resource: Any, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        OAuth2ClientCredentialsSource("https://auth.example.com/token", CLIENT, SECRET,
                                      resource=resource)


def test_resource_and_extra_params_resource_clash() -> None:
    with pytest.raises(ConfigurationError, match="extra_params may not set resource"):
        OAuth2ClientCredentialsSource("https://auth.example.com/token", CLIENT, SECRET,
                                      resource="https://a.example/",
                                      extra_params={"resource": "https://b.example/"})


def test_client_secret_stays_positional() -> None:
    source = OAuth2ClientCredentialsSource("https://auth.example.com/token", CLIENT, SECRET)
    assert "auth_method='client_secret_basic'" in repr(source)
    source.close()
