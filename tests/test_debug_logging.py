"""``-v`` and ``logging.DEBUG`` explain what the client did (issue 16, point 8): the fetch
path logs at DEBUG, never a token or a secret, and the fresh-token path logs nothing."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator

import pytest

from swr_token import ClerkBackendSource, TokenClient
from swr_token.testing import FakeClock, InlineExecutor, LocalIssuer


@pytest.fixture
def debug(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG, logger="swr_token")
    yield caplog


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("swr_token")]


def _assert_no_secret(lines: list[str], secrets: list[str]) -> None:
    text = "\n".join(lines)
    for secret in secrets:
        for form in (secret, base64.b64encode(secret.encode()).decode(), secret[:24]):
            assert form not in text


def test_a_fetch_logs_start_answer_and_publication_never_the_token(
        debug: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    with LocalIssuer(clock=clock) as issuer:
        source = ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url)
        with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
            token = client.get_token("sess_1")
            lines = _lines(debug)
            assert any("fetch (callers waiting) for {session=sess_1}: attempt 1 started" in line
                       for line in lines)
            assert any("answered in" in line and " ms" in line for line in lines)
            published = [line for line in lines if line.startswith("published token ")]
            assert len(published) == 1 and "s left" in published[0]

            debug.clear()
            for _ in range(100):
                client.get_token("sess_1")  # fresh: the hot path logs nothing
            assert _lines(debug) == []

            clock.advance(46)  # stale
            assert client.get_token("sess_1") == token  # served stale, refreshed inline
            lines = _lines(debug)
            assert any("is stale" in line and "served at once" in line for line in lines)
            assert any(line.startswith("background refresh for {session=sess_1}: attempt 1")
                       for line in lines)
            newer = client.get_token("sess_1")
        source.close()
        _assert_no_secret(_lines(debug), [token, newer, issuer.secret_key])


def test_an_outage_logs_parking_probing_and_recovery(debug: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    keys = ["a", "b", "c", "d"]
    with LocalIssuer(clock=clock) as issuer:
        source = ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url)
        with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
            tokens = [client.get_token(key) for key in keys]
            clock.advance(46)  # all stale
            issuer.fail(503)
            for key in keys:  # three failed refreshes pace the source; the fourth parks
                client.get_token(key)
            lines = _lines(debug)
            assert any("attempt 1 failed after" in line and "503" in line for line in lines)
            assert any(line.startswith("parked {session=") for line in lines)
            clock.advance(1.5)  # the pacer's next slot: a parked key probes (and fails)
            assert any(line.startswith("probe: refreshing {session=") for line in _lines(debug))
            issuer.clear_faults()
            for _ in range(3):  # the next slot's probe succeeds
                clock.advance(1.5)
            assert any(line.startswith("source answers again:") for line in _lines(debug))
        source.close()
        _assert_no_secret(_lines(debug), [*tokens, issuer.secret_key])
