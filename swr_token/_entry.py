"""The engine's records: a key's :class:`Entry`, its :class:`Published` snapshot, the
:class:`Flight` fetching for it, and the :class:`Trouble` a failing key carries.

Plain data with the few rules that belong to the data itself. Who writes which field:

- ``Entry.resolved`` and ``Entry.flight``: the cache and the refresher, under ``Cache.lock``;
  the fresh-token read reads ``resolved`` and stores ``last_read`` without a lock.
- ``Entry.trouble`` and ``Entry.dropped``: the refresher (failures) and the cache (drops),
  under the lock; ``None`` while the key is healthy, so a healthy key pays nothing for them.
- ``Flight`` fields: the refresher, under the lock (``attempt`` and ``last_error`` only by
  the thread running the attempt).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import TYPE_CHECKING

from ._request import TokenRequest

if TYPE_CHECKING:
    from ._clock import Clock
    from ._errors import TokenError
    from ._token import Token

__all__ = ["Dropped", "Entry", "Flight", "FlightKind", "Offsets", "Published", "Trouble"]

#: "Never" on any clock; one shared float, so a new entry allocates none.
NEVER = -math.inf
#: The order of "no token yet": every real token is newer.
NO_ORDER = (NEVER, -1)

# The fast bounds end this much before the exact instant: more than the float rounding of
# ``fresh_until + offset`` at epoch magnitudes (~1e-7 s), so they never round the wrong way.
_SLACK = 1e-6
# A change of either clock offset beyond this is a step or a suspend, not measuring jitter.
_OFFSET_MOVED = 1e-3


class Offsets:
    """The monotonic and wall clocks' offsets from the deadline clock at one moment."""

    __slots__ = ("monotonic", "read_at_monotonic", "wall")

    def __init__(self, clock: Clock, monotonic: Callable[[], float]) -> None:
        # The deadline clock is read last, so both offsets come out a little small: bounds
        # built on them end early, never late.
        mono = monotonic()
        wall = clock.wall()
        deadline = clock.deadline()
        self.monotonic = mono - deadline
        self.wall = wall - deadline
        self.read_at_monotonic = mono

    def moved_from(self, other: Offsets) -> bool:
        return (abs(self.monotonic - other.monotonic) > _OFFSET_MOVED
                or abs(self.wall - other.wall) > _OFFSET_MOVED)


def fresh_until(deadline: float, threshold: float, margin: float) -> float:
    """The last deadline-clock instant at which a token is fresh, safe against rounding.

    The hot path's one comparison, ``now <= fresh_until``, must never serve a token
    :func:`classify` would not call fresh: at the floor (threshold == margin) the margin
    itself is critical, and float rounding of ``deadline - fresh_from`` is stepped down until
    ``now <= fresh_until`` implies ``deadline - now >= fresh_from`` (subtraction is
    monotonic). A boundary case it misses falls through to the slow path.
    """
    fresh_from = threshold if threshold > margin else math.nextafter(margin, math.inf)
    until = deadline - fresh_from
    while deadline - until < fresh_from:
        until = math.nextafter(until, -math.inf)
    return until


class Published:
    """A snapshot of one cached token with the thresholds that apply to it.

    Immutable but for the two fast bounds, ``mono_until`` and ``wall_until``: the fresh-token
    read serves the token while ``monotonic() <= mono_until and wall() <= wall_until``. Each
    bound alone ends no later than the token's fresh zone on its own clock as it ran when it
    was set; :meth:`rebase` resets both after a suspend or a wall step. A reader that sees
    one old and one new bound is still safe: the new one is exact.
    """

    __slots__ = ("deadline", "issued", "margin", "mono_until", "raw", "received_mono", "seq",
                 "stale_at", "threshold", "token", "wall_until")

    def __init__(self, token: Token, *, threshold: float, margin: float,
                 order: tuple[float, int], offsets: Offsets) -> None:
        self.token = token
        self.raw = token.raw
        self.deadline = token.deadline
        self.threshold = threshold
        self.margin = margin
        #: Its freshness order, ``(issued, seq)``: kept apart, a tuple per key costs 56 B.
        self.issued, self.seq = order
        #: When it was published, on the monotonic clock (as ``Entry.last_read``).
        self.received_mono = offsets.read_at_monotonic
        #: When the poller refreshes it if it is being read (set by the cache, jittered).
        self.stale_at = math.inf
        self.mono_until = self.wall_until = NEVER
        self.rebase(offsets)

    @property
    def fresh_until(self) -> float:
        """The fresh zone's end on the deadline clock (computed: a slot per key costs 24 B)."""
        return fresh_until(self.deadline, self.threshold, self.margin)

    @property
    def order(self) -> tuple[float, int]:
        """Newer tokens have a larger order: by issue time, then by when their fetch began."""
        return (self.issued, self.seq)

    def rebase(self, offsets: Offsets) -> None:
        """Translate the fresh zone's end onto the monotonic and wall clocks as they run now.

        A suspend (monotonic stood still) or a wall step leaves one bound wrong; the other
        still holds, and a token only counts as fresh while both do. A suspend followed by a
        backward wall step would fool both, so the poller rebases when an offset moves.
        """
        until = self.fresh_until
        self.mono_until = until + offsets.monotonic - _SLACK
        self.wall_until = until + offsets.wall - _SLACK


