"""``TokenClient``: the public front of the cache and the refresh machinery.

The decision table of SPEC section 3 lives in :meth:`TokenClient._get`; the fresh-token case
is inlined in :meth:`TokenClient.get_token` as a dictionary read, two argument-less clock reads
(monotonic and wall) and two comparisons, without a lock.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Callable
from concurrent.futures import Executor
from concurrent.futures import TimeoutError as FuturesTimeout
from types import TracebackType
from typing import Any, NamedTuple, TypedDict, Unpack

from . import _fork
from ._cache import Cache
from ._checks import seconds
from ._clock import Clock, SystemClock
from ._entry import Entry, Flight, Published
from ._errors import ClientClosedError, ConfigurationError, TimedOutError, caller_copy
from ._refresh import Counters, Refresher
from ._request import TokenRequest
from ._retry import RetryPolicy
from ._settings import ErrorHook, Hooks, Settings, TokenHook
from ._store import SharedStore, TokenStore, source_identity
from ._timer import Timer
from ._token import (
    DEFAULT_MAX_CLOCK_SKEW,
    DEFAULT_MAX_LIFETIME,
    Freshness,
    Token,
    classify,
    fingerprint,
)

__all__ = ["GetTokenOptions", "TokenClient"]

_log = logging.getLogger("swr_token")

Source = Callable[[TokenRequest], "str | Token"]


class GetTokenOptions(TypedDict, total=False):
    """The keyword-only options of :meth:`TokenClient.get_token`, for type checkers."""

    template: str | None
    organization_id: str | None
    audience: str | None
    skip_cache: bool
    refresh_if_stale: bool
    background_refresh_threshold: float | None
    timeout: float | None


class _Read(NamedTuple):
    """How one call reads: the options of :meth:`TokenClient.get_token` beyond the key."""

    skip_cache: bool = False
    refresh_if_stale: bool = False
    threshold: float | None = None
    timeout: float | None = None


#: A plain ``get_token(session_id)``.
_PLAIN = _Read()


class TokenClient:
    """Serves short-lived tokens from a stale-while-revalidate cache to many threads.

    ``source(request) -> str | Token`` mints a token. Options (all keyword-only):

    - ``poll_interval`` (5.0 s): how often the poller refreshes stale keys that are being read.
    - ``background_refresh_threshold`` (15.0 s): a token with less left is stale: served at
      once and refreshed in the background. Never below the margin; capped at half a token's
      lifetime.
    - ``margin`` (``poll_interval``): a token with this much or less left is critical: never
      served; callers wait for a fetch. A quarter of the lifetime for tokens living no more
      than twice the margin.
    - ``fetch_timeout`` (10.0 s): a fetch that callers wait on gives up after this long.
    - ``retry`` (:class:`RetryPolicy`): tenacity wait/stop/retry for transient failures.
    - ``max_entries`` (10,000): cap on cached keys; expired ones go first, then the least
      recently read.
    - ``executor``: runs background refreshes (default: 4 daemon workers, closed with the
      client; one you pass is not shut down). ``foreground_executor``: runs fetches that
      callers wait on (default: a daemon thread each).
    - ``clock``: :class:`SystemClock` by default; tests pass ``swr_token.testing.FakeClock``.
    - ``on_token_update(request, token)`` / ``on_refresh_error(request, error)``: hooks run
      outside every lock when a token is published / a fetch fails; exceptions are logged.
    - ``verifier(token)``: checks each fetched token before it is used (for example
      ``swr_token.JWKSVerifier``); raises :class:`InvalidTokenError` to refuse it.
    - ``store``: share tokens, refresh locks and announcements between processes (for
      example ``swr_token.RedisStore``); never touched on the fresh-token path.
    - ``max_lifetime`` (86,400 s): no token is kept longer, whatever the issuer says.
    - ``max_clock_skew`` (300 s): an issuer ``Date`` further from the local clock is not
      trusted; a token expired by the local clock by more is never served; an ``iat`` further
      in the future does not order tokens.
    """

    def __init__(
        self,
        source: Source,
        *,
        poll_interval: float = 5.0,
        background_refresh_threshold: float = 15.0,
        margin: float | None = None,
        fetch_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        max_entries: int = 10_000,
        executor: Executor | None = None,
        foreground_executor: Executor | None = None,
        clock: Clock | None = None,
        on_token_update: TokenHook | None = None,
        on_refresh_error: ErrorHook | None = None,
        verifier: Callable[[Token], None] | None = None,
        store: TokenStore | None = None,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    ) -> None:
        if not callable(source):
            raise ConfigurationError(
                f"source must be callable as source(request) -> str | Token, got "
                f"{type(source).__name__}"
            )
        hooks = Hooks.checked(on_token_update=on_token_update,
                              on_refresh_error=on_refresh_error, verifier=verifier)
        self._settings = settings = Settings.checked(
            poll_interval=poll_interval, threshold=background_refresh_threshold, margin=margin,
            fetch_timeout=fetch_timeout, max_entries=max_entries, max_lifetime=max_lifetime,
            max_clock_skew=max_clock_skew, retry=retry)
        self._clock: Clock = clock or SystemClock()
        self._now = self._clock.deadline
        # The fresh-token read's two clocks; a clock without ``monotonic`` lends its deadline
        # clock (suspend-aware already, so the wall check only adds safety).
        self._monotonic: Callable[[], float] = getattr(self._clock, "monotonic",
                                                       self._clock.deadline)
        self._wall: Callable[[], float] = self._clock.wall
        self._cache = Cache(threshold=settings.threshold, margin=settings.margin,
                            max_entries=settings.max_entries, clock=self._clock,
                            monotonic=self._monotonic)
        # The hot path reads the cache's session index without the lock, through this
        # attribute (one load fewer than through the cache); close() swaps in an empty one.
        self._by_session: dict[str | None, Entry] = self._cache.by_session
        self._counters = Counters()
        self._timer = Timer(self._clock)
        self._shared = None if store is None else SharedStore(
            store, scope=source_identity(source), clock=self._now, wall=self._clock.wall)
        self._refresher = Refresher(
            self._cache, source, settings, hooks, clock=self._clock, timer=self._timer,
            counters=self._counters, executor=executor,
            foreground_executor=foreground_executor, shared=self._shared)
        self._polling = False
        # A fork that ran no at-fork hook is noticed here, on every path but the fresh read.
        self._pid_watch = _fork.PidWatch()
        _fork.register(self)

    # -- reading ------------------------------------------------------------------------

    def get_token(self, session_id: str | None = None,
                  **options: Unpack[GetTokenOptions]) -> str:
        """Return a usable token for the key, waiting only when no servable token exists.

        Options (keyword-only): ``template``, ``organization_id``, ``audience``,
        ``skip_cache``, ``refresh_if_stale``, ``background_refresh_threshold``, ``timeout``.
        Raises :class:`TokenRejectedError`, :class:`TokenFetchError` (also when ``timeout``
        seconds pass), :class:`InvalidTokenError` or :class:`ClientClosedError`.
        """
        # The options arrive as ``**options`` rather than as keyword-only parameters with
        # defaults because CPython resolves each absent keyword-only default with a dict
        # lookup on every call: ~90 ns for these seven, more than the whole fresh read.
        # ``_get_token`` has the public signature (and binds, checks and names the options).
        if options:
            return self._get_token(session_id, **options)
        # The fresh-token case, inlined (see ``_serve_fresh``): no lock, no deadline clock.
        try:
            entry = self._by_session[session_id]  # a subscript is cheaper than .get()
        except (KeyError, TypeError):
            pass  # not cached, or unhashable (``_get`` says which argument): the slow path
        else:
            snap = entry.resolved
            if snap is not None:
                monotonic = self._monotonic  # a local: calling an attribute is slower
                now = monotonic()
                if now <= snap.mono_until:
                    wall = self._wall
                    if wall() <= snap.wall_until:
                        entry.last_read = now  # a plain store: "read since its fetch"
                        self._counters.hits += 1
                        return snap.raw
        return self._get(TokenRequest(session_id), _PLAIN).raw

    def _get_token(
        self,
        session_id: str | None = None,
        *,
        template: str | None = None,
        organization_id: str | None = None,
        audience: str | None = None,
        skip_cache: bool = False,
        refresh_if_stale: bool = False,
        background_refresh_threshold: float | None = None,
        timeout: float | None = None,
    ) -> str:
        """:meth:`get_token` with its options spelled out: the public signature."""
        request = TokenRequest(session_id, template, organization_id, audience)
        if not (skip_cache or refresh_if_stale) and background_refresh_threshold is None:
            try:
                entry = self._cache.get(request)
            except TypeError:  # an unhashable key part: _get says which argument
                entry = None
            raw = self._serve_fresh(entry)
            if raw is not None:
                return raw
        return self._get(request, _Read(skip_cache, refresh_if_stale,
                                        background_refresh_threshold, timeout)).raw

    get_token.__signature__ = inspect.signature(_get_token)  # type: ignore[attr-defined]

    def _serve_fresh(self, entry: Entry | None) -> str | None:
        """The cached token if both fast clocks say it is fresh, else ``None``.

        Each clock has a blind spot the other covers: monotonic stands still in a suspend
        (the wall clock moves on), the wall clock can be stepped back (monotonic cannot).
        Everything else takes the slow path, which classifies on the deadline clock.
        """
        if entry is None:
            return None
        snap = entry.resolved
        if snap is None:
            return None
        now = self._monotonic()
        if now <= snap.mono_until and self._wall() <= snap.wall_until:
            entry.last_read = now
            self._counters.hits += 1
            return snap.raw
        return None

    def get_token_info(
        self,
        session_id: str | None = None,
        *,
        template: str | None = None,
        organization_id: str | None = None,
        audience: str | None = None,
        skip_cache: bool = False,
        refresh_if_stale: bool = False,
        background_refresh_threshold: float | None = None,
        timeout: float | None = None,
    ) -> Token:
        """Like :meth:`get_token`, returning the :class:`Token` (``raw``, ``expires_at``,
        ``remaining()``)."""
        return self._get(TokenRequest(session_id, template, organization_id, audience),
                         _Read(skip_cache, refresh_if_stale, background_refresh_threshold,
                               timeout))

    def _get(self, request: TokenRequest, read: _Read) -> Token:
        """The decision table (SPEC section 3) for everything but a fresh plain read."""
        self._pid_watch.check(self)
        request.check()
        timeout = None if read.timeout is None else seconds("timeout", read.timeout,
                                                             allow_zero=False)
        threshold = None if read.threshold is None else seconds(
            "background_refresh_threshold", read.threshold)
        self._check_open()
        now = self._now()
        self._ensure_polling()
        if read.skip_cache:
            return self._wait(self._refresher.fetch_own(request, now, timeout), timeout)
        token = self._serve_cached(request, now, threshold, read.refresh_if_stale)
        if token is not None:
            return token
        # Critical, expired, nothing cached, or a stale token the caller wants refreshed.
        return self._wait(self._refresher.fetch_for_callers(request, now, timeout), timeout)

    def _serve_cached(self, request: TokenRequest, now: float, threshold: float | None,
                      refresh_if_stale: bool) -> Token | None:
        """The cached token if its zone lets this call have it (a stale one starts a
        background refresh); ``None`` when the caller must wait for a fetch."""
        entry = self._cache.get(request)
        snap = entry.resolved if entry is not None else None
        if entry is None or snap is None:
            return None
        limit = snap.threshold
        if threshold is not None:
            limit = self._cache.threshold_for(threshold, snap.token.lifetime, snap.margin)
        zone = classify(snap.deadline - now, limit, snap.margin)
        if zone is Freshness.CRITICAL or (zone is Freshness.STALE and refresh_if_stale):
            return None
        entry.last_read = self._monotonic()
        if zone is Freshness.FRESH:
            self._counters.hits += 1
        else:
            self._counters.stale_serves += 1
            self._refresher.refresh(entry, now)
        return snap.token

    def _wait(self, flight: Flight, timeout: float | None) -> Token:
        self._counters.waits += 1
        future = flight.future
        assert future is not None  # a flight handed to a caller was made with its future
        try:
            error = future.exception(timeout)
        except FuturesTimeout:
            last = flight.last_error
            raise TimedOutError(
                f"timed out after {timeout:g} s waiting for a token for "
                f"{flight.request.describe()} (this call's timeout=)"
                + (f"; the last attempt failed: {last}" if last is not None else "")
                + "; the fetch goes on for other callers — pass a larger timeout= or try "
                "again", last_error=last,
            ) from None
        if error is not None:
            # Shared by every waiter of the flight: each raises its own copy.
            raise caller_copy(error) if isinstance(error, Exception) else error
        return future.result()

    # -- poller ---------------------------------------------------------------------------

    def _ensure_polling(self) -> None:
        if self._polling:
            return
        with self._cache.lock:
            if self._polling or self._cache.closed:
                return
            self._polling = True
        self._schedule_tick(self._now() + self._settings.poll_interval)
        if self._shared is not None:
            self._shared.listen(self._accept_drop)

    def _accept_drop(self, request: TokenRequest, dropped: str) -> None:
        """Another process dropped a token (invalidated or rejected): if this process
        serves that very token for that key, stop serving it; never adopt it again."""
        with self._cache.lock:
            if self._cache.closed:
                return
            entry = self._cache.get(request)
            snap = entry.resolved if entry is not None else None
            if entry is None or snap is None or fingerprint(snap.raw) != dropped:
                return  # not held here: nothing to forget (a flood costs no memory)
            self._refresher.drop_locked(entry, self._now())
        if self._shared is not None:
            self._shared.forget(dropped, snap.token.expires_at, is_fingerprint=True)

    def _schedule_tick(self, when: float) -> None:
        # Weakly: a client dropped without close() must still be collectable, its poller
        # stopping with it.
        client = weakref.ref(self)

        def tick() -> None:
            alive = client()
            if alive is not None:
                alive._tick()

        self._timer.call_at(when, tick)

    def _tick(self) -> None:
        """One poller tick: refresh stale keys that are being read; evict dead ones."""
        now = self._now()
        with self._cache.lock:
            if self._cache.closed:
                return
            if self._cache.rebase_if_clocks_moved():
                _log.debug("the machine was suspended or the wall clock stepped; "
                           "the fresh-token bounds follow the clocks again")
            due = self._cache.pop_due(now)
        if self._refresher.refresh_due(due, now):
            _log.debug("poller: %d stale key(s) being read start a background refresh",
                       len(due))
        self._schedule_tick(now + self._settings.poll_interval)

    # -- management ---------------------------------------------------------------------

    def invalidate(
        self,
        session_id: str | None = None,
        *,
        template: str | None = None,
        organization_id: str | None = None,
        audience: str | None = None,
        token: str | Token | None = None,
    ) -> bool:
        """Drop the key's cached token; with ``token=``, only if that is the cached one.

        Returns whether a token was dropped. A refresh already running may still publish a
        newer token, never this one or an older one.
        """
        request = TokenRequest.checked(session_id, template, organization_id, audience)
        raw = token.raw if isinstance(token, Token) else token
        self._pid_watch.check(self)
        with self._cache.lock:
            entry = self._cache.get(request)
            held = entry.resolved if entry is not None else None
            snap = None
            if entry is not None and held is not None and raw in (None, held.raw):
                snap = self._refresher.drop_locked(entry, self._now())
        if self._shared is not None and (snap is not None or raw):
            self._drop_shared(request, snap, raw)
        return snap is not None

    def _drop_shared(self, request: TokenRequest, snap: Published | None, raw: str | None) -> None:
        """Fleet-wide: out of the store (unless a newer token replaced it there), and the
        other processes holding it are told to stop serving it. A named token goes even when
        this process no longer holds it."""
        assert self._shared is not None
        if snap is not None:
            self._shared.drop(request, snap.raw, snap.token.expires_at)
        else:
            self._shared.drop(request, str(raw), self._clock.wall() + 86400)

    def stats(self) -> dict[str, int]:
        """Counters since creation (approximate under concurrency: the hot path takes no lock).

        ``hits``, ``stale_serves``, ``waits``, ``fetches`` (upstream attempts),
        ``background_refreshes``, ``failures``, ``entries``, ``in_flight``, ``parked`` (keys
        whose refresh waits for the failing source to answer a probe) and
        ``waiting_for_slot`` (fetches callers wait on, queued for the paced source's next
        attempt). A forked child starts from zero.
        """
        self._pid_watch.check(self)
        c = self._counters
        parked, waiting = self._refresher.parked()
        return {
            "hits": c.hits,
            "stale_serves": c.stale_serves,
            "waits": c.waits,
            "fetches": c.fetches,
            "background_refreshes": c.background_refreshes,
            "failures": c.failures,
            "entries": len(self._cache),
            "in_flight": self._refresher.in_flight(),
            "parked": parked,
            "waiting_for_slot": waiting,
        }

    def _check_open(self) -> None:
        if self._cache.closed:
            raise ClientClosedError("this TokenClient is closed; create a new one")

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the poller and workers, release every waiting caller with
        :class:`ClientClosedError`; never waits for a request in flight. Idempotent."""
        self._pid_watch.check(self)
        with self._cache.lock:
            if self._cache.closed:
                return
            self._cache.close()
            self._by_session = self._cache.by_session
            flights = self._refresher.close_locked()
        self._refresher.release(flights)
        self._timer.close()
        if self._shared is not None:
            self._shared.close()

    def __enter__(self) -> TokenClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        """Fresh locks, workers and poller; keep valid tokens; forget the parent's fetches
        and counts. Run by the at-fork hook, or by the pid watch after a hookless fork."""
        self._cache.reset_after_fork()
        self._counters.reset()
        self._refresher.reset_after_fork()
        self._timer.reset_after_fork()
        if self._shared is not None:
            self._shared.reset_after_fork()
        self._polling = False
        self._pid_watch.ran_hook()

    def __repr__(self) -> str:
        state = "closed" if self._cache.closed else f"{len(self._cache)} keys"
        return f"<TokenClient {state}>"

    def __getstate__(self) -> Any:
        raise TypeError("a TokenClient cannot be pickled; create one per process")

