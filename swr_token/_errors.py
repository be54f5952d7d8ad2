"""The exceptions swr_token raises; every one is a :class:`TokenError`.

Messages say what failed and what to do about it. They never contain a secret or a token.
"""

from __future__ import annotations

import contextlib
import copy

__all__ = [
    "PROGRAMMING_ERRORS",
    "ClientClosedError",
    "ConfigurationError",
    "InvalidTokenError",
    "TimedOutError",
    "TokenError",
    "TokenFetchError",
    "TokenRejectedError",
    "caller_copy",
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


class TimedOutError(TokenFetchError):
    """A wait ran out of time: a caller's own ``timeout=``, or a fetch's budget with a
    request still hanging. ``last_error`` is the last failed attempt's error, if any.

    Not exported: a :class:`TokenFetchError` to users; the CLI tells it apart to name
    ``--timeout`` rather than the Python arguments.
    """

    def __init__(self, message: str, *, last_error: TokenError | None = None) -> None:
        super().__init__(message)
        self.last_error = last_error


class InvalidTokenError(TokenError):
    """The token itself is unusable: not parseable, no expiry, already expired, not a string."""


class ClientClosedError(TokenError):
    """The :class:`TokenClient` was closed; make a new one to get tokens again."""


class ConfigurationError(TokenError, ValueError):
    """A bad argument at construction time (for example a plain ``http://`` URL)."""


#: Exceptions that mean the token source has a bug, not that the issuer is down (SPEC §9):
#: never retried, raised to the waiting callers as they are, traceback logged once.
PROGRAMMING_ERRORS: tuple[type[Exception], ...] = (
    NameError, TypeError, AttributeError, ImportError, NotImplementedError,
)

# Attributes of the built-in exceptions above that ``copy.copy`` does not carry over.
_BUILTIN_ATTRIBUTES = ("name", "obj", "path", "name_from")


def caller_copy(error: Exception) -> Exception:
    """A copy of a shared failure for one caller to raise.

    A failure shared by many callers (single-flight, fail-fast) must not be raised as one
    object: each ``raise`` prepends the raising frames to its ``__traceback__``, so it would
    grow (and keep those frames alive) with every caller, and threads would race on it. The
    copy starts from the original's traceback (where it failed) and keeps its cause.
    """
    try:
        twin = copy.copy(error)
    except Exception:  # an exception class copy cannot rebuild: raise the original
        return error
    if type(twin) is not type(error):  # pragma: no cover - a __reduce__ that lies
        return error
    for name in _BUILTIN_ATTRIBUTES:
        if hasattr(error, name):
            with contextlib.suppress(AttributeError, TypeError):  # read-only on some
                setattr(twin, name, getattr(error, name))
    twin.__cause__ = error.__cause__
    twin.__context__ = error.__context__
    twin.__suppress_context__ = error.__suppress_context__
    return twin.with_traceback(error.__traceback__)