class Trouble:
    """A key's failure state (``Entry.trouble``), kept only while the key is failing."""

    __slots__ = ("backoff_epoch", "backoff_until", "fail_error", "fail_until", "streak")

    def __init__(self) -> None:
        #: Failed or no-progress refreshes in a row.
        self.streak = 0
        #: No background refresh starts before this, unless the source recovered since
        #: (its recovery count moved past ``backoff_epoch``).
        self.backoff_until = NEVER
        self.backoff_epoch = 0
        #: The failure raised at once to callers until ``fail_until`` (a copy per caller).
        self.fail_error: Exception | None = None
        self.fail_until = NEVER

    def failing_fast(self, now: float) -> Exception | None:
        """The failure to raise at once, while its window lasts."""
        return self.fail_error if now < self.fail_until else None


class Dropped:
    """The token last invalidated or rejected for a key: it must never come back, and no
    result older than it may be published (``Entry.dropped``)."""

    __slots__ = ("fingerprint", "order")

    def __init__(self, fingerprint: str, order: tuple[float, int]) -> None:
        self.fingerprint = fingerprint
        self.order = order


class Entry:
    """Everything known about one key. Only ``resolved`` and ``last_read`` are touched
    without the lock (one read and one plain store on the hit path). ``last_read`` is on the
    monotonic clock, the one the hit path reads."""

    __slots__ = ("dropped", "flight", "last_read", "request", "resolved", "trouble")

    def __init__(self, request: TokenRequest) -> None:
        self.request = request
        self.resolved: Published | None = None
        self.last_read = NEVER
        #: The fetch callers join (a skip_cache fetch is never the key's flight).
        self.flight: Flight | None = None
        self.trouble: Trouble | None = None
        self.dropped: Dropped | None = None

    def newest(self) -> tuple[float, int]:
        """The order a result must beat: the cached token's, else the dropped one's."""
        if self.resolved is not None:
            return self.resolved.order
        return self.dropped.order if self.dropped is not None else NO_ORDER

    def troubled(self) -> Trouble:
        """The key's failure state, created on its first failure."""
        if self.trouble is None:
            self.trouble = Trouble()
        return self.trouble

    def backing_off(self, now: float, recoveries: int) -> bool:
        """Is a background refresh held back (a backoff the source's recovery did not void)?"""
        trouble = self.trouble
        return (trouble is not None and trouble.backoff_until > now
                and trouble.backoff_epoch == recoveries)


class FlightKind(enum.Enum):
    """What a flight is; it decides its budget, its thread and what its failure touches."""

    #: Callers wait on it: bounded by its budget, runs on a thread of its own.
    FETCH = "fetch (callers waiting)"
    #: Nobody waits: runs on the pool, gives up at the key's critical deadline.
    REFRESH = "background refresh"
    #: A refresh a caller joined: waited on like a fetch; its failure counts as a refresh's.
    JOINED = "refresh (callers joined)"
    #: A ``skip_cache`` fetch: not the key's flight; its failure touches nothing.
    OWN = "skip_cache fetch"

    @property
    def waited(self) -> bool:
        """Do callers wait on it (a budget and a watchdog, not a critical deadline)?"""
        return self is not FlightKind.REFRESH

    @property
    def refresh(self) -> bool:
        """Was it started as a background refresh (a failure backs the key off)?"""
        return self is FlightKind.REFRESH or self is FlightKind.JOINED


class Flight:
    """One upstream fetch for a key, possibly several attempts; waiters share its future.

    The future exists only once someone waits: a background refresh nobody joins needs none.
    It is created under ``Cache.lock`` while the flight is still its key's flight (or at
    start), and a flight is settled only after it stopped being its key's flight, so a
    waiter can never miss the outcome.
    """

    __slots__ = ("attempt", "budget_until", "entry", "future", "kind", "last_error", "queued",
                 "request", "seq", "settled", "started_at", "stop_at")

    def __init__(self, entry: Entry, *, kind: FlightKind, seq: int, now: float,
                 stop_at: float = math.inf, budget: float = math.inf) -> None:
        self.entry = entry
        self.request = entry.request
        self.kind = kind
        self.seq = seq
        self.future: Future[Token] | None = Future() if kind.waited else None
        self.settled = False
        self.attempt = 0
        #: The last failure, raised to the waiters if the fetch runs out of budget.
        self.last_error: TokenError | None = None
        self.started_at = now
        #: A background refresh gives up here (the critical deadline) unless a caller joins.
        self.stop_at = stop_at
        #: A fetch callers wait on gives up here: ``fetch_timeout`` after it started, or
        #: later when a caller with a longer ``timeout=`` waits for it.
        self.budget_until = now + budget if kind.waited else math.inf
        #: An attempt queued for the background pool that no worker has begun (its ticket;
        #: 0 if none). A caller joining takes it over and runs it at once.
        self.queued = 0

    @property
    def limit(self) -> float:
        """No attempt starts after this: the critical deadline for a refresh, else the
        callers' budget."""
        return self.stop_at if self.kind is FlightKind.REFRESH else self.budget_until

    def waiter(self) -> Future[Token]:
        """The future callers wait on (call with ``Cache.lock`` held)."""
        if self.future is None:
            self.future = Future()
        return self.future

    def join(self, now: float, fetch_timeout: float) -> bool:
        """A waiting caller joined: a refresh gets the caller's budget from now on.

        Returns whether it was a refresh (its watchdog must be armed now).
        """
        self.waiter()
        if self.kind is not FlightKind.REFRESH:
            return False
        self.kind = FlightKind.JOINED
        self.stop_at = math.inf
        self.started_at = now
        self.attempt = 0
        self.budget_until = now + fetch_timeout
        return True

    def settle(self, token: Token | None, error: BaseException | None) -> None:
        """Resolve the waiters once; later outcomes (after close or a time-out) are dropped."""
        self.settled = True
        future = self.future
        if future is None:
            return
        try:
            if error is not None:
                future.set_exception(error)
            elif token is not None:
                future.set_result(token)
        except InvalidStateError:  # settled already
            pass
