"""The cache: per-key entries, published snapshots, and the ordered due times.

Readers read ``entry.resolved`` (a :class:`Published`) without a lock; a new snapshot is
published by one attribute assignment under the lock, so a reader sees the old token or the
new one, never half of each. Everything that mutates a container or an entry's refresh state
holds ``Cache.lock``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cachetools

from ._errors import TokenError
from ._request import TokenRequest
from ._token import Token, effective_margin, effective_threshold, fingerprint

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._clock import Clock

__all__ = ["Cache", "Entry", "Flight", "Key", "Offsets", "Published"]

_log = logging.getLogger("swr_token")

Key = tuple[str | None, str | None, str | None, str | None]

# Due-record kinds in the heap.
_STALE = 0  # the token enters the stale zone: refresh it if it was read since its fetch
_EXPIRE = 1  # the token is dead (or the entry empty): evict the entry if nothing needs it

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


class Published:
    """A snapshot of one cached token with the thresholds that apply to it.

    Immutable but for the two fast bounds, ``mono_until`` and ``wall_until``: the fresh-token
    read serves the token while ``monotonic() <= mono_until and wall() <= wall_until``. Each
    bound alone ends no later than the token's fresh zone on its own clock as it ran when it
    was set; :meth:`rebase` resets both after a suspend or a wall step. A reader that sees
    one old and one new bound is still safe: the new one is exact.
    """

    __slots__ = ("deadline", "fresh_from", "fresh_until", "margin", "mono_until", "order", "raw",
                 "received_at", "received_mono", "threshold", "token", "wall_until")

    def __init__(self, token: Token, *, threshold: float, margin: float, received_at: float,
                 order: tuple[float, int], offsets: Offsets) -> None:
        self.token = token
        self.raw = token.raw
        self.deadline = token.deadline
        self.threshold = threshold
        self.margin = margin
        # The hot path's one comparison, ``now <= fresh_until``, must never serve a token
        # classify() would not call fresh: at the floor (threshold == margin) the margin
        # itself is critical, and float rounding of ``deadline - fresh_from`` is stepped down
        # until ``now <= fresh_until`` implies ``deadline - now >= fresh_from`` (subtraction
        # is monotonic). A boundary case it misses falls through to the slow path.
        self.fresh_from = threshold if threshold > margin else math.nextafter(margin, math.inf)
        fresh_until = self.deadline - self.fresh_from
        while self.deadline - fresh_until < self.fresh_from:
            fresh_until = math.nextafter(fresh_until, -math.inf)
        self.fresh_until = fresh_until
        self.received_at = received_at
        #: When it was published, on the monotonic clock (as ``Entry.last_read``).
        self.received_mono = offsets.read_at_monotonic
        self.order = order
        self.mono_until = self.wall_until = -math.inf
        self.rebase(offsets)

    def rebase(self, offsets: Offsets) -> None:
        """Translate ``fresh_until`` onto the monotonic and wall clocks as they run now.

        A suspend (monotonic stood still) or a wall step leaves one bound wrong; the other
        still holds, and a token only counts as fresh while both do. A suspend followed by a
        backward wall step would fool both, so the poller rebases when an offset moves.
        """
        self.mono_until = self.fresh_until + offsets.monotonic - _SLACK
        self.wall_until = self.fresh_until + offsets.wall - _SLACK


class Flight:
    """One upstream fetch for a key, possibly several attempts; waiters share its future."""

    __slots__ = ("attempt", "background", "budget_until", "entry", "future", "key",
                 "last_error", "own", "queued", "request", "seq", "started_at", "stop_at")

    def __init__(self, entry: Entry, *, seq: int, background: bool, own: bool, now: float,
                 stop_at: float | None) -> None:
        self.entry = entry
        self.key = entry.key
        self.request = TokenRequest(*entry.key)
        self.seq = seq
        self.background = background
        #: A ``skip_cache`` fetch: not the key's flight, and its failure touches nothing.
        self.own = own
        self.future: Future[Token] = Future()
        self.attempt = 0
        #: The last failure, raised to the waiters if the fetch runs out of budget.
        self.last_error: TokenError | None = None
        self.started_at = now
        #: A background refresh gives up here (the critical deadline) unless a caller joins.
        self.stop_at = stop_at
        #: A fetch callers wait on gives up here: ``fetch_timeout`` after it started, or
        #: later when a caller with a longer ``timeout=`` waits for it (set by the refresher).
        self.budget_until = float("inf")
        #: An attempt submitted to the background pool that no worker has begun (its
        #: number; 0 if none). A caller joining takes it over and runs it at once.
        self.queued = 0

    def join(self, now: float, fetch_timeout: float) -> None:
        """A waiting caller joined: from now on the fetch has the caller's budget."""
        if self.background and self.stop_at is not None:
            self.stop_at = None
            self.started_at = now
            self.attempt = 0
            self.budget_until = now + fetch_timeout


