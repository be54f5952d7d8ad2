"""Issuer requests for N processes sharing one key: no store, FileStore, RedisStore.

Run: ``python -m benchmarks.fleet [--processes 8] [--seconds 15]`` (needs ``redis-server``).
Each process runs 8 reader threads on one key; tokens live 6 s and are refreshed 3 s before
expiry; the issuer answers after 200 ms. Also compares the fresh-token hot path with the Redis
store against the in-memory default (the store is never touched on that path).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit

import swr_token
from swr_token.testing import LocalIssuer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker(api_url: str, redis_url: str, seconds: float) -> None:
    store: swr_token.TokenStore | None = None
    if redis_url.startswith("file:"):  # one host's processes through a cache directory
        store = swr_token.FileStore(redis_url[len("file:"):])
    elif redis_url != "-":
        store = swr_token.RedisStore(redis_url, prefix="fleet-bench:", lease=1.0, wait=1.0)
    client = swr_token.TokenClient(swr_token.ClerkBackendSource(api_url=api_url),
                                   poll_interval=0.5, background_refresh_threshold=3.0,
                                   margin=1.0, store=store)
    client.get_token("sess_fleet", timeout=10)
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    calls = [0]

    def read() -> None:
        pause = threading.Event()
        while time.monotonic() < deadline:
            client.get_token("sess_fleet", timeout=5)
            calls[0] += 1
            pause.wait(0.005)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    print(json.dumps({"calls": calls[0]}), flush=True)


def _redis() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return server, url
        except OSError:
            time.sleep(0.05)
    server.kill()
    sys.exit("redis-server did not start")


def _fleet(processes: int, seconds: float, redis_url: str) -> tuple[int, int]:
    with LocalIssuer(lifetime=6.0) as issuer:
        issuer.delay(0.2)
        env = {**os.environ, "CLERK_SECRET_KEY": issuer.secret_key}
        workers = [subprocess.Popen(
            [sys.executable, "-m", "benchmarks.fleet", "--worker", issuer.clerk_api_url,
             redis_url, str(seconds)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
            for _ in range(processes)]
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        calls = 0
        for worker in workers:
            out, _ = worker.communicate(timeout=seconds + 60)
            calls += json.loads(out.strip().splitlines()[-1])["calls"]
        return issuer.request_count("clerk"), calls


def _hot(redis_url: str) -> tuple[float, float]:
    with LocalIssuer(lifetime=3600.0) as issuer:
        source = swr_token.ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url)
        memory = swr_token.TokenClient(source)
        shared = swr_token.TokenClient(source, store=swr_token.RedisStore(
            redis_url, prefix="fleet-hot:"))
        memory.get_token("s")
        shared.get_token("s")
        samples: dict[str, list[float]] = {"memory": [], "redis": []}
        for _ in range(31):  # interleaved rounds; the median is what we quote
            for name, client in (("memory", memory), ("redis", shared)):
                n = 100_000
                samples[name].append(timeit.timeit(lambda c=client: c.get_token("s"),
                                                   number=n) / n * 1e9)
        memory.close()
        shared.close()
        return statistics.median(samples["memory"]), statistics.median(samples["redis"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--worker", nargs=3, metavar=("API_URL", "REDIS_URL", "SECONDS"))
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker[0], args.worker[1], float(args.worker[2]))
        return
    server, url = _redis()
    try:
        alone, alone_calls = _fleet(args.processes, args.seconds, "-")
        with tempfile.TemporaryDirectory() as cache:
            filed, filed_calls = _fleet(args.processes, args.seconds, f"file:{cache}")
        shared, shared_calls = _fleet(args.processes, args.seconds, url)
        memory_ns, redis_ns = _hot(url)
    finally:
        server.kill()
    print(f"fleet: {args.processes} processes x 8 threads, one key, 6 s tokens refreshed 3 s "
          f"before expiry, 200 ms issuer latency, {args.seconds:g} s")
    print(f"{'store':18} {'issuer requests':>16} {'calls served':>13}")
    print(f"{'none (per process)':18} {alone:>16} {alone_calls:>13,}")
    print(f"{'FileStore':18} {filed:>16} {filed_calls:>13,}")
    print(f"{'RedisStore':18} {shared:>16} {shared_calls:>13,}")
    print(f"requests ratio: {alone / max(shared, 1):.1f}x fewer with the store")
    print(f"hot path, fresh token: in-memory {memory_ns:.0f} ns, with RedisStore {redis_ns:.0f} ns"
          f" ({(redis_ns / memory_ns - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
