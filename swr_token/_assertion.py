"""JWT client assertions for OAuth2 client authentication (RFC 7523 section 2.2).

``private_key_jwt`` signs with the client's private key (RS256, PS256, ES256);
``client_secret_jwt`` with HMAC-SHA256 over the client secret (OpenID Connect Core section 9).
Each token request gets a new assertion: ``iss`` = ``sub`` = the client id, ``aud`` = the token
endpoint, a unique ``jti``, ``iat`` and a short ``exp``. No key material ever reaches a
message, a log line or a ``repr``. ``jwt`` and ``cryptography`` load only when a key is used.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
from typing import TYPE_CHECKING, Any

from ._errors import ConfigurationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    PrivateKey = RSAPrivateKey | EllipticCurvePrivateKey

__all__ = [
    "ASSERTION_TYPE",
    "DEFAULT_ASSERTION_LIFETIME",
    "KEY_ALGORITHMS",
    "SECRET_ALGORITHMS",
    "ClientAssertion",
    "check_key_algorithm",
    "load_private_key",
    "public_key_thumbprint",
]

_log = logging.getLogger("swr_token")

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Seconds an assertion is valid: long enough for a slow request, short enough that a
#: captured one is soon useless (servers also refuse a replayed ``jti``).
DEFAULT_ASSERTION_LIFETIME = 60
_MAX_ASSERTION_LIFETIME = 600
KEY_ALGORITHMS = ("RS256", "PS256", "ES256")
SECRET_ALGORITHMS = ("HS256",)
_MAX_KEY_FILE = 64 * 1024
_HOW = ("pass private_key= as PEM text, the path of a PEM file, or a loaded "
        "cryptography private key object")


def load_private_key(value: object) -> PrivateKey:
    """``value`` (PEM text or bytes, a path, or a key object) as an RSA or EC private key.

    Errors name what is wrong, never the value: it may be the key itself.
    """
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(value, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return value
    if isinstance(value, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ConfigurationError(
            "private_key is a public key; sign with the private key and register its public "
            "key with the authorization server"
        )
    key = _parse_key(_key_bytes(value))
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigurationError(
            f"private_key is a {type(key).__name__}; use an RSA or EC (P-256) private key"
        )
    return key


def _key_bytes(value: object) -> bytes:
    """The key's encoded bytes: given, PEM text, or read from a file."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.strip().encode("ascii", "replace")
    if isinstance(value, str | os.PathLike):
        return _read_key_file(value)
    raise ConfigurationError(f"private_key has type {type(value).__name__}; {_HOW}")


