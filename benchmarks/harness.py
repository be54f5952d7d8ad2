"""The load generator: N threads calling ``get_token()`` in a loop, every call recorded.

Per call it keeps the start time, the latency and which token came back (an index into a
:class:`TokenBook`, or -1 for an exception), in flat arrays so 1.5 million calls cost ~25 MB.
The expiry check happens at return: ``exp`` is decoded once per distinct token string and
cached, so the harness adds a dictionary lookup and a ``time.time()`` per call.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jwt
import numpy as np

__all__ = ["LoadRun", "LogCounter", "TokenBook", "run_load"]


@dataclass(frozen=True)
class TokenInfo:
    index: int
    exp: float
    jti: str


class TokenBook:
    """Every distinct token returned during a run, with its ``exp`` and ``jti``."""

    def __init__(self) -> None:
        self._by_raw: dict[str, TokenInfo] = {}
        self.tokens: list[TokenInfo] = []
        self._lock = threading.Lock()
        self.get = self._by_raw.get

    def register(self, raw: str) -> TokenInfo:
        claims = jwt.decode(raw, options={"verify_signature": False})
        with self._lock:
            info = self._by_raw.get(raw)
            if info is None:
                info = TokenInfo(len(self.tokens), float(claims["exp"]), str(claims["jti"]))
                self.tokens.append(info)
                self._by_raw[raw] = info
            return info


@dataclass
class LoadRun:
    """What a load run recorded. Times are seconds since ``t0`` (perf counter)."""

    threads: int
    duration: float
    t0_wall: float
    starts: np.ndarray
    latencies: np.ndarray
    tokens: np.ndarray  # index into book.tokens, -1 where the call raised
    expired: int
    errors: dict[str, int]
    book: TokenBook
    events: dict[str, object] = field(default_factory=dict)

    def wall(self, offset: float | np.ndarray) -> float | np.ndarray:
        return self.t0_wall + offset


class _Worker:
    __slots__ = ("errors", "expired", "lats", "starts", "toks")

    def __init__(self) -> None:
        self.starts = array("d")
        self.lats = array("d")
        self.toks = array("i")
        self.expired = 0
        self.errors: collections.Counter[str] = collections.Counter()


def run_load(
    get_token: Callable[[], str], *, threads: int, duration: float, pause: float,
    events: Sequence[tuple[float, str, Callable[[], object]]] = (),
) -> LoadRun:
    """Call ``get_token`` from ``threads`` threads for ``duration`` s, pausing ``pause`` s
    between calls. ``events`` are ``(offset_s, name, fn)``: ``fn()`` runs at that offset on a
    scheduler thread and its result is kept under ``name``."""
    book = TokenBook()
    workers = [_Worker() for _ in range(threads)]
    barrier = threading.Barrier(threads + 1, timeout=30.0)
    max_calls = int(duration / max(pause, 1e-4) * 2) + 10_000
    clock = {"t0": 0.0}
    results: dict[str, object] = {}

    def work(w: _Worker) -> None:
        perf, now, sleep, lookup, register = (time.perf_counter, time.time, time.sleep,
                                              book.get, book.register)
        starts_append, lats_append, toks_append = w.starts.append, w.lats.append, w.toks.append
        barrier.wait()
        t0 = clock["t0"]
        end = t0 + duration
        for _ in range(max_calls):
            start = perf()
            if start >= end:
                break
            try:
                raw = get_token()
            except Exception as exc:
                stop = perf()
                w.errors[type(exc).__name__] += 1
                index = -1
            else:
                stop = perf()
                info = lookup(raw) or register(raw)
                if info.exp <= now():
                    w.expired += 1
                index = info.index
            starts_append(start - t0)
            lats_append(stop - start)
            toks_append(index)
            sleep(pause)

    def schedule() -> None:
        t0 = clock["t0"]
        for offset, name, fn in sorted(events, key=lambda e: e[0]):
            delay = t0 + offset - time.perf_counter()
            if delay > 0:
                stop.wait(delay)
            if stop.is_set():
                return
            results[name] = fn()
            results[name + "_at"] = time.perf_counter() - t0

    stop = threading.Event()
    pool = [threading.Thread(target=work, args=(w,), name=f"bench-load-{i}", daemon=True)
            for i, w in enumerate(workers)]
    for thread in pool:
        thread.start()
    t0_wall = time.time()
    clock["t0"] = time.perf_counter()
    t0_wall = (t0_wall + time.time()) / 2
    scheduler = threading.Thread(target=schedule, name="bench-scheduler", daemon=True)
    barrier.wait()
    scheduler.start()
    for thread in pool:
        thread.join(duration + 60.0)
    stop.set()
    scheduler.join(5.0)
    errors: collections.Counter[str] = collections.Counter()
    for w in workers:
        errors.update(w.errors)
    return LoadRun(
        threads=threads, duration=duration, t0_wall=t0_wall,
        starts=np.concatenate([np.frombuffer(w.starts, dtype=np.float64) for w in workers]),
        latencies=np.concatenate([np.frombuffer(w.lats, dtype=np.float64) for w in workers]),
        tokens=np.concatenate([np.frombuffer(w.toks, dtype=np.int32) for w in workers]),
        expired=sum(w.expired for w in workers), errors=dict(errors), book=book,
        events=results,
    )


class LogCounter(logging.Handler):
    """Counts log records per logger instead of printing them (the peers log per failure)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.name}:{record.levelname}"] += 1

    def take(self) -> dict[str, int]:
        counts, self.counts = dict(self.counts), collections.Counter()
        return counts
