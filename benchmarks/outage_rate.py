"""Requests a failing issuer receives, for 1 and 1,000 keys (real loopback HTTP, fake time).

Run: ``python -m benchmarks.outage_rate``. LocalIssuer follows a FakeClock, so a 60 s outage
runs in seconds of real time while every request is real HTTP. Tokens live 120 s and are
stale after 20 s, so the whole outage happens in the stale zone (a token is always servable).
"""

from __future__ import annotations

import time

import swr_token
from swr_token.testing import FakeClock, InlineExecutor, LocalIssuer

OUTAGE = 60.0
STEP = 0.1


def run(keys: int) -> dict[str, float]:
    clock = FakeClock(wall=time.time())
    with LocalIssuer(clock=clock, lifetime=120.0) as issuer:
        source = swr_token.ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url)
        with swr_token.TokenClient(source, clock=clock, executor=InlineExecutor(),
                                   background_refresh_threshold=100.0,
                                   max_entries=keys + 10) as client:
            names = [f"sess_{i}" for i in range(keys)]
            for name in names:
                client.get_token(name)
            clock.advance(21.0)  # every token is stale now
            issuer.fail(500)
            before = issuer.request_count("clerk")
            errors = 0
            steps = int(OUTAGE / STEP)
            for _ in range(steps):
                for name in names:
                    try:
                        client.get_token(name)
                    except swr_token.TokenError:
                        errors += 1
                clock.advance(STEP)
            sent = issuer.request_count("clerk") - before
            issuer.clear_faults()
            recovered = clock.deadline()
            fresh_after = None
            for _ in range(100):
                for name in names:
                    client.get_token(name)
                if fresh_after is None and any(
                        client.get_token_info(n).remaining() > 110 for n in names[:50]):
                    fresh_after = clock.deadline() - recovered
                    break
                clock.advance(STEP)
    return {"keys": keys, "requests": sent, "per_s": (sent - 3) / OUTAGE, "errors": errors,
            "fresh_after_s": fresh_after if fresh_after is not None else float("nan")}


def main() -> None:
    print(f"{'keys':>6} {'requests in 60 s':>17} {'per s after quick retries':>26} "
          f"{'errors':>7} {'fresh token after recovery':>27}")
    for keys in (1, 1000):
        r = run(keys)
        print(f"{r['keys']:>6} {r['requests']:>17} {r['per_s']:>26.2f} {r['errors']:>7} "
              f"{r['fresh_after_s']:>25.1f} s")
    print("(500 for 60 s of fake time, every key read every 0.1 s, stale tokens servable)")


if __name__ == "__main__":
    main()
