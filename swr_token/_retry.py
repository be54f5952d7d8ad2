"""Retry policy (tenacity) and per-source pacing.

The policy is evaluated on the client's clock and never sleeps: the engine asks
:meth:`RetryPolicy.next_wait` after a failure and schedules the next attempt itself, so a
backoff costs a timer entry, not a parked thread. :class:`SourcePacer` slows the whole source
once it keeps failing, so 5,000 keys cannot mean 5,000 requests a second to a sick issuer.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, field

import tenacity
from tenacity import RetryCallState
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from ._errors import TokenError, TokenFetchError

__all__ = ["RetryPolicy", "SourcePacer", "bounded_retry_after", "jittered_backoff"]

# RetryCallState wants a Retrying object; ours only names the policy in tenacity's reprs.
_RETRYING = tenacity.Retrying()


@dataclass(frozen=True)
class RetryPolicy:
    """How a fetch retries transient failures, as tenacity ``wait``/``stop``/``retry`` objects.

    Defaults: full-jitter exponential backoff (0.25 s window, doubling, at most 4 s) and at
    most 4 attempts; only :class:`TokenFetchError` is retried. A ``Retry-After`` longer than
    the drawn wait wins. Time is bounded by the engine, not here: no retry starts past the
    fetch's budget (``fetch_timeout``, or a waiting caller's longer ``timeout=``; for a
    background refresh, the key's critical deadline).
    """

    wait: wait_base = field(
        default_factory=lambda: tenacity.wait_random_exponential(multiplier=0.25, max=4.0)
    )
    stop: stop_base = field(
        default_factory=lambda: tenacity.stop_after_attempt(4)
    )
    retry: retry_base = field(
        default_factory=lambda: tenacity.retry_if_exception_type(TokenFetchError)
    )
    #: A ``Retry-After`` (from any source, built-in or yours) counts for at most this long.
    max_retry_after: float = 60.0

    def next_wait(
        self, *, attempt: int, started_at: float, now: float, error: BaseException
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up now."""
        state = RetryCallState(_RETRYING, None, (), {})
        state.attempt_number = attempt
        state.start_time = started_at
        outcome: tenacity.Future = tenacity.Future(attempt)
        outcome.set_exception(error)
        state.outcome = outcome
        state.outcome_timestamp = now
        if not self.retry(state):
            return None
        wait = float(self.wait(state))
        retry_after = bounded_retry_after(error, self.max_retry_after)
        if retry_after is not None and retry_after > wait:
            wait = retry_after
        state.upcoming_sleep = wait
        if self.stop(state):
            return None
        return wait


def bounded_retry_after(error: BaseException, cap: float) -> float | None:
    """The error's ``retry_after`` in seconds, at most ``cap``; None if it has no sane one.

    A source of yours may raise ``TokenFetchError(retry_after=1e9)``: an issuer's say can
    pause a key or the whole source for a minute, not for years.
    """
    value = getattr(error, "retry_after", None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):
        value = min(value, 10**12)  # float() of a huge int overflows
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0:
        return None
    return min(seconds, cap)


def jittered_backoff(streak: int, *, base: float = 1.0, cap: float = 30.0) -> float:
    """A growing, jittered pause after ``streak`` failed refreshes of one key: ~1, 2, 4 … 30 s."""
    exponent = min(max(streak - 1, 0), 16)
    return min(base * (2.0**exponent), cap) * random.uniform(1.0, 1.3)


class SourcePacer:
    """Failure state of one token source, shared by every key it serves.

    The first ``quick_failures`` consecutive transient failures pass freely (those are the
    quick retries); after that one attempt is let through per ``gap`` seconds (drawn from
    1.0-1.3 s by default) and all others are refused without a request. One success, from any
    key, ends the streak, so a recovered issuer is noticed by the next probe.
    """

    def __init__(
        self, *, quick_failures: int = 3, gap: tuple[float, float] = (1.0, 1.3),
        max_retry_after: float = 60.0,
    ) -> None:
        self.quick_failures = quick_failures
        self.max_retry_after = max_retry_after
        self.gap = gap
        self._lock = threading.Lock()
        self.streak = 0
        self.next_slot = 0.0
        #: Bumped at each recovery; a key's backoff taken before a recovery is void after it.
        self.recoveries = 0
        self.last_error: TokenError | None = None

    def permit(self, now: float) -> bool:
        """May an attempt go out now? Reserves the slot when it says yes."""
        with self._lock:
            if self.streak < self.quick_failures and now >= self.next_slot:
                return True
            if now >= self.next_slot:
                self.next_slot = now + random.uniform(*self.gap)
                return True
            return False

    def failed(self, now: float, error: TokenError) -> None:
        """A transient failure (network, timeout, 5xx, 429) from the source."""
        with self._lock:
            self.streak += 1
            self.last_error = error
            if self.streak >= self.quick_failures:
                self.next_slot = max(self.next_slot, now + random.uniform(*self.gap))
            retry_after = bounded_retry_after(error, self.max_retry_after)
            if retry_after is not None and retry_after > 0:
                # A 429's Retry-After speaks for the whole client, not for one key.
                self.next_slot = max(self.next_slot, now + float(retry_after))

    def paced(self) -> bool:
        """Is the source past its quick retries (one attempt per slot)?"""
        return self.streak >= self.quick_failures

    def answered(self) -> bool:
        """The source answered (a token, or a definite rejection): the issuer is up.

        Returns True when this ends a failure streak (a recovery).
        """
        if self.streak == 0 and self.next_slot == 0.0:
            return False
        with self._lock:
            recovered = self.streak > 0
            if recovered:
                self.recoveries += 1
            self.streak = 0
            self.next_slot = 0.0
            self.last_error = None
            return recovered

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
