"""Cost of ``get_token`` on a fresh token against a bare ``dict.get`` + ``time.monotonic()``.

Run: ``python -m benchmarks.hot_path``. Interleaves the candidates over several rounds in one
process and reports the median per-call cost; single runs are too noisy to quote.
"""

from __future__ import annotations

import statistics
import threading
import time
import timeit
from collections.abc import Callable

import jwt

from swr_token import TokenClient

ROUNDS = 9
CALLS = 200_000


def _mint(_request: object) -> str:
    now = time.time()
    return jwt.encode({"iat": now, "exp": now + 3600}, "k" * 32, algorithm="HS256")


class NaiveLockCache:
    """The obvious alternative: a lock around a dict, refreshing synchronously."""

    def __init__(self, source: Callable[[object], str]) -> None:
        self._source = source
        self._lock = threading.Lock()
        self._cache: dict[object, tuple[str, float]] = {}

    def get_token(self, session_id: str | None = None) -> str:
        with self._lock:
            hit = self._cache.get(session_id)
            now = time.monotonic()
            if hit is not None and hit[1] - now > 15.0:
                return hit[0]
            raw = self._source(session_id)
            self._cache[session_id] = (raw, now + 3600)
            return raw


def main() -> None:
    client = TokenClient(_mint)
    client.get_token("sess")
    naive = NaiveLockCache(_mint)
    naive.get_token("sess")
    table = {"sess": ("raw", 1e18)}
    monotonic = time.monotonic

    def baseline() -> object:
        entry = table.get("sess")
        return entry if entry is not None and entry[1] - monotonic() > 15.0 else None

    candidates: dict[str, Callable[[], object]] = {
        "dict.get + monotonic (baseline)": baseline,
        "swr_token get_token": lambda: client.get_token("sess"),
        "naive lock cache": lambda: naive.get_token("sess"),
    }
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(ROUNDS):
        for name, fn in candidates.items():
            samples[name].append(timeit.timeit(fn, number=CALLS) / CALLS * 1e9)
    base = statistics.median(samples["dict.get + monotonic (baseline)"])
    print(f"{'candidate':34} {'ns/call (median)':>17} {'x baseline':>11}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:34} {median:17.1f} {median / base:11.2f}")
    print(f"({ROUNDS} interleaved rounds of {CALLS:,} calls; each call through a lambda)")
    client.close()


if __name__ == "__main__":
    main()
