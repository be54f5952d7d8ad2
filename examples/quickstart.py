"""Quick start: one TokenClient shared by many threads, with a source that mints JWTs.

Run: ``python examples/quickstart.py``. The source here signs tokens locally so the example
needs no network; real code passes ``ClerkBackendSource`` or ``OAuth2ClientCredentialsSource``.
"""

from __future__ import annotations

import logging
import threading
import time

import jwt

import swr_token

LIFETIME = 20  # seconds; short so the refresh is visible within a few seconds


def mint(request: swr_token.TokenRequest) -> str:
    """A stand-in issuer: signs a short-lived JWT for the session."""
    now = time.time()
    claims = {"sid": request.session_id, "iat": now, "exp": now + LIFETIME}
    return jwt.encode(claims, "demo-signing-key-not-a-secret-000", algorithm="HS256")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    updates: list[str] = []
    with swr_token.TokenClient(
        mint,
        poll_interval=1.0,
        background_refresh_threshold=15.0,
        on_token_update=lambda req, tok: updates.append(tok.fingerprint),
    ) as client:
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                client.get_token("sess_demo")
                stop.wait(0.01)

        readers = [threading.Thread(target=reader, daemon=True) for _ in range(8)]
        for thread in readers:
            thread.start()
        for second in range(8):
            info = client.get_token_info("sess_demo")
            print(f"t={second}s token {info.fingerprint} remaining {info.remaining():5.1f} s")
            stop.wait(1.0)
        stop.set()
        for thread in readers:
            thread.join(2.0)
        stats = client.stats()
    print(f"served {stats['hits'] + stats['stale_serves']:,} calls with "
          f"{stats['fetches']} upstream requests; tokens published: {len(updates)}")


if __name__ == "__main__":
    main()
