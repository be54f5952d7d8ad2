"""Clocks: a deadline clock that never jumps, the monotonic and wall clocks, behind one seam.

Deadlines (when is this token critical?) run on ``CLOCK_BOOTTIME`` where the platform has it,
because it neither jumps with NTP or DST steps nor stops while the machine is suspended; else
on ``time.monotonic``. The wall clock reads a token's ``iat``/``exp`` at receipt. The fresh-token
read uses the two cheap argument-less clocks instead of the deadline clock: ``monotonic`` (never
jumps, but stands still in a suspend) and ``wall`` (counts a suspend, but can be stepped); a
token is served there only while both say fresh, so each covers the other's blind spot.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """What the client needs from a clock. ``deadline`` and ``wall`` are plain callables."""

    #: Seconds on a clock that never goes back, never jumps and counts a suspend (deadlines).
    deadline: Callable[[], float]
    #: Seconds since the epoch (for comparing with ``iat`` and ``exp``).
    wall: Callable[[], float]
    #: Seconds on a clock that never goes back and never jumps but may stand still while the
    #: machine is suspended (``time.monotonic``): with ``wall``, the fresh-token read's cheap
    #: check. A clock without it is read through ``deadline`` instead.
    monotonic: Callable[[], float]
    #: True for clocks that only move when a test moves them: the client then runs no timer
    #: thread and instead asks the clock to call it back when time moves.
    manual: bool

    def on_advance(self, callback: Callable[[], None]) -> None:
        """Register ``callback`` to run whenever a manual clock moves (no-op otherwise)."""


def _deadline_source() -> Callable[[], float]:
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        try:
            time.clock_gettime(boottime)
        except OSError:  # pragma: no cover - exotic kernels
            return time.monotonic
        return functools.partial(time.clock_gettime, boottime)
    return time.monotonic  # pragma: no cover - non-Linux


class _ManualTimer(Protocol):
    def run_due(self) -> int: ...

    def next_due(self) -> float | None: ...


class SystemClock:
    """The real clocks. ``deadline`` is ``CLOCK_BOOTTIME`` where available."""

    manual = False

    def __init__(self) -> None:
        # Bound builtins, not methods: the hot path calls ``deadline`` on every read.
        self.deadline: Callable[[], float] = _deadline_source()
        self.wall: Callable[[], float] = time.time
        self.monotonic: Callable[[], float] = time.monotonic

    def on_advance(self, callback: Callable[[], None]) -> None:
        """Real time moves by itself; nothing to register."""

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeClock:
    """A clock for tests: it moves only when told to, and never sleeps.

    ``advance(s)`` moves all three clocks and runs the client's due timers in the calling
    thread; ``step_wall(s)`` moves only the wall clock (an NTP step); ``suspend(s)`` moves the
    deadline and wall clocks but not the monotonic one (a laptop lid closed, a VM paused).
    ``run_due()`` runs what is due without moving, ``next_due()`` says when the next timer
    of any client on this clock falls due (retries, watchdogs, the poller's ticks).
    """

    manual = True

    def __init__(self, wall: float = 1_700_000_000.0, deadline: float = 1_000.0,
                 monotonic: float = 200.0) -> None:
        self._wall = float(wall)
        self._deadline = float(deadline)
        # Apart from the deadline clock on purpose: code reading the wrong one fails tests.
        self._monotonic = float(monotonic)
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        # The clients' timers, weakly: a client dropped without close() must not be kept.
        self._timers: weakref.WeakSet[_ManualTimer] = weakref.WeakSet()
        self.deadline: Callable[[], float] = self._read_deadline
        self.wall: Callable[[], float] = self._read_wall
        self.monotonic: Callable[[], float] = self._read_monotonic

    def _read_deadline(self) -> float:
        return self._deadline

    def _read_wall(self) -> float:
        return self._wall

    def _read_monotonic(self) -> float:
        return self._monotonic

    def on_advance(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._callbacks.append(callback)

    def attach_timer(self, timer: _ManualTimer) -> None:
        """Called by a client's timer on this clock: it runs when the clock moves."""
        with self._lock:
            self._timers.add(timer)

    def advance(self, seconds: float) -> None:
        """Move all three clocks forward and run whatever timers fall due."""
        if seconds < 0:
            raise ValueError("a FakeClock only moves forward; use step_wall for wall steps")
        with self._lock:
            self._deadline += seconds
            self._wall += seconds
            self._monotonic += seconds
        self.run_due()

    def run_due(self) -> int:
        """Run every timer callback that is due now, in this thread; returns how many ran."""
        with self._lock:
            callbacks = list(self._callbacks)
            timers = list(self._timers)
        for callback in callbacks:
            callback()
        return sum(timer.run_due() for timer in timers)

    def next_due(self) -> float | None:
        """The deadline-clock time of the soonest pending timer of any client on this clock,
        or ``None`` if nothing is scheduled."""
        with self._lock:
            timers = list(self._timers)
        dues = [due for due in (timer.next_due() for timer in timers) if due is not None]
        return min(dues, default=None)

    def suspend(self, seconds: float) -> None:
        """Sleep the machine for ``seconds``: the deadline and wall clocks move on, the
        monotonic clock stands still. No timer runs: on a real resume a request thread can
        read before the poller wakes; the next :meth:`advance` runs what fell due."""
        if seconds < 0:
            raise ValueError("a suspend lasts a positive number of seconds")
        with self._lock:
            self._deadline += seconds
            self._wall += seconds

    def step_wall(self, seconds: float) -> None:
        """Step the wall clock by ``seconds`` (either way), leaving the deadline clock alone."""
        self._wall += seconds

    def __repr__(self) -> str:
        return (f"FakeClock(wall={self._wall!r}, deadline={self._deadline!r}, "
                f"monotonic={self._monotonic!r})")
