"""Measurements that need a process of their own, printed as one JSON line.

``python -m tests.hostile_worker huge-body`` — peak RSS growth while one attempt faces a
500 MB answer (chunked, and by Content-Length): a process's own memory is the only honest
meter, and a run that reads the body whole must not take the test process down with it.

``python -m tests.hostile_worker error-body`` — one issuer answers 500 with a 1 MB
``error_description``; meanwhile another thread reads a fresh key: the slowest such read and
how long the failing call took. A quadratic scrub would hold the GIL for hours, so the test
runs this under a time limit.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from typing import Any

from swr_token import OAuth2ClientCredentialsSource, TokenClient, TokenFetchError

from .raw_server import Conn, RawRequest, RawServer, head, json_answer

MB = 1 << 20


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    # Linux: writing 5 resets VmHWM (the peak) to the current RSS.
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def _huge(conn: Conn, request: RawRequest) -> None:
    size = int(request.path.rsplit("/", 1)[1]) * MB
    chunked = "chunked" in request.path
    block = b" " * (64 * 1024)
    if chunked:
        conn.send(head(200, {"Content-Type": "application/json",
                             "Transfer-Encoding": "chunked"}))
        frame = b"%x\r\n" % len(block) + block + b"\r\n"
    else:
        conn.send(head(200, {"Content-Type": "application/json",
                             "Content-Length": str(size + 2)}))
        frame = block
    sent = 0
    while sent < size and conn.send(frame):
        sent += len(block)
    conn.send(b'{}' + (b"\r\n0\r\n\r\n" if chunked else b""))


def huge_body() -> dict[str, Any]:
    results: dict[str, Any] = {}
    with RawServer(_huge) as server:
        for shape in ("chunked", "length"):
            source = OAuth2ClientCredentialsSource(
                f"{server.url}/{shape}/2", "id", "secret", timeout=(5.0, 30.0),
                total_timeout=60.0)
            with contextlib.suppress(TokenFetchError):
                source(_NO_KEY)  # warm up every code path on a 2 MB answer (over the cap)
            source.close()
            source = OAuth2ClientCredentialsSource(
                f"{server.url}/{shape}/500", "id", "secret", timeout=(5.0, 30.0),
                total_timeout=60.0)
            before = _status_kb("VmRSS")
            _reset_peak()
            started = time.monotonic()
            try:
                source(_NO_KEY)
                error = "none"
            except TokenFetchError as exc:
                error = str(exc)
            results[shape] = {
                "rss_growth_kb": _status_kb("VmHWM") - before,
                "seconds": round(time.monotonic() - started, 3),
                "error": error,
            }
            source.close()
    return results


def _token_or_error(conn: Conn, request: RawRequest) -> None:
    if b"audience=bad" in request.body:
        description = "A1b2_C3-d4" * 100_000  # 1 MB of [A-Za-z0-9_-]
        body = json.dumps({"error": "server_error", "error_description": description})
        conn.send(json_answer(500, body.encode()))
    else:
        body = json.dumps({"access_token": "opaque-good", "token_type": "Bearer",
                           "expires_in": 3600})
        conn.send(json_answer(200, body.encode()))


def error_body() -> dict[str, Any]:
    with RawServer(_token_or_error) as server:
        source = OAuth2ClientCredentialsSource(f"{server.url}/token", "id", "secret")
        with TokenClient(source) as client:
            client.get_token(audience="good", timeout=5.0)  # now fresh for an hour
            stop = threading.Event()
            slowest = [0.0]
            reads = [0]

            def read_fresh() -> None:
                while not stop.is_set():
                    started = time.perf_counter()
                    client.get_token(audience="good")
                    slowest[0] = max(slowest[0], time.perf_counter() - started)
                    reads[0] += 1
                    time.sleep(0.0005)

            reader = threading.Thread(target=read_fresh, daemon=True)
            reader.start()
            failures = []
            for _ in range(3):
                started = time.perf_counter()
                try:
                    client.get_token(audience="bad", skip_cache=True, timeout=10.0)
                except TokenFetchError as exc:
                    failures.append((round(time.perf_counter() - started, 4), str(exc)))
            stop.set()
            reader.join(5.0)
        source.close()
    return {"slowest_fresh_read_ms": round(slowest[0] * 1000, 3), "fresh_reads": reads[0],
            "failures": failures}


class _NoKey:
    session_id = template = organization_id = audience = None


_NO_KEY: Any = _NoKey()

if __name__ == "__main__":
    mode = sys.argv[1]
    result = huge_body() if mode == "huge-body" else error_body()
    sys.stdout.write(json.dumps(result) + "\n")
