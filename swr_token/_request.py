"""The request a source receives: which token is wanted."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["TokenRequest", "attempt_budget", "attempt_budget_of"]

# Seconds the waiting callers' budget leaves for the attempt running in this thread (None for
# a background refresh): an HTTP source stretches its own timeouts to it, so a caller's
# timeout= (the CLI's --timeout) bounds the whole wait, not the source's 10 s defaults.
_BUDGET: ContextVar[float | None] = ContextVar("swr_token_attempt_budget", default=None)


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """Which token a source should mint. ``None`` parts are simply absent.

    The four parts are also the cache key: different requests never share a token or a fetch.
    """

    session_id: str | None = None
    template: str | None = None
    organization_id: str | None = None
    audience: str | None = None

    def describe(self) -> str:
        """A log-safe description of the key (ids are not secrets)."""
        parts = [
            f"{name}={value}"
            for name, value in (
                ("session", self.session_id),
                ("template", self.template),
                ("org", self.organization_id),
                ("audience", self.audience),
            )
            if value is not None
        ]
        return "{" + ", ".join(parts) + "}" if parts else "{default}"


@contextlib.contextmanager
def attempt_budget_of(seconds: float | None) -> Iterator[None]:
    """Run a source call with ``seconds`` as its attempt budget (see :func:`attempt_budget`)."""
    reset = _BUDGET.set(seconds)
    try:
        yield
    finally:
        _BUDGET.reset(reset)


def attempt_budget() -> float | None:
    """Seconds the callers waiting for this fetch still give it, inside a source call; None
    outside one and in a background refresh (the source's own timeouts apply)."""
    return _BUDGET.get()
