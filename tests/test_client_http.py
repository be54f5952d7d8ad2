"""TokenClient with the built-in HTTP sources, against a real LocalIssuer over loopback HTTP.

The client and the issuer run on one FakeClock, so tokens reach the stale and critical zones
without sleeping. Unless a test says otherwise, refreshes and fetches run inline
(InlineExecutor): every request the client makes has been answered and handled by the time
the ``get_token`` or ``clock.advance`` that caused it returns, so request counts are exact.

A 60 s token is fresh until 45 s after issue, stale until 55 s, then critical (the defaults:
threshold 15 s, margin 5 s).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pytest
import tenacity
from cryptography.hazmat.primitives.asymmetric import rsa

from swr_token import (
    ClerkBackendSource,
    ClientClosedError,
    OAuth2ClientCredentialsSource,
    RetryPolicy,
    Token,
    TokenClient,
    TokenFetchError,
    TokenRejectedError,
)
from swr_token.testing import FakeClock, InlineExecutor, LocalIssuer

from .conftest import WAIT, wait_until

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SECRET = "sk_test_client_http_secret"
CLIENT_ID = "client-http"
CLIENT_SECRET = "client-http-secret"
SESSION = "sess_1"
LIFETIME = 60.0
STALE = 46.0  # seconds after issue: stale (under 15 s left), not yet critical (over 5 s)
CRITICAL = 56.0
TIMEOUT = (2.0, 5.0)
SHORT_READ = (2.0, 0.15)  # for hangs: each attempt gives up after 0.15 s of real time
KINDS = ["clerk", "oauth-jwt", "oauth-opaque"]

Source = ClerkBackendSource | OAuth2ClientCredentialsSource


@dataclass
class Rig:
    """A client on ``clock`` fetching from ``issuer`` through one built-in source."""

    kind: str
    clock: FakeClock
    issuer: LocalIssuer
    source: Source
    client: TokenClient

    @property
    def session_id(self) -> str | None:
        return SESSION if self.kind == "clerk" else None

    def get(self, **options: Any) -> str:
        options.setdefault("timeout", WAIT)  # a wait the test did not expect cannot hang it
        return self.client.get_token(self.session_id, **options)

    def info(self, **options: Any) -> Token:
        options.setdefault("timeout", WAIT)
        return self.client.get_token_info(self.session_id, **options)

    def other_key(self) -> dict[str, Any]:
        """A second key the source can serve (another session, or another audience)."""
        if self.kind == "clerk":
            return {"session_id": "sess_2"}
        return {"audience": "https://other.example"}

    def reject_from_now_on(self) -> int:
        """Make the issuer refuse this rig's requests; returns the status it will answer."""
        if self.kind == "clerk":
            self.issuer.end_session(SESSION)
            return 404
        self.issuer.client_secret = "rotated-at-the-issuer"
        return 401

    def requests(self) -> int:
        return self.issuer.request_count()


def step_until(clock: FakeClock, done: Callable[[], bool], *, step: float = 0.1,
               limit: float = 10.0) -> float:
    """Advance ``clock`` by ``step`` until ``done()``; return the fake seconds it took."""
    start = clock.deadline()
    while not done():
        assert clock.deadline() - start < limit, f"not done after {limit} fake seconds"
        clock.advance(step)
    return clock.deadline() - start


def in_thread(call: Callable[[], str]) -> Future[str]:
    """Run ``call`` on a daemon thread (a stuck call cannot hold the test run open)."""
    future: Future[str] = Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="test-caller", daemon=True).start()
    return future


def assert_fresh(token: Token) -> None:
    """Neither dead on arrival nor immortal: it has about a lifetime left."""
    assert token.remaining() == pytest.approx(LIFETIME, abs=1.5)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def issuer(clock: FakeClock, kind: str) -> Iterator[LocalIssuer]:
    with LocalIssuer(private_key=KEY, secret_key=SECRET, client_id=CLIENT_ID,
                     client_secret=CLIENT_SECRET, lifetime=LIFETIME,
                     opaque=kind == "oauth-opaque", clock=clock) as iss:
        yield iss


