"""Retry-After is bounded, and a key refused by the pacer reports its own key.

A ``Retry-After`` of ``1e9`` or a date years ahead must not switch a client off; an error
raised for one key must never carry another caller's session in its message.
"""

from __future__ import annotations

import pytest
import tenacity

from swr_token import (
    ClerkBackendSource,
    RetryPolicy,
    TokenClient,
    TokenFetchError,
    TokenRequest,
)
from swr_token.testing import FakeClock, InlineExecutor, LocalIssuer

from .conftest import FakeSource


@pytest.mark.parametrize("retry_after", ["1e9", "Fri, 01 Jan 2100 00:00:00 GMT", "inf"])
def test_an_issuers_retry_after_is_capped(issuer: LocalIssuer, retry_after: str) -> None:
    issuer.fail(503, retry_after=retry_after, count=2)
    source = ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url)
    with pytest.raises(TokenFetchError, match="retry after 60 s") as caught:
        source(TokenRequest("sess_1"))
    assert caught.value.retry_after == 60.0
    capped = ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url,
                                max_retry_after=5.0)
    with pytest.raises(TokenFetchError) as caught:
        capped(TokenRequest("sess_1"))
    assert caught.value.retry_after == 5.0
    source.close()
    capped.close()


def _one_attempt(**options: float) -> RetryPolicy:
    return RetryPolicy(stop=tenacity.stop_after_attempt(1), **options)


@pytest.mark.parametrize("retry_after", [1e9, 10**400, float("inf")], ids=repr)
def test_a_sources_huge_retry_after_pauses_the_source_for_the_cap_at_most(
        clock: FakeClock, retry_after: float) -> None:
    source = FakeSource(clock)
    source.script = [TokenFetchError("issuer says wait forever", retry_after=retry_after)]
    with TokenClient(source, clock=clock, executor=InlineExecutor(),
                     foreground_executor=InlineExecutor(), retry=_one_attempt()) as client:
        with pytest.raises(TokenFetchError):
            client.get_token("s")
        clock.advance(61)  # past the 60 s cap: the source is asked again
        assert client.get_token("s") == source.issued[-1]
    assert source.count == 2


def test_max_retry_after_is_an_option_of_the_retry_policy(clock: FakeClock) -> None:
    source = FakeSource(clock)
    source.script = [TokenFetchError("wait", retry_after=1e9)]
    with TokenClient(source, clock=clock, executor=InlineExecutor(),
                     foreground_executor=InlineExecutor(),
                     retry=_one_attempt(max_retry_after=5.0)) as client:
        with pytest.raises(TokenFetchError):
            client.get_token("s")
        clock.advance(6)
        assert client.get_token("s") == source.issued[-1]


def test_a_key_refused_by_the_pacer_reports_its_own_key(clock: FakeClock) -> None:
    source = FakeSource(clock)

    def fail(request: TokenRequest) -> str:
        raise TokenFetchError(f"HTTP 503 for session {request.session_id}", status=503)

    source.script = [fail] * 10
    # A budget shorter than the pacer's gap: a paced fetch fails at once with the source's
    # failure, which came from another session's request.
    with TokenClient(source, clock=clock, executor=InlineExecutor(),
                     foreground_executor=InlineExecutor(), retry=_one_attempt(),
                     fetch_timeout=0.5) as client:
        for attempt in range(3):  # three failures for sess_A: the source is now paced
            clock.advance(2 if attempt else 0)  # past sess_A's fail-fast window
            with pytest.raises(TokenFetchError, match="sess_A"):
                client.get_token("sess_A")
        calls = source.count  # the pacer's next slot is 1.0-1.3 s away
        with pytest.raises(TokenFetchError) as caught:
            client.get_token("sess_B")
        assert source.count == calls  # refused by the pacer, nothing sent
        # The fail-fast window of sess_B repeats its own failure.
        with pytest.raises(TokenFetchError) as fail_fast:
            client.get_token("sess_B")
    for error in (caught.value, fail_fast.value):
        text = str(error)
        assert "sess_B" in text and "sess_A" not in text, text
        assert error.status == 503 and error.__cause__ is None
