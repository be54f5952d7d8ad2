"""Issuers and key sets that misbehave on the wire: every attempt is bounded in bytes and time.

Each test talks to a real loopback server (``RawServer``) that sends what a broken or hostile
issuer would: a 500 MB body, an endless chunked body, one byte at a time, a 1 MB error text.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from swr_token import (
    JWKSVerifier,
    OAuth2ClientCredentialsSource,
    TokenClient,
    TokenFetchError,
    TokenRequest,
)

from .raw_server import Conn, RawRequest, RawServer, head, json_answer

ROOT = Path(__file__).resolve().parent.parent
NO_KEY = TokenRequest()
#: 20 MB of JSON squeezed into ~20 KiB: a compression bomb.
BOMB = gzip.compress(b"{" + b" " * 20_000_000 + b"}", compresslevel=1)
GOOD = json.dumps({"access_token": "opaque", "token_type": "Bearer", "expires_in": 60}).encode()


def run_worker(mode: str, timeout: float) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "tests.hostile_worker", mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def oauth(url: str, **options: Any) -> OAuth2ClientCredentialsSource:
    return OAuth2ClientCredentialsSource(url, "id", "secret", **options)


# -- 1. size ----------------------------------------------------------------------------------


def test_a_500_mb_answer_costs_a_few_mb_of_memory() -> None:
    result = run_worker("huge-body", timeout=120)
    print("500 MB answer:", {k: v["rss_growth_kb"] for k, v in result.items()}, "KiB peak growth")
    for shape in ("chunked", "length"):
        measured = result[shape]
        assert "max_body=1048576 bytes" in measured["error"], measured
        assert measured["rss_growth_kb"] < 8 * 1024, measured  # read ~1 MiB, not 500 MB
        assert measured["seconds"] < 5.0, measured


def _sized(conn: Conn, request: RawRequest) -> None:
    size = int(request.path.rsplit("/", 1)[1])
    body = json.dumps({"access_token": "opaque", "token_type": "Bearer", "expires_in": 60,
                       "keys": [], "pad": "x" * size}).encode()
    if "gzip" in request.path:
        conn.send(head(200, {"Content-Encoding": "gzip", "Content-Length": str(len(BOMB))}))
        conn.send(BOMB)
    elif "close" in request.path:  # no length: the body ends when the connection does
        conn.send(head(200, {"Connection": "close"}) + body)
        conn.gone = True
    else:
        conn.send(json_answer(200, body))


@pytest.mark.parametrize("shape", ["length", "close"])
def test_the_cap_is_an_option_and_a_transient_error_naming_it(shape: str) -> None:
    with RawServer(_sized) as server:
        small = oauth(f"{server.url}/{shape}/1000", max_body=4096)
        assert small(NO_KEY).raw == "opaque"
        big = oauth(f"{server.url}/{shape}/5000", max_body=4096)
        with pytest.raises(TokenFetchError, match="max_body=4096 bytes"):
            big(NO_KEY)
        roomy = oauth(f"{server.url}/{shape}/5000", max_body=8192)
        assert roomy(NO_KEY).raw == "opaque"
        for source in (small, big, roomy):
            source.close()


def test_a_compressed_answer_is_capped_after_inflating() -> None:
    with RawServer(_sized) as server:
        source = oauth(f"{server.url}/gzip/0")
        with pytest.raises(TokenFetchError, match="max_body=1048576 bytes"):
            source(NO_KEY)
        source.close()


def test_a_key_set_over_the_cap_is_a_transient_error_naming_it() -> None:
    with RawServer(_sized) as server:
        verifier = JWKSVerifier(f"{server.url}/jwks/5000", max_body=4096)
        with pytest.raises(TokenFetchError, match="max_body=4096 bytes"):
            verifier("eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.eyJleHAiOjF9.c2ln")
        verifier.close()


# -- 2. total time ----------------------------------------------------------------------------


def _trickle_head(conn: Conn, request: RawRequest) -> None:
    conn.trickle(json_answer(200, GOOD), every=0.05)  # ~6 s for the whole answer


def _trickle_body(conn: Conn, request: RawRequest) -> None:
    if conn.send(head(200, {"Content-Length": str(len(GOOD))})):
        conn.trickle(GOOD, every=0.05)


@pytest.mark.parametrize(("answer", "own_session"), [
    (_trickle_head, False), (_trickle_body, False), (_trickle_body, True)],
    ids=["headers", "body", "body-own-session"])
def test_a_trickling_issuer_ends_the_attempt_by_its_deadline(answer: Any,
                                                            own_session: bool) -> None:
    with RawServer(answer) as server:
        session = requests.Session() if own_session else None
        # Each read gets a byte within 0.05 s, so the 5 s read timeout never fires.
        source = oauth(f"{server.url}/token", timeout=(2.0, 5.0), total_timeout=0.5,
                       session=session)
        started = time.monotonic()
        with pytest.raises(TokenFetchError, match=r"total_timeout=0\.5 s") as caught:
            source(NO_KEY)
        ended = time.monotonic() - started
        source.close()
        if session is not None:
            session.close()
    print(f"trickler ({answer.__name__}, own session {own_session}): ended at {ended:.3f} s")
    assert 0.45 <= ended < 1.5, ended
    assert caught.value.__cause__ is None


def test_a_trickling_key_set_ends_by_its_deadline() -> None:
    with RawServer(_trickle_body) as server:
        verifier = JWKSVerifier(f"{server.url}/jwks", timeout=(2.0, 5.0), total_timeout=0.4)
        started = time.monotonic()
        with pytest.raises(TokenFetchError, match=r"total_timeout=0\.4 s"):
            verifier("eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.eyJleHAiOjF9.c2ln")
        ended = time.monotonic() - started
        verifier.close()
    assert 0.35 <= ended < 1.5, ended


KEYS = 20


def test_threads_stay_bounded_with_a_trickling_issuer_and_20_keys_read() -> None:
    """Bound: one fetch thread per key being waited on, plus the client's timer/poller, its
    background workers and the process's HTTP deadline watchdog."""
    with RawServer(_trickle_head) as server:
        source = oauth(f"{server.url}/token", timeout=(2.0, 5.0), total_timeout=0.3)
        client = TokenClient(source, fetch_timeout=0.6)
        stop = threading.Event()
        most = 0

        def read(audience: str) -> None:
            while not stop.is_set():
                try:
                    client.get_token(audience=audience, timeout=1.0)
                except TokenFetchError:
                    stop.wait(0.01)

        readers = [threading.Thread(target=read, args=(f"aud-{i}",), daemon=True)
                   for i in range(KEYS)]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            owned = [t for t in threading.enumerate() if t.name.startswith("swr-token")]
            most = max(most, len(owned))
            time.sleep(0.02)
        stop.set()
        for reader in readers:
            reader.join(2.0)
        client.close()
        source.close()
        attempts = len(server.requests)
    print(f"threads named swr-token-*: at most {most}; {attempts} attempts in 3 s")
    assert attempts >= KEYS  # every key did ask
    assert most <= KEYS + 4 + 2, most


# -- 3. error bodies --------------------------------------------------------------------------


def test_a_1_mb_error_description_is_cheap_and_stalls_no_fresh_read() -> None:
    result = run_worker("error-body", timeout=60)
    print("1 MB error body:", result["slowest_fresh_read_ms"], "ms slowest fresh read of",
          result["fresh_reads"], "; failing calls took", [f[0] for f in result["failures"]], "s")
    assert len(result["failures"]) == 3
    for seconds, message in result["failures"]:
        assert seconds < 10.0 and "HTTP 500" in message and len(message) < 400
    assert result["fresh_reads"] > 0
    assert result["slowest_fresh_read_ms"] < 50.0, result
