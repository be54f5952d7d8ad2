"""Receipt: a source's answer or a shared entry becomes a Token bound to this client's clocks.

It owns the client's bounds on what an issuer says (``max_lifetime``, ``max_clock_skew``),
the verifier, the start-up wall clock (so a wall step after start-up cannot age or
rejuvenate tokens), and the once-per-client log of each adjustment it had to make.
"""

from __future__ import annotations

import logging
import math

from ._clock import Clock
from ._errors import InvalidTokenError, TokenError
from ._settings import Settings, Verifier
from ._store import StoredToken, token_from_stored
from ._token import Token

__all__ = ["Receiver"]

_log = logging.getLogger("swr_token")

#: What Token.notes mean, logged once per client each.
_NOTES = {
    "date": "the issuer's Date header is more than {skew:g} s from this machine's clock "
            "(max_clock_skew); it is not trusted, token age is measured on the local clock; "
            "check the issuer's and this machine's clocks",
    "lifetime": "the issuer's tokens live longer than max_lifetime={lifetime:g} s; they "
                "are kept for at most that long",
    "iat": "a token's 'iat' lies more than {skew:g} s in the future (max_clock_skew); it "
           "is not used to order tokens, so it cannot make honest tokens look older",
}


class Receiver:
    """Turns what a source returned, or what another process stored, into a received
    :class:`Token`, and says when it was issued (its freshness order)."""

    def __init__(self, clock: Clock, settings: Settings, verifier: Verifier | None) -> None:
        self._clock = clock
        self._verifier = verifier
        self._max_lifetime = settings.max_lifetime
        self._max_clock_skew = settings.max_clock_skew
        self._started_wall = clock.wall()
        self._started_deadline = clock.deadline()
        #: Receipt adjustments already logged (Token.notes): each is logged once per client.
        self._noted: set[str] = set()

    def steady_wall(self) -> float:
        """The wall clock as it stood at start-up, advanced by the deadline clock: a wall
        step after start-up cannot move it."""
        return self._steady_at(self._clock.deadline())

    def _steady_at(self, deadline_now: float) -> float:
        return self._started_wall + (deadline_now - self._started_deadline)

    def receive(self, result: object) -> Token:
        """Check and bind a source's answer (a raw string or a Token); raises
        :class:`InvalidTokenError` (never cached) or what the verifier raises."""
        if isinstance(result, str):
            result = Token(result)
        elif not isinstance(result, Token):
            raise InvalidTokenError(
                f"the token source returned {type(result).__name__}; "
                "it must return the raw token string or a swr_token.Token"
            )
        if self._verifier is not None:
            # Raises InvalidTokenError (never cached) or TokenFetchError (keys unreachable).
            self._verifier(result)
        now = self._clock.deadline()
        token = result.received(
            deadline_now=now,
            deadline_clock=self._clock.deadline,
            wall_now=self._clock.wall(),
            started_wall_now=self._steady_at(now),
            max_lifetime=self._max_lifetime,
            max_clock_skew=self._max_clock_skew,
        )
        for note in token.notes - self._noted:
            self._noted.add(note)
            _log.warning("swr_token: %s", _NOTES[note].format(
                lifetime=self._max_lifetime, skew=self._max_clock_skew))
        return token

    def issued(self, token: Token) -> float:
        """A fetched token's order: its ``iat``, else when it arrived (an opaque token)."""
        iat = token.issued_at
        return self.steady_wall() if iat is None else iat

    def from_store(self, stored: StoredToken) -> tuple[Token, float] | None:
        """A shared token received here with its issue time, or ``None`` if unusable.

        Its issue time is the JWT's ``iat``, else the writer's, never later than now (a
        forged future time must not make it outrank every later token).
        """
        wall = self._clock.wall()
        rebuilt = token_from_stored(stored, wall)
        if rebuilt is None:
            return None
        try:
            token = self.receive(rebuilt)
        except TokenError:
            return None
        issued = token.issued_at
        if issued is None:
            issued = stored.issued_at if isinstance(stored.issued_at, float | int) else 0.0
        return token, min(float(issued), wall) if math.isfinite(issued) else 0.0
