"""A caller's timeout is the real bound on its wait (issue 16, point 1).

The fetch's budget, its retries and each HTTP attempt follow from the longest timeout of the
callers waiting for it; the CLI's ``--timeout`` is the one knob there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from swr_token import ClerkBackendSource, TokenClient, TokenFetchError
from swr_token.testing import FakeClock, LocalIssuer

from .conftest import WAIT, FakeSource, drive


def _quick_source(issuer: LocalIssuer) -> ClerkBackendSource:
    # The source's own limits are 1 s, so an issuer answering after 1.5 s exceeds them.
    issuer.reset_counts()
    return ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url,
                              timeout=(1.0, 1.0), total_timeout=1.0)


def test_a_timeout_beyond_fetch_timeout_and_the_sources_limits_gets_the_slow_answer(
        issuer: LocalIssuer) -> None:
    issuer.delay(1.5)
    source = _quick_source(issuer)
    with TokenClient(source, fetch_timeout=1.0) as client:
        started = time.monotonic()
        token = client.get_token("sess_1", timeout=5.0)
        took = time.monotonic() - started
    source.close()
    assert token and 1.4 < took < 5.0
    assert issuer.request_count("clerk") == 1  # one slow attempt, not a retried time-out


def test_without_a_longer_timeout_the_fetch_and_source_limits_apply(
        issuer: LocalIssuer) -> None:
    issuer.delay(1.5)
    source = _quick_source(issuer)
    with TokenClient(source, fetch_timeout=1.0) as client, \
            pytest.raises(TokenFetchError) as info:
        client.get_token("sess_1")
    source.close()
    assert "fetch_timeout=" in str(info.value) or "timeout=" in str(info.value)


def test_a_caller_who_joins_with_a_longer_timeout_extends_the_shared_fetch(
        issuer: LocalIssuer) -> None:
    issuer.delay(1.5)
    source = _quick_source(issuer)
    with TokenClient(source, fetch_timeout=1.0) as client, ThreadPoolExecutor(2) as pool:
        impatient = pool.submit(client.get_token, "sess_1", timeout=0.5)
        assert issuer.wait_for_requests(1, "clerk", timeout=WAIT)
        patient = pool.submit(client.get_token, "sess_1", timeout=5.0)
        with pytest.raises(TokenFetchError, match=r"this call's timeout="):
            impatient.result(WAIT)  # its own timeout, named in Python's words
        assert patient.result(WAIT)  # the same fetch, still going for the patient caller
    source.close()
    # The attempt under way when the patient caller came kept its 1 s; the retry had the
    # patient caller's budget and waited for the slow answer.
    assert issuer.request_count("clerk") == 2


def test_the_retry_budget_follows_the_callers_timeout(clock: FakeClock,
                                                      source: FakeSource) -> None:
    # A 429 asking for 3 s: past fetch_timeout (2 s), so the fetch would give up at once;
    # a caller willing to wait 10 s gets the retry.
    source.script.append(TokenFetchError("429", status=429, retry_after=3.0))
    with TokenClient(source, clock=clock, fetch_timeout=2.0) as client:
        with pytest.raises(TokenFetchError, match="429"):
            drive(clock, client, lambda: client.get_token("a"))
        source.script.append(TokenFetchError("429", status=429, retry_after=3.0))
        assert drive(clock, client, lambda: client.get_token("b", timeout=10.0)) \
            == source.issued[-1]
    assert source.count == 3


def test_cli_timeout_40_waits_for_an_issuer_answering_after_11_s(issuer: LocalIssuer) -> None:
    """The CLI's source keeps its 10 s defaults; --timeout 40 must still see the answer."""
    issuer.delay(11.0)
    env = {**os.environ, "CLERK_SECRET_KEY": issuer.secret_key}
    proc = subprocess.run(
        [sys.executable, "-m", "swr_token", "get", "--api-url", issuer.clerk_api_url,
         "--session", "sess_1", "--timeout", "40"],
        env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(".") == 2 and proc.stderr == ""


def test_cli_timeout_names_the_flag_when_it_runs_out(issuer: LocalIssuer) -> None:
    issuer.delay(5.0)
    env = {**os.environ, "CLERK_SECRET_KEY": issuer.secret_key}
    proc = subprocess.run(
        [sys.executable, "-m", "swr_token", "get", "--api-url", issuer.clerk_api_url,
         "--session", "sess_1", "--timeout", "1"],
        env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 4
    line = proc.stderr.strip()
    assert "\n" not in line and "within --timeout 1 s" in line and "raise --timeout" in line
    assert "timeout=" not in line and "fetch_timeout" not in line  # no Python words
