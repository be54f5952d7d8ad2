"""An issuer whose clock steps back mints tokens whose ``iat`` is older than the cached one's.

They live longer than the token they replace, so they must replace it; and a refresh that
leaves the key with a stale token (whatever the reason) is no progress, so the key backs
off instead of asking again on every read. Before this was fixed a stale key refreshed on
every read: 77 requests in two minutes for one key.
"""

from __future__ import annotations

import itertools

from swr_token import Token, TokenClient, TokenRequest
from swr_token.testing import FakeClock, InlineExecutor

from .conftest import mint


def test_an_issuer_clock_stepping_back_costs_one_refresh_per_cycle() -> None:
    clock = FakeClock()
    behind = [0.0]  # how far the issuer's clock is behind ours
    calls: list[float] = []

    def source(request: TokenRequest) -> Token:
        calls.append(clock.deadline())
        issuer_now = clock.wall() - behind[0]
        raw = mint(clock, lifetime=60, iat=issuer_now, jti=len(calls))
        # Its Date header says the same time, within max_clock_skew: trusted, so its tokens
        # arrive with their whole lifetime left.
        return Token(raw, server_time=issuer_now)

    with TokenClient(source, clock=clock, executor=InlineExecutor(),
                     foreground_executor=InlineExecutor(), poll_interval=5,
                     background_refresh_threshold=15, margin=5) as client:
        client.get_token("s")
        clock.advance(1)
        behind[0] = 100.0  # the issuer's clock steps back 100 s (NTP, a VM restored)
        served = set()
        for _ in range(120):  # two minutes of one read a second
            clock.advance(1)
            info = client.get_token_info("s")
            assert info.remaining() > 0
            served.add(info.raw)
        assert len(served) > 1  # the stepped-back issuer's tokens replaced the first
        # One request per 45 s cycle of the 60 s tokens, never one per read (one a second).
        gaps = [later - earlier for earlier, later in itertools.pairwise(calls)]
        assert min(gaps) >= 44, gaps
        assert len(calls) <= 4, len(calls)
