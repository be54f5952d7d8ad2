"""Billed Clerk M2M creations in one process: many threads, many reads, one creation per cycle.

Run: ``python -m benchmarks.m2m_creations [--duration 20] [--threads 16] [--lifetime 10]
[--pause 0.001]`` (each reader pauses ``--pause`` seconds between reads, like a request
handler doing its I/O; ``--pause 0`` spins, which on a loaded 2-core machine can starve the
background refresh of the GIL).
Real loopback HTTP to LocalIssuer's ``/v1/m2m_tokens``, the real clock, real background
refreshes. Prints reads served, creations (what Clerk would bill) and the distinct tokens
handed out (one per refresh cycle: a creation nobody was served would show as a gap).
"""

from __future__ import annotations

import argparse
import threading
import time

import swr_token
from swr_token.testing import LocalIssuer


def run(duration: float, threads: int, lifetime: int, pause: float) -> dict[str, float]:
    stop = threading.Event()
    reads = [0] * threads
    seen: set[str] = set()  # distinct tokens handed out: the refresh cycles that happened
    with LocalIssuer() as issuer:
        source = swr_token.ClerkM2MSource(issuer.machine_secret_key, api_url=issuer.clerk_api_url,
                                          seconds_until_expiration=lifetime)
        with swr_token.TokenClient(source, poll_interval=1.0,
                                   background_refresh_threshold=lifetime / 2) as client:
            def reader(slot: int) -> None:
                last = ""
                while not stop.is_set():
                    raw = client.get_token()
                    if raw is not last:
                        last = raw
                        seen.add(raw)  # set.add is atomic under the GIL
                    reads[slot] += 1
                    if pause:
                        stop.wait(pause)  # the rest of a request's work (I/O)

            workers = [threading.Thread(target=reader, args=(i,), daemon=True)
                       for i in range(threads)]
            started = time.monotonic()
            for worker in workers:
                worker.start()
            stop.wait(duration)
            stop.set()
            for worker in workers:
                worker.join(5.0)
            elapsed = time.monotonic() - started
            # Counted when the readers stop: a refresh the poller starts afterwards is not
            # one any reader caused.
            creations = issuer.issued_count("m2m")
            waits = client.stats()["waits"]
        source.close()
    return {"threads": threads, "seconds": elapsed, "reads": sum(reads), "creations": creations,
            "cycles": len(seen), "waits": waits}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.m2m_creations")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--lifetime", type=int, default=10)
    parser.add_argument("--pause", type=float, default=0.001,
                        help="seconds each reader spends between reads (0: spin)")
    args = parser.parse_args()
    result = run(args.duration, args.threads, args.lifetime, args.pause)
    print(f"{'threads':>7} {'seconds':>8} {'reads':>10} {'creations':>10} "
          f"{'tokens served':>15} {'reads that waited':>18}")
    print(f"{result['threads']:>7} {result['seconds']:>8.1f} {result['reads']:>10,.0f} "
          f"{result['creations']:>10.0f} {result['cycles']:>15.0f} {result['waits']:>18.0f}")


if __name__ == "__main__":
    main()
