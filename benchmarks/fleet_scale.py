"""The fleet at scale: P processes x K keys through one Redis, the new store design against the
one before it (token broadcast on one channel), side by side.

Run: ``python -m benchmarks.fleet_scale [--processes 8 16 32] [--keys 1000] [--seconds 20]
[--old COMMIT]`` (needs ``redis-server`` and git). Each spawned process reads a random third
of the K keys from two threads (one read per thread every 20 ms); tokens live 20 s and are
refreshed 10 s before expiry (load kept low enough that 32 processes fit on 2 cores).
``--old`` (default: the commit before store protocol v2) is checked out into a temporary git
worktree and its package is what the "before" workers import; nothing else differs.
Reported per design and P, over the measured window only:

- issuer requests per key per cycle: requests / (requests - duplicates), a duplicate being a
  request for a key less than half a cycle after the previous one for that key;
- Redis commands and pub/sub messages received per process per second (counted inside each
  worker by wrapping redis-py's ``execute_command`` and ``PubSub.get_message``);
- p99 (and max) ``get_token`` latency over every read of every process, and apart for each
  outcome of a read (a fresh hit, a stale serve that starts the key's refresh, a wait for a
  fetch), with the share of reads each outcome had.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD_DEFAULT = "9930ddae70b75850f79906ea0a552c448f4867a0"  # main just before protocol v2
LIFETIME, THRESHOLD, MARGIN, POLL = 20.0, 10.0, 3.0, 1.0
CYCLE = LIFETIME - THRESHOLD


# -- the worker (runs as a script, so PYTHONPATH decides which swr_token it imports) --------

def _worker(api_url: str, redis_url: str, seconds: float, seed: int, keys: int) -> None:
    import redis
    import redis.client

    import swr_token

    if os.environ.get("SWR_BENCH_LOG"):  # diagnosing: the client's DEBUG log, per process
        import logging

        logging.basicConfig(level=logging.DEBUG, filename=f"{os.environ['SWR_BENCH_LOG']}."
                            f"{os.getpid()}")
        logging.getLogger("urllib3").setLevel(logging.WARNING)
    counts = {"commands": 0, "messages": 0}
    execute = redis.Redis.execute_command
    get_message = redis.client.PubSub.get_message

    def counted_execute(self: object, *args: object, **kw: object) -> object:
        counts["commands"] += 1
        return execute(self, *args, **kw)  # type: ignore[arg-type]

    def counted_get_message(self: object, *args: object, **kw: object) -> object:
        message = get_message(self, *args, **kw)  # type: ignore[arg-type]
        if isinstance(message, dict) and message.get("type") == "message":
            counts["messages"] += 1
        return message

    redis.Redis.execute_command = counted_execute  # type: ignore[method-assign]
    redis.client.PubSub.get_message = counted_get_message  # type: ignore[method-assign]

    store = swr_token.RedisStore(redis_url, prefix="scale:", lease=2.0, wait=2.0)
    client = swr_token.TokenClient(
        swr_token.ClerkBackendSource(api_url=api_url), poll_interval=POLL,
        background_refresh_threshold=THRESHOLD, margin=MARGIN, store=store)
    mine = random.Random(seed).sample([f"sess_{i}" for i in range(keys)], keys // 3)
    for key in mine:  # cold: every key once
        client.get_token(key, timeout=30)
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "go"
    start = dict(counts)
    started = time.monotonic()
    deadline = started + seconds
    latencies: list[list[float]] = [[], []]
    errors = [0]

    # Each read's outcome, from the counter that moved: a fresh hit, a stale serve (which
    # starts the key's refresh) or a wait for a fetch. Outside the timed part of the read.
    outcomes: dict[str, list[float]] = defaultdict(list)

    def read(samples: list[float], rng: random.Random) -> None:
        pause = threading.Event()
        clock = time.perf_counter
        while time.monotonic() < deadline:
            key = rng.choice(mine)
            before = client.stats()
            t0 = clock()
            try:
                client.get_token(key, timeout=10)
            except swr_token.TokenError:
                errors[0] += 1
            took = clock() - t0
            samples.append(took)
            after = client.stats()
            outcome = next((k for k in ("waits", "stale_serves", "hits") if after[k] > before[k]),
                           "other")
            outcomes[outcome].append(took)
            pause.wait(0.02)

    threads = [threading.Thread(target=read, args=(latencies[i], random.Random(seed * 7 + i)))
               for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    result = {
        "commands_per_s": (counts["commands"] - start["commands"]) / elapsed,
        "messages_per_s": (counts["messages"] - start["messages"]) / elapsed,
        "latencies_us": [round(s * 1e6) for samples in latencies for s in samples],
        "errors": errors[0],
        "outcomes_us": {k: [round(s * 1e6) for s in v] for k, v in outcomes.items()},
    }
    client.close()
    print(json.dumps(result), flush=True)


# -- the parent ------------------------------------------------------------------------------

def _redis() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--maxclients", "10000"],
                              stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return server, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    server.kill()
    sys.exit("redis-server did not start")


class _RequestTimes:
    """Timestamps the issuer's requests by polling its record every 100 ms."""

    def __init__(self, issuer: object) -> None:
        self.issuer = issuer
        self.times: list[tuple[float, str]] = []
        self.seen = 0
        self.lost = 0  # more than 1,000 requests between two polls (never seen so far)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        # The issuer keeps only its last 1,000 requests: take the new ones by the total count.
        while not self.stop.wait(0.1):
            total = self.issuer.request_count("clerk")  # type: ignore[attr-defined]
            new = total - self.seen
            if new > 0:
                recent = self.issuer.requests("clerk")[-new:]  # type: ignore[attr-defined]
                now = time.monotonic()
                self.times += [(now, r.path) for r in recent]
                self.lost += new - len(recent)
            self.seen = total

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def _per_key_per_cycle(times: list[tuple[float, str]], start: float, end: float
                       ) -> tuple[int, float]:
    by_key: dict[str, list[float]] = defaultdict(list)
    for at, path in times:
        by_key[path].append(at)
    total = duplicates = 0
    for stamps in by_key.values():
        stamps.sort()
        for i, at in enumerate(stamps):
            if start <= at < end:
                total += 1
                if i and at - stamps[i - 1] < CYCLE / 2:
                    duplicates += 1
    return total, total / max(1, total - duplicates)