@pytest.fixture
def make_rig(clock: FakeClock, kind: str, issuer: LocalIssuer) -> Iterator[Callable[..., Rig]]:
    """``make_rig(inline=True, secret=..., timeout=..., **client_options)``; closed after."""
    made: list[Rig] = []

    def make(*, inline: bool = True, secret: str | None = None,
             timeout: tuple[float, float] = TIMEOUT, **client_options: Any) -> Rig:
        source: Source
        if kind == "clerk":
            source = ClerkBackendSource(secret or SECRET, api_url=issuer.clerk_api_url,
                                        timeout=timeout)
        else:
            source = OAuth2ClientCredentialsSource(issuer.token_url, CLIENT_ID,
                                                   secret or CLIENT_SECRET, timeout=timeout)
        if inline:
            client_options.setdefault("executor", InlineExecutor())
            client_options.setdefault("foreground_executor", InlineExecutor())
        client = TokenClient(source, clock=clock, **client_options)
        rig = Rig(kind, clock, issuer, source, client)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.client.close()  # releases any caller still waiting
        rig.source.close()


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


# -- cold fetch, cache hits, connections ----------------------------------------------------


def test_cold_fetch_then_cached_hits(rig: Rig) -> None:
    token = rig.info()
    assert_fresh(token)
    assert rig.requests() == 1
    for _ in range(400):  # 40 s of reads, all in the fresh zone
        rig.clock.advance(0.1)
        assert rig.get() == token.raw
    assert rig.requests() == 1
    stats = rig.client.stats()
    assert stats["fetches"] == 1 and stats["hits"] >= 400
    assert rig.info().remaining() == pytest.approx(LIFETIME - 40, abs=1.5)


