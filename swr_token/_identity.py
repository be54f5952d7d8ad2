"""Stable, non-secret names for token sources, so shared stores never mix two issuers' tokens.

An identity reads like ``clerk https://api.clerk.com/v1 #3f9a...``: the kind, the endpoint
without user-info or query, the non-secret settings that change which token is minted, and a
truncated HMAC-SHA256 of the credential (with the full URL) under a fixed label. Two sources
with a different instance, client or credential get different identities; the credential
cannot be read back from one. No imports beyond the standard library: the CLI computes an
identity on its cached path without loading the HTTP stack.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping

TYPE_CHECKING = False  # not typing's: a cached `swr-token get` must not import typing
if TYPE_CHECKING:
    from typing import Any

__all__ = ["M2M_DEFAULT_SECONDS", "clerk_identity", "clerk_m2m_identity", "credential_tag",
           "oauth2_identity", "source_identity_of"]

#: ``ClerkM2MSource``'s default ``seconds_until_expiration``; here so that the CLI's cached
#: path computes the same identity without importing the HTTP stack.
M2M_DEFAULT_SECONDS = 3600

_LABEL = b"swr_token source identity v1"


def credential_tag(*parts: str) -> str:
    """A short keyed hash of ``parts`` (a credential and what it is used with): 64 bits are
    plenty to tell sources apart, and reveal nothing of a high-entropy secret."""
    message = "\0".join(parts).encode("utf-8", "surrogatepass")
    return hmac.new(_LABEL, message, hashlib.sha256).hexdigest()[:16]


def _public_url(url: str) -> str:
    """Scheme, host, port and path: user-info, query and fragment may carry credentials.

    Split by hand (RFC 3986 delimiters): ``urllib.parse`` would cost a cached CLI call more
    than everything else it does."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return ""
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    path = tail[:min((i for i in map(tail.find, "?#") if i >= 0), default=len(tail))]
    return f"{scheme}://{authority.rpartition('@')[2]}{path}"


def source_identity_of(kind: str, url: str, credential: str,
                       settings: tuple[tuple[str, str | None], ...] = ()) -> str:
    """The identity of a ``kind`` source posting to ``url`` with ``credential``.

    ``settings`` are the non-secret options that change the token (client id, scope,
    audience, ...); ``None`` values are left out.
    """
    shown = " ".join(f"{name}={value}" for name, value in settings if value is not None)
    tag = credential_tag(url, credential, shown)
    return f"{kind} {_public_url(url)}{' ' + shown if shown else ''} #{tag}"


def clerk_identity(api_url: str, secret_key: str) -> str:
    """``ClerkBackendSource.identity`` from its settings (the CLI's cached path computes it
    without building a source)."""
    return source_identity_of("clerk", api_url.rstrip("/"), secret_key)


def oauth2_identity(token_url: str, client_id: str, client_secret: str, *,
                    scope: str | None, audience: str | None,
                    resource: tuple[str, ...] = ()) -> str:
    """``OAuth2ClientCredentialsSource.identity`` from its settings. ``client_secret`` is the
    credential: the secret, or for ``private_key_jwt`` the public key's thumbprint."""
    return source_identity_of("oauth2", token_url, client_secret, (
        ("client_id", client_id), ("scope", scope or None), ("audience", audience or None),
        ("resource", " ".join(resource) or None)))


def clerk_m2m_identity(api_url: str, machine_secret_key: str, *, token_format: str,
                       seconds_until_expiration: int | None,
                       claims: Mapping[str, Any] | None) -> str:
    """``ClerkM2MSource.identity``: the format, the lifetime asked for (``never`` for
    non-expiring tokens) and a hash of the claims (which may be long) are all part of it."""
    claims_tag = None if claims is None else hashlib.sha256(
        json.dumps(dict(claims), sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    seconds = "never" if seconds_until_expiration is None else str(seconds_until_expiration)
    return source_identity_of("clerk-m2m", api_url.rstrip("/"), machine_secret_key, (
        ("format", token_format), ("seconds", seconds), ("claims", claims_tag)))
