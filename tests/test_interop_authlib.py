"""Client assertions against an independent implementation: authlib (RFC 7523).

Our source's assertions pass authlib's server-side verifier, and assertions authlib signs
pass LocalIssuer's, so neither side only agrees with itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from swr_token import OAuth2ClientCredentialsSource, TokenRequest
from swr_token.testing import LocalIssuer

rfc7523 = pytest.importorskip("authlib.oauth2.rfc7523")
InvalidClientError = pytest.importorskip("authlib.oauth2.rfc6749").InvalidClientError

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
SECRET = "interop_0123456789abcdef0123456789abcdef"
CLIENT = "interop-client"
TIMEOUT = (2.0, 5.0)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class _Client:
    def __init__(self, key: Any) -> None:
        self.key = key

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token"


class _Request:
    def __init__(self, form: dict[str, str]) -> None:
        self.form = form
        self.client: Any = None


def authlib_verifier(token_url: str, key: Any) -> Any:
    """authlib's RFC 7523 verifier, wired to one client and an in-memory jti set."""
    seen: set[str] = set()

    class Verifier(rfc7523.JWTBearerClientAssertion):  # type: ignore[misc, name-defined]
        def get_audiences(self) -> list[str]:
            return [token_url]

        def validate_jti(self, claims: Any, jti: str) -> bool:
            if jti in seen:
                return False
            seen.add(jti)
            return True

        def resolve_client_public_key(self, client: _Client) -> Any:
            return client.key

        def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
            # joserfc refuses PS256 unless asked for ("not recommended"); a server that
            # takes PS256 names it, as here. The signature check is still joserfc's.
            from joserfc import jwt
            from joserfc.errors import JoseError

            try:
                token = jwt.decode(assertion, resolve_key,
                                   algorithms=["RS256", "PS256", "ES256", "HS256"])
            except JoseError as exc:
                raise InvalidClientError(description=exc.description) from exc
            self.verify_claims(token.claims)
            return token.claims

    verifier = Verifier(leeway=5)
    client = _Client(key)
    return lambda form: verifier(lambda cid: client if cid == CLIENT else None, _Request(form))


def joserfc_key(key: Any) -> Any:
    """The verification key as joserfc's own type (no implicit key-type guessing)."""
    from joserfc.jwk import ECKey, OctKey, RSAKey

    if isinstance(key, str):
        return OctKey.import_key(key)
    return (ECKey if isinstance(key, ec.EllipticCurvePublicKey) else RSAKey).import_key(key)


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer(client_id=CLIENT, client_secret=SECRET) as iss:
        iss.register_client_key(RSA_KEY)
        iss.register_client_key(EC_KEY, kid="ec-1")
        yield iss


@pytest.mark.parametrize(("options", "public"), [
    ({"private_key": RSA_KEY}, RSA_KEY.public_key()),
    ({"private_key": RSA_KEY, "signing_algorithm": "PS256"}, RSA_KEY.public_key()),
    ({"private_key": EC_KEY, "key_id": "ec-1"}, EC_KEY.public_key()),
    ({"client_secret": SECRET, "auth_method": "client_secret_jwt"}, SECRET),
])
def test_our_assertions_pass_authlibs_verifier(
    issuer: LocalIssuer, options: dict[str, Any], public: Any
) -> None:
    source = OAuth2ClientCredentialsSource(issuer.token_url, CLIENT, timeout=TIMEOUT, **options)
    source(TokenRequest())
    source.close()
    form = issuer.requests("oauth")[-1].form()
    key = joserfc_key(public)
    verify = authlib_verifier(issuer.token_url, key)
    assert verify(form).key == key  # authenticated: authlib returns the client
    with pytest.raises(InvalidClientError, match="used before"):
        verify(form)  # and authlib, too, refuses the replay


def test_a_tampered_assertion_fails_authlib(issuer: LocalIssuer) -> None:
    source = OAuth2ClientCredentialsSource(issuer.token_url, CLIENT, private_key=RSA_KEY,
                                           timeout=TIMEOUT)
    source(TokenRequest())
    source.close()
    form = issuer.requests("oauth")[-1].form()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    verify = authlib_verifier(issuer.token_url, joserfc_key(other))
    with pytest.raises(InvalidClientError):
        verify(form)


@pytest.mark.parametrize("method", ["private_key_jwt_rsa", "private_key_jwt_ec",
                                    "client_secret_jwt"])
def test_authlibs_assertions_pass_local_issuer(issuer: LocalIssuer, method: str) -> None:
    from joserfc.jwk import ECKey, OctKey, RSAKey

    if method == "client_secret_jwt":
        assertion = rfc7523.client_secret_jwt_sign(OctKey.import_key(SECRET), CLIENT,
                                                   issuer.token_url)
    elif method == "private_key_jwt_ec":
        assertion = rfc7523.private_key_jwt_sign(ECKey.import_key(EC_KEY), CLIENT,
                                                 issuer.token_url, alg="ES256",
                                                 header={"alg": "ES256", "kid": "ec-1"})
    else:
        assertion = rfc7523.private_key_jwt_sign(RSAKey.import_key(RSA_KEY), CLIENT,
                                                 issuer.token_url)
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion}
    first = requests.post(issuer.token_url, data=form, timeout=TIMEOUT)
    assert first.status_code == 200, first.text
    assert first.json()["token_type"] == "Bearer"
    replay = requests.post(issuer.token_url, data=form, timeout=TIMEOUT)
    assert replay.status_code == 401 and "replay" in replay.json()["error_description"]


def test_authlib_assertion_for_another_endpoint_is_refused(issuer: LocalIssuer) -> None:
    from joserfc.jwk import RSAKey

    assertion = rfc7523.private_key_jwt_sign(RSAKey.import_key(RSA_KEY), CLIENT,
                                             "https://elsewhere.example/token",
                                             issued_at=int(time.time()))
    got = requests.post(issuer.token_url, timeout=TIMEOUT, data={
        "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion})
    assert got.status_code == 401 and "aud" in got.json()["error_description"]
