"""Running fetches: attempts, retries on the timer, pacing, and what a result does to a key.

A flight is one logical fetch for a key. Each attempt runs on a worker (background) or on a
thread of its own (foreground: a caller is waiting, so it never queues behind refreshes).
Between attempts nothing sleeps: the next attempt is put on the :class:`Timer`.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
from collections.abc import Callable
from concurrent.futures import Executor, InvalidStateError
from typing import Any

from ._cache import Cache, Entry, Flight, Published
from ._clock import Clock
from ._errors import (
    PROGRAMMING_ERRORS,
    ClientClosedError,
    InvalidTokenError,
    TimedOutError,
    TokenError,
    TokenFetchError,
    TokenRejectedError,
)
from ._parking import Parking
from ._request import TokenRequest, attempt_budget_of
from ._retry import RetryPolicy, SourcePacer, jittered_backoff
from ._store import SharedStore, StoredToken, token_from_stored
from ._timer import Timer
from ._token import DEFAULT_MAX_CLOCK_SKEW, DEFAULT_MAX_LIFETIME, Token, fingerprint

__all__ = ["Counters", "Refresher"]

_log = logging.getLogger("swr_token")

#: What Token.notes mean, logged once per client each.
_NOTES = {
    "date": "the issuer's Date header is more than {skew:g} s from this machine's clock "
            "(max_clock_skew); it is not trusted, token age is measured on the local clock; "
            "check the issuer's and this machine's clocks",
    "lifetime": "the issuer's tokens live longer than max_lifetime={lifetime:g} s; they "
                "are kept for at most that long",
    "iat": "a token's 'iat' lies more than {skew:g} s in the future (max_clock_skew); it "
           "is not used to order tokens, so it cannot make honest tokens look older",
}

TokenHook = Callable[[TokenRequest, Token], None]
ErrorHook = Callable[[TokenRequest, TokenError], None]


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
    """Starts and runs flights for a :class:`Cache` against one source."""

    _thread_ids = itertools.count(1)

    def __init__(
        self,
        cache: Cache,
        source: Callable[[TokenRequest], Any],
        *,
        clock: Clock,
        timer: Timer,
        executor: Executor,
        foreground_executor: Executor | None,
        retry: RetryPolicy,
        pacer: SourcePacer,
        fetch_timeout: float,
        counters: Counters,
        on_token_update: TokenHook | None,
        on_refresh_error: ErrorHook | None,
        started_wall: float,
        started_deadline: float,
        verifier: Callable[[Token], None] | None = None,
        shared: SharedStore | None = None,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    ) -> None:
        self.cache = cache
        self.max_lifetime = max_lifetime
        self.max_clock_skew = max_clock_skew
        #: Receipt adjustments already logged (Token.notes): each is logged once per client.
        self._noted: set[str] = set()
        self.source = source
        self.clock = clock
        self.timer = timer
        self.executor = executor
        self.foreground_executor = foreground_executor
        self.retry = retry
        self.pacer = pacer
        self.fetch_timeout = fetch_timeout
        self.counters = counters
        self.on_token_update = on_token_update
        self.on_refresh_error = on_refresh_error
        self.started_wall = started_wall
        self.started_deadline = started_deadline
        self.verifier = verifier
        self.shared = shared
        self.flights: set[Flight] = set()
        #: Parked refreshes and slot waiters while the source is paced (``_parking``).
        self.parking = Parking(self)
        self.closed = False
        self._seq = itertools.count(1)
        self._tickets = itertools.count(1)
        #: A source bug's traceback was logged; cleared when the source next succeeds.
        self._bug_logged = False

    # -- starting (call with cache.lock held) -------------------------------------------

    def start(self, entry: Entry, *, background: bool, own: bool = False,
              stop_at: float | None = None) -> Flight:
        """Create a flight; the caller must :meth:`dispatch` it after releasing the lock."""
        now = self.clock.deadline()
        flight = Flight(entry, seq=next(self._seq), background=background, own=own, now=now,
                        stop_at=stop_at)
        if not own:
            entry.flight = flight
        if not background:
            flight.budget_until = now + self.fetch_timeout
        self.flights.add(flight)
        if background:
            self.counters.background_refreshes += 1
        return flight

    def dispatch(self, flight: Flight) -> None:
        """Run the flight's next attempt: on the pool for refreshes, on its own thread when a
        caller waits (so a cold fetch never queues behind background work).

        While the source is failing, the pacer decides: a refresh that is refused gives up
        and the key backs off; a fetch that callers wait on waits for the source's next slot
        (a timer entry, not a thread) if that falls within its budget, else fails at once.
        """
        if flight.future.done() or self.closed:
            self._retire(flight)
            return
        now = self.clock.deadline()
        if flight.attempt == 0 and not flight.background:
            self.timer.call_at(flight.budget_until, lambda: self._time_out(flight))
        refreshing = flight.background and flight.stop_at is not None
        if not flight.own and not self.pacer.permit(now):
            refused = self._paced_error(flight, now)
            slot = self.pacer.next_slot + random.uniform(0.0, 0.05)
            if refreshing:
                self._park(flight, refused)
            elif slot < flight.budget_until:
                self.parking.wait_for_slot(flight, slot)
            else:
                self._fail(flight, refused, now)
            return
        self._run(flight, background=refreshing)

    def _run(self, flight: Flight, *, background: bool) -> None:
        """Start the flight's next attempt on the pool, or on a thread of its own."""
        try:
            if background:
                with self.cache.lock:
                    flight.queued = ticket = next(self._tickets)
                self.executor.submit(self._attempt, flight, ticket)
            elif self.foreground_executor is not None:
                self.foreground_executor.submit(self._attempt, flight)
            else:
                threading.Thread(
                    target=self._attempt, args=(flight,), daemon=True,
                    name=f"swr-token-fetch-{next(self._thread_ids)}",
                ).start()
        except RuntimeError as exc:  # executor shut down, or no thread could start
            error: TokenError = ClientClosedError("the client is closed; create a new TokenClient")
            if not self.closed:
                error = TokenFetchError(f"could not start a fetch ({exc}); try again")
            self._fail(flight, error, self.clock.deadline())

    def _paced_error(self, flight: Flight, now: float) -> TokenFetchError:
        """The failure for a flight the pacer refused, naming this flight's key.

        The source's last failure came from some other key's request: its message names that
        key (a Clerk session, say) and must never reach this caller. Only its status, code
        and the time until the next slot are carried over; it is not chained.
        """
        last = self.pacer.last_error
        wait = max(0.0, self.pacer.next_slot - now)
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

    def next_seq(self) -> int:
        return next(self._seq)

    # -- one attempt --------------------------------------------------------------------

    def _attempt(self, flight: Flight, ticket: int = 0) -> None:
        if ticket:
            with self.cache.lock:
                if flight.queued != ticket:
                    return  # a waiting caller took this attempt over (see join)
                flight.queued = 0
        if flight.future.done() or self.closed:
            self._retire(flight)
            return
        flight.attempt += 1
        paced = self.pacer.paced()
        debug = _log.isEnabledFor(logging.DEBUG)
        if debug:
            _log.debug("%s for %s: attempt %d started", _kind(flight),
                       flight.request.describe(), flight.attempt)
        began = self.clock.deadline()
        try:
            token, from_source, issued = self._fetch(flight)
        except TokenError as exc:
            error: TokenError = exc
        except PROGRAMMING_ERRORS as exc:
            self._source_bug(flight, exc)
            return
        except Exception as exc:
            error = TokenFetchError(
                f"the token source raised {type(exc).__name__} for "
                f"{flight.request.describe()} (see __cause__); taken as transient: retried while "
                "the fetch's attempts last"
            )
            error.__cause__ = exc
        else:
            if debug:
                _log.debug("%s for %s: answered in %.0f ms (%s)", _kind(flight),
                           flight.request.describe(), (self.clock.deadline() - began) * 1000,
                           "from the source" if from_source else "from the shared store")
            self._bug_logged = False
            if from_source and self.pacer.answered():
                self.parking.release()
            self._succeed(flight, token, issued)
            return
        if self.closed:
            # Closed while this attempt ran: its callers were already released, and a failure
            # now (often the issuer torn down with the client) is news to no one.
            self._retire(flight)
            return
        now = self.clock.deadline()
        transient = isinstance(error, TokenFetchError)
        if transient:
            if self.pacer.streak == 0:
                _log.warning("token source failing: %s", error)
            self.pacer.failed(now, error)
            if self.pacer.paced():
                # Fetches queued for a pacer slot would only hear the same answer, one key
                # per slot: they get it now, so no caller waits more than about one slot.
                self.parking.fail_slot_waiters(error, now)
        elif isinstance(error, TokenRejectedError) and self.pacer.answered():
            self.parking.release()
        flight.last_error = error
        if debug:
            _log.debug("%s for %s: attempt %d failed after %.0f ms: %s", _kind(flight),
                       flight.request.describe(), flight.attempt, (now - began) * 1000, error)
        wait = self.retry.next_wait(attempt=flight.attempt, started_at=flight.started_at,
                                    now=now, error=error)
        if paced and transient and not (flight.background and flight.stop_at is not None):
            # The source was already failing before this attempt: callers with nothing
            # servable get the failure now instead of waiting out more paced attempts.
            wait = None
        if wait is not None and not flight.future.done():
            due = now + wait
            # A refresh stops at the critical deadline; a fetch callers wait on at its budget
            # (giving up now with the real failure beats a time-out later).
            limit = flight.stop_at if flight.stop_at is not None else flight.budget_until
            if due < limit:
                if debug:
                    _log.debug("%s for %s: retry in %.2f s", _kind(flight),
                               flight.request.describe(), wait)
                self.timer.call_at(due, lambda: self.dispatch(flight))
                return
        if debug:
            _log.debug("%s for %s: giving up after %d attempt(s)", _kind(flight),
                       flight.request.describe(), flight.attempt)
        self._fail(flight, error, now)

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
        self._fail(flight, bug, self.clock.deadline())

    def _fetch(self, flight: Flight) -> tuple[Token, bool, float]:
        """One attempt: from the shared store if another process has a newer token, else
        from the source (under the store's fleet-wide lock when there is a store).

        Returns the token, whether the source was called, and the token's issue time (its
        freshness order: for a shared opaque token the writer's, bounded by now)."""

        def call_source() -> tuple[Token, float]:
            self.counters.fetches += 1
            budget = None
            if not (flight.background and flight.stop_at is not None):
                budget = max(flight.budget_until - self.clock.deadline(), 0.0)
            with attempt_budget_of(budget):
                result = self.source(flight.request)
            token = self._receive(result)
            iat = token.issued_at
            # An opaque token is ordered by when it arrived, on a wall clock that a step
            # after start-up cannot move backwards (a newer token never ranks older).
            steady_wall = self.started_wall + (self.clock.deadline() - self.started_deadline)
            return token, steady_wall if iat is None else iat

        shared = self.shared
        if shared is None:
            token, issued = call_source()
            return token, True, issued
        if flight.own:
            # skip_cache: a request of its own, never a shared token; the result is shared.
            token, issued = call_source()
            shared.put(flight.key, StoredToken(token.raw, token.expires_at, issued))
            return token, True, issued
        now = self.clock.deadline()
        if flight.background and flight.stop_at is not None:
            budget = flight.stop_at - now
        else:  # leave half the caller's budget for fetching here if the other never answers
            budget = (flight.budget_until - now) / 2
        (token, issued), from_source = shared.fetch(
            flight.key, call_source,
            lambda stored: self.accept_shared(flight.entry, stored, flight=flight),
            lambda pair: StoredToken(pair[0].raw, pair[0].expires_at, pair[1]),
            wait=budget)
        return token, from_source, issued

    def accept_shared(self, entry: Entry, stored: StoredToken, *, flight: Flight | None = None
                      ) -> tuple[Token, float] | None:
        """A token from another process (with its issue time), if it is usable here.

        The checks clerk-js makes on a broadcast: it parses, passes the verifier, belongs to
        this key, is not expired (here: not critical), and is newer than the local one. Its
        issue time is the JWT's ``iat``, else the writer's, never later than now (a forged
        future time must not make it outrank every later token). For a running ``flight``
        the local token may already be this one, which is fine; a refresh wants a token
        that is not stale.
        """
        wall = self.clock.wall()
        rebuilt = token_from_stored(stored, wall)
        if rebuilt is None:
            return None
        try:
            token = self._receive(rebuilt)
        except TokenError:
            return None
        issued = token.issued_at
        if issued is None:
            issued = stored.issued_at if isinstance(stored.issued_at, float | int) else 0.0
        issued = min(float(issued), wall) if math.isfinite(issued) else 0.0
        session_id = entry.key[0]
        sid = token.claims.get("sid")
        if sid is not None and session_id is not None and sid != session_id:
            return None
        threshold, margin = self.cache.thresholds_for(token.lifetime)
        remaining = token.deadline - self.clock.deadline()
        if remaining <= margin:
            return None
        refreshing = flight is not None and flight.background and flight.stop_at is not None
        if refreshing and remaining < threshold:
            return None
        current = entry.resolved
        if current is None:
            return token, issued
        if current.raw == token.raw:
            # Already here (adopted meanwhile): a flight takes it only if it is fresh; the
            # stale copy it was started for is no answer (and no "no progress" of the issuer).
            return (token, issued) if flight is not None and remaining >= threshold else None
        return (token, issued) if issued > current.order[0] else None

    def _receive(self, result: object) -> Token:
        if isinstance(result, str):
            result = Token(result)
        elif not isinstance(result, Token):
            raise InvalidTokenError(
                f"the token source returned {type(result).__name__}; "
                "it must return the raw token string or a swr_token.Token"
            )
        if self.verifier is not None:
            # Raises InvalidTokenError (never cached) or TokenFetchError (keys unreachable).
            self.verifier(result)
        now = self.clock.deadline()
        token = result.received(
            deadline_now=now,
            deadline_clock=self.clock.deadline,
            wall_now=self.clock.wall(),
            started_wall_now=self.started_wall + (now - self.started_deadline),
            max_lifetime=self.max_lifetime,
            max_clock_skew=self.max_clock_skew,
        )
        for note in token.notes - self._noted:
            self._noted.add(note)
            _log.warning("swr_token: %s", _NOTES[note].format(
                lifetime=self.max_lifetime, skew=self.max_clock_skew))
        return token

    # -- outcomes -----------------------------------------------------------------------

    def _succeed(self, flight: Flight, token: Token, issued: float) -> None:
        now = self.clock.deadline()
        published: Published | None = None
        with self.cache.lock:
            self.flights.discard(flight)
            if self.closed:
                return
            entry = flight.entry
            if flight.own:
                entry = self.cache.entry_for(flight.key, now)
            elif entry.flight is flight:
                entry.flight = None
            result = self.cache.publish(entry, token, order=(issued, flight.seq), now=now)
            published = result.published
            if flight.own:
                pass
            elif result.progress:
                if entry.streak:
                    _log.info("refresh of %s recovered", flight.request.describe())
                entry.streak = 0
                entry.backoff_until = float("-inf")
                entry.fail_error = None
                entry.fail_until = float("-inf")
            else:
                entry.streak += 1
                self._back_off(entry, now)
                if entry.streak == 1:
                    _log.warning(
                        "refresh of %s made no progress (the issuer returned the "
                        "same or an already-stale token); backing off", flight.request.describe()
                    )
        if _log.isEnabledFor(logging.DEBUG):
            left = token.deadline - now
            if published is not None:
                _log.debug("published token %s for %s: %.1f s left", fingerprint(token.raw),
                           flight.request.describe(), left)
            else:
                _log.debug("token %s for %s (%.1f s left) went to its waiters only: not "
                           "newer than the cached one, or critical", fingerprint(token.raw),
                           flight.request.describe(), left)
        _settle(flight, token, None)
        if published is not None and self.on_token_update is not None:
            _call_hook(self.on_token_update, flight.request, published.token)

    def fail(self, flight: Flight, error: Exception, now: float) -> None:
        """Settle ``flight`` with ``error`` (call without the lock)."""
        self._fail(flight, error, now)

    def _fail(self, flight: Flight, error: Exception, now: float) -> None:
        if flight.future.done():
            self._retire(flight)  # already settled (closed, or timed out while hung)
            return
        self.counters.failures += 1
        dropped = None
        with self.cache.lock:
            self.flights.discard(flight)
            entry = flight.entry
            if not flight.own and entry.flight is flight:
                entry.flight = None
                dropped = self._record_failure(entry, error, now, flight.background)
        if dropped is not None and self.shared is not None:
            # Fail closed fleet-wide: the store forgets the refused token (unless a newer one
            # replaced it) and the other processes are told to stop serving it.
            self.shared.drop(entry.key, dropped.raw, dropped.token.expires_at)
        _settle(flight, None, error)
        # A bug in the source is not a TokenError: it is logged, not passed to the hook.
        if (self.on_refresh_error is not None and isinstance(error, TokenError)
                and not isinstance(error, ClientClosedError)):
            _call_hook(self.on_refresh_error, flight.request, error)

    def _record_failure(self, entry: Entry, error: Exception, now: float,
                        background: bool) -> Published | None:
        """Back off, fail fast for a while; a rejection drops the token (returned)."""
        if isinstance(error, InvalidTokenError):
            # Not the issuer's mood but a bad token: no fail-fast window; only a refresh
            # backs off, so stale reads do not each ask again.
            if background:
                entry.streak += 1
                self._back_off(entry, now)
            return None
        entry.streak += 1
        self._back_off(entry, now)
        entry.fail_error = error
        entry.fail_until = max(now + random.uniform(1.0, 1.3), self.pacer.next_slot)
        if isinstance(error, TokenFetchError):
            self.parking.failing_fast(entry)  # ended early if the source recovers
        # A rejection fails closed: the issuer said no, so stop serving the token it refuses.
        dropped = None
        if isinstance(error, TokenRejectedError):
            dropped = self.cache.drop(entry, now)
            if dropped is not None or entry.streak == 1:
                _log.warning("token for %s rejected: %s",
                             TokenRequest(*entry.key).describe(), error)
        snap = entry.resolved
        if background and snap is not None and self.pacer.paced() \
                and isinstance(error, TokenFetchError):
            self.parking.park(entry)
        elif snap is not None and snap.deadline - snap.margin > entry.backoff_until:
            self.cache.push_due(entry.backoff_until, 0, entry, snap)
        return dropped

    def _park(self, flight: Flight, error: TokenError) -> None:
        """A refresh the pacer refused: no request, no growing backoff; wait for a probe."""
        with self.cache.lock:
            self.flights.discard(flight)
            if flight.entry.flight is flight:
                flight.entry.flight = None
                if flight.entry.resolved is not None:
                    self.parking.park(flight.entry)
        _settle(flight, None, error)

    def _back_off(self, entry: Entry, now: float) -> None:
        entry.backoff_until = now + jittered_backoff(entry.streak)
        entry.backoff_epoch = self.pacer.recoveries

    def join(self, flight: Flight) -> bool:
        """A caller now waits on ``flight`` (``cache.lock`` held): lift a refresh's
        critical-deadline stop and give it the caller's budget (and its watchdog).

        Returns True if the refresh was still queued behind background work: the caller
        then takes it over and must :meth:`run_now` it after releasing the lock, so a
        waiting caller never queues behind other keys' refreshes.
        """
        if flight.background and flight.stop_at is not None:
            flight.join(self.clock.deadline(), self.fetch_timeout)
            self.timer.call_at(flight.budget_until, lambda: self._time_out(flight))
        if flight.queued:
            flight.queued = 0  # the worker that picks the submitted attempt up skips it
            return True
        return False

    def run_now(self, flight: Flight) -> None:
        """Run a refresh taken over from the pool's queue on a thread of its own (its pacer
        slot was granted when it was queued)."""
        self._run(flight, background=False)

    def wait_budget(self, flight: Flight, timeout: float | None) -> None:
        """A caller waits up to ``timeout`` s for ``flight`` (with ``cache.lock`` held): a
        timeout past the fetch's budget extends it, so the fetch, its retries and each
        attempt (:func:`attempt_budget`) may take as long as that caller is willing to wait."""
        if timeout is None or (flight.background and flight.stop_at is not None):
            return
        until = self.clock.deadline() + timeout
        if until > flight.budget_until:
            flight.budget_until = until
            self.timer.call_at(until, lambda: self._time_out(flight))

    def _time_out(self, flight: Flight) -> None:
        """A waited-on fetch ran past its budget (a hung request): release its waiters."""
        if flight.future.done() or self.clock.deadline() < flight.budget_until:
            return  # settled, or a caller extended the budget since this watchdog was set
        # Waiting for a retry or a pacer slot, the last failure says what is wrong; with a
        # request hanging in flight, the time-out itself does.
        error = flight.last_error or TimedOutError(
            f"fetching a token for {flight.request.describe()} took longer than "
            f"{flight.budget_until - flight.started_at:g} s (TokenClient's fetch_timeout=, or "
            "the longest timeout= of the callers waiting for it); the issuer may be hanging, "
            "try again later")
        self._fail(flight, error, self.clock.deadline())

    def _retire(self, flight: Flight) -> None:
        with self.cache.lock:
            self.flights.discard(flight)
            if flight.entry.flight is flight:
                flight.entry.flight = None

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> list[Flight]:
        """Mark closed (with the cache lock held); returns the flights to release."""
        self.closed = True
        flights = list(self.flights)
        self.flights.clear()
        return flights

    def reset_after_fork(self) -> None:
        self.flights = set()
        self.parking.reset_after_fork()


def _kind(flight: Flight) -> str:
    """What a flight is, for DEBUG lines."""
    if flight.own:
        return "skip_cache fetch"
    if flight.background and flight.stop_at is not None:
        return "background refresh"
    return "fetch (callers waiting)"


def _settle(flight: Flight, token: Token | None, error: BaseException | None) -> None:
    """Resolve the flight's future once; later outcomes (after close or a time-out) are
    dropped."""
    try:
        if error is not None:
            flight.future.set_exception(error)
        elif token is not None:
            flight.future.set_result(token)
    except InvalidStateError:
        pass


def release(flights: list[Flight], error: BaseException) -> None:
    for flight in flights:
        _settle(flight, None, error)


def _call_hook(hook: Callable[..., None], *args: Any) -> None:
    try:
        hook(*args)
    except Exception:
        _log.exception("an event hook raised; the refresh goes on")
