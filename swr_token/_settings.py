"""A client's options, checked once and frozen: what every part of the engine reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._checks import seconds
from ._errors import ConfigurationError
from ._retry import RetryPolicy

if TYPE_CHECKING:
    from ._errors import TokenError
    from ._request import TokenRequest
    from ._token import Token

__all__ = ["Hooks", "Settings"]

TokenHook = Callable[["TokenRequest", "Token"], None]
ErrorHook = Callable[["TokenRequest", "TokenError"], None]
Verifier = Callable[["Token"], None]


@dataclass(frozen=True, slots=True)
class Settings:
    """The numbers a :class:`TokenClient` runs on (its keyword options, in seconds).

    No defaults here: they are :class:`TokenClient`'s, in one place, its signature.
    """

    poll_interval: float
    threshold: float
    margin: float
    fetch_timeout: float
    max_entries: int
    max_lifetime: float
    max_clock_skew: float
    retry: RetryPolicy

    @classmethod
    def checked(cls, *, poll_interval: object, threshold: object, margin: object,
                fetch_timeout: object, max_entries: object, max_lifetime: object,
                max_clock_skew: object, retry: RetryPolicy | None) -> Settings:
        """Check each option as :class:`TokenClient` documents it; raise
        :class:`ConfigurationError` naming the first that is wrong."""
        poll = seconds("poll_interval", poll_interval, allow_zero=False)
        threshold_s = seconds("background_refresh_threshold", threshold)
        margin_s = poll if margin is None else seconds("margin", margin)
        fetch_timeout_s = seconds("fetch_timeout", fetch_timeout, allow_zero=False)
        max_lifetime_s = seconds("max_lifetime", max_lifetime, allow_zero=False)
        max_clock_skew_s = seconds("max_clock_skew", max_clock_skew)
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigurationError(f"max_entries must be a positive int, got {max_entries!r}")
        return cls(poll_interval=poll, threshold=threshold_s, margin=margin_s,
                   fetch_timeout=fetch_timeout_s, max_entries=max_entries,
                   max_lifetime=max_lifetime_s, max_clock_skew=max_clock_skew_s,
                   retry=retry or RetryPolicy())


@dataclass(frozen=True, slots=True)
class Hooks:
    """The user's callbacks: run outside every lock; their exceptions are logged."""

    on_token_update: TokenHook | None = None
    on_refresh_error: ErrorHook | None = None
    verifier: Verifier | None = None

    @classmethod
    def checked(cls, *, on_token_update: object, on_refresh_error: object,
                verifier: object) -> Hooks:
        """Refuse a hook that is not callable now, not at the first refresh (where it would
        only be logged)."""
        for name, hook, signature in (
                ("on_token_update", on_token_update, "on_token_update(request, token)"),
                ("on_refresh_error", on_refresh_error, "on_refresh_error(request, error)"),
                ("verifier", verifier, "verifier(token)")):
            if hook is not None and not callable(hook):
                raise ConfigurationError(
                    f"{name} must be a function called as {signature}, or None; got "
                    f"{type(hook).__name__}")
        return cls(on_token_update, on_refresh_error, verifier)  # type: ignore[arg-type]
