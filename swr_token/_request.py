"""The request a source receives: which token is wanted."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TokenRequest"]


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
