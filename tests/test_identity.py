"""Source identities: stable, different for every configuration that mints other tokens, and
never holding the credential."""

from __future__ import annotations

import base64
import urllib.parse

from swr_token import ClerkBackendSource, OAuth2ClientCredentialsSource
from swr_token._identity import clerk_identity, oauth2_identity

SECRET = "sk_test_identity_secret_123"


def _encodings(secret: str) -> list[str]:
    return [secret, base64.b64encode(secret.encode()).decode(), urllib.parse.quote(secret),
            secret[4:20]]


def test_clerk_identity_is_stable_and_tells_instances_and_keys_apart() -> None:
    one = ClerkBackendSource(SECRET, api_url="http://127.0.0.1:9/v1")
    assert one.identity == ClerkBackendSource(SECRET, api_url="http://127.0.0.1:9/v1/").identity
    assert one.identity == clerk_identity("http://127.0.0.1:9/v1", SECRET)  # the CLI's path
    others = {
        ClerkBackendSource(SECRET, api_url="http://127.0.0.1:10/v1").identity,
        ClerkBackendSource(SECRET + "x", api_url="http://127.0.0.1:9/v1").identity,
    }
    assert one.identity not in others and len(others) == 2
    assert one.identity.startswith("clerk http://127.0.0.1:9/v1 #")
    for shown in _encodings(SECRET):
        assert shown not in one.identity


def test_oauth2_identity_covers_client_scope_audience_and_secret() -> None:
    url = "https://auth.example.com/oauth/token?tenant=a"  # user-info is refused outright
    base = OAuth2ClientCredentialsSource(url, "client-a", SECRET, scope="read")
    assert base.identity == oauth2_identity(url, "client-a", SECRET, scope="read",
                                            audience=None)
    variants = [
        OAuth2ClientCredentialsSource(url, "client-b", SECRET, scope="read"),
        OAuth2ClientCredentialsSource(url, "client-a", SECRET + "2", scope="read"),
        OAuth2ClientCredentialsSource(url, "client-a", SECRET, scope="write"),
        OAuth2ClientCredentialsSource(url, "client-a", SECRET, scope="read", audience="api"),
        OAuth2ClientCredentialsSource(url.replace("tenant=a", "tenant=b"), "client-a", SECRET,
                                      scope="read"),
    ]
    assert len({base.identity, *(v.identity for v in variants)}) == 6
    assert "tenant" not in base.identity
    assert "https://auth.example.com/oauth/token client_id=client-a scope=read #" \
        in base.identity
    for shown in _encodings(SECRET):
        assert shown not in base.identity
