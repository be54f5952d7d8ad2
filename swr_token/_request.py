"""The request a source receives, which is also the cache key: which token is wanted."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import NamedTuple

from ._errors import ConfigurationError

__all__ = ["TokenRequest", "attempt_budget", "attempt_budget_of"]

# Seconds the waiting callers' budget leaves for the attempt running in this thread (None for
# a background refresh): an HTTP source stretches its own timeouts to it, so a caller's
# timeout= (the CLI's --timeout) bounds the whole wait, not the source's 10 s defaults.
_BUDGET: ContextVar[float | None] = ContextVar("swr_token_attempt_budget", default=None)

_PART_NAMES = ("session_id", "template", "organization_id", "audience")


class TokenRequest(NamedTuple):
    """Which token a source should mint. ``None`` parts are simply absent.

    The four parts are also the cache key, everywhere (cache, stores, sources): different
    requests never share a token or a fetch. A tuple, so it hashes and compares as one, and
    stores may treat it as the 4-tuple ``(session_id, template, organization_id, audience)``.
    """

    session_id: str | None = None
    template: str | None = None
    organization_id: str | None = None
    audience: str | None = None

    @classmethod
    def checked(cls, session_id: object = None, template: object = None,
                organization_id: object = None, audience: object = None) -> TokenRequest:
        """The request for a caller's arguments, checked (see :meth:`check`)."""
        request = cls(session_id, template, organization_id, audience)  # type: ignore[arg-type]
        request.check()
        return request

    def check(self) -> None:
        """Each part is ``None`` or a non-empty ``str``; raises ``TypeError`` or
        :class:`ConfigurationError` naming the argument that is not."""
        for name, part in zip(_PART_NAMES, self, strict=True):
            if part is None:
                continue
            if not isinstance(part, str):
                raise TypeError(f"{name} must be a str or None, got {type(part).__name__}")
            if not part:
                raise ConfigurationError(f"{name} must not be empty; pass None to leave it out")

    @classmethod
    def parse(cls, value: object) -> TokenRequest | None:
        """A key read back from outside (a store entry, a drop notice), or ``None`` if it is
        not four parts each ``None`` or a ``str``."""
        if (isinstance(value, list | tuple) and len(value) == 4
                and all(part is None or isinstance(part, str) for part in value)):
            return cls(*value)
        return None

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
