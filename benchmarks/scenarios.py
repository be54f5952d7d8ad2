"""The scenarios of issue 7: ``hot``, ``storm``, ``outage``, ``cold``, ``scale``.

Each returns a :class:`Result`: one row per adapter (or per measurement, for ``scale``), the
settings it ran with, and for ``storm``/``outage`` the per-call series for the plot.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .adapters import HARD_MARGIN, Adapter, Baseline, make_adapter
from .harness import LoadRun, run_load
from .issuer import IssuerProcess, Minted

__all__ = ["SCENARIOS", "Result"]


@dataclass
class Result:
    scenario: str
    settings: dict[str, Any]
    rows: list[dict[str, Any]]
    series: dict[str, LoadRun] = field(default_factory=dict)  # for the plot, not the JSON
    notes: list[str] = field(default_factory=list)


# -- hot ---------------------------------------------------------------------------------------


def _batch(fn: Callable[[], object], calls: int) -> float:
    """ns per call of ``fn()`` over ``calls`` calls (loop overhead included, as for all)."""
    loop = itertools.repeat(None, calls)
    start = time.perf_counter_ns()
    for _ in loop:
        fn()
    return (time.perf_counter_ns() - start) / calls


def _empty() -> None:
    return None


def hot(adapters: list[str], quick: bool) -> Result:
    # Many short rounds: the adapters of one round run within ~0.1 s of each other, so a
    # per-round ratio cancels most of the machine's drift (CPU steal, neighbours' bursts).
    rounds = 11 if quick else 101
    budget = 0.01 if quick else 0.02  # seconds per batch
    with IssuerProcess(lifetime=3600.0, latency=0.0) as issuer:
        built: list[Adapter] = [Baseline()]
        try:
            built += [make_adapter(name, issuer.info) for name in adapters]
            for adapter in built:
                adapter.get_token()  # the first call fetches; every later one is a hit
            calls: dict[str, int] = {}
            for adapter in built:
                _batch(adapter.get_token, 2_000)
                per_call = min(_batch(adapter.get_token, 5_000) for _ in range(5)) * 1e-9
                calls[adapter.name] = max(1_000, min(2_000_000, int(budget / per_call)))
            samples: dict[str, list[float]] = {a.name: [] for a in built}
            empty: list[float] = []
            for r in range(rounds):
                order = built[r % len(built):] + built[:r % len(built)]  # rotate the order
                for adapter in order:
                    samples[adapter.name].append(_batch(adapter.get_token, calls[adapter.name]))
                empty.append(_batch(_empty, calls["baseline"]))
        finally:
            for adapter in built:
                adapter.close()
    base = samples["baseline"]
    naive = samples.get("naive")
    rows = []
    for name, values in samples.items():
        ratios = [v / b for v, b in zip(values, base, strict=True)]
        row: dict[str, Any] = {
            "adapter": name,
            "ns_median": statistics.median(values),
            "ns_min": min(values),
            "ns_max": max(values),
            "ratio_median": statistics.median(ratios),
            "ratio_of_medians": statistics.median(values) / statistics.median(base),
            "ratio_of_mins": min(values) / min(base),
            "vs_naive": (statistics.median([v / n for v, n in zip(values, naive, strict=True)])
                         if naive else None),
            "calls_per_round": calls[name],
            "rounds": rounds,
            "samples_ns_deciles": [round(float(q), 1) for q in
                                   np.percentile(values, [0, 10, 25, 50, 75, 90, 100])],
        }
        rows.append(row)
    return Result("hot", {"rounds": rounds, "seconds_per_batch": budget,
                          "empty_loop_ns_median": statistics.median(empty)}, rows,
                  notes=["ratio = median over rounds of (adapter ns / baseline ns in that round)",
                         "each batch: `for _ in repeat(None, n): get_token()`; loop cost "
                         f"(~{statistics.median(empty):.0f} ns) included for every row"])


# -- storm and outage --------------------------------------------------------------------------


STORM_THREADS = 32
STORM_PAUSE = 0.001
STORM_LIFETIME = 20.0


def _percentiles(lat: np.ndarray) -> dict[str, float]:
    if lat.size == 0:
        return {"p50_us": float("nan"), "p99_us": float("nan"), "p999_us": float("nan"),
                "max_ms": float("nan")}
    p50, p99, p999 = np.percentile(lat, [50, 99, 99.9])
    return {"p50_us": p50 * 1e6, "p99_us": p99 * 1e6, "p999_us": p999 * 1e6,
            "max_ms": float(lat.max()) * 1e3}


def _call_metrics(run: LoadRun) -> dict[str, Any]:
    ok = run.tokens >= 0
    ends = run.starts + run.latencies
    first_ok = float(ends[ok].min()) if ok.any() else float("inf")
    steady = run.starts >= first_ok  # calls that began after the first token arrived
    lat = run.latencies[steady]
    exps = np.array([t.exp for t in run.book.tokens] or [0.0])
    left = exps[run.tokens[ok]] - run.wall(ends[ok])
    return {
        "calls": int(run.starts.size),
        "first_token_s": first_ok,
        "slow_5ms": int((lat > 0.005).sum()),
        "slow_50ms": int((lat > 0.050).sum()),
        "slow_50ms_incl_cold": int((run.latencies > 0.050).sum()),
        **_percentiles(lat),
        "max_incl_cold_ms": float(run.latencies.max()) * 1e3 if run.latencies.size else 0.0,
        "errors": int(sum(run.errors.values())),
        "error_types": run.errors,
        "expired": run.expired,
        "returned_inside_margin": int((left <= HARD_MARGIN).sum()),
        "min_left_s": float(left.min()) if left.size else float("nan"),
        "distinct_tokens_returned": len(run.book.tokens),
    }


def _load_one(name: str, *, latency: float, duration: float,
              fault: tuple[float, float] | None) -> tuple[LoadRun, int, list[Minted]]:
    with IssuerProcess(lifetime=STORM_LIFETIME, latency=latency) as issuer:
        events: list[tuple[float, str, Callable[[], object]]] = []
        if fault is not None:
            begin, length = fault

            def start_fault() -> tuple[int, float]:
                before = issuer.request_count()
                return before, issuer.fail(500, duration=length)

            events = [(begin, "fault", start_fault),
                      (begin + length, "fault_end_count", issuer.request_count)]
        adapter = make_adapter(name, issuer.info)
        try:
            run = run_load(adapter.get_token, threads=STORM_THREADS, duration=duration,
                           pause=STORM_PAUSE, events=events)
            # Let a refresh still in flight finish before counting (closing the adapter
            # would cut it off mid-request and count a request that minted nothing).
            time.sleep(latency + 0.5)
            return run, issuer.request_count(), issuer.minted()
        finally:
            adapter.close()


def storm(adapters: list[str], quick: bool) -> Result:
    duration = 12.0 if quick else 45.0
    rows, series = [], {}
    for name in adapters:
        run, upstream, minted = _load_one(name, latency=0.3, duration=duration, fault=None)
        metrics = _call_metrics(run)
        first = run.wall(metrics["first_token_s"])
        # Requests of the cold start land within ~one issuer latency of the first token
        # (google-auth sends one per thread); no refresh can be due within 1 s of it.
        later = sorted(m.at for m in minted if m.at > first + 1.0)
        gaps = [b - a for a, b in itertools.pairwise(later)]
        rows.append({"adapter": name, "upstream": upstream, "tokens_minted": len(minted),
                     "refreshes": len(later), "refresh_gap_min_s": min(gaps, default=None),
                     "refresh_gap_max_s": max(gaps, default=None), **metrics})
        series[name] = run
    return Result("storm", {"threads": STORM_THREADS, "pause_s": STORM_PAUSE,
                            "duration_s": duration, "token_lifetime_s": STORM_LIFETIME,
                            "issuer_latency_s": 0.3}, rows, series,
                  notes=["percentiles, max and slow counts cover calls that began after the "
                         "first token arrived (the cold start is in *_incl_cold)",
                         "upstream: all token requests; refreshes: tokens minted more than 1 s "
                         "after the first token arrived (upstream - refreshes = the cold "
                         "start's requests)"])


def _outage_metrics(run: LoadRun, minted: list[Minted], begin: float,
                    length: float) -> dict[str, Any]:
    before, fault_wall = run.events["fault"]  # type: ignore[misc]
    fault_at = float(run.events["fault_at"])  # type: ignore[arg-type]
    after = int(run.events["fault_end_count"])  # type: ignore[call-overload]
    after_at = float(run.events["fault_end_count_at"])  # type: ignore[arg-type]
    recovered_wall = fault_wall + length
    minted = sorted(minted, key=lambda m: m.at)
    mint_times = [m.at for m in minted]
    errors = run.tokens < 0
    error_ends = run.wall(run.starts[errors] + run.latencies[errors])
    servable = unexpired = 0
    for end in np.asarray(error_ends):
        i = bisect.bisect_right(mint_times, float(end)) - 1
        if i < 0:
            continue
        left = minted[i].exp - float(end)
        servable += left > HARD_MARGIN
        unexpired += left > 0
    late = {m.jti for m in minted if m.at >= recovered_wall}
    late_index = np.array([t.jti in late for t in run.book.tokens] + [False])
    ok = run.tokens >= 0
    fresh = ok & late_index[np.where(ok, run.tokens, -1)]
    ends = run.wall(run.starts + run.latencies)
    recover_s = float(ends[fresh].min() - recovered_wall) if fresh.any() else float("nan")
    failed_at = run.starts[errors] + run.latencies[errors]
    return {
        "first_error_s": float(failed_at.min()) if failed_at.size else None,
        "last_error_s": float(failed_at.max()) if failed_at.size else None,
        "errors_while_servable": int(servable),
        "errors_while_unexpired": int(unexpired),
        "outage_requests": after - before,
        "outage_req_per_s": (after - before) / max(after_at - fault_at, 1e-9),
        "recover_s": recover_s,
        "fault_window_s": [round(fault_at, 3), round(fault_at + length, 3)],
    }


def outage(adapters: list[str], quick: bool) -> Result:
    duration, begin, length = (16.0, 3.0, 8.0) if quick else (45.0, 6.0, 24.0)
    rows, series = [], {}
    for latency in (0.3, 0.005):
        for name in adapters:
            run, upstream, minted = _load_one(name, latency=latency, duration=duration,
                                              fault=(begin, length))
            rows.append({"adapter": name, "latency_ms": latency * 1e3, "upstream": upstream,
                         "tokens_minted": len(minted), **_call_metrics(run),
                         **_outage_metrics(run, minted, begin, length)})
            series[f"{name}@{latency * 1e3:g}ms"] = run
    return Result("outage", {"threads": STORM_THREADS, "pause_s": STORM_PAUSE,
                             "duration_s": duration, "token_lifetime_s": STORM_LIFETIME,
                             "fault": f"HTTP 500 from s{begin:g} to s{begin + length:g}",
                             "issuer_latency_s": [0.3, 0.005]}, rows, series,
                  notes=["errors_while_servable: the last token the issuer had minted before "
                         f"the error still had more than the {HARD_MARGIN:g} s margin left; "
                         "errors_while_unexpired: it had not expired yet (includes the former)",
                         "recover_s: from the end of the fault to the first call that returned "
                         "a token minted after it"])


# -- cold --------------------------------------------------------------------------------------


def _cold_once(name: str, threads: int) -> dict[str, Any]:
    with IssuerProcess(lifetime=STORM_LIFETIME, latency=0.3) as issuer:
        adapter = make_adapter(name, issuer.info)
        barrier = threading.Barrier(threads, timeout=30.0)
        latencies: list[float] = []
        errors: list[str] = []

        def call() -> None:
            barrier.wait()
            start = time.perf_counter()
            try:
                adapter.get_token()
            except Exception as exc:
                errors.append(type(exc).__name__)
            latencies.append(time.perf_counter() - start)

        pool = [threading.Thread(target=call, daemon=True) for _ in range(threads)]
        try:
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join(60.0)
        finally:
            adapter.close()
        return {"upstream": issuer.request_count(), "max_ms": max(latencies) * 1e3,
                "errors": errors}


def cold(adapters: list[str], quick: bool) -> Result:
    reps, threads = (2 if quick else 5), 64
    rows = []
    for name in adapters:
        runs = [_cold_once(name, threads) for _ in range(reps)]
        rows.append({"adapter": name,
                     "upstream_per_rep": [r["upstream"] for r in runs],
                     "upstream_max": max(r["upstream"] for r in runs),
                     "max_ms_median": statistics.median(r["max_ms"] for r in runs),
                     "max_ms_per_rep": [round(r["max_ms"], 1) for r in runs],
                     "errors": sum(len(r["errors"]) for r in runs),
                     "error_types": sorted({e for r in runs for e in r["errors"]})})
    return Result("cold", {"threads": threads, "repetitions": reps, "issuer_latency_s": 0.3},
                  rows)


# -- scale -------------------------------------------------------------------------------------


def _tick_times(clock: Any, poll: float, n: int) -> tuple[list[float], list[int]]:
    """Time ``n`` poller ticks (each one ``poll`` s of a fake clock); also return the
    generations of GC passes that ran during them."""
    times: list[float] = []
    passes: list[int] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            passes.append(info["generation"])

    gc.callbacks.append(on_gc)
    try:
        for _ in range(n):
            start = time.perf_counter()
            clock.advance(poll)  # runs the tick, on this thread
            times.append(time.perf_counter() - start)
    finally:
        gc.callbacks.remove(on_gc)
    return times, passes


def scale(adapters: list[str], quick: bool) -> Result:
    """swr_token only: memory per entry and poller-tick cost with many keys.

    On a fake clock (its ``advance`` runs the tick in this thread, where it is timed); the
    background refreshes run on the client's real worker threads.
    """
    import swr_token
    from swr_token.testing import FakeClock, InlineExecutor

    keys, due = (10_000, 100) if quick else (100_000, 1_000)
    poll = 1.0
    issuer = IssuerProcess(lifetime=3600.0, latency=0.0)  # used only to mint, not over HTTP
    long_raw = issuer.mint(lifetime=3600)
    # One parsed Token serves every key: the engine binds a per-key copy that shares the raw
    # string and the claims dict, so neither is counted below.
    cell = [swr_token.Token(long_raw)]
    clock = FakeClock(wall=time.time())
    client = swr_token.TokenClient(
        lambda request: cell[0], clock=clock, poll_interval=poll,
        background_refresh_threshold=15.0, margin=5.0, max_entries=keys + due + 10,
        foreground_executor=InlineExecutor())
    rows: list[dict[str, Any]] = []
    try:
        sessions = [f"sess_{i:07d}" for i in range(keys)]
        gc.collect()
        tracked_before = len(gc.get_objects())
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for sid in sessions:
            client.get_token(sid)  # cold: one fetch per key, run inline
        for sid in sessions:
            client.get_token(sid)  # a read since the fetch, as for any key in use
        clock.advance(11.0)  # each cold fetch armed a 10 s watchdog: let them all fire
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        top = tracemalloc.take_snapshot().statistics("lineno")[:8]
        tracemalloc.stop()
        per_entry = (after - before) / keys
        rows.append({"metric": f"memory per entry ({keys:,} keys)", "value": per_entry,
                     "unit": "bytes", "target": "<= 600", "met": per_entry <= 600,
                     "top_allocations": [f"{s.traceback[0].filename.rsplit('/', 1)[-1]}:"
                                         f"{s.traceback[0].lineno} {s.size / keys:.0f} B/key"
                                         for s in top]})
        assert client.stats()["entries"] == keys
        tracked = (len(gc.get_objects()) - tracked_before) / keys
        fresh_ticks, passes = _tick_times(clock, poll, 200)
        rows.append({"metric": f"tick, {keys:,} fresh keys (median of 200)",
                     "value": statistics.median(fresh_ticks) * 1e3, "unit": "ms",
                     "max": max(fresh_ticks) * 1e3, "gc_passes_during": passes,
                     "target": "<= 1 ms", "met": statistics.median(fresh_ticks) <= 1e-3})
        start = time.perf_counter()
        gc.collect()
        full_gc = time.perf_counter() - start
        rows.append({"metric": "full gc.collect() with these keys (context)",
                     "value": full_gc * 1e3, "unit": "ms",
                     "gc_tracked_objects_per_entry": tracked, "target": "-", "met": None})

        # More keys whose tokens turn stale within ~3.5 s, each read once while fresh.
        wall = clock.wall()  # a token issued long ago with 17.5 s left: stale in 2.5-3.5 s
        cell[0] = swr_token.Token(issuer.mint(iat=int(wall) - 3000, exp=wall + 17.5))
        due_ids = [f"due_{i:05d}" for i in range(due)]
        for sid in due_ids:
            client.get_token(sid)
        clock.advance(0.5)  # a read counts when it comes after the fetch
        for sid in due_ids:
            client.get_token(sid)
        cell[0] = swr_token.Token(long_raw)
        clock.advance(1.5)  # ticks on the way find nothing due yet (stale from 2.5 s) ...
        started = client.stats()["background_refreshes"]
        tick_start = time.perf_counter()
        clock.advance(1.6)  # ... and the next tick (at 3.6 s) finds them all due
        tick = time.perf_counter() - tick_start
        scheduled = client.stats()["background_refreshes"] - started
        limit = time.monotonic() + 15.0
        while time.monotonic() < limit and client.stats()["in_flight"]:
            time.sleep(0.05)
        refreshed = sum(client.get_token(sid) == long_raw for sid in due_ids)
        rows.append({"metric": f"tick, {due:,} keys due among {keys + due:,}",
                     "value": tick * 1e3, "unit": "ms", "per_due_key_us": tick / due * 1e6,
                     "scheduled": scheduled, "refreshed_within_15s": refreshed,
                     "target": f"{due:,} scheduled in one tick, <= 10 us per due key",
                     "met": scheduled == due and tick / due <= 10e-6})
    finally:
        client.close()
        issuer.close()
    return Result("scale", {"keys": keys, "due": due, "threshold_s": 15.0, "margin_s": 5.0},
                  rows, notes=[
                      "memory: tracemalloc traced-bytes growth over populating the keys, "
                      "after the fetch watchdogs fired and gc; the raw token and its claims "
                      "are one shared object (every entry's Token copy points at them); the "
                      "session-id strings are created before tracing (the caller's)",
                      "ticks: a FakeClock's advance() runs the tick in the timing thread; "
                      "the refreshes it starts run on the client's own worker threads"])


SCENARIOS: dict[str, Callable[[list[str], bool], Result]] = {
    "hot": hot, "storm": storm, "outage": outage, "cold": cold, "scale": scale,
}
