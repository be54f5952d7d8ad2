"""The cache: per-key entries, published snapshots, and the ordered due times.

Readers read ``entry.resolved`` (a :class:`Published`) without a lock; a new snapshot is
published by one attribute assignment under the lock, so a reader sees the old token or the
new one, never half of each. Everything that mutates a container or an entry's refresh state
holds ``Cache.lock``.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import math
import random
import threading
from typing import TYPE_CHECKING, NamedTuple

import cachetools

from ._entry import Dropped, Entry, Offsets, Published
from ._request import TokenRequest
from ._token import Token, effective_margin, effective_threshold, fingerprint

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._clock import Clock

__all__ = ["Cache", "PublishResult"]

_log = logging.getLogger("swr_token")


class DueKind(enum.IntEnum):
    """What a record in the due heap asks for when its time comes."""

    #: The token enters the stale zone (or a backoff ended): refresh it if it is being read.
    REFRESH = 0
    #: The token is dead (or the entry empty): evict the entry if nothing needs it.
    EXPIRE = 1


class _Due(NamedTuple):
    when: float
    seq: int
    kind: DueKind
    entry: Entry
    snap: Published | None


class PublishResult(NamedTuple):
    """What :meth:`Cache.publish` did: the snapshot it published (or ``None``), and whether
    the refresh made progress (a fresh token, not the same or an already-stale one)."""

    published: Published | None
    progress: bool


class Cache:
    """Entries by key, their lock, the ordered due times, and bounded size.

    Lock order: ``Cache.lock`` may be held while taking the timer's condition
    (``Timer.call_at``) or the pacer's lock, never the other way round.
    """

    def __init__(self, *, threshold: float, margin: float, max_entries: int, clock: Clock,
                 monotonic: Callable[[], float]) -> None:
        self.lock = threading.Lock()
        #: Set once by the client's close(): nothing starts, nothing is published after it.
        self.closed = False
        self._clock = clock
        self._monotonic = monotonic
        #: The clock offsets last seen, to notice a suspend or a wall step.
        self._offsets = Offsets(clock, monotonic)
        # Keys that are a session id alone, by that id: the common case, and the hot path's
        # dict (no 4-tuple to build and hash). Every other key, by its TokenRequest.
        self.by_session: dict[str | None, Entry] = {}
        self._by_request: dict[TokenRequest, Entry] = {}
        self.threshold = threshold
        self.margin = margin
        self.max_entries = max_entries
        # When each published token turns stale, in buckets of whole seconds: the entries
        # and their snapshots side by side per bucket, and a heap of the bucket numbers. One
        # record per cached key costs two list slots, not a heap tuple with its own number.
        self._stale: dict[int, tuple[list[Entry], list[Published]]] = {}
        self._stale_buckets: list[int] = []
        # Every other due time (backoffs, expiries, drops): rare, on a heap.
        self._due: list[_Due] = []
        self._seq = itertools.count()
        # Lifetimes already warned about: each adjustment is logged once, not per token.
        self._warned: cachetools.LRUCache[tuple[str, float], bool] = cachetools.LRUCache(256)
        # Keys whose token arrived critical, logged once each.
        self._critical_logged: cachetools.LRUCache[TokenRequest, bool] = \
            cachetools.LRUCache(256)

    # -- thresholds ---------------------------------------------------------------------

    def thresholds_for(self, lifetime: float) -> tuple[float, float]:
        """Effective ``(threshold, margin)`` for a token of ``lifetime`` seconds."""
        margin = effective_margin(self.margin, lifetime)
        if margin != self.margin:
            self._warn("margin", lifetime)
        return self.threshold_for(self.threshold, lifetime, margin), margin

    def threshold_for(self, wanted: float, lifetime: float, margin: float) -> float:
        """The threshold ``wanted`` (the client's, or one call's) as it applies to a token of
        ``lifetime`` seconds whose margin is ``margin``; warns once when it is capped."""
        if wanted >= lifetime:
            self._warn("threshold", lifetime)
        return effective_threshold(wanted, lifetime, margin)

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

    def get(self, request: TokenRequest) -> Entry | None:
        if _session_only(request):
            return self.by_session.get(request.session_id)
        return self._by_request.get(request)

    def __len__(self) -> int:
        return len(self.by_session) + len(self._by_request)

    def all_entries(self) -> list[Entry]:
        return [*self.by_session.values(), *self._by_request.values()]

    def holds(self, entry: Entry) -> bool:
        """Is ``entry`` still the cache's entry for its key (not evicted or replaced)?"""
        return self.get(entry.request) is entry

    def entry_for(self, request: TokenRequest, now: float) -> Entry:
        entry = self.get(request)
        if entry is None:
            if len(self) >= self.max_entries:
                self._evict_for_room(now)
            entry = Entry(request)
            self._insert(entry)
        return entry

    def _insert(self, entry: Entry) -> None:
        request = entry.request
        if _session_only(request):
            self.by_session[request.session_id] = entry
        else:
            self._by_request[request] = entry

    def _remove(self, entry: Entry) -> None:
        request = entry.request
        if _session_only(request):
            del self.by_session[request.session_id]
        else:
            del self._by_request[request]

    def _evict_for_room(self, now: float) -> None:
        """Make room: expired and empty entries first, then the least recently read.

        Evicts a tenth of the cap at once so the O(n) scan is paid once per many inserts.
        Entries with a fetch in flight are kept: their waiters still need them.
        """
        target = max(1, self.max_entries // 10)
        idle = [e for e in self.all_entries() if e.flight is None]
        victims = [e for e in idle if _dead(e, now)][:target]
        if len(victims) < target:
            alive = [e for e in idle if not _dead(e, now)]
            victims += heapq.nsmallest(target - len(victims), alive, key=_last_read)
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
        current = entry.resolved
        # Not published: the refresh made progress only if the key's token is fresh anyway
        # (another fetch published a newer one); else the key backs off, whatever the
        # reason, so no reason can turn every read into a request.
        unchanged = PublishResult(None, progress=_fresh(current, now))
        if current is not None and current.raw == token.raw:
            return unchanged  # already here (adopted from another process meanwhile)
        if remaining <= margin:
            # Handed to the callers that waited for it (they asked for a token now), never
            # cached: a token in the critical zone is never served from the cache.
            self._log_critical(entry.request, remaining, margin)
            return unchanged
        if not _newer(entry, token, order):
            return unchanged
        if entry.dropped is not None and entry.dropped.fingerprint == fingerprint(token.raw):
            return PublishResult(None, progress=False)
        snap = Published(token, threshold=threshold, margin=margin, order=order,
                         offsets=Offsets(self._clock, self._monotonic))
        entry.resolved = snap
        if not self.holds(entry):
            self._insert(entry)
        stale_at = snap.deadline - threshold
        span = min(1.0, (threshold - margin) / 4)
        snap.stale_at = stale_at + random.uniform(0.0, span) if span > 0 else stale_at
        self._push_stale(entry, snap)
        return PublishResult(snap, progress=remaining >= threshold)

    def _push_stale(self, entry: Entry, snap: Published) -> None:
        bucket = math.floor(snap.stale_at)
        pairs = self._stale.get(bucket)
        if pairs is None:
            self._stale[bucket] = pairs = ([], [])
            heapq.heappush(self._stale_buckets, bucket)
        pairs[0].append(entry)
        pairs[1].append(snap)

    def _log_critical(self, request: TokenRequest, remaining: float, margin: float) -> None:
        if request in self._critical_logged:
            return
        self._critical_logged[request] = True
        _log.warning(
            "swr_token: a token for %s arrived with only %.1f s left, inside the %.1f s "
            "margin: given to the callers waiting for it, not cached; check the issuer's "
            "token lifetime and clock", request.describe(), remaining, margin)

    def drop(self, entry: Entry, now: float) -> Published | None:
        """Forget the cached token (invalidated or rejected); it may never come back."""
        snap = entry.resolved
        if snap is None:
            return None
        entry.resolved = None
        entry.dropped = Dropped(fingerprint(snap.raw), snap.order)
        self._push(now, DueKind.EXPIRE, entry, None)
        return snap

    # -- due times (call with the lock held) --------------------------------------------

    def refresh_at(self, when: float, entry: Entry) -> None:
        """Have the poller refresh ``entry``'s current token at ``when`` if it is read."""
        if entry.resolved is not None:
            self._push(when, DueKind.REFRESH, entry, entry.resolved)

    def _push(self, when: float, kind: DueKind, entry: Entry, snap: Published | None) -> None:
        heapq.heappush(self._due, _Due(when, next(self._seq), kind, entry, snap))

    def pop_due(self, now: float) -> list[Entry]:
        """Pop due records: return the entries to refresh; evict dead ones on the way.

        Cost is proportional to the records that fall due, not to the number of keys.
        """
        refresh: list[Entry] = []
        self._pop_stale(now, refresh)
        due = self._due
        while due and due[0].when <= now:
            record = heapq.heappop(due)
            if not self.holds(record.entry):
                continue
            if record.kind is DueKind.REFRESH:
                self._refresh_due(record.entry, record.snap, refresh)
            else:
                self._expire_due(record, now)
        return refresh

    def _pop_stale(self, now: float, refresh: list[Entry]) -> None:
        """The tokens that turned stale by ``now``: whole buckets before this second, and
        the part of this second's bucket that is due (the rest waits in it)."""
        buckets = self._stale_buckets
        while buckets and buckets[0] <= now:
            bucket = heapq.heappop(buckets)
            entries, snaps = self._stale.pop(bucket)
            later: tuple[list[Entry], list[Published]] = ([], [])
            for entry, snap in zip(entries, snaps, strict=True):
                if snap.stale_at > now:
                    later[0].append(entry)
                    later[1].append(snap)
                elif self.holds(entry):
                    self._refresh_due(entry, snap, refresh)
            if later[0]:  # only this second's bucket can hold any: the loop ends here
                self._stale[bucket] = later
                heapq.heappush(buckets, bucket)
                return

    def _refresh_due(self, entry: Entry, snap: Published | None,
                     refresh: list[Entry]) -> None:
        if snap is None or entry.resolved is not snap:
            return  # superseded by a newer token, which has its own record
        if entry.last_read > snap.received_mono:
            refresh.append(entry)
        else:  # not read since its fetch: let it expire, unless a read comes first
            self._push(snap.deadline, DueKind.EXPIRE, entry, snap)

    def _expire_due(self, record: _Due, now: float) -> None:
        entry, snap = record.entry, record.snap
        if entry.resolved is not snap and entry.resolved is not None:
            return  # a newer token arrived
        trouble = entry.trouble
        fail_until = trouble.fail_until if trouble is not None else now
        if entry.flight is None and (snap is None or snap.deadline <= now) \
                and fail_until <= now:
            self._remove(entry)
        elif entry.resolved is snap:
            # Still needed (a fetch runs, or its failure is still being raised): look again.
            self._push(max(now, fail_until) + 1.0, DueKind.EXPIRE, entry, snap)

    def rebase_if_clocks_moved(self) -> bool:
        """After a suspend or a wall step, rebase every snapshot's fast bounds (O(keys), but
        only then); otherwise three clock reads. Returns whether the offsets had moved."""
        offsets = Offsets(self._clock, self._monotonic)
        if not offsets.moved_from(self._offsets):
            return False
        self._offsets = offsets
        for entry in self.all_entries():
            if entry.resolved is not None:
                entry.resolved.rebase(offsets)
        return True

    def close(self) -> None:
        """Refuse everything from now on and forget every key (lock held)."""
        self.closed = True
        self.clear()

    def clear(self) -> None:
        self._by_request = {}
        self.by_session = {}
        self._stale = {}
        self._stale_buckets = []
        self._due = []

    def reset_after_fork(self) -> None:
        self.lock = threading.Lock()
        for entry in self.all_entries():
            entry.flight = None


def _fresh(snap: Published | None, now: float) -> bool:
    return snap is not None and snap.deadline - now >= snap.threshold


def _newer(entry: Entry, token: Token, order: tuple[float, int]) -> bool:
    """Is ``token`` (with its freshness ``order``) newer than what the key has had?

    By ``iat``, then by when its fetch began; and a token whose fetch began after the cached
    one's and that outlives it is newer too, whatever its ``iat`` says (an issuer whose clock
    stepped back mints tokens that look older than the ones before them).
    """
    if order > entry.newest():
        return True
    current = entry.resolved
    return current is not None and order[1] > current.seq and token.deadline > current.deadline


def _session_only(request: TokenRequest) -> bool:
    return request[1] is None and request[2] is None and request[3] is None


def _dead(entry: Entry, now: float) -> bool:
    return entry.resolved is None or entry.resolved.deadline <= now


def _last_read(entry: Entry) -> float:
    return entry.last_read
