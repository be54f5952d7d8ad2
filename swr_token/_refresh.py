"""Running fetches: attempts, retries on the timer, pacing, and what a result does to a key.

A flight is one logical fetch for a key (:class:`~swr_token._entry.Flight`). Each attempt
runs on a worker (a background refresh) or on a thread of its own (callers wait, so it never
queues behind refreshes). Between attempts nothing sleeps: the next attempt is put on the
:class:`Timer`. Background refreshes wait in one queue that a few pool tasks drain, so a
poller tick hands a thousand due keys over without a thousand executor submissions.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from typing import Any

from ._cache import Cache
from ._clock import Clock
from ._entry import Entry, Flight, FlightKind, Published
from ._errors import (
    PROGRAMMING_ERRORS,
    ClientClosedError,
    InvalidTokenError,
    TimedOutError,
    TokenError,
    TokenFetchError,
    TokenRejectedError,
    caller_copy,
)
from ._executor import DaemonThreadPoolExecutor
from ._parking import Parking
from ._receipt import Receiver
from ._request import TokenRequest, attempt_budget_of
from ._retry import SourcePacer, jittered_backoff
from ._settings import Hooks, Settings
from ._store import SharedStore, StoredToken
from ._timer import Timer
from ._token import Token, fingerprint

__all__ = ["Counters", "Refresher"]

_log = logging.getLogger("swr_token")

#: Pool tasks draining the refresh queue when the executor does not say its size.
_DEFAULT_DRAINERS = 4


class Counters:
    """Plain integer counters; increments may race (stats are approximate by contract)."""

    __slots__ = ("background_refreshes", "failures", "fetches", "hits", "stale_serves", "waits")

    def __init__(self) -> None:
        self.hits = 0
        self.stale_serves = 0
        self.waits = 0
        self.fetches = 0
        self.background_refreshes = 0
        self.failures = 0

    def reset(self) -> None:
        """Zero every counter: a forked child counts its own work."""
        for name in self.__slots__:
            setattr(self, name, 0)


class Refresher:
    """Starts and runs flights for a :class:`Cache` against one source.

    Owns the flights, the refresh queue, the source's pacer and outage state (``Parking``),
    the receipt of tokens, and (when it made it) the background executor. Methods named
    ``*_locked`` are called with ``cache.lock`` held; the others take it themselves.
    """

    _thread_ids = itertools.count(1)

    def __init__(self, cache: Cache, source: Callable[[TokenRequest], Any], settings: Settings,
                 hooks: Hooks, *, clock: Clock, timer: Timer, counters: Counters,
                 executor: Executor | None, foreground_executor: Executor | None,
                 shared: SharedStore | None) -> None:
        self._cache = cache
        self._source = source
        self._settings = settings
        self._hooks = hooks
        self._clock = clock
        self._timer = timer
        self._counters = counters
        self._owns_executor = executor is None
        self._executor = executor or DaemonThreadPoolExecutor()
        self._foreground_executor = foreground_executor
        self._shared = shared
        self._receiver = Receiver(clock, settings, hooks.verifier)
        self._pacer = SourcePacer(max_retry_after=settings.retry.max_retry_after)
        self._parking = Parking(cache=cache, clock=clock, timer=timer, pacer=self._pacer,
                                start_probe=self._start_probe, dispatch=self.dispatch,
                                fail=self._fail)
        self._flights: set[Flight] = set()
        #: Background attempts waiting for a worker, with their tickets (see ``join``).
        self._queue: deque[tuple[Flight, int]] = deque()
        self._drainers = 0
        self._max_drainers = _pool_size(self._executor)
        self._seq = itertools.count(1)
        self._tickets = itertools.count(1)
        #: A source bug's traceback was logged; cleared when the source next succeeds.
        self._bug_logged = False

    # -- what the client asks -----------------------------------------------------------

    def in_flight(self) -> int:
        return len(self._flights)

    def parked(self) -> tuple[int, int]:
        """``(parked keys, fetches waiting for a pacer slot)``."""
        return self._parking.counts()

    def fetch_own(self, request: TokenRequest, now: float, timeout: float | None) -> Flight:
        """A ``skip_cache`` fetch: a request of its own, joined by no one (lock not held)."""
        with self._cache.lock:
            _check_open(self._cache)
            entry = self._cache.entry_for(request, now)
            flight = self._start_locked(entry, FlightKind.OWN, now)
            self._extend_budget_locked(flight, timeout)
        self.dispatch(flight)
        return flight

    def fetch_for_callers(self, request: TokenRequest, now: float,
                          timeout: float | None) -> Flight:
        """The flight a caller with nothing servable waits on: the key's running fetch
        (joined), or a new one. Raises the key's recent failure at once while its fail-fast
        window lasts (a copy per caller, so the shared traceback does not grow)."""
        promote = False
        with self._cache.lock:
            _check_open(self._cache)
            entry = self._cache.entry_for(request, now)
            running = entry.flight
            if running is None:
                error = entry.trouble.failing_fast(now) if entry.trouble is not None else None
                if error is not None:
                    raise caller_copy(error)
                flight = self._start_locked(entry, FlightKind.FETCH, now)
            else:
                flight = running
                promote = self._join_locked(flight)
            self._extend_budget_locked(flight, timeout)
        if running is None:
            self.dispatch(flight)
        elif promote:
            _log.debug("%s: took over its refresh queued behind background work; runs now",
                       flight.request.describe())
            self._run_now(flight)  # it was queued behind other keys' refreshes
        else:
            _log.debug("%s: waiting for the fetch already running", flight.request.describe())
        return flight

    def refresh(self, entry: Entry, now: float) -> None:
        """Start one background refresh for a stale key unless one runs or it backs off.

        Checked first without the lock: every stale read while the refresh runs asks."""
        if entry.flight is not None or entry.backing_off(now, self._pacer.recoveries):
            return
        if self.refresh_due([entry], now) and _log.isEnabledFor(logging.DEBUG):
            _log.debug("%s is stale (%.1f s left): served at once while a background "
                       "refresh runs", entry.request.describe(), _left(entry, now))

    def refresh_due(self, entries: Iterable[Entry], now: float) -> int:
        """The poller's batch: start a refresh for each due key that may refresh now, under
        one lock, and queue them for the pool at once. Returns how many started."""
        recoveries = self._pacer.recoveries
        with self._cache.lock:
            flights = [flight for entry in entries
                       if entry.flight is None and not entry.backing_off(now, recoveries)
                       and (flight := self._start_refresh_locked(entry, now)) is not None]
        permitted = [flight for flight in flights if self._permit_refresh(flight, now)]
        self._queue_refreshes(permitted)
        return len(flights)

    # -- starting (cache.lock held) -----------------------------------------------------

    def _start_locked(self, entry: Entry, kind: FlightKind, now: float,
                      stop_at: float = math.inf) -> Flight:
        flight = Flight(entry, kind=kind, seq=next(self._seq), now=now, stop_at=stop_at,
                        budget=self._settings.fetch_timeout)
        if kind is not FlightKind.OWN:
            entry.flight = flight
        self._flights.add(flight)
        if kind is FlightKind.REFRESH:
            self._counters.background_refreshes += 1
        return flight

    def _start_refresh_locked(self, entry: Entry, now: float) -> Flight | None:
        """A refresh of ``entry``'s cached token, or ``None`` if it needs none now."""
        snap = entry.resolved
        if (self._cache.closed or entry.flight is not None or snap is None
                or not self._cache.holds(entry)):
            return None
        return self._start_locked(entry, FlightKind.REFRESH, now,
                                  stop_at=snap.deadline - snap.margin)

    def _start_probe(self, entry: Entry) -> Flight | None:
        """Parking's probe of a parked key, unless it was refreshed, dropped, evicted or
        turned critical meanwhile (callers take over then)."""
        now = self._clock.deadline()
        snap = entry.resolved
        if snap is not None and snap.deadline - snap.margin <= now:
            return None
        return self._start_refresh_locked(entry, now)

    def _join_locked(self, flight: Flight) -> bool:
        """A caller now waits on ``flight``: a refresh gets the caller's budget (and its
        watchdog). Returns True if its attempt was still queued behind background work: the
        caller then takes it over and runs it on a thread of its own."""
        if flight.join(self._clock.deadline(), self._settings.fetch_timeout):
            self._timer.call_at(flight.budget_until, lambda: self._time_out(flight))
        if flight.queued:
            flight.queued = 0  # the worker that pops the queued attempt skips it
            return True
        return False

    def _extend_budget_locked(self, flight: Flight, timeout: float | None) -> None:
        """A caller waits up to ``timeout`` s: a timeout past the fetch's budget extends it,
        so the fetch, its retries and each attempt (:func:`attempt_budget`) may take as long
        as that caller is willing to wait."""
        if timeout is None or not flight.kind.waited:
            return
        until = self._clock.deadline() + timeout
        if until > flight.budget_until:
            flight.budget_until = until
            self._timer.call_at(until, lambda: self._time_out(flight))

    # -- dispatching --------------------------------------------------------------------

    def dispatch(self, flight: Flight) -> None:
        """Run the flight's next attempt: on the pool for refreshes, on its own thread when a
        caller waits (so a cold fetch never queues behind background work).

        While the source is failing, the pacer decides: a refresh that is refused parks its
        key; a fetch that callers wait on waits for the source's next slot (a timer entry,
        not a thread) if that falls within its budget, else fails at once.
        """
        if flight.settled or self._cache.closed:
            self._retire(flight)
            return
        now = self._clock.deadline()
        if flight.attempt == 0 and flight.kind.waited:
            self._timer.call_at(flight.budget_until, lambda: self._time_out(flight))
        if flight.kind is FlightKind.REFRESH:
            if self._permit_refresh(flight, now):
                self._queue_refreshes([flight])
        elif flight.kind is FlightKind.OWN or self._pacer.permit(now):
            self._run_now(flight)
        else:
            self._wait_for_slot(flight, now)

    def _permit_refresh(self, flight: Flight, now: float) -> bool:
        """May this refresh go now? If the pacer says no, the key parks instead."""
        if self._pacer.permit(now):
            return True
        self._park(flight, self._paced_error(flight, now))
        return False

    def _wait_for_slot(self, flight: Flight, now: float) -> None:
        slot = self._pacer.next_slot + random.uniform(0.0, 0.05)
        if slot < flight.budget_until:
            self._parking.wait_for_slot(flight, slot)
        else:
            self._fail(flight, self._paced_error(flight, now), now)

    def _queue_refreshes(self, flights: list[Flight]) -> None:
        """Queue refreshes for the pool and make sure a drain task runs.

        One task is started from here; each task starts the next while work is queued, up to
        the pool's size, so a poller tick never waits on starting worker threads."""
        if not flights:
            return
        with self._cache.lock:
            for flight in flights:
                flight.queued = ticket = next(self._tickets)
                self._queue.append((flight, ticket))
            spawn = self._drainers < self._max_drainers
            self._drainers += spawn
        if spawn:
            self._spawn_drainer()

    def _spawn_drainer(self) -> None:
        try:
            self._executor.submit(self._drain)
        except RuntimeError as exc:  # executor shut down, or no thread could start
            self._drain_failed(exc)

    def _drain(self) -> None:
        """A pool task: run queued refresh attempts until the queue is empty."""
        while True:
            with self._cache.lock:
                if not self._queue:
                    self._drainers -= 1
                    return
                flight, ticket = self._queue.popleft()
                grow = bool(self._queue) and self._drainers < self._max_drainers
                self._drainers += grow
                # Not ours if a waiting caller took this attempt over (see _join_locked).
                ours = flight.queued == ticket
                if ours:
                    flight.queued = 0
            if grow:
                self._spawn_drainer()
            if ours:
                self._attempt(flight)

    def _drain_failed(self, exc: RuntimeError) -> None:
        """A drain task could not start: if none runs, the queued refreshes fail now."""
        with self._cache.lock:
            self._drainers -= 1
            stranded = [] if self._drainers else list(self._queue)
            if not self._drainers:
                self._queue.clear()
        for flight, ticket in stranded:
            if flight.queued == ticket:
                flight.queued = 0
                self._fail(flight, self._start_error(exc), self._clock.deadline())

    def _run_now(self, flight: Flight) -> None:
        """Start the flight's next attempt on a thread of its own."""
        try:
            if self._foreground_executor is not None:
                self._foreground_executor.submit(self._attempt, flight)
            else:
                threading.Thread(
                    target=self._attempt, args=(flight,), daemon=True,
                    name=f"swr-token-fetch-{next(self._thread_ids)}",
                ).start()
        except RuntimeError as exc:  # executor shut down, or no thread could start
            self._fail(flight, self._start_error(exc), self._clock.deadline())

    def _start_error(self, exc: RuntimeError) -> TokenError:
        if self._cache.closed:
            return ClientClosedError("the client is closed; create a new TokenClient")
        return TokenFetchError(f"could not start a fetch ({exc}); try again")

    def _paced_error(self, flight: Flight, now: float) -> TokenFetchError:
        """The failure for a flight the pacer refused, naming this flight's key.

        The source's last failure came from some other key's request: its message names that
        key (a Clerk session, say) and must never reach this caller. Only its status, code
        and the time until the next slot are carried over; it is not chained.
        """
        last = self._pacer.last_error
        wait = max(0.0, self._pacer.next_slot - now)
        what = f"the token for {flight.request.describe()} was not asked for: the token " \
               "source is failing"
        if last is not None and last.status is not None:
            what += f" (its last answer: HTTP {last.status}"
            what += f", {last.code[:80]})" if last.code else ")"
        return TokenFetchError(
            f"{what}; it is asked again in about {wait:.1f} s, try again then",
            status=None if last is None else last.status,
            code=None if last is None else last.code,
            retry_after=wait,
        )

    # -- one attempt --------------------------------------------------------------------

    def _attempt(self, flight: Flight) -> None:
        if flight.settled or self._cache.closed:
            self._retire(flight)
            return
        flight.attempt += 1
        paced = self._pacer.paced()
        debug = _log.isEnabledFor(logging.DEBUG)
        if debug:
            _log.debug("%s for %s: attempt %d started", flight.kind.value,
                       flight.request.describe(), flight.attempt)
        began = self._clock.deadline()
        try:
            token, from_source, issued = self._fetch(flight)
        except PROGRAMMING_ERRORS as exc:
            self._source_bug(flight, exc)
            return
        except Exception as exc:
            self._on_failure(flight, _as_token_error(exc, flight), paced=paced, began=began)
            return
        if debug:
            _log.debug("%s for %s: answered in %.0f ms (%s)", flight.kind.value,
                       flight.request.describe(), (self._clock.deadline() - began) * 1000,
                       "from the source" if from_source else "from the shared store")
        self._bug_logged = False
        if from_source and self._pacer.answered():
            self._parking.release()
        self._succeed(flight, token, issued)

    def _on_failure(self, flight: Flight, error: TokenError, *, paced: bool,
                    began: float) -> None:
        """Count a failed attempt against the source, then retry on the timer or give up."""
        if self._cache.closed:
            # Closed while this attempt ran: its callers were already released, and a failure
            # now (often the issuer torn down with the client) is news to no one.
            self._retire(flight)
            return
        now = self._clock.deadline()
        if isinstance(error, TokenFetchError):
            self._source_failed(error, now)
        elif isinstance(error, TokenRejectedError) and self._pacer.answered():
            self._parking.release()
        flight.last_error = error
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("%s for %s: attempt %d failed after %.0f ms: %s", flight.kind.value,
                       flight.request.describe(), flight.attempt, (now - began) * 1000, error)
        wait = self._retry_wait(flight, error, now, paced_before=paced)
        if wait is not None:
            _log.debug("%s for %s: retry in %.2f s", flight.kind.value,
                       flight.request.describe(), wait)
            self._timer.call_at(now + wait, lambda: self.dispatch(flight))
            return
        _log.debug("%s for %s: giving up after %d attempt(s)", flight.kind.value,
                   flight.request.describe(), flight.attempt)
        self._fail(flight, error, now)

    def _retry_wait(self, flight: Flight, error: TokenError, now: float, *,
                    paced_before: bool) -> float | None:
        """Seconds until the flight's next attempt, or ``None`` to give up now."""
        if paced_before and isinstance(error, TokenFetchError) \
                and flight.kind is not FlightKind.REFRESH:
            # The source was already failing before this attempt: callers with nothing
            # servable get the failure now instead of waiting out more paced attempts.
            return None
        wait = self._settings.retry.next_wait(attempt=flight.attempt,
                                              started_at=flight.started_at, now=now,
                                              error=error)
        # A refresh stops at the critical deadline; a fetch callers wait on at its budget
        # (giving up now with the real failure beats a time-out later).
        if wait is None or flight.settled or now + wait >= flight.limit:
            return None
        return wait

    def _source_failed(self, error: TokenFetchError, now: float) -> None:
        """A transient failure, from any key: the pacer counts it."""
        if self._pacer.streak == 0:
            _log.warning("token source failing: %s", error)
        self._pacer.failed(now, error)
        if self._pacer.paced():
            # Fetches queued for a pacer slot would only hear the same answer, one key
            # per slot: they get it now, so no caller waits more than about one slot.
            self._parking.fail_slot_waiters(error, now)

    def _source_bug(self, flight: Flight, bug: Exception) -> None:
        """The source raised a programming error (SPEC §9): a bug, not an outage.

        Not retried and not counted against the issuer (no pacing); the waiting callers get
        the exception itself; the key backs off like after a failure. The traceback is
        logged once until the source succeeds again, not once per key or per call.
        """
        if not self._bug_logged:
            self._bug_logged = True
            _log.error("the token source raised %s for %s: a bug in the source, not an "
                       "outage; not retried (fix the source)", type(bug).__name__,
                       flight.request.describe(), exc_info=bug)
        self._fail(flight, bug, self._clock.deadline())

    def _call_source(self, flight: Flight) -> tuple[Token, float]:
        """One call of the source, within the callers' budget; the token and its order."""
        self._counters.fetches += 1
        budget = None
        if flight.kind.waited:
            budget = max(flight.budget_until - self._clock.deadline(), 0.0)
        with attempt_budget_of(budget):
            result = self._source(flight.request)
        token = self._receiver.receive(result)
        return token, self._receiver.issued(token)

    def _fetch(self, flight: Flight) -> tuple[Token, bool, float]:
        """One attempt: from the shared store if another process has a newer token, else
        from the source (under the store's fleet-wide lock when there is a store).

        Returns the token, whether the source was called, and the token's issue time (its
        freshness order: for a shared opaque token the writer's, bounded by now)."""
        shared = self._shared
        if shared is None:
            token, issued = self._call_source(flight)
            return token, True, issued
        if flight.kind is FlightKind.OWN:
            # skip_cache: a request of its own, never a shared token; the result is shared.
            token, issued = self._call_source(flight)
            shared.put(flight.request, StoredToken(token.raw, token.expires_at, issued))
            return token, True, issued
        now = self._clock.deadline()
        if flight.kind is FlightKind.REFRESH:
            budget = flight.stop_at - now
        else:  # leave half the caller's budget for fetching here if the other never answers
            budget = (flight.budget_until - now) / 2
        (token, issued), from_source = shared.fetch(
            flight.request, lambda: self._call_source(flight),
            lambda stored: self.accept_shared(flight.entry, stored, flight=flight),
            lambda pair: StoredToken(pair[0].raw, pair[0].expires_at, pair[1]),
            wait=budget)
        return token, from_source, issued

    def accept_shared(self, entry: Entry, stored: StoredToken, *, flight: Flight | None = None
                      ) -> tuple[Token, float] | None:
        """A token from another process (with its issue time), if it is usable here.

        The checks clerk-js makes on a broadcast: it parses, passes the verifier, belongs to
        this key, is not expired (here: not critical), and is newer than the local one. For a
        running ``flight`` the local token may already be this one, which is fine; a
        refresh wants a token that is not stale.
        """
        received = self._receiver.from_store(stored)
        if received is None:
            return None
        token, issued = received
        sid = token.claims.get("sid")
        if sid is not None and entry.request.session_id not in (None, sid):
            return None
        threshold, margin = self._cache.thresholds_for(token.lifetime)
        remaining = token.deadline - self._clock.deadline()
        if remaining <= margin:
            return None
        fresh = remaining >= threshold
        if flight is not None and flight.kind is FlightKind.REFRESH and not fresh:
            return None
        return received if _newer_here(entry, token, issued, flight, fresh) else None

    # -- outcomes -----------------------------------------------------------------------

    def _succeed(self, flight: Flight, token: Token, issued: float) -> None:
        now = self._clock.deadline()
        with self._cache.lock:
            self._flights.discard(flight)
            if self._cache.closed:
                return
            entry = flight.entry
            if flight.kind is FlightKind.OWN:
                entry = self._cache.entry_for(flight.request, now)
            elif entry.flight is flight:
                entry.flight = None
            result = self._cache.publish(entry, token, order=(issued, flight.seq), now=now)
            if flight.kind is not FlightKind.OWN:
                self._progress_locked(entry, flight, result.progress, now)
        published = result.published
        if _log.isEnabledFor(logging.DEBUG):
            _log_outcome(flight, token, published is not None, now)
        flight.settle(token, None)
        if published is not None and self._hooks.on_token_update is not None:
            _call_hook(self._hooks.on_token_update, flight.request, published.token)

    def _progress_locked(self, entry: Entry, flight: Flight, progress: bool,
                         now: float) -> None:
        """A fresh token ends the key's trouble; the same or a stale one backs it off."""
        if progress:
            if entry.trouble is not None and entry.trouble.streak:
                _log.info("refresh of %s recovered", flight.request.describe())
            entry.trouble = None
            return
        trouble = entry.troubled()
        trouble.streak += 1
        self._back_off_locked(entry, now)
        if trouble.streak == 1:
            _log.warning(
                "refresh of %s made no progress (the issuer returned the same or an "
                "already-stale token); backing off", flight.request.describe())

    def _fail(self, flight: Flight, error: Exception, now: float) -> None:
        """Settle ``flight`` with ``error`` (call without the lock)."""
        if flight.settled:
            self._retire(flight)  # already settled (closed, or timed out while hung)
            return
        self._counters.failures += 1
        dropped = None
        entry = flight.entry
        with self._cache.lock:
            self._flights.discard(flight)
            if flight.kind is not FlightKind.OWN and entry.flight is flight:
                entry.flight = None
                dropped = self._record_failure_locked(entry, error, now, flight.kind)
        if dropped is not None and self._shared is not None:
            # Fail closed fleet-wide: the store forgets the refused token (unless a newer one
            # replaced it) and the other processes are told to stop serving it.
            self._shared.drop(entry.request, dropped.raw, dropped.token.expires_at)
        flight.settle(None, error)
        # A bug in the source is not a TokenError: it is logged, not passed to the hook.
        if (self._hooks.on_refresh_error is not None and isinstance(error, TokenError)
                and not isinstance(error, ClientClosedError)):
            _call_hook(self._hooks.on_refresh_error, flight.request, error)

    def _record_failure_locked(self, entry: Entry, error: Exception, now: float,
                               kind: FlightKind) -> Published | None:
        """Back off, fail fast for a while; a rejection drops the token (returned)."""
        if isinstance(error, InvalidTokenError):
            # Not the issuer's mood but a bad token: no fail-fast window; only a refresh
            # backs off, so stale reads do not each ask again.
            if kind.refresh:
                entry.troubled().streak += 1
                self._back_off_locked(entry, now)
            return None
        trouble = entry.troubled()
        trouble.streak += 1
        self._back_off_locked(entry, now)
        trouble.fail_error = error
        trouble.fail_until = max(now + random.uniform(1.0, 1.3), self._pacer.next_slot)
        if isinstance(error, TokenFetchError):
            self._parking.failing_fast(entry)  # ended early if the source recovers
        dropped = None
        if isinstance(error, TokenRejectedError):
            dropped = self._reject_locked(entry, error, now)
        self._next_refresh_locked(entry, error, kind)
        return dropped

    def _reject_locked(self, entry: Entry, error: Exception, now: float) -> Published | None:
        """A rejection fails closed: the issuer said no, so stop serving the token it
        refuses (logged when it drops one, and on the first of a streak)."""
        dropped = self._cache.drop(entry, now)
        if dropped is not None or entry.troubled().streak == 1:
            _log.warning("token for %s rejected: %s", entry.request.describe(), error)
        return dropped

    def _next_refresh_locked(self, entry: Entry, error: Exception, kind: FlightKind) -> None:
        """When a failed key's token is refreshed again: after a probe succeeds if the
        source is paced, else when its backoff ends (if that is before it turns critical)."""
        snap, trouble = entry.resolved, entry.troubled()
        if snap is None:
            return
        if kind.refresh and self._pacer.paced() and isinstance(error, TokenFetchError):
            self._parking.park(entry)
        elif snap.deadline - snap.margin > trouble.backoff_until:
            self._cache.refresh_at(trouble.backoff_until, entry)

    def _park(self, flight: Flight, error: TokenError) -> None:
        """A refresh the pacer refused: no request, no growing backoff; wait for a probe."""
        with self._cache.lock:
            self._flights.discard(flight)
            if flight.entry.flight is flight:
                flight.entry.flight = None
                if flight.entry.resolved is not None:
                    self._parking.park(flight.entry)
        flight.settle(None, error)

    def _back_off_locked(self, entry: Entry, now: float) -> None:
        trouble = entry.troubled()
        trouble.backoff_until = now + jittered_backoff(trouble.streak)
        trouble.backoff_epoch = self._pacer.recoveries

    def _time_out(self, flight: Flight) -> None:
        """A waited-on fetch ran past its budget (a hung request): release its waiters."""
        if flight.settled or self._clock.deadline() < flight.budget_until:
            return  # settled, or a caller extended the budget since this watchdog was set
        # Waiting for a retry or a pacer slot, the last failure says what is wrong; with a
        # request hanging in flight, the time-out itself does.
        error = flight.last_error or TimedOutError(
            f"fetching a token for {flight.request.describe()} took longer than "
            f"{flight.budget_until - flight.started_at:g} s (TokenClient's fetch_timeout=, or "
            "the longest timeout= of the callers waiting for it); the issuer may be hanging, "
            "try again later")
        self._fail(flight, error, self._clock.deadline())

    def drop_locked(self, entry: Entry, now: float) -> Published | None:
        """Invalidate the key's token (``cache.lock`` held). A fetch already running may
        return the very token dropped here (an issuer that re-serves it): callers arriving
        from now on must not join it. It runs on and may still publish a newer token; the
        freshness guard refuses this one."""
        snap = self._cache.drop(entry, now)
        if snap is not None:
            entry.flight = None
        return snap

    def _retire(self, flight: Flight) -> None:
        with self._cache.lock:
            self._flights.discard(flight)
            if flight.entry.flight is flight:
                flight.entry.flight = None

    # -- lifecycle ------------------------------------------------------------------------

    def close_locked(self) -> list[Flight]:
        """The client closed (``cache.lock`` held): returns the flights to release."""
        flights = list(self._flights)
        self._flights.clear()
        self._queue.clear()
        return flights

    def release(self, flights: list[Flight]) -> None:
        """Release the closed client's waiters; stop the workers it made."""
        error = ClientClosedError("the TokenClient was closed while this call waited for a token")
        for flight in flights:
            flight.settle(None, error)
        if self._owns_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's flights, queue and outage state; fresh
        workers and locks."""
        self._flights = set()
        self._queue = deque()
        self._drainers = 0
        self._parking.reset_after_fork()
        self._pacer.reset_after_fork()
        if self._owns_executor:
            self._executor = DaemonThreadPoolExecutor()


def _check_open(cache: Cache) -> None:
    if cache.closed:
        raise ClientClosedError("this TokenClient is closed; create a new one")


def _pool_size(executor: Executor) -> int:
    """How many drain tasks the executor can run at once (its workers), if it says."""
    size = getattr(executor, "max_workers", None)
    if size is None:
        size = getattr(executor, "_max_workers", None)  # concurrent.futures' pools
    return size if isinstance(size, int) and size > 0 else _DEFAULT_DRAINERS


def _as_token_error(exc: Exception, flight: Flight) -> TokenError:
    """A failed attempt's error: a :class:`TokenError` as raised, anything else a transient
    :class:`TokenFetchError` with it as the cause."""
    if isinstance(exc, TokenError):
        return exc
    error = TokenFetchError(
        f"the token source raised {type(exc).__name__} for {flight.request.describe()} "
        "(see __cause__); taken as transient: retried while the fetch's attempts last")
    error.__cause__ = exc
    return error


def _newer_here(entry: Entry, token: Token, issued: float, flight: Flight | None,
                fresh: bool) -> bool:
    """Is a shared token an answer here: newer than the cached one, or (for a running
    flight) the cached one itself once it is fresh?"""
    current = entry.resolved
    if current is None:
        return True
    if current.raw == token.raw:
        # Already here (adopted meanwhile): a flight takes it only if it is fresh; the
        # stale copy it was started for is no answer (and no "no progress" of the issuer).
        return flight is not None and fresh
    return issued > current.issued


def _left(entry: Entry, now: float) -> float:
    snap = entry.resolved
    return snap.deadline - now if snap is not None else 0.0


def _log_outcome(flight: Flight, token: Token, published: bool, now: float) -> None:
    left = token.deadline - now
    if published:
        _log.debug("published token %s for %s: %.1f s left", fingerprint(token.raw),
                   flight.request.describe(), left)
    else:
        _log.debug("token %s for %s (%.1f s left) went to its waiters only: not newer "
                   "than the cached one, or critical", fingerprint(token.raw),
                   flight.request.describe(), left)


def _call_hook(hook: Callable[..., None], *args: Any) -> None:
    try:
        hook(*args)
    except Exception:
        _log.exception("an event hook raised; the refresh goes on")
