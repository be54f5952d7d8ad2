"""The exceptions swr_token raises; every one is a :class:`TokenError`.

Messages say what failed and what to do about it. They never contain a secret or a token.
"""

from __future__ import annotations

__all__ = [
    "ClientClosedError",
    "ConfigurationError",
    "InvalidTokenError",
    "TokenError",
    "TokenFetchError",
    "TokenRejectedError",
]


class TokenError(Exception):
    """Base class of every error raised by swr_token.

    ``status`` is the issuer's HTTP status and ``code`` its error code, when known.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class TokenRejectedError(TokenError):
    """The issuer refused: bad credentials, unknown or ended session, bad request.

    Never retried: asking again with the same input gets the same answer.
    """


class TokenFetchError(TokenError):
    """A transient failure: network, timeout, 5xx, 429. Worth retrying later.

    ``retry_after`` holds the issuer's ``Retry-After`` in seconds when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class InvalidTokenError(TokenError):
    """The token itself is unusable: not parseable, no expiry, already expired, not a string."""


class ClientClosedError(TokenError):
    """The :class:`TokenClient` was closed; make a new one to get tokens again."""


class ConfigurationError(TokenError, ValueError):
    """A bad argument at construction time (for example a plain ``http://`` URL)."""
