"""While a source is paced: parked refreshes, one probe per slot, and release on recovery.

A refresh the pacer refuses parks its key (no request, no growing backoff); at each pacer
slot the longest-parked key probes the source; the first success from any key releases every
parked key, and fetches that callers wait on for a slot go at once instead of at the slot.

It knows its collaborators only by what it calls: the cache (its lock and due times), the
clock, the timer, the pacer, and three callables of the refresher (start a probe, dispatch a
flight, fail a flight). It owns the parked keys, the slot waiters and the fail-fast list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ._cache import Cache
from ._clock import Clock
from ._entry import NEVER, Entry, Flight
from ._errors import TokenError, TokenFetchError
from ._retry import SourcePacer, jittered_backoff
from ._timer import Timer

__all__ = ["Parking"]

_log = logging.getLogger("swr_token")


class Parking:
    """The outage state of one source; every method but :meth:`probe`, :meth:`slot_due`,
    :meth:`fail_slot_waiters` and :meth:`release` is called with ``cache.lock`` held."""

    def __init__(self, *, cache: Cache, clock: Clock, timer: Timer, pacer: SourcePacer,
                 start_probe: Callable[[Entry], Flight | None],
                 dispatch: Callable[[Flight], None],
                 fail: Callable[[Flight, Exception, float], None]) -> None:
        self._cache = cache
        self._clock = clock
        self._timer = timer
        self._pacer = pacer
        self._start_probe = start_probe
        self._dispatch = dispatch
        self._fail = fail
        #: Keys whose refresh the pacer refused, oldest first.
        self._parked: dict[Entry, None] = {}
        #: Fetches callers wait on, queued for the pacer's next slot.
        self._slot_waiters: set[Flight] = set()
        #: Keys failing fast after a transient failure: a recovery ends their window.
        self._failing: dict[Entry, None] = {}
        self._probe_due = False

    def counts(self) -> tuple[int, int]:
        """``(parked keys, fetches waiting for a slot)``, for ``stats()``."""
        return len(self._parked), len(self._slot_waiters)

    def park(self, entry: Entry) -> None:
        """Quiet the key (a long backoff) until a probe succeeds, which voids every backoff
        taken before it (``backoff_epoch``)."""
        self._parked.pop(entry, None)
        self._parked[entry] = None
        trouble = entry.troubled()
        trouble.backoff_until = self._clock.deadline() + jittered_backoff(6)
        trouble.backoff_epoch = self._pacer.recoveries
        _log.debug("parked %s: the source is failing; its stale token is served until a "
                   "probe succeeds", entry.request.describe())
        if not self._probe_due:
            self._probe_due = True
            self._timer.call_at(self._pacer.next_slot, self.probe)

    def probe(self) -> None:
        """At the pacer's next slot, retry the refresh of the longest-parked key."""
        flight = None
        with self._cache.lock:
            self._probe_due = False
            if not self._pacer.paced():
                self._parked.clear()
                return
            while self._parked and flight is None:
                entry = next(iter(self._parked))
                del self._parked[entry]
                flight = self._start_probe(entry)
        if flight is None:
            return
        _log.debug("probe: refreshing %s to see whether the source answers again",
                   flight.request.describe())
        self._dispatch(flight)

    def wait_for_slot(self, flight: Flight, slot: float) -> None:
        """A fetch callers wait on goes at ``slot``, or sooner if the source recovers
        (called without the lock)."""
        with self._cache.lock:
            self._slot_waiters.add(flight)
        _log.debug("fetch for %s waits %.2f s for the source's next pacer slot",
                   flight.request.describe(), max(slot - self._clock.deadline(), 0.0))
        self._timer.call_at(slot, lambda: self.slot_due(flight))

    def failing_fast(self, entry: Entry) -> None:
        self._failing[entry] = None

    def fail_slot_waiters(self, error: TokenError, now: float) -> None:
        """A paced attempt failed: every fetch queued for a slot gets that failure now."""
        with self._cache.lock:
            waiting = list(self._slot_waiters)
            self._slot_waiters.clear()
        if waiting:
            _log.debug("a paced attempt failed: %d fetch(es) queued for a slot get its "
                       "failure now", len(waiting))
        for flight in waiting:
            flight.last_error = flight.last_error or error
            self._fail(flight, error, now)

    def slot_due(self, flight: Flight) -> None:
        with self._cache.lock:
            if flight not in self._slot_waiters:
                return  # already started when the source recovered
            self._slot_waiters.discard(flight)
        self._dispatch(flight)

    def release(self) -> None:
        """The source recovered: every parked key may refresh now (reads and the poller),
        fetches that callers wait on go now rather than at their pacer slot, and keys
        failing fast after a transient failure start a fetch on their next call."""
        now = self._clock.deadline()
        with self._cache.lock:
            released = (len(self._parked), len(self._failing), len(self._slot_waiters))
            for entry in self._parked:
                self._cache.refresh_at(now, entry)
            self._parked.clear()
            for entry in self._failing:
                trouble = entry.trouble
                if trouble is not None and isinstance(trouble.fail_error, TokenFetchError):
                    trouble.fail_error = None
                    trouble.fail_until = NEVER
            self._failing.clear()
            waiting = list(self._slot_waiters)
            self._slot_waiters.clear()
        _log.debug("source answers again: %d parked key(s) released, %d fail-fast "
                   "window(s) ended, %d waiting fetch(es) start now", *released)
        for flight in waiting:
            self._dispatch(flight)

    def reset_after_fork(self) -> None:
        self._parked = {}
        self._slot_waiters = set()
        self._failing = {}
        self._probe_due = False
