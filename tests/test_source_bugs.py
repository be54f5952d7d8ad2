"""A bug in the user's source is not an outage (SPEC §9); bad key arguments say which one."""

from __future__ import annotations

import logging
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor

import pytest
import tenacity

from swr_token import (
    ClerkBackendSource,
    ConfigurationError,
    RetryPolicy,
    TokenClient,
    TokenError,
    TokenFetchError,
    TokenRequest,
)
from swr_token.testing import FakeClock, InlineExecutor, LocalIssuer

from .conftest import WAIT, FakeSource

BUGS = [NameError("name 'sesion' is not defined"), TypeError("unsupported operand"),
        AttributeError("'NoneType' object has no attribute 'jwt'"),
        ImportError("No module named 'clerk_sdk'"), NotImplementedError("todo")]


def _bug_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "a bug in the source" in r.getMessage()]


@pytest.mark.parametrize("bug", BUGS, ids=lambda b: type(b).__name__)
def test_a_programming_error_reaches_the_caller_as_is_and_is_not_retried(
        clock: FakeClock, source: FakeSource, bug: Exception,
        caplog: pytest.LogCaptureFixture) -> None:
    def buggy(request: TokenRequest) -> str:
        raise bug

    source.script.append(buggy)
    with TokenClient(source, clock=clock) as client, pytest.raises(type(bug)) as info:
        client.get_token("s")
    assert not isinstance(info.value, TokenError)  # not wrapped: a bug is not a token error
    assert str(info.value) == str(bug)
    assert source.count == 1  # not retried
    # The traceback still shows where the source failed, below the caller's frames.
    assert "in buggy" in "".join(traceback.format_exception(info.value))
    records = _bug_records(caplog)
    assert len(records) == 1 and records[0].exc_info is not None
    assert not [r for r in caplog.records if "will be retried" in r.getMessage()]


def test_every_waiter_gets_the_bug_and_its_traceback_is_logged_once(
        clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    source = FakeSource(clock)
    source.gate = threading.Event()

    def buggy(request: TokenRequest) -> str:
        raise AttributeError("'NoneType' object has no attribute 'jwt'")

    source.script.extend([buggy, buggy])
    with TokenClient(source, clock=clock) as client, ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(client.get_token, "s") for _ in range(5)]
        futures.append(pool.submit(client.get_token, "other"))  # a second key, same bug
        source.wait_for_calls(2)
        source.gate.set()
        errors = [f.exception(WAIT) for f in futures]
    assert all(type(e) is AttributeError for e in errors)
    assert source.count == 2  # one shared fetch per key, no retry
    assert len(_bug_records(caplog)) == 1  # once, not once per key or per caller


def test_a_bug_in_a_background_refresh_is_logged_once_and_the_key_backs_off(
        clock: FakeClock, source: FakeSource, caplog: pytest.LogCaptureFixture) -> None:
    with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
        first = client.get_token("s")
        clock.advance(50)  # stale: 10 s left
        source.script.append(lambda request: request.no_such_attribute)
        assert client.get_token("s") == first  # served stale; the refresh hits the bug
        assert source.count == 2
        for _ in range(20):
            assert client.get_token("s") == first
        assert source.count == 2  # backing off: stale reads do not each call the source
        assert len(_bug_records(caplog)) == 1
        clock.advance(2.0)  # past the first backoff (1-1.3 s)
        assert client.get_token("s") == first  # a new background attempt, which succeeds
        assert source.count == 3
        assert client.get_token("s") == source.issued[-1]


def test_other_exceptions_stay_transient_and_wrapped(clock: FakeClock,
                                                     source: FakeSource) -> None:
    boom = ConnectionResetError("peer reset")
    source.script.extend([boom, boom, boom, boom])
    once = RetryPolicy(stop=tenacity.stop_after_attempt(1))
    client = TokenClient(source, clock=clock, retry=once)
    with client, pytest.raises(TokenFetchError) as info:
        client.get_token("s")
    assert info.value.__cause__ is boom


@pytest.mark.parametrize(("args", "kwargs", "error", "named"), [
    ((123,), {}, TypeError, "session_id"),
    (("",), {}, ValueError, "session_id"),
    (("s",), {"template": ["a"]}, TypeError, "template"),
    (("s",), {"template": ""}, ValueError, "template"),
    ((None,), {"organization_id": 7}, TypeError, "organization_id"),
    ((None,), {"audience": b"api"}, TypeError, "audience"),
])
def test_bad_key_arguments_name_the_argument_and_send_nothing(
        module_issuer: LocalIssuer, args: tuple[object, ...], kwargs: dict[str, object],
        error: type[Exception], named: str) -> None:
    source = ClerkBackendSource(module_issuer.secret_key, api_url=module_issuer.clerk_api_url)
    before = module_issuer.request_count()
    with TokenClient(source) as client:
        for call in (client.get_token, client.get_token_info):
            with pytest.raises(error, match=named):
                call(*args, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(error, match=named):
            client.invalidate(*args, **kwargs)  # type: ignore[arg-type]
    source.close()
    assert module_issuer.request_count() == before  # no remote 404 for an empty session id


def test_an_empty_key_part_is_a_configuration_error(client: TokenClient) -> None:
    with pytest.raises(ConfigurationError, match="session_id must not be empty"):
        client.get_token("")
