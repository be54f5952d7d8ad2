"""While a source is paced: parked refreshes, one probe per slot, and release on recovery.

A refresh the pacer refuses parks its key (no request, no growing backoff); at each pacer
slot the longest-parked key probes the source; the first success from any key releases every
parked key, and fetches that callers wait on for a slot go at once instead of at the slot.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._cache import Entry, Flight
from ._errors import TokenError, TokenFetchError
from ._request import TokenRequest
from ._retry import jittered_backoff

if TYPE_CHECKING:
    from ._refresh import Refresher

__all__ = ["Parking"]

_log = logging.getLogger("swr_token")


class Parking:
    """The refresher's state for a failing source; every method but :meth:`probe`,
    :meth:`slot_due` and :meth:`release` is called with ``cache.lock`` held."""

    def __init__(self, refresher: Refresher) -> None:
        self._refresher = refresher
        #: Keys whose refresh the pacer refused, oldest first.
        self.parked: dict[Entry, None] = {}
        #: Fetches callers wait on, queued for the pacer's next slot.
        self.slot_waiters: set[Flight] = set()
        #: Keys failing fast after a transient failure: a recovery ends their window.
        self.failing: dict[Entry, None] = {}
        self._probe_due = False

    def park(self, entry: Entry) -> None:
        """Quiet the key (a long backoff) until a probe succeeds, which voids every backoff
        taken before it (``backoff_epoch``)."""
        r = self._refresher
        self.parked.pop(entry, None)
        self.parked[entry] = None
        entry.backoff_until = r.clock.deadline() + jittered_backoff(6)
        entry.backoff_epoch = r.pacer.recoveries
        _log.debug("parked %s: the source is failing; its stale token is served until a "
                   "probe succeeds", _describe(entry))
        if not self._probe_due:
            self._probe_due = True
            r.timer.call_at(r.pacer.next_slot, self.probe)

    def probe(self) -> None:
        """At the pacer's next slot, retry the refresh of the longest-parked key."""
        r = self._refresher
        flight = None
        with r.cache.lock:
            self._probe_due = False
            if r.closed:
                return
            if not r.pacer.paced():
                self.parked.clear()
                return
            now = r.clock.deadline()
            while self.parked and flight is None:
                entry = next(iter(self.parked))
                del self.parked[entry]
                snap = entry.resolved
                if (snap is None or entry.flight is not None or snap.deadline - snap.margin <= now
                        or r.cache.entries.get(entry.key) is not entry):
                    continue  # refreshed, dropped, critical (callers take over) or evicted
                flight = r.start(entry, background=True, stop_at=snap.deadline - snap.margin)
            if flight is None:
                return
        _log.debug("probe: refreshing %s to see whether the source answers again",
                   flight.request.describe())
        r.dispatch(flight)

    def wait_for_slot(self, flight: Flight, slot: float) -> None:
        """A fetch callers wait on goes at ``slot``, or sooner if the source recovers."""
        r = self._refresher
        with r.cache.lock:
            self.slot_waiters.add(flight)
        _log.debug("fetch for %s waits %.2f s for the source's next pacer slot",
                   flight.request.describe(), max(slot - r.clock.deadline(), 0.0))
        r.timer.call_at(slot, lambda: self.slot_due(flight))

    def failing_fast(self, entry: Entry) -> None:
        self.failing[entry] = None

    def fail_slot_waiters(self, error: TokenError, now: float) -> None:
        """A paced attempt failed: every fetch queued for a slot gets that failure now
        (called without the lock)."""
        r = self._refresher
        with r.cache.lock:
            waiting = list(self.slot_waiters)
            self.slot_waiters.clear()
        if waiting:
            _log.debug("a paced attempt failed: %d fetch(es) queued for a slot get its "
                       "failure now", len(waiting))
        for flight in waiting:
            flight.last_error = flight.last_error or error
            r.fail(flight, error, now)

    def slot_due(self, flight: Flight) -> None:
        r = self._refresher
        with r.cache.lock:
            if flight not in self.slot_waiters:
                return  # already started when the source recovered
            self.slot_waiters.discard(flight)
        r.dispatch(flight)

    def release(self) -> None:
        """The source recovered: every parked key may refresh now (reads and the poller),
        fetches that callers wait on go now rather than at their pacer slot, and keys
        failing fast after a transient failure start a fetch on their next call."""
        r = self._refresher
        now = r.clock.deadline()
        with r.cache.lock:
            released = (len(self.parked), len(self.failing), len(self.slot_waiters))
            for entry in self.parked:
                if entry.resolved is not None:
                    r.cache.push_due(now, 0, entry, entry.resolved)
            self.parked.clear()
            for entry in self.failing:
                if isinstance(entry.fail_error, TokenFetchError):
                    entry.fail_error = None
                    entry.fail_until = float("-inf")
            self.failing.clear()
            waiting = list(self.slot_waiters)
            self.slot_waiters.clear()
        _log.debug("source answers again: %d parked key(s) released, %d fail-fast "
                   "window(s) ended, %d waiting fetch(es) start now", *released)
        for flight in waiting:
            r.dispatch(flight)

    def reset_after_fork(self) -> None:
        self.parked = {}
        self.slot_waiters = set()
        self.failing = {}
        self._probe_due = False


def _describe(entry: Entry) -> str:
    return TokenRequest(*entry.key).describe()
