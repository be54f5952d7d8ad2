"""``TokenClient``: the public front of the cache and the refresh machinery.

The decision table of SPEC section 3 lives in :meth:`TokenClient._get`; the fresh-token case
is inlined in :meth:`TokenClient.get_token` as a dictionary read, two argument-less clock reads
(monotonic and wall) and two comparisons, without a lock.
"""

from __future__ import annotations

import inspect
import logging
import math
import weakref
from collections.abc import Callable
from concurrent.futures import Executor
from concurrent.futures import TimeoutError as FuturesTimeout
from types import TracebackType
from typing import Any, TypedDict, Unpack

from . import _fork
from ._cache import Cache, Entry, Flight, Key
from ._clock import Clock, SystemClock
from ._errors import (
    ClientClosedError,
    ConfigurationError,
    TimedOutError,
    caller_copy,
)
from ._executor import DaemonThreadPoolExecutor
from ._refresh import Counters, ErrorHook, Refresher, TokenHook, release
from ._request import TokenRequest
from ._retry import RetryPolicy, SourcePacer
from ._store import SharedStore, TokenStore, source_identity
from ._timer import Timer
from ._token import (
    DEFAULT_MAX_CLOCK_SKEW,
    DEFAULT_MAX_LIFETIME,
    Freshness,
    Token,
    classify,
    effective_threshold,
    fingerprint,
)

__all__ = ["GetTokenOptions", "TokenClient"]

_log = logging.getLogger("swr_token")

Source = Callable[[TokenRequest], "str | Token"]


_KEY_PARTS = ("session_id", "template", "organization_id", "audience")


def _check_key(key: Key) -> None:
    """Each key part is ``None`` or a non-empty string; say which argument is not."""
    for name, part in zip(_KEY_PARTS, key, strict=True):
        if part is None:
            continue
        if not isinstance(part, str):
            raise TypeError(f"{name} must be a str or None, got {type(part).__name__}")
        if not part:
            raise ConfigurationError(f"{name} must not be empty; pass None to leave it out")


class GetTokenOptions(TypedDict, total=False):
    """The keyword-only options of :meth:`TokenClient.get_token`, for type checkers."""

    template: str | None
    organization_id: str | None
    audience: str | None
    skip_cache: bool
    refresh_if_stale: bool
    background_refresh_threshold: float | None
    timeout: float | None


