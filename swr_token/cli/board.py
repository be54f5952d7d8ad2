"""What ``swr-token demo``'s readers, client hooks and screen share: each key's story.

One :class:`Board` per run, guarded by one lock: the reader threads count their calls on it,
the client's hooks and the traced source report attempts and new tokens, and the display
loop reads zones, events and each key's line from it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .._client import TokenClient
from .._errors import ClientClosedError, TokenError
from .._request import TokenRequest
from .._token import Token, classify, effective_margin, effective_threshold
from .screen import Event, Row

__all__ = ["Board", "Key", "reader"]

_WAITED = 0.05  # a call that took this long waited for a fetch (a cache hit takes microseconds)


@dataclass
class Key:
    """One key the readers ask for, and what the display last reported of it."""

    session_id: str
    template: str | None = None
    idle: bool = False
    token: Token | None = None
    zone: str = "none"
    refreshes: int = 0
    attempt_at: float | None = None  # when the current upstream attempt started
    attempt_kind: str = "fetch"
    stale_served: int = 0  # since the last new token
    failing: int = 0  # failed calls in the current streak
    waits: list[float] = field(default_factory=list)  # not yet reported

    @property
    def label(self) -> str:
        return self.session_id + (f"/{self.template}" if self.template else "")


class Board:
    """Everything the readers, hooks and display share; guarded by one lock."""

    def __init__(self, keys: list[Key], threshold: float, margin: float) -> None:
        self.keys = {(k.session_id, k.template): k for k in keys}
        self.threshold, self.margin = threshold, margin
        self.lock = threading.Lock()
        self.start = time.monotonic()
        self.events: list[Event] = []
        self.served = {"fresh": 0, "stale": 0, "waited": 0}
        self.failed = 0
        self.failed_waiting = 0  # of the failed calls, those that had waited for a fetch
        self.cut_short = 0  # calls still waiting for a fetch when the demo stopped
        self.longest_wait = 0.0
        self.closing = False  # shutting down: what fails now is the demo ending, not news

    def now(self) -> float:
        return time.monotonic() - self.start

    def key(self, request: TokenRequest) -> Key:
        return self.keys[(request.session_id or "", request.template)]

    def zone(self, token: Token | None) -> tuple[str, float]:
        if token is None:
            return "none", 0.0
        left = token.remaining()
        if left <= 0:
            return "expired", left
        margin = effective_margin(self.margin, token.lifetime)
        threshold = effective_threshold(self.threshold, token.lifetime, margin)
        return classify(left, threshold, margin).value, left

    def emit(self, key: Key | None, text: str) -> None:
        """Call with the lock held."""
        if not self.closing:
            self.events.append((self.now(), key.label if key else "issuer", text))

    # -- the source wrapper and the client's hooks ----------------------------------------

    def attempt(self, request: TokenRequest) -> None:
        with self.lock:
            key = self.key(request)
            zone, _ = self.zone(key.token)
            key.attempt_at = time.monotonic()
            key.attempt_kind = "background refresh" if zone == "stale" else "fetch"

    def attempt_failed(self, request: TokenRequest, error: BaseException) -> None:
        with self.lock:
            key = self.key(request)
            took = time.monotonic() - (key.attempt_at or time.monotonic())
            key.attempt_at = None
            zone, left = self.zone(key.token)
            after = (f"still serving the stale token ({left:.1f} s left)" if zone == "stale"
                     else "no servable token: callers wait or get the error")
            self.emit(key, f"{key.attempt_kind} failed after {took:.2f} s: "
                      f"{_describe(error)}; {after}")

    def published(self, request: TokenRequest, token: Token) -> None:
        with self.lock:
            key = self.key(request)
            took = time.monotonic() - (key.attempt_at or time.monotonic())
            how = (f"stale one served {key.stale_served:,}x meanwhile, nobody waited"
                   if key.attempt_kind == "background refresh" else "callers waited for it")
            if key.token is not None:
                key.refreshes += 1
            key.token, key.zone, key.attempt_at, key.stale_served = token, "fresh", None, 0
            self.emit(key, f"new token {token.fingerprint} ({key.attempt_kind}, "
                      f"{took:.2f} s); {how}")

    def gave_up(self, request: TokenRequest, error: TokenError) -> None:
        with self.lock:
            key = self.key(request)
            zone, _ = self.zone(key.token)
            then = "keeps serving the stale token and backs off" if zone == "stale" else \
                "callers get the error until the issuer answers"
            self.emit(key, f"gave up ({type(error).__name__}); {then}")

    # -- readers --------------------------------------------------------------------------

    def servable(self, key: Key) -> bool:
        """Whether the client holds a token it would serve at once (fresh or stale)."""
        with self.lock:
            return self.zone(key.token)[0] in ("fresh", "stale")

    def served_call(self, key: Key, token: Token, took: float, *, servable: bool) -> None:
        """Count one call. ``servable``: a fresh or stale token existed when it started.

        A call waited when it found no servable token (as the client's ``waits`` counts)
        and took visibly long (so a call racing the publication of a new token, served
        from the cache a microsecond later, is not taken for one).
        """
        with self.lock:
            self.longest_wait = max(self.longest_wait, took)
            if not servable and took >= _WAITED:
                self.served["waited"] += 1
                key.waits.append(took)
            elif self.zone(token)[0] == "stale":
                self.served["stale"] += 1
                key.stale_served += 1
            else:
                self.served["fresh"] += 1
            if key.failing:
                self.emit(key, f"served again after {key.failing} failed calls")
                key.failing = 0

    def failed_call(self, key: Key, error: TokenError, took: float, *,
                    servable: bool) -> None:
        with self.lock:
            if self.closing:
                return
            self.failed += 1
            self.failed_waiting += not servable and took >= _WAITED
            self.longest_wait = max(self.longest_wait, took)
            if not key.failing:
                self.emit(key, f"calls fail now: {_describe(error)}")
            key.failing += 1

    # -- the display loop -----------------------------------------------------------------

    def observe(self) -> None:
        """Note zone changes and waits (the zone of each key's newest token)."""
        with self.lock:
            for key in self.keys.values():
                if key.waits:
                    n, longest = len(key.waits), max(key.waits)
                    self.emit(key, f"{n} call{'s' * (n > 1)} waited, longest {longest:.2f} s")
                    key.waits.clear()
                zone, left = self.zone(key.token)
                if zone == key.zone:
                    continue
                key.zone = zone
                if zone == "stale":
                    self.emit(key, f"stale ({left:.1f} s left): still served at once" + (
                        "; nobody reads it, so nobody refreshes it" if key.idle else ""))
                elif zone == "critical":
                    self.emit(key, f"critical ({left:.1f} s left): not served any more; the "
                              "next call waits for a fetch")
                elif zone == "expired":
                    self.emit(key, "expired")

    def drain(self) -> list[Event]:
        with self.lock:
            events, self.events = self.events, []
        return sorted(events)

    def rows(self) -> list[Row]:
        """Each key's line on the live screen, from its newest token."""
        with self.lock:
            rows = []
            for key in self.keys.values():
                zone, left = self.zone(key.token)
                life = key.token.lifetime if key.token is not None else 1.0
                fp = key.token.fingerprint if key.token is not None else "-"
                rows.append((key.label, zone, left, life, fp, key.refreshes))
            return rows


def _describe(error: BaseException) -> str:
    status = getattr(error, "status", None)
    name = type(error).__name__
    return f"HTTP {status} ({name})" if status else name


def reader(board: Board, client: TokenClient, keys: list[Key], stop: threading.Event,
            pause: Callable[[], float]) -> None:
    """A reader thread: one of ``keys`` at a time, ``pause()`` seconds apart, until ``stop``."""
    rng = random.Random()
    while not stop.is_set():
        key = rng.choice(keys)
        servable = board.servable(key)
        started = time.monotonic()
        try:
            token = client.get_token_info(key.session_id, template=key.template)
        except ClientClosedError:
            # The demo is ending: a call that was waiting for a fetch is released.
            if time.monotonic() - started >= _WAITED:
                with board.lock:
                    board.cut_short += 1
            return
        except TokenError as exc:
            board.failed_call(key, exc, time.monotonic() - started, servable=servable)
            stop.wait(0.2)
            continue
        board.served_call(key, token, time.monotonic() - started, servable=servable)
        stop.wait(pause())
