"""Wall-clock steps change nothing: deadlines run on CLOCK_BOOTTIME, age is measured once."""

from __future__ import annotations

import time

import jwt
import pytest
import time_machine

from swr_token import TokenClient
from swr_token.testing import FakeClock, InlineExecutor

from .conftest import FakeSource

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

    from .conftest import mint

    source = FakeSource(clock)
    source.script.append(lambda _r: mint(clock, iat=clock.wall() - 3600))
    with TokenClient(source, clock=clock) as client, \
            pytest.raises(InvalidTokenError, match="already expired"):
        client.get_token("s")