class Entry:
    """Everything known about one key. Only ``resolved`` and ``last_read`` are touched
    without the lock (one read and one plain store on the hit path). ``last_read`` is on the
    monotonic clock, the one the hit path reads."""

    __slots__ = ("backoff_epoch", "backoff_until", "dropped", "fail_error", "fail_until",
                 "flight", "key", "last_read", "newest", "resolved", "streak")

    def __init__(self, key: Key) -> None:
        self.key = key
        self.resolved: Published | None = None
        self.last_read = float("-inf")
        self.flight: Flight | None = None
        self.backoff_until = float("-inf")
        self.backoff_epoch = 0
        self.streak = 0
        #: The failure raised at once to callers until ``fail_until`` (a copy per caller).
        self.fail_error: Exception | None = None
        self.fail_until = float("-inf")
        #: Order of the newest token ever published or invalidated here: results must beat it.
        self.newest: tuple[float, int] = (float("-inf"), -1)
        #: Fingerprint of the last invalidated token, which must never come back.
        self.dropped: str | None = None


@dataclass
class PublishResult:
    published: Published | None
    progress: bool


class Cache:
    """Entries by key, their lock, the ordered due times, and bounded size."""

    def __init__(self, *, threshold: float, margin: float, max_entries: int, clock: Clock,
                 monotonic: Callable[[], float],
                 jitter: Callable[[float], float] | None = None) -> None:
        self.lock = threading.Lock()
        self._clock = clock
        self._monotonic = monotonic
        #: The clock offsets last seen, to notice a suspend or a wall step.
        self._offsets = Offsets(clock, monotonic)
        self.entries: dict[Key, Entry] = {}
        # The same entries again, for keys that are a session id alone: the common case
        # skips building and hashing a 4-tuple on the hot path. Kept in step under the lock.
        self.by_session: dict[str | None, Entry] = {}
        self.threshold = threshold
        self.margin = margin
        self.max_entries = max_entries
        self._due: list[tuple[float, int, int, Entry, Published | None]] = []
        self._seq = itertools.count()
        self._jitter = jitter or (lambda span: random.uniform(0.0, span))
        # Lifetimes already warned about: each adjustment is logged once, not per token.
        self._warned: cachetools.LRUCache[tuple[str, float], bool] = cachetools.LRUCache(256)
        # Keys whose token arrived critical, logged once each.
        self._critical_logged: cachetools.LRUCache[Key, bool] = cachetools.LRUCache(256)

    # -- thresholds ---------------------------------------------------------------------

    def thresholds_for(self, lifetime: float,
                       threshold: float | None = None) -> tuple[float, float]:
        """Effective ``(threshold, margin)`` for a token of ``lifetime`` seconds."""
        margin = effective_margin(self.margin, lifetime)
        if margin != self.margin:
            self._warn("margin", lifetime)
        wanted = self.threshold if threshold is None else threshold
        if wanted >= lifetime:
            self._warn("threshold", lifetime)
        return effective_threshold(wanted, lifetime, margin), margin

    def _warn(self, kind: str, lifetime: float) -> None:
        marker = (kind, round(lifetime, 3))
        if marker in self._warned:
            return
        self._warned[marker] = True
        if kind == "threshold":
            _log.warning(
                "background_refresh_threshold is at least the token lifetime "
                "(%.1f s); using half the lifetime instead", lifetime)
        else:
            _log.info("tokens live only %.1f s, so the margin is a quarter of that",
                      lifetime)

    # -- entries (call with the lock held) ----------------------------------------------

    def entry_for(self, key: Key, now: float) -> Entry:
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= self.max_entries:
                self._evict_for_room(now)
            entry = Entry(key)
            self._insert(entry)
        return entry

    def _insert(self, entry: Entry) -> None:
        self.entries[entry.key] = entry
        session_id, template, organization_id, audience = entry.key
        if template is None and organization_id is None and audience is None:
            self.by_session[session_id] = entry

    def _remove(self, entry: Entry) -> None:
        del self.entries[entry.key]
        if self.by_session.get(entry.key[0]) is entry:
            del self.by_session[entry.key[0]]

    def _evict_for_room(self, now: float) -> None:
        """Make room: expired and empty entries first, then the least recently read.

        Evicts a tenth of the cap at once so the O(n) scan is paid once per many inserts.
        Entries with a fetch in flight are kept: their waiters still need them.
        """
        target = max(1, self.max_entries // 10)
        idle = [e for e in self.entries.values() if e.flight is None]
        dead = [e for e in idle if e.resolved is None or e.resolved.deadline <= now]
        victims = dead[:target]
        if len(victims) < target:
            alive = [e for e in idle if e.resolved is not None and e.resolved.deadline > now]
            victims += heapq.nsmallest(target - len(victims), alive, key=lambda e: e.last_read)
        for entry in victims:
            self._remove(entry)

    def publish(self, entry: Entry, token: Token, *, order: tuple[float, int],
                now: float) -> PublishResult:
        """Cache ``token`` if it is newer than anything the key has had and not critical.

        Returns what was published (or ``None``) and whether the refresh made progress: a
        token equal to the cached one, or already stale on arrival, is no progress.
        """
        threshold, margin = self.thresholds_for(token.lifetime)
        remaining = token.deadline - now
        stale_on_arrival = remaining < threshold
        current = entry.resolved
        if current is not None and current.raw == token.raw:
            # Already here (adopted from another process meanwhile): progress if it is
            # fresh; an issuer re-serving a stale token is the no-progress case.
            return PublishResult(None, progress=not stale_on_arrival)
        if remaining <= margin:
            # Handed to the callers that waited for it (they asked for a token now), never
            # cached: a token in the critical zone is never served from the cache.
            if entry.key not in self._critical_logged:
                self._critical_logged[entry.key] = True
                _log.warning(
                    "swr_token: a token for %s arrived with only %.1f s left, inside the "
                    "%.1f s margin: given to the callers waiting for it, not cached; check the "
                    "issuer's token lifetime and clock", TokenRequest(*entry.key).describe(),
                    remaining, margin)
            return PublishResult(None, progress=not stale_on_arrival)
        if order <= entry.newest:
            return PublishResult(None, progress=not stale_on_arrival)
        if entry.dropped is not None and entry.dropped == fingerprint(token.raw):
            return PublishResult(None, progress=False)
        snap = Published(token, threshold=threshold, margin=margin, received_at=now, order=order,
                         offsets=Offsets(self._clock, self._monotonic))
        entry.resolved = snap
        entry.newest = order
        if self.entries.get(entry.key) is not entry:
            self._insert(entry)
        stale_at = snap.deadline - threshold
        span = min(1.0, (threshold - margin) / 4)
        self.push_due(stale_at + self._jitter(span) if span > 0 else stale_at, _STALE, entry,
                      snap)
        return PublishResult(snap, progress=not stale_on_arrival)

    def drop(self, entry: Entry, now: float) -> Published | None:
        """Forget the cached token (invalidated or rejected); it may never come back."""
        snap = entry.resolved
        if snap is None:
            return None
        entry.resolved = None
        entry.dropped = fingerprint(snap.raw)
        self.push_due(now, _EXPIRE, entry, None)
        return snap

    def push_due(self, when: float, kind: int, entry: Entry, snap: Published | None) -> None:
        heapq.heappush(self._due, (when, next(self._seq), kind, entry, snap))

    def pop_due(self, now: float) -> list[Entry]:
        """Pop due records: return the entries to refresh; evict dead ones on the way.

        Cost is proportional to the records that fall due, not to the number of keys.
        """
        refresh: list[Entry] = []
        due = self._due
        while due and due[0][0] <= now:
            _, _, kind, entry, snap = heapq.heappop(due)
            if self.entries.get(entry.key) is not entry:
                continue
            if kind == _STALE:
                if entry.resolved is not snap or snap is None:
                    continue  # superseded by a newer token, which has its own record
                if entry.last_read > snap.received_mono:
                    refresh.append(entry)
                else:
                    self.push_due(snap.deadline, _EXPIRE, entry, snap)
            elif entry.resolved is snap or entry.resolved is None:
                if entry.flight is None and (snap is None or snap.deadline <= now) \
                        and entry.fail_until <= now:
                    self._remove(entry)
                elif entry.resolved is snap:
                    self.push_due(max(now, entry.fail_until) + 1.0, _EXPIRE, entry, snap)
        return refresh

    def rebase_if_clocks_moved(self) -> bool:
        """After a suspend or a wall step, rebase every snapshot's fast bounds (O(keys), but
        only then); otherwise three clock reads. Returns whether the offsets had moved."""
        offsets = Offsets(self._clock, self._monotonic)
        if not offsets.moved_from(self._offsets):
            return False
        self._offsets = offsets
        for entry in self.entries.values():
            if entry.resolved is not None:
                entry.resolved.rebase(offsets)
        return True

    def clear(self) -> None:
        self.entries = {}
        self.by_session = {}
        self._due = []

    def reset_after_fork(self) -> None:
        self.lock = threading.Lock()
        for entry in self.entries.values():
            entry.flight = None
