"""Wall-clock steps change nothing: deadlines run on CLOCK_BOOTTIME, age is measured once."""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt
import pytest
import time_machine

from swr_token import TokenClient
from swr_token.testing import FakeClock, InlineExecutor

from .conftest import FakeSource, mint

BOOT = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


class TrueTimeIssuer:
    """An issuer on correct time, whatever the local wall clock says (time-machine only moves
    the local wall clock; the issuer's clock follows the boot clock from a fixed origin)."""

    def __init__(self) -> None:
        self.origin_wall = time.time()
        self.origin_boot = time.clock_gettime(BOOT)
        self.calls = 0

    def now(self) -> float:
        return self.origin_wall + (time.clock_gettime(BOOT) - self.origin_boot)

    def __call__(self, request: object) -> str:
        self.calls += 1
        now = self.now()
        return jwt.encode({"iat": now, "exp": now + 60, "n": self.calls}, "k" * 32,
                          algorithm="HS256")


@pytest.mark.parametrize("step", [3600.0, -3600.0], ids=["forward", "backward"])
def test_wall_clock_jumped_an_hour_changes_nothing(step: float) -> None:
    issuer = TrueTimeIssuer()
    with TokenClient(issuer) as client:
        first = client.get_token("s")
        with time_machine.travel(time.time() + step, tick=True):
            for _ in range(1000):  # no refresh storm: every read is a cached hit
                assert client.get_token("s") == first
            assert issuer.calls == 1
            assert 55 < client.get_token_info("s").remaining() <= 60
            # A token fetched after the jump is aged correctly (not dead, not immortal).
            fresh = client.get_token_info("s", skip_cache=True)
            assert 59 < fresh.remaining() <= 60
            assert client.get_token("s") == fresh.raw
        assert issuer.calls == 2


def test_no_expired_token_after_the_wall_clock_steps_back(clock: FakeClock) -> None:
    source = FakeSource(clock)
    with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
        first = client.get_token("s")
        clock.step_wall(-3600)  # the wall says the token has an hour more to live
        clock.advance(61)  # but it is dead by the deadline clock
        assert client.get_token("s") != first
        assert source.count == 2


def test_token_issued_long_ago_is_not_taken_for_new(clock: FakeClock) -> None:
    from swr_token import InvalidTokenError

    source = FakeSource(clock)
    source.script.append(lambda _r: mint(clock, iat=clock.wall() - 3600))
    with TokenClient(source, clock=clock) as client, \
            pytest.raises(InvalidTokenError, match="expired"):
        client.get_token("s")


# -- the fresh-token read's two clocks: a suspend, wall steps ---------------------------------


class CountingClock(FakeClock):
    """A FakeClock that counts reads of its deadline clock: the fresh-token read takes none."""

    def __init__(self) -> None:
        super().__init__()
        self.deadline_reads = 0
        read = self.deadline

        def counted() -> float:
            self.deadline_reads += 1
            return read()

        self.deadline = counted

    def reads_during(self, call: Callable[[], object]) -> int:
        before = self.deadline_reads
        call()
        return self.deadline_reads - before


def test_first_read_after_an_hour_suspend_never_returns_the_expired_token(
        clock: FakeClock) -> None:
    source = FakeSource(clock)  # 60 s tokens
    with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
        first = client.get_token("s")
        assert client.get_token("s") == first
        clock.suspend(3600)  # boot and wall clocks jump an hour; monotonic stands still
        after = client.get_token("s")  # the very first read after the resume
        assert after != first
        assert source.count == 2
        assert client.get_token_info("s").remaining() > 55
        assert client.get_token("s") == after and source.count == 2


def test_a_short_suspend_counts_toward_the_deadline(clock: FakeClock) -> None:
    source = FakeSource(clock)  # 60 s tokens: fresh for 45 s, stale until 55 s
    with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
        first = client.get_token("s")
        clock.suspend(10)
        assert client.get_token("s") == first and source.count == 1  # 50 s left: fresh
        clock.suspend(40)  # 10 s left: stale, though monotonic says only 0 s went by
        assert client.get_token("s") == first  # served at once...
        assert source.count == 2  # ...while one background refresh runs (inline here)
        assert client.stats()["stale_serves"] == 1
        assert client.get_token("s") != first


def test_a_suspend_then_a_backward_wall_step_still_serves_no_dying_token(
        clock: FakeClock) -> None:
    """Each fast clock alone would be fooled here: monotonic lost the 30 s suspend, the wall
    went back an hour. The poller's tick after the resume re-derives the monotonic bound."""
    source = FakeSource(clock)
    with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
        first = client.get_token("s")
        clock.suspend(30)
        clock.advance(5)  # the poller wakes after the resume
        clock.step_wall(-3600)
        clock.advance(22)  # 57 s since the fetch: 3 s left, inside the margin
        assert client.get_token("s") != first
        assert source.count == 2


@pytest.mark.parametrize("step", [3600.0, -3600.0], ids=["forward", "backward"])
def test_a_wall_step_of_an_hour_changes_nothing_on_the_fake_clock(step: float,
                                                                  clock: FakeClock) -> None:
    source = FakeSource(clock)  # 60 s tokens: fresh for 45 s
    # The issuer is on true time: only this machine's wall clock steps.
    true_wall = clock.wall() - clock.deadline()
    source.script = [lambda _r: mint(clock, iat=true_wall + clock.deadline())
                     for _ in range(10)]
    with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
        first = client.get_token("s")
        clock.step_wall(step)
        for _ in range(100):  # no storm
            assert client.get_token("s") == first
        assert source.count == 1
        for second in range(1, 121):  # two minutes of reads, second by second
            clock.advance(1)
            info = client.get_token_info("s")
            assert info.remaining() > 5  # never inside the margin, never expired
            if second <= 45:
                assert info.raw == first
        assert source.count == 3  # one refresh per token lifetime, from the stale zone
        assert client.stats()["waits"] == 1


def test_the_fresh_read_takes_no_deadline_clock_and_recovers_after_a_wall_step() -> None:
    clock = CountingClock()
    source = FakeSource(clock)
    with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
        client.get_token("s")
        assert clock.reads_during(lambda: client.get_token("s")) == 0
        assert clock.reads_during(lambda: client.get_token("s", template=None)) == 0
        clock.step_wall(3600)  # the wall bound now says expired: the slow path decides
        assert clock.reads_during(lambda: client.get_token("s")) > 0
        clock.advance(5)  # the poller's tick sees the step and moves the bounds
        assert clock.reads_during(lambda: client.get_token("s")) == 0
        assert source.count == 1
