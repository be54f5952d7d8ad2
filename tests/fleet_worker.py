"""One process of the fleet test: 8 threads reading one key through a shared RedisStore.

Run by tests/test_redis_fleet.py as ``python -m tests.fleet_worker API_URL REDIS_URL PREFIX
SECONDS`` (and by tests/test_filestore_client.py with ``file:DIR`` for REDIS_URL: a
FileStore); prints ``ready`` after its first token, then one JSON summary line at the end.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import jwt

from swr_token import ClerkBackendSource, FileStore, RedisStore, TokenClient, TokenError, TokenStore


def main() -> None:
    api_url, redis_url, prefix, seconds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    store: TokenStore
    if redis_url.startswith("file:"):
        store = FileStore(redis_url[len("file:"):])
    else:
        store = RedisStore(redis_url, prefix=prefix, lease=1.0, wait=1.0, socket_timeout=0.2)
    client = TokenClient(ClerkBackendSource(api_url=api_url), poll_interval=0.5,
                         background_refresh_threshold=3.0, margin=1.0, store=store)
    exp_of: dict[str, tuple[float, float]] = {}
    lock = threading.Lock()
    result = {"calls": 0, "expired": 0, "errors": 0}
    client.get_token("sess_fleet", timeout=10)
    print("ready", flush=True)
    deadline = time.monotonic() + float(seconds)

    def reader() -> None:
        pause = threading.Event()
        calls = expired = errors = 0
        while time.monotonic() < deadline:
            try:
                raw = client.get_token("sess_fleet", timeout=5)
            except TokenError:
                errors += 1
            else:
                known = exp_of.get(raw)
                if known is None:
                    claims = jwt.decode(raw, options={"verify_signature": False})
                    known = exp_of.setdefault(raw, (float(claims["iat"]), float(claims["exp"])))
                if known[1] <= time.time():
                    expired += 1
                calls += 1
            pause.wait(0.005)
        with lock:
            result["calls"] += calls
            result["expired"] += expired
            result["errors"] += errors

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    print(json.dumps({**result, "iats": sorted(iat for iat, _ in exp_of.values())}), flush=True)


if __name__ == "__main__":
    main()
