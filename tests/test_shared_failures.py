"""A failure shared by many callers costs nothing that accumulates (issue 12, point 10)."""

from __future__ import annotations

import contextlib
import gc
import traceback
import tracemalloc

import tenacity

from swr_token import RetryPolicy, TokenClient, TokenFetchError, TokenRequest
from swr_token.testing import FakeClock


def test_a_hundred_thousand_fail_fast_calls_do_not_grow_memory_or_tracebacks(
        clock: FakeClock) -> None:
    def source(request: TokenRequest) -> str:
        raise TokenFetchError("HTTP 503 from the issuer", status=503)

    once = RetryPolicy(stop=tenacity.stop_after_attempt(1))
    with TokenClient(source, clock=clock, retry=once) as client:
        with contextlib.suppress(TokenFetchError):
            client.get_token("s")  # the outage: this failure opens the fail-fast window
        # The fake clock stands still, so every call below fails fast with that failure.
        caught: list[TokenFetchError] = []
        gc.collect()
        tracemalloc.start()
        try:
            for i in range(100_000):
                try:
                    client.get_token("s")
                except TokenFetchError as exc:
                    if i in (0, 99_999):
                        caught.append(exc)
            gc.collect()
            current, _peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert current < 2_000_000, f"memory grew by {current / 1e6:.1f} MB"
    first, last = caught
    assert first is not last  # each caller raises its own object...
    assert str(first) == str(last) and last.status == 503  # ...of the same failure
    # ...whose traceback is the caller's frames, not one more set per earlier raise.
    frames = traceback.extract_tb(last.__traceback__)
    assert len(frames) == len(traceback.extract_tb(first.__traceback__)) < 30
    assert len("".join(traceback.format_exception(last))) < 10_000