def _parse_key(data: bytes) -> object:
    """``data`` (PEM or DER, unencrypted) as a private key of whatever type it holds."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return serialization.load_pem_private_key(data.strip(), password=None)
        return serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise ConfigurationError(
            "private_key is encrypted with a password; decrypt it, or load it with "
            "cryptography's load_pem_private_key(data, password) and pass the key object"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        # Never chained: the parser's exception might quote the data.
        raise ConfigurationError(
            f"private_key could not be parsed as a private key ({type(exc).__name__}); {_HOW}"
        ) from None


def _read_key_file(path: str | os.PathLike[str]) -> bytes:
    # A str that is not PEM might be key material: name a Path, never echo a str.
    shown = f"file {os.fspath(path)!r}" if isinstance(path, os.PathLike) else "path"
    if isinstance(path, str) and ("\n" in path or len(path) > 4096):
        raise ConfigurationError(f"private_key is neither PEM text nor a file path; {_HOW}")
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigurationError(
            f"private_key {shown} could not be read ({reason}); {_HOW}"
        ) from None
    if len(data) > _MAX_KEY_FILE:
        raise ConfigurationError(
            f"private_key {shown} is larger than {_MAX_KEY_FILE} bytes; it should hold "
            "one private key"
        )
    return data


def public_key_thumbprint(key: PrivateKey) -> str:
    """SHA-256 of the public key (DER, SubjectPublicKeyInfo), hex: names the key, reveals
    nothing of the private one."""
    from cryptography.hazmat.primitives import serialization

    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def check_key_algorithm(key: PrivateKey, algorithm: str | None) -> str:
    """The signing algorithm for ``key``: ``algorithm``, or RS256 / ES256 by the key type."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = algorithm or "RS256"
        if algorithm not in ("RS256", "PS256"):
            raise ConfigurationError(
                f"signing_algorithm {algorithm!r} does not fit an RSA key; use RS256 or PS256"
            )
        if key.key_size < 2048:
            raise ConfigurationError(
                f"the RSA private key has {key.key_size} bits; RFC 7518 requires at least "
                "2048: generate a larger key"
            )
        return algorithm
    algorithm = algorithm or "ES256"
    if algorithm != "ES256":
        raise ConfigurationError(
            f"signing_algorithm {algorithm!r} does not fit an EC key; use ES256"
        )
    if not isinstance(key.curve, ec.SECP256R1):
        raise ConfigurationError(
            f"ES256 needs a P-256 key; this one is on {key.curve.name}: generate a P-256 key"
        )
    return algorithm


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class ClientAssertion:
    """Makes the signed ``client_assertion`` for one client at one token endpoint."""

    __slots__ = ("_algorithm", "_audience", "_client_id", "_header", "_key", "_lifetime",
                 "_secret")

    def __init__(
        self, *, client_id: str, audience: str, algorithm: str, key_id: str | None,
        lifetime: int, private_key: PrivateKey | None = None, secret: str | None = None,
    ) -> None:
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or not (
                1 <= lifetime <= _MAX_ASSERTION_LIFETIME):
            raise ConfigurationError(
                f"assertion_lifetime must be whole seconds from 1 to {_MAX_ASSERTION_LIFETIME} "
                f"(default {DEFAULT_ASSERTION_LIFETIME}); assertions should be short-lived"
            )
        if key_id is not None and (not isinstance(key_id, str) or not key_id.strip()):
            raise ConfigurationError("key_id must be a non-empty string (the key's 'kid') or None")
        self._client_id = client_id
        self._audience = audience
        self._algorithm = algorithm
        self._lifetime = lifetime
        self._key = private_key
        self._secret = secret
        header: dict[str, Any] = {"alg": algorithm, "typ": "JWT"}
        if key_id is not None:
            header["kid"] = key_id
        self._header = header
        if secret is not None and len(secret.encode("utf-8")) < 32:
            _log.warning(
                "client_secret_jwt: the client secret is shorter than 32 bytes, below RFC "
                "7518's minimum for HS256; ask the authorization server for a longer secret "
                "or use private_key_jwt"
            )

    @property
    def algorithm(self) -> str:
        return self._algorithm

    @property
    def key_id(self) -> str | None:
        kid = self._header.get("kid")
        return kid if isinstance(kid, str) else None

    def make(self, now: float) -> str:
        """A new assertion, issued at ``now`` (epoch seconds), with a fresh ``jti``."""
        issued = int(now)
        claims = {"iss": self._client_id, "sub": self._client_id, "aud": self._audience,
                  "jti": secrets.token_urlsafe(24), "iat": issued,
                  "exp": issued + self._lifetime}
        if self._secret is not None:
            # HS256 by hand (RFC 7515 compact form): PyJWT would warn on every request about a
            # short secret the server chose; that is said once, at construction, instead.
            signing_input = ".".join(
                _b64url(json.dumps(part, separators=(",", ":")).encode())
                for part in (self._header, claims))
            mac = hmac.new(self._secret.encode("utf-8"), signing_input.encode("ascii"),
                           hashlib.sha256).digest()
            return f"{signing_input}.{_b64url(mac)}"
        import jwt

        assert self._key is not None  # one of key and secret, by construction
        headers = {k: v for k, v in self._header.items() if k != "alg"}
        return jwt.encode(claims, self._key, algorithm=self._algorithm, headers=headers)

    def __repr__(self) -> str:
        kid = f" kid={self.key_id!r}" if self.key_id else ""
        return f"<ClientAssertion {self._algorithm}{kid} key='***'>"

