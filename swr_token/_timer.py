"""One daemon thread that runs callbacks at due times on the deadline clock.

Retry backoffs and the poller's ticks are scheduled here instead of sleeping in a worker, so
a waiting retry costs a heap entry, not a parked thread. On a manual (fake) clock no thread
runs: the clock calls :meth:`Timer.run_due` when a test moves it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable

from ._clock import Clock

__all__ = ["Timer"]

_log = logging.getLogger("swr_token")

# Upper bound on one wait, so a missed notify can never stall the timer for long.
_MAX_WAIT = 1.0


class Timer:
    """``call_at(due, fn)`` runs ``fn`` on the timer thread at ``due`` (deadline clock).

    Callbacks must be quick: they hand real work to an executor or a thread.
    """

    def __init__(self, clock: Clock, name: str = "swr-token-poller") -> None:
        self._clock = clock
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False
        if clock.manual:
            # A manual clock runs the due callbacks itself when a test moves it; a FakeClock
            # also keeps the timer (weakly) to report what is pending (``next_due``).
            attach = getattr(clock, "attach_timer", None)
            if attach is not None:
                attach(self)
            else:
                clock.on_advance(self._on_advance)

    def call_at(self, due: float, fn: Callable[[], None]) -> None:
        with self._cond:
            if self._closed:
                return
            seq = next(self._seq)
            heapq.heappush(self._heap, (due, seq, fn))
            if self._clock.manual:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif self._heap[0][1] == seq:  # new earliest: wake the thread to shorten its wait
                self._cond.notify()

    def _on_advance(self) -> None:
        self.run_due()

    def next_due(self) -> float | None:
        """When the soonest callback is due (deadline clock), or ``None`` if none waits."""
        with self._cond:
            return self._heap[0][0] if self._heap and not self._closed else None

    def run_due(self) -> int:
        """Run every callback that is due now; returns how many ran."""
        ran = 0
        while True:
            with self._cond:
                if self._closed or not self._heap or self._heap[0][0] > self._clock.deadline():
                    return ran
                _, _, fn = heapq.heappop(self._heap)
            self._call(fn)
            ran += 1

    def _call(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # a broken callback must not kill the timer
            _log.exception("a scheduled callback failed")

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = self._clock.deadline()
                if not self._heap:
                    self._cond.wait(_MAX_WAIT)
                    if not self._heap:
                        self._thread = None  # idle: exit; call_at starts a new one
                        return
                    continue
                if self._heap[0][0] > now:
                    self._cond.wait(min(self._heap[0][0] - now, _MAX_WAIT))
                    continue
                _, _, fn = heapq.heappop(self._heap)
            self._call(fn)

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's thread, lock and callbacks."""
        self._cond = threading.Condition(threading.Lock())
        self._heap = []
        self._thread = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify_all()
