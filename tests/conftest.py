"""Shared fakes: a scripted token source on a fake clock, and bounded waiting helpers."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest

from swr_token import Token, TokenClient, TokenRequest
from swr_token.testing import FakeClock, InlineExecutor, LocalIssuer

from .redis_server import RedisServer

WAIT = 5.0  # upper bound for any wait in a test; a healthy test never gets near it
KEY = "x" * 32


def mint(clock: FakeClock, *, lifetime: float = 60.0, iat: float | None = None,
         claims: dict[str, Any] | None = None, jti: int = 0) -> str:
    issued = clock.wall() if iat is None else iat
    body = {"iat": issued, "exp": issued + lifetime, "jti": jti, **(claims or {})}
    return jwt.encode(body, KEY, algorithm="HS256")


class FakeSource:
    """Records every call; mints a fresh JWT per call unless scripted otherwise.

    ``script`` items: an exception (raised), a callable ``(request) -> result``, or any
    other value (returned as is). ``gate`` makes each call wait for it (bounded).
    """

    def __init__(self, clock: FakeClock, lifetime: float = 60.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls: list[tuple[float, TokenRequest]] = []
        self.script: list[Any] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self._cond = threading.Condition()
        self._jti = itertools.count(1)
        self.issued: list[str] = []

    def __call__(self, request: TokenRequest) -> Any:
        with self._cond:
            self.calls.append((self.clock.deadline(), request))
            action = self.script.pop(0) if self.script else None
            self._cond.notify_all()
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT), "test gate never opened"
        if isinstance(action, BaseException):
            raise action
        if callable(action):
            return action(request)
        if action is not None:
            return action
        raw = mint(self.clock, lifetime=self.lifetime, jti=next(self._jti),
                   claims={"sid": request.session_id})
        self.issued.append(raw)
        return raw

    @property
    def count(self) -> int:
        with self._cond:
            return len(self.calls)

    def wait_for_calls(self, n: int, timeout: float = WAIT) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.calls) >= n, timeout), (
                f"expected {n} source calls, saw {len(self.calls)}"
            )


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Bounded wait for a condition another thread will make true."""
    done = threading.Event()
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.daemon = True
    timer.start()
    try:
        while not predicate():
            assert not deadline.is_set(), "condition not reached in time"
            done.wait(0.002)
    finally:
        timer.cancel()


@pytest.fixture(autouse=True)
def _private_token_cache(tmp_path_factory: pytest.TempPathFactory,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`swr-token get` caches tokens under $XDG_CACHE_HOME: never the real user's, and never
    one test's tokens in another's (subprocesses inherit the variable)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def source(clock: FakeClock) -> FakeSource:
    return FakeSource(clock)


@pytest.fixture
def client(source: FakeSource, clock: FakeClock) -> Iterator[TokenClient]:
    """A client on the fake clock whose background refreshes run inline (deterministic)."""
    c = TokenClient(source, clock=clock, executor=InlineExecutor())
    yield c
    c.close()


def as_token(raw: str, **kw: Any) -> Token:
    return Token(raw, **kw)


def drive(clock: FakeClock, client: TokenClient, call: Callable[[], Any],
          max_steps: int = 200) -> Any:
    """Run ``call`` in a thread and move the fake clock to each timer due until it returns.

    For foreground retries: their waits sit on the client's timer, which a fake clock only
    fires when moved. Bounded in steps and in real time.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as runner:
        future = runner.submit(call)
        for _ in range(max_steps):
            try:
                return future.result(timeout=0.01)
            except TimeoutError:
                pass
            due = clock.next_due()
            if due is not None:
                clock.advance(max(0.0, due - clock.deadline()))
        return future.result(timeout=WAIT)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, persistence off, for the module."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_issuer() -> Iterator[LocalIssuer]:
    """One real loopback issuer per test module (RSA key generation is the slow part)."""
    with LocalIssuer() as issuer:
        yield issuer


@pytest.fixture
def issuer(module_issuer: LocalIssuer) -> Iterator[LocalIssuer]:
    """The module's issuer, with any fault a test injected cleared afterwards."""
    yield module_issuer
    module_issuer.clear_faults()
