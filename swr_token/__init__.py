"""swr_token: short-lived auth tokens for threaded Python, served stale-while-revalidate.

A fresh token costs a dictionary read; a stale one is served at once while one background
refresh runs; only a token about to die makes callers wait, and they share one request.

The public names are imported on first use (PEP 562), so ``import swr_token`` for the engine
alone does not load the HTTP stack, and a cached ``swr-token get`` starts fast.
"""

from __future__ import annotations

from ._errors import (
    ClientClosedError,
    ConfigurationError,
    InvalidTokenError,
    TokenError,
    TokenFetchError,
    TokenRejectedError,
)
from ._lazy import lazy_attributes
from ._version import __version__

# Not typing.TYPE_CHECKING: importing typing would cost a cached CLI call ~2 ms. Type
# checkers treat any TYPE_CHECKING as true, and see these imports; at run time, __getattr__.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._auth import BearerAuth, bearer_session
    from ._clerk_m2m import ClerkM2MSource
    from ._client import TokenClient
    from ._clock import Clock, SystemClock
    from ._executor import DaemonThreadPoolExecutor
    from ._filestore import FileStore
    from ._redis import RedisStore
    from ._request import TokenRequest, attempt_budget
    from ._retry import RetryPolicy
    from ._sources import ClerkBackendSource, OAuth2ClientCredentialsSource
    from ._store import StoredToken, TokenStore, source_identity
    from ._token import Freshness, Token, classify
    from ._verify import JWKSVerifier

del TYPE_CHECKING  # not part of the public surface

__all__ = [
    "BearerAuth",
    "ClerkBackendSource",
    "ClerkM2MSource",
    "ClientClosedError",
    "Clock",
    "ConfigurationError",
    "DaemonThreadPoolExecutor",
    "FileStore",
    "Freshness",
    "InvalidTokenError",
    "JWKSVerifier",
    "OAuth2ClientCredentialsSource",
    "RedisStore",
    "RetryPolicy",
    "StoredToken",
    "SystemClock",
    "Token",
    "TokenClient",
    "TokenError",
    "TokenFetchError",
    "TokenRejectedError",
    "TokenRequest",
    "TokenStore",
    "__version__",
    "attempt_budget",
    "bearer_session",
    "classify",
    "source_identity",
]

# Public name -> the private module defining it.
_LAZY = {
    "BearerAuth": "._auth",
    "bearer_session": "._auth",
    "ClerkM2MSource": "._clerk_m2m",
    "TokenClient": "._client",
    "Clock": "._clock",
    "SystemClock": "._clock",
    "DaemonThreadPoolExecutor": "._executor",
    "FileStore": "._filestore",
    "RedisStore": "._redis",
    "TokenRequest": "._request",
    "attempt_budget": "._request",
    "RetryPolicy": "._retry",
    "ClerkBackendSource": "._sources",
    "OAuth2ClientCredentialsSource": "._sources",
    "TokenStore": "._store",
    "StoredToken": "._store",
    "source_identity": "._store",
    "Freshness": "._token",
    "Token": "._token",
    "classify": "._token",
    "JWKSVerifier": "._verify",
}


__getattr__, __dir__ = lazy_attributes(globals(), _LAZY)
del lazy_attributes  # not part of the public surface