def _seconds(name: str, value: object, *, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigurationError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return float(value)


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
        for name, hook, signature in (
                ("on_token_update", on_token_update, "on_token_update(request, token)"),
                ("on_refresh_error", on_refresh_error, "on_refresh_error(request, error)"),
                ("verifier", verifier, "verifier(token)")):
            if hook is not None and not callable(hook):
                # Now, not at the first refresh, where it would only be logged.
                raise ConfigurationError(
                    f"{name} must be a function called as {signature}, or None; got "
                    f"{type(hook).__name__}")
        self._poll_interval = _seconds("poll_interval", poll_interval, allow_zero=False)
        threshold = _seconds("background_refresh_threshold", background_refresh_threshold)
        margin_s = self._poll_interval if margin is None else _seconds("margin", margin)
        fetch_timeout_s = _seconds("fetch_timeout", fetch_timeout, allow_zero=False)
        max_lifetime_s = _seconds("max_lifetime", max_lifetime, allow_zero=False)
        max_clock_skew_s = _seconds("max_clock_skew", max_clock_skew)
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigurationError(f"max_entries must be a positive int, got {max_entries!r}")
        self._clock: Clock = clock or SystemClock()
        self._now = self._clock.deadline
        # The fresh-token read's two clocks; a clock without ``monotonic`` lends its deadline
        # clock (suspend-aware already, so the wall check only adds safety).
        self._monotonic: Callable[[], float] = getattr(self._clock, "monotonic",
                                                       self._clock.deadline)
        self._wall: Callable[[], float] = self._clock.wall
        self._cache = Cache(threshold=threshold, margin=margin_s, max_entries=max_entries,
                            clock=self._clock, monotonic=self._monotonic)
        # The hot path reads these dicts without the lock; close() swaps in empty ones.
        self._entries: dict[Key, Entry] = self._cache.entries
        self._by_session: dict[str | None, Entry] = self._cache.by_session
        self._owns_executor = executor is None
        self._counters = Counters()
        self._timer = Timer(self._clock)
        policy = retry or RetryPolicy()
        self._refresher = Refresher(
            self._cache,
            source,
            clock=self._clock,
            timer=self._timer,
            executor=executor or DaemonThreadPoolExecutor(),
            foreground_executor=foreground_executor,
            retry=policy,
            pacer=SourcePacer(max_retry_after=policy.max_retry_after),
            fetch_timeout=fetch_timeout_s,
            counters=self._counters,
            on_token_update=on_token_update,
            on_refresh_error=on_refresh_error,
            started_wall=self._clock.wall(),
            started_deadline=self._now(),
            verifier=verifier,
            shared=None if store is None else SharedStore(
                store, scope=source_identity(source), clock=self._now, wall=self._clock.wall),
            max_lifetime=max_lifetime_s,
            max_clock_skew=max_clock_skew_s,
        )
        self._polling = False
        self._closed = False
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
        return self._get((session_id, None, None, None), False, False, None, None).raw

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
        key = (session_id, template, organization_id, audience)
        if not (skip_cache or refresh_if_stale) and background_refresh_threshold is None:
            try:
                entry = self._entries.get(key)
            except TypeError:  # an unhashable key part: _get says which argument
                entry = None
            raw = self._serve_fresh(entry)
            if raw is not None:
                return raw
        return self._get(key, skip_cache, refresh_if_stale, background_refresh_threshold,
                         timeout).raw

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
        return self._get((session_id, template, organization_id, audience), skip_cache,
                         refresh_if_stale, background_refresh_threshold, timeout)

    def _get(self, key: Key, skip_cache: bool, refresh_if_stale: bool,
             threshold: float | None, timeout: float | None) -> Token:
        self._pid_watch.check(self)
        _check_key(key)
        if timeout is not None:
            timeout = _seconds("timeout", timeout, allow_zero=False)
        if threshold is not None:
            threshold = _seconds("background_refresh_threshold", threshold)
        if self._closed:
            raise ClientClosedError("this TokenClient is closed; create a new one")
        now = self._now()
        self._ensure_polling()
        if skip_cache:
            with self._cache.lock:
                self._check_open()
                flight = self._refresher.start(self._cache.entry_for(key, now),
                                               background=False, own=True)
            self._refresher.wait_budget(flight, timeout)
            self._refresher.dispatch(flight)
            return self._wait(flight, timeout)

        entry = self._entries.get(key)
        snap = entry.resolved if entry is not None else None
        if entry is not None and snap is not None:
            limit = snap.threshold
            if threshold is not None:
                limit = effective_threshold(threshold, snap.token.lifetime, snap.margin)
            zone = classify(snap.deadline - now, limit, snap.margin)
            if zone is Freshness.FRESH or (zone is Freshness.STALE and not refresh_if_stale):
                entry.last_read = self._monotonic()
                if zone is Freshness.FRESH:
                    self._counters.hits += 1
                else:
                    self._counters.stale_serves += 1
                    self._refresh_in_background(entry, now)
                return snap.token

        # Critical, expired, nothing cached, or a stale token the caller wants refreshed.
        with self._cache.lock:
            self._check_open()
            entry = self._cache.entry_for(key, now)
            running = entry.flight
            error = None
            start = running is None
            promote = False
            if running is not None:
                flight = running
                promote = self._refresher.join(flight)
            elif entry.fail_error is not None and now < entry.fail_until:
                error = entry.fail_error
            else:
                flight = self._refresher.start(entry, background=False)
            if error is None:
                self._refresher.wait_budget(flight, timeout)
        if error is not None:
            # Fail fast: the issuer just failed and nothing servable exists. Each caller
            # raises its own copy, so the shared failure's traceback does not grow.
            raise caller_copy(error)
        if start:
            self._refresher.dispatch(flight)
        elif promote:
            _log.debug("%s: took over its refresh queued behind background work; runs now",
                       flight.request.describe())
            self._refresher.run_now(flight)  # it was queued behind other keys' refreshes
        else:
            _log.debug("%s: waiting for the fetch already running", flight.request.describe())
        return self._wait(flight, timeout)

    def _wait(self, flight: Flight, timeout: float | None) -> Token:
        self._counters.waits += 1
        try:
            error = flight.future.exception(timeout)
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
        return flight.future.result()

    def _refresh_in_background(self, entry: Entry, now: float) -> None:
        """Start one background refresh for a stale key unless one runs or it backs off."""
        if entry.flight is not None:
            return
        pacer = self._refresher.pacer
        if entry.backoff_until > now and entry.backoff_epoch == pacer.recoveries:
            return
        with self._cache.lock:
            snap = entry.resolved
            if (self._closed or entry.flight is not None or snap is None
                    or self._entries.get(entry.key) is not entry):
                return
            flight = self._refresher.start(entry, background=True,
                                           stop_at=snap.deadline - snap.margin)
        _log.debug("%s is stale (%.1f s left): served at once while a background refresh "
                   "runs", flight.request.describe(), snap.deadline - now)
        self._refresher.dispatch(flight)

    # -- poller ---------------------------------------------------------------------------

    def _ensure_polling(self) -> None:
        if self._polling:
            return
        with self._cache.lock:
            if self._polling or self._closed:
                return
            self._polling = True
        self._schedule_tick(self._now() + self._poll_interval)
        if self._refresher.shared is not None:
            self._refresher.shared.listen(self._accept_drop)

    def _accept_drop(self, key: Key, dropped: str) -> None:
        """Another process dropped a token (invalidated or rejected): if this process
        serves that very token for that key, stop serving it; never adopt it again."""
        shared = self._refresher.shared
        with self._cache.lock:
            if self._closed:
                return
            entry = self._entries.get(key)
            snap = entry.resolved if entry is not None else None
            if entry is None or snap is None or fingerprint(snap.raw) != dropped:
                return  # not held here: nothing to forget (a flood costs no memory)
            self._cache.drop(entry, self._now())
            entry.flight = None
        if shared is not None:
            shared.forget(dropped, snap.token.expires_at, is_fingerprint=True)

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
            if self._closed:
                return
            if self._cache.rebase_if_clocks_moved():
                _log.debug("the machine was suspended or the wall clock stepped; "
                           "the fresh-token bounds follow the clocks again")
            due = self._cache.pop_due(now)
        for entry in due:
            self._refresh_in_background(entry, now)
        self._schedule_tick(now + self._poll_interval)

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
        _check_key((session_id, template, organization_id, audience))
        raw = token.raw if isinstance(token, Token) else token
        key: Key = (session_id, template, organization_id, audience)
        self._pid_watch.check(self)
        shared = self._refresher.shared
        with self._cache.lock:
            entry = self._entries.get(key)
            held = entry.resolved if entry is not None else None
            if entry is None or held is None or (raw is not None and held.raw != raw):
                snap = None
            else:
                snap = self._cache.drop(entry, self._now())
                # A fetch already running may return the very token dropped here (an issuer
                # that re-serves it): callers arriving from now on must not join it. It runs
                # on and may still publish a newer token; the freshness guard refuses this one.
                entry.flight = None
        if shared is not None and (snap is not None or raw):
            # Fleet-wide: out of the store (unless a newer token replaced it there), and the
            # other processes holding it are told to stop serving it. A named token goes even
            # when this process no longer holds it.
            dropped = snap.raw if snap is not None else str(raw)
            expires = snap.token.expires_at if snap is not None else self._clock.wall() + 86400
            shared.drop(key, dropped, expires)
        return snap is not None

    def stats(self) -> dict[str, int]:
        """Counters since creation (approximate under concurrency: the hot path takes no lock).

        ``hits``, ``stale_serves``, ``waits``, ``fetches`` (upstream attempts),
        ``background_refreshes``, ``failures``, ``entries``, ``in_flight``. A forked child
        starts from zero.
        """
        self._pid_watch.check(self)
        c = self._counters
        return {
            "hits": c.hits,
            "stale_serves": c.stale_serves,
            "waits": c.waits,
            "fetches": c.fetches,
            "background_refreshes": c.background_refreshes,
            "failures": c.failures,
            "entries": len(self._entries),
            "in_flight": len(self._refresher.flights),
        }

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("this TokenClient is closed; create a new one")

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the poller and workers, release every waiting caller with
        :class:`ClientClosedError`; never waits for a request in flight. Idempotent."""
        self._pid_watch.check(self)
        with self._cache.lock:
            if self._closed:
                return
            self._closed = True
            flights = self._refresher.close()
            self._cache.clear()
            self._entries = self._cache.entries
            self._by_session = self._cache.by_session
        release(flights, ClientClosedError(
            "the TokenClient was closed while this call waited for a token"))
        self._timer.close()
        if self._refresher.shared is not None:
            self._refresher.shared.close()
        if self._owns_executor:
            self._refresher.executor.shutdown(wait=False, cancel_futures=True)

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
        self._refresher.pacer.reset_after_fork()
        self._timer.reset_after_fork()
        if self._refresher.shared is not None:
            self._refresher.shared.reset_after_fork()
        self._polling = False
        if self._owns_executor:
            self._refresher.executor = DaemonThreadPoolExecutor()
        self._pid_watch.ran_hook()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._entries)} keys"
        return f"<TokenClient {state}>"

    def __getstate__(self) -> Any:
        raise TypeError("a TokenClient cannot be pickled; create one per process")