def _run(design: str, pythonpath: str, processes: int, keys: int, seconds: float,
         redis_url: str) -> dict[str, float]:
    from swr_token.testing import LocalIssuer

    subprocess.run([shutil.which("redis-cli") or "redis-cli", "-u", redis_url, "FLUSHALL"],
                   check=True, stdout=subprocess.DEVNULL)
    with LocalIssuer(lifetime=LIFETIME) as issuer:
        issuer.delay(0.05)
        times = _RequestTimes(issuer)
        env = {**os.environ, "CLERK_SECRET_KEY": issuer.secret_key, "PYTHONPATH": pythonpath}
        script = os.path.abspath(__file__)
        workers = [subprocess.Popen(
            [sys.executable, script, "--worker", issuer.clerk_api_url, redis_url, str(seconds),
             str(seed), str(keys)], cwd=tempfile.gettempdir(), env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for seed in range(processes)]
        try:
            for worker in workers:
                assert worker.stdout is not None
                line = worker.stdout.readline().strip()
                assert line == "ready", f"a {design} worker failed to start: {line!r}"
            time.sleep(5.0)  # settle after the cold start
            start = time.monotonic()
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
            results = []
            for worker in workers:
                out, _ = worker.communicate(timeout=seconds + 120)
                results.append(json.loads(out.strip().splitlines()[-1]))
            end = start + seconds
            time.sleep(0.2)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
            times.close()
    requests, per_cycle = _per_key_per_cycle(times.times, start, end)
    latencies = sorted(us for r in results for us in r["latencies_us"])
    by_outcome: dict[str, list[int]] = defaultdict(list)
    for r in results:
        for outcome, values in r.get("outcomes_us", {}).items():
            by_outcome[outcome] += values
    shares = {k: len(v) / max(1, len(latencies)) for k, v in by_outcome.items()}
    p99s = {k: sorted(v)[int(len(v) * 0.99)] / 1000 for k, v in by_outcome.items() if v}
    return {
        "share_stale": shares.get("stale_serves", 0.0),
        "share_waits": shares.get("waits", 0.0),
        "p99_hits_ms": p99s.get("hits", 0.0),
        "p99_stale_ms": p99s.get("stale_serves", 0.0),
        "p99_waits_ms": p99s.get("waits", 0.0),
        "requests": requests,
        "per_key_per_cycle": per_cycle,
        "commands": sum(r["commands_per_s"] for r in results) / processes,
        "messages": sum(r["messages_per_s"] for r in results) / processes,
        "p99_ms": latencies[int(len(latencies) * 0.99)] / 1000,
        "max_ms": latencies[-1] / 1000,
        "errors": sum(r["errors"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)  # two cycles
    parser.add_argument("--old", default=OLD_DEFAULT,
                        help="git commit of the design to compare with ('' to skip)")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        api, url, seconds, seed, keys = args.worker
        _worker(api, url, float(seconds), int(seed), int(keys))
        return
    designs = [("new", ROOT)]
    old_tree = None
    if args.old:
        old_tree = tempfile.mkdtemp(prefix="swr-old-design-")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", old_tree, args.old],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        designs.insert(0, ("before", old_tree))
    server, url = _redis()
    rows = []
    try:
        for processes in args.processes:
            for design, path in designs:
                row = _run(design, path, processes, args.keys, args.seconds, url)
                rows.append((design, processes, row))
                print(f"  {design:6} P={processes:<3} {json.dumps(row)}", file=sys.stderr,
                      flush=True)
    finally:
        server.kill()
        if old_tree is not None:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", old_tree],
                           check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"fleet at scale: K={args.keys} keys, each process reading a random third from 2 "
          f"threads (50 reads/s each); {LIFETIME:g} s tokens refreshed {THRESHOLD:g} s before "
          f"expiry; {args.seconds:g} s measured per row; one shared 2-core machine")
    print(f"{'design':8} {'P':>3} {'issuer req':>10} {'req/key':>8} {'Redis cmds':>11} "
          f"{'pub/sub msgs':>13} {'p99':>8} {'max':>8} {'errors':>6}")
    print(f"{'':8} {'':>3} {'(window)':>10} {'/cycle':>8} {'/proc/s':>11} {'/proc/s':>13} "
          f"{'ms':>8} {'ms':>8} {'':>6}")
    for design, processes, row in rows:
        print(f"{design:8} {processes:>3} {row['requests']:>10.0f} "
              f"{row['per_key_per_cycle']:>8.2f} {row['commands']:>11.1f} "
              f"{row['messages']:>13.1f} {row['p99_ms']:>8.2f} {row['max_ms']:>8.1f} "
              f"{row['errors']:>6.0f}")
    print("\nby outcome: share of reads and p99 latency (ms)")
    print(f"{'design':8} {'P':>3} {'stale serves':>13} {'waits':>7} {'p99 hit':>8} "
          f"{'p99 stale':>10} {'p99 wait':>9}")
    for design, processes, row in rows:
        print(f"{design:8} {processes:>3} {row['share_stale']:>12.1%} {row['share_waits']:>7.1%} "
              f"{row['p99_hits_ms']:>8.2f} {row['p99_stale_ms']:>10.2f} "
              f"{row['p99_waits_ms']:>9.2f}")


if __name__ == "__main__":
    main()
