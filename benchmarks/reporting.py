"""Tables on stdout, the machine description, and the JSON document."""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from .scenarios import Result

__all__ = ["environment", "print_result", "to_json"]

_PACKAGES = ("swr_token", "google-auth", "botocore", "requests", "urllib3", "PyJWT",
             "cryptography", "numpy", "matplotlib")


def environment(argv: list[str]) -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    root = Path(__file__).resolve().parent.parent
    engine = hashlib.sha256()
    for path in sorted((root / "swr_token").rglob("*.py")):
        engine.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "swr_token"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head, dirty = "unknown", ""
    return {
        "git_head": head,
        "engine_uncommitted_changes": bool(dirty),
        "engine_sha256": engine.hexdigest()[:16],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks " + " ".join(argv),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "switch_interval_s": sys.getswitchinterval(),
        "versions": versions,
    }


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return format(value, spec) if spec else str(value)


_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "hot": [("adapter", "adapter", ""), ("ns_median", "ns/call", ",.1f"),
            ("ns_min", "min ns", ",.1f"), ("ratio_median", "x baseline", ".2f"),
            ("ratio_of_mins", "x baseline (mins)", ".2f"), ("vs_naive", "x naive", ".2f")],
    "storm": [("adapter", "adapter", ""), ("calls", "calls", ","), ("upstream", "upstream", ""),
              ("refreshes", "refreshes", ""), ("slow_5ms", ">5ms", ","),
              ("slow_50ms", ">50ms", ","),
              ("p50_us", "p50 us", ".1f"), ("p99_us", "p99 us", ".1f"),
              ("p999_us", "p99.9 us", ".1f"), ("max_ms", "max ms", ".1f"),
              ("errors", "errors", ","), ("expired", "expired", ",")],
    "outage": [("adapter", "adapter", ""), ("latency_ms", "lat ms", "g"),
               ("calls", "calls", ","), ("errors", "errors", ","),
               ("errors_while_servable", "err >5s left", ","),
               ("errors_while_unexpired", "err unexpired", ","), ("expired", "expired", ","),
               ("outage_req_per_s", "req/s outage", ".1f"), ("recover_s", "recover s", ".2f"),
               ("first_error_s", "errors from s", ".1f"), ("last_error_s", "to s", ".1f"),
               ("upstream", "upstream", ","), ("p999_us", "p99.9 us", ".0f"),
               ("max_ms", "max ms", ".1f")],
    "cold": [("adapter", "adapter", ""), ("upstream_per_rep", "upstream (each run)", ""),
             ("max_ms_median", "max ms (median)", ".1f"), ("errors", "errors", "")],
    "scale": [("metric", "metric", ""), ("value", "value", ",.3f"), ("unit", "unit", ""),
              ("target", "target", ""), ("met", "met", "")],
}


def table(result: Result) -> str:
    columns = _COLUMNS[result.scenario]
    cells = [[title for _, title, _ in columns]]
    for row in result.rows:
        cells.append([_fmt(row.get(key), spec) for key, _, spec in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for n, line in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(line, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_result(result: Result) -> None:
    settings = ", ".join(f"{k}={v}" for k, v in result.settings.items())
    print(f"\n== {result.scenario} ({settings})")
    print(table(result))
    for note in result.notes:
        print(f"  note: {note}")


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


def to_json(env: dict[str, Any], results: list[Result], extra: dict[str, Any]) -> str:
    doc = {"environment": env, **extra,
           "scenarios": {r.scenario: {"settings": r.settings, "rows": r.rows, "notes": r.notes}
                         for r in results}}
    return json.dumps(_clean(doc), indent=2)