def test_concurrent_cold_callers_share_one_request(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(inline=False)  # real foreground threads and refresh workers
    rig.issuer.hang(count=1)
    callers = [in_thread(rig.get) for _ in range(8)]
    assert rig.issuer.wait_for_requests(1)
    wait_until(lambda: rig.client.stats()["waits"] >= 8)  # every caller is on the flight
    rig.issuer.clear_faults()  # the hung request is answered normally
    assert len({caller.result(WAIT) for caller in callers}) == 1
    assert rig.requests() == 1


def test_one_connection_for_many_fetches(rig: Rig) -> None:
    seen = {rig.get()}
    for _ in range(10):
        rig.clock.advance(STALE)
        rig.get()  # the stale token, refreshed in the background (here: inline)
        seen.add(rig.get())
    assert len(seen) == 11
    assert rig.requests() == 11
    assert rig.issuer.connection_count() == 1


def test_one_connection_for_fetches_from_many_threads(make_rig: Callable[..., Rig]) -> None:
    published = threading.Semaphore(0)
    rig = make_rig(inline=False, on_token_update=lambda request, token: published.release())
    seen = {rig.get()}
    assert published.acquire(timeout=WAIT)
    for _ in range(5):
        rig.clock.advance(STALE)
        rig.get()  # stale: a refresh worker fetches the next token
        assert published.acquire(timeout=WAIT)
        seen.add(rig.get())
    assert len(seen) == 6
    assert rig.requests() == 6
    assert rig.issuer.connection_count() == 1


# -- transient failures: the stale token survives -------------------------------------------

FAULTS: dict[str, Callable[[LocalIssuer], None]] = {
    "500": lambda issuer: issuer.fail(500),
    "429": lambda issuer: issuer.fail(429, retry_after=1),
    "malformed": lambda issuer: issuer.malformed(),
    "reset": lambda issuer: issuer.reset(),
    "hang": lambda issuer: issuer.hang(),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_stale_token_survives_transient_failures(
    make_rig: Callable[..., Rig], fault: str
) -> None:
    rig = make_rig(timeout=SHORT_READ if fault == "hang" else TIMEOUT)
    first = rig.get()
    FAULTS[fault](rig.issuer)
    rig.clock.advance(STALE)
    start = rig.clock.deadline()
    sent: list[float] = []  # when each failed request went out, on the fake clock

    def note(before: int) -> None:
        sent.extend([rig.clock.deadline() - start] * (rig.requests() - before))

    outage = 4.0
    while rig.clock.deadline() - start < outage:  # read every 0.1 s
        before = rig.requests()
        assert rig.get() == first
        note(before)
        before = rig.requests()
        rig.clock.advance(0.1)  # runs due retries and poller ticks
        note(before)
    assert sent and sent[0] == 0.0  # the first stale read started the refresh
    # The first quick retries, then at most one request a second for the whole source.
    assert len(sent) <= 3 + outage + 1
    assert all(later - earlier >= 1.0 - 1e-6 for earlier, later in itertools.pairwise(sent[2:]))
    assert rig.client.stats()["stale_serves"] >= 40

    rig.issuer.clear_faults()
    took = step_until(rig.clock, lambda: rig.get() != first, limit=3.0)
    assert took <= 2.5  # a recovered issuer is noticed within about two seconds
    assert_fresh(rig.info())


@pytest.mark.parametrize("kind", ["oauth-jwt"])
def test_cold_fetch_gives_up_after_its_attempts(make_rig: Callable[..., Rig]) -> None:
    errors: list[BaseException] = []
    rig = make_rig(on_refresh_error=lambda request, error: errors.append(error))
    rig.issuer.fail(503)
    caller = in_thread(rig.get)
    wait_until(lambda: rig.client.stats()["waits"] >= 1)
    took = step_until(rig.clock, lambda: bool(errors), step=0.05)  # retries run inline
    assert took < 10.0  # within the fetch budget
    error = caller.exception(WAIT)
    assert isinstance(error, TokenFetchError) and error.status == 503
    assert 2 <= rig.requests() <= 4  # the default policy: at most 4 attempts, within 10 s
    sent = rig.requests()
    with pytest.raises(TokenFetchError):  # fail fast right after: no new request
        rig.get()
    assert rig.requests() == sent


@pytest.mark.parametrize("kind", ["clerk"])
def test_cold_fetch_retries_a_transient_failure(rig: Rig) -> None:
    rig.issuer.fail(500, count=2)
    caller = in_thread(rig.get)
    wait_until(lambda: rig.client.stats()["waits"] >= 1)  # first attempt done, retry due
    step_until(rig.clock, lambda: rig.requests() == 3, step=0.05)  # retries run inline
    token = caller.result(WAIT)
    assert rig.info().raw == token  # cached: fetched outside the critical zone
    assert rig.requests() == 3


def test_a_caller_at_the_critical_deadline_joins_the_hung_refresh(
    make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig(inline=False)
    first = rig.get()
    rig.issuer.hang(count=1)
    rig.clock.advance(STALE)
    assert rig.get() == first  # stale: served; a worker's refresh is now held by the issuer
    assert rig.issuer.wait_for_requests(2)
    rig.clock.advance(CRITICAL - STALE)
    waits = rig.client.stats()["waits"]
    caller = in_thread(rig.get)  # critical: must wait, and joins the refresh in flight
    wait_until(lambda: rig.client.stats()["waits"] > waits)
    rig.issuer.clear_faults()
    token = caller.result(WAIT)
    assert token != first
    assert rig.requests() == 2
    assert rig.get() == token


# -- Retry-After ----------------------------------------------------------------------------


def test_retry_after_holds_back_a_background_refresh(rig: Rig) -> None:
    first = rig.get()
    rig.issuer.fail(429, retry_after=3, count=1)
    rig.clock.advance(STALE)
    assert rig.get() == first  # stale: served; its refresh got the 429
    assert rig.requests() == 2

    def retried() -> bool:
        served = rig.get()
        if rig.requests() == 2:
            assert served == first
            return False
        return True

    took = step_until(rig.clock, retried, limit=5.0)
    assert 3.0 - 1e-6 <= took <= 3.2
    assert rig.requests() == 3
    assert rig.get() != first


def test_retry_after_holds_back_a_cold_fetch(rig: Rig) -> None:
    rig.issuer.fail(429, retry_after=2, count=1)
    caller = in_thread(rig.get)
    wait_until(lambda: rig.client.stats()["waits"] >= 1)  # the 429 is in, the retry due

    def retried() -> bool:
        if rig.requests() == 1:
            return False
        assert caller.result(WAIT)
        return True

    took = step_until(rig.clock, retried)
    assert 2.0 - 1e-6 <= took <= 2.2
    assert rig.requests() == 2


def test_retry_after_past_the_fetch_budget_fails_fast_for_the_whole_source(rig: Rig) -> None:
    rig.issuer.fail(429, retry_after=30)
    with pytest.raises(TokenFetchError) as caught:
        rig.get()
    assert caught.value.status == 429 and caught.value.retry_after == 30
    assert rig.requests() == 1
    with pytest.raises(TokenFetchError):  # another key of the same source: no request
        rig.client.get_token(**rig.other_key(), timeout=WAIT)
    for _ in range(29):  # fail fast until Retry-After has passed; nothing is sent
        rig.clock.advance(1.0)
        with pytest.raises(TokenFetchError):
            rig.get()
    assert rig.requests() == 1
    rig.issuer.clear_faults()
    rig.clock.advance(1.0)
    assert_fresh(rig.info())
    assert rig.requests() == 2


# -- rejections: at once, never retried -----------------------------------------------------


def test_wrong_secret_is_rejected_at_once_and_not_retried(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(secret="wrong-secret")
    with pytest.raises(TokenRejectedError) as caught:
        rig.get()
    assert caught.value.status == 401
    assert "wrong-secret" not in str(caught.value)
    assert rig.requests() == 1
    with pytest.raises(TokenRejectedError):  # within the fail-fast window: no new request
        rig.get()
    for _ in range(50):  # 10 s: no retry goes out on its own
        rig.clock.advance(0.2)
    assert rig.requests() == 1
    with pytest.raises(TokenRejectedError):  # a later call asks once more
        rig.get()
    assert rig.requests() == 2


def test_rejection_of_a_critical_token_surfaces_at_once(rig: Rig) -> None:
    rig.get()
    status = rig.reject_from_now_on()
    rig.clock.advance(CRITICAL)
    with pytest.raises(TokenRejectedError) as caught:
        rig.get()
    assert caught.value.status == status
    assert rig.requests() == 2
    for _ in range(50):
        rig.clock.advance(0.2)
    assert rig.requests() == 2


def test_rejection_during_a_background_refresh_drops_the_token(rig: Rig) -> None:
    first = rig.get()
    status = rig.reject_from_now_on()
    rig.clock.advance(STALE)
    assert rig.get() == first  # served stale; its refresh was rejected
    assert rig.requests() == 2
    with pytest.raises(TokenRejectedError) as caught:  # fail closed: the token is gone
        rig.get()
    assert caught.value.status == status
    for _ in range(50):
        rig.clock.advance(0.2)
    assert rig.requests() == 2


@pytest.mark.parametrize("kind", ["clerk"])
@pytest.mark.parametrize(("key", "part"), [
    ({"session_id": SESSION, "organization_id": "org_1"}, "organization_id"),
    ({"session_id": SESSION, "audience": "https://api.example"}, "audience"),
    ({}, "session_id"),
])
def test_clerk_refuses_organization_and_audience_before_any_request(
    rig: Rig, key: dict[str, Any], part: str
) -> None:
    with pytest.raises(TokenRejectedError, match=part):
        rig.client.get_token(**key, timeout=WAIT)
    for _ in range(20):
        rig.clock.advance(0.5)
    assert rig.requests() == 0


@pytest.mark.parametrize("kind", ["oauth-jwt"])
def test_oauth_refuses_a_session_before_any_request(rig: Rig) -> None:
    with pytest.raises(TokenRejectedError, match="session_id"):
        rig.client.get_token(SESSION)
    assert rig.requests() == 0


# -- a shared cold fetch fails for every waiter, with one request ---------------------------


def _hold_cold_callers(rig: Rig, n: int) -> list[Future[str]]:
    rig.issuer.hang(count=1)
    callers = [in_thread(rig.get) for _ in range(n)]
    assert rig.issuer.wait_for_requests(1)
    wait_until(lambda: rig.client.stats()["waits"] >= n)
    return callers


def test_shared_cold_fetch_rejection_reaches_every_waiter(
    make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig(inline=False)
    callers = _hold_cold_callers(rig, 8)
    status = rig.reject_from_now_on()
    rig.issuer.clear_faults()  # the held request is now answered with a rejection
    for caller in callers:
        error = caller.exception(WAIT)
        assert isinstance(error, TokenRejectedError) and error.status == status
    assert rig.requests() == 1
    with pytest.raises(TokenRejectedError):  # a late caller: the same answer, no request
        rig.get()
    assert rig.requests() == 1


def test_shared_cold_fetch_failure_reaches_every_waiter(make_rig: Callable[..., Rig]) -> None:
    one_attempt = RetryPolicy(stop=tenacity.stop_after_attempt(1))
    rig = make_rig(inline=False, retry=one_attempt)
    callers = _hold_cold_callers(rig, 8)
    rig.issuer.stop()  # drops the held connection: a network error
    for caller in callers:
        error = caller.exception(WAIT)
        assert isinstance(error, TokenFetchError) and not isinstance(error, ClientClosedError)
    assert rig.requests() == 1
    with pytest.raises(TokenFetchError):
        rig.get()
    assert rig.requests() == 1


# -- an issuer clock an hour off changes nothing, when its Date is trusted ------------------
# (max_clock_skew raised to two hours: by default a Date an hour off is not trusted, see
# test_hostile_tokens.py)


@pytest.mark.parametrize("offset", [-3600.0, 3600.0])
def test_issuer_clock_an_hour_off(make_rig: Callable[..., Rig], offset: float) -> None:
    rig = make_rig(max_clock_skew=7200.0)
    rig.issuer.clock_offset = offset
    first = rig.info()
    assert_fresh(first)  # not dead on arrival, not good for an extra hour
    rig.clock.advance(40)
    assert rig.get() == first.raw
    rig.clock.advance(STALE - 40)
    rig.get()  # stale: refreshed (by this read, or by the poller's tick just before it)
    second = rig.info()
    assert second.raw != first.raw
    assert rig.requests() == 2
    assert_fresh(second)
    rig.clock.advance(CRITICAL)  # the old tokens are past critical: never served again
    assert rig.get() not in (first.raw, second.raw)
    assert rig.requests() == 3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("offset", [-3600.0, 3600.0])
def test_issuer_clock_an_hour_off_on_real_clocks(kind: str, offset: float) -> None:
    with LocalIssuer(private_key=KEY, secret_key=SECRET, client_id=CLIENT_ID,
                     client_secret=CLIENT_SECRET, clock_offset=offset,
                     opaque=kind == "oauth-opaque") as issuer:
        source: Source
        if kind == "clerk":
            source = ClerkBackendSource(SECRET, api_url=issuer.clerk_api_url, timeout=TIMEOUT)
        else:
            source = OAuth2ClientCredentialsSource(issuer.token_url, CLIENT_ID, CLIENT_SECRET,
                                                   timeout=TIMEOUT)
        try:
            with TokenClient(source, max_clock_skew=7200.0) as client:
                started = time.time()
                token = client.get_token_info(SESSION if kind == "clerk" else None, timeout=WAIT)
        finally:
            source.close()
    remaining, elapsed = token.remaining(), time.time() - started
    # ``iat`` and ``Date`` are whole seconds and the issuer's "now" is taken as the end of the
    # Date's second (age never undercounted): the age counted is the real one (at most
    # ``elapsed``) plus up to 2 s. Under load ``elapsed`` grows; the bound grows with it.
    # What this proves stays exact: not dead on arrival, and not an hour too long.
    assert LIFETIME - 2.0 - elapsed <= remaining <= LIFETIME
    assert started + LIFETIME - 2.0 <= token.expires_at <= time.time() + LIFETIME
