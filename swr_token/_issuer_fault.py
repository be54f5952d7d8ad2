"""The fault record :class:`~swr_token.testing.LocalIssuer` injects.

The issuer (:mod:`._issuer`) creates faults, counts them down and expires them; its handler
(:mod:`._issuer_http`) acts them out. Both import it from here, and neither imports the other
back.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

__all__ = ["Fault"]

_TOKEN_ENDPOINTS = frozenset({"clerk", "m2m", "oauth"})


@dataclass(eq=False)
class Fault:
    """One injected fault: what to do (``kind``), to which endpoint (None: the token
    endpoints), for how many more requests and until when (``time.monotonic()``)."""

    kind: str
    endpoint: str | None
    remaining: int | None
    until: float | None
    status: int = 500
    retry_after: float | str | None = None
    code: str | None = None
    body: bytes | None = None
    seconds: float = 0.0
    released: threading.Event = field(default_factory=threading.Event)

    def live(self, now: float) -> bool:
        """Its window (if any) has not ended at ``now``."""
        return self.until is None or now < self.until

    def matches(self, endpoint: str, now: float) -> bool:
        """It applies to a request to ``endpoint`` at ``now``."""
        wanted = endpoint in _TOKEN_ENDPOINTS if self.endpoint is None else (
            self.endpoint == endpoint)
        return wanted and self.live(now)

    def count_down(self) -> None:
        """One more request took this fault."""
        if self.remaining is not None:
            self.remaining -= 1

    @property
    def spent(self) -> bool:
        """Its count of requests has run out."""
        return self.remaining is not None and self.remaining <= 0
