"""swr_token: short-lived auth tokens for threaded Python, served stale-while-revalidate.

A fresh token costs a dictionary read; a stale one is served at once while one background
refresh runs; only a token about to die makes callers wait, and they share one request.
"""

from ._auth import BearerAuth, bearer_session
from ._client import TokenClient
from ._clock import Clock, SystemClock
from ._errors import (
    ClientClosedError,
    ConfigurationError,
    InvalidTokenError,
    TokenError,
    TokenFetchError,
    TokenRejectedError,
)
from ._executor import DaemonThreadPoolExecutor
from ._redis import RedisStore
from ._request import TokenRequest
from ._retry import RetryPolicy
from ._sources import ClerkBackendSource, OAuth2ClientCredentialsSource
from ._store import TokenStore
from ._token import Freshness, Token, classify
from ._verify import JWKSVerifier
from ._version import __version__

__all__ = [
    "BearerAuth",
    "ClerkBackendSource",
    "ClientClosedError",
    "Clock",
    "ConfigurationError",
    "DaemonThreadPoolExecutor",
    "Freshness",
    "InvalidTokenError",
    "JWKSVerifier",
    "OAuth2ClientCredentialsSource",
    "RedisStore",
    "RetryPolicy",
    "SystemClock",
    "Token",
    "TokenClient",
    "TokenError",
    "TokenFetchError",
    "TokenRejectedError",
    "TokenRequest",
    "TokenStore",
    "__version__",
    "bearer_session",
    "classify",
]
