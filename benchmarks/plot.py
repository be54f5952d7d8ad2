"""Per-call latency over time, one panel per adapter (and per issuer latency for outage)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from .scenarios import Result

__all__ = ["plot"]

_FAST_POINTS = 15_000  # calls under 1 ms are sampled down to this many per panel


def _panel(ax: plt.Axes, result: Result, label: str, rng: np.random.Generator) -> None:
    run = result.series[label]
    ok = run.tokens >= 0
    ms = run.latencies * 1e3
    slow = ok & (ms >= 1.0)
    fast = np.flatnonzero(ok & (ms < 1.0))
    if fast.size > _FAST_POINTS:
        fast = rng.choice(fast, _FAST_POINTS, replace=False)
    ax.scatter(run.starts[fast], ms[fast], s=1, c="tab:blue", alpha=0.25, linewidths=0,
               label="call (<1 ms: sampled)", rasterized=True)
    ax.scatter(run.starts[slow], ms[slow], s=3, c="tab:orange", linewidths=0,
               label="call >= 1 ms", rasterized=True)
    if (~ok).any():
        ax.scatter(run.starts[~ok], ms[~ok], s=6, c="tab:red", marker="x", linewidths=0.6,
                   label="error", rasterized=True)
    window = run.events.get("fault_at")
    if isinstance(window, float):
        row = next(r for r in result.rows if f"{r['adapter']}@{r['latency_ms']:g}ms" == label)
        begin, end = row["fault_window_s"]
        ax.axvspan(begin, end, color="tab:red", alpha=0.07, label="issuer answers 500")
    ax.axhline(50, color="grey", lw=0.6, ls="--")
    ax.set_yscale("log")
    ax.set_ylim(3e-4, 2e4)
    ax.set_xlim(0, run.duration)
    first = float((run.starts + run.latencies)[ok].min()) if ok.any() else run.duration
    steady = ms[run.starts >= first]
    worst = f"{steady.max():.1f}" if steady.size else "n/a"
    ax.set_title(f"{label}: {run.starts.size:,} calls, {int((~ok).sum()):,} errors, "
                 f"max {worst} ms", fontsize=8)
    ax.tick_params(labelsize=7)


def plot(result: Result, path: Path) -> Path:
    labels = list(result.series)
    if result.scenario == "outage":
        names = list(dict.fromkeys(label.split("@")[0] for label in labels))
        latencies = list(dict.fromkeys(label.split("@")[1] for label in labels))
        grid = [[f"{n}@{lat}" for lat in latencies] for n in names]
    else:
        grid = [[label] for label in labels]
    rows, cols = len(grid), len(grid[0])
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 1.9 * rows + 0.8),
                             sharex=True, sharey=True, squeeze=False)
    rng = np.random.default_rng(7)
    for r, line in enumerate(grid):
        for c, label in enumerate(line):
            if label in result.series:
                _panel(axes[r][c], result, label, rng)
            axes[r][c].set_ylabel("ms", fontsize=7)
    for c in range(cols):
        axes[-1][c].set_xlabel("seconds since start", fontsize=8)
    handles, names_ = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names_, loc="upper right", bbox_to_anchor=(1.0, 0.965), fontsize=7,
               markerscale=4, ncol=4, frameon=False)
    s = result.settings
    fig.suptitle(f"{result.scenario}: per-call get_token latency, {s['threads']} threads, "
                 f"{s['token_lifetime_s']:g} s tokens\nmax = after the first token; "
                 "dashed: 50 ms", fontsize=9, x=0.02, y=0.995, ha="left", va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / fig.get_figheight()))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
