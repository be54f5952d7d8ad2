"""What a token is and how fresh it is: parsing, age at receipt, and the three zones.

Nothing here does I/O or takes a lock. :func:`classify` is the one rule that decides whether a
cached token is served (fresh), served while refreshed (stale), or not served (critical).
"""

from __future__ import annotations

import enum
import hashlib
import math
import time
from collections.abc import Callable, Mapping

from ._errors import InvalidTokenError

TYPE_CHECKING = False  # not typing's: a cached `swr-token get` must not import typing
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "DEFAULT_MAX_CLOCK_SKEW",
    "DEFAULT_MAX_LIFETIME",
    "MIN_REMAINING",
    "Freshness",
    "Token",
    "classify",
    "date_trusted",
    "effective_margin",
    "effective_threshold",
    "fingerprint",
    "remaining_at_receipt",
]


class Freshness(enum.Enum):
    """The zone a cached token is in (SPEC section 1)."""

    FRESH = "fresh"
    STALE = "stale"
    CRITICAL = "critical"


def classify(remaining: float, threshold: float, margin: float) -> Freshness:
    """Critical if ``remaining <= margin``; else fresh if ``remaining >= threshold``; else stale.

    ``threshold`` must already be the effective one (never below ``margin``): at the floor the
    stale zone is empty. Critical is tested first: at ``threshold == margin == remaining`` the
    token is not served (a token in the critical zone never is).
    """
    if remaining <= margin:
        return Freshness.CRITICAL
    if remaining >= threshold:
        return Freshness.FRESH
    return Freshness.STALE


def effective_margin(margin: float, lifetime: float) -> float:
    """The synchronous margin for a token of ``lifetime`` seconds.

    A token that lives no more than twice the margin would spend half its life critical, so
    its margin is a quarter of its lifetime instead.
    """
    if lifetime <= 2 * margin:
        return lifetime / 4
    return margin


def effective_threshold(threshold: float, lifetime: float, margin: float) -> float:
    """The background-refresh threshold actually used for one token.

    At least the token's lifetime is capped at half the lifetime (else every read would be
    stale); below the floor (``margin``) it is raised to the floor.
    """
    if threshold >= lifetime:
        threshold = lifetime / 2
    return max(threshold, margin)


def fingerprint(raw: str) -> str:
    """A short, non-reversible name for a token, safe for logs."""
    return hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:10]


#: Defaults of the bounds a client puts on what an issuer says (TokenClient options).
DEFAULT_MAX_LIFETIME = 86_400.0
DEFAULT_MAX_CLOCK_SKEW = 300.0
#: A token with less than this left on arrival goes to no one.
MIN_REMAINING = 1.0
#: Epoch seconds (and expires_in) beyond this are absurd: the year 2286.
_ABSURD = 1e10


def remaining_at_receipt(
    *,
    issued_at: float | None,
    expires: float | None,
    expires_in: float | None,
    server_time: float | None,
    wall_now: float,
    started_wall_now: float,
    max_clock_skew: float = math.inf,
) -> tuple[float, float]:
    """Return ``(remaining, lifetime)`` of a token just received (SPEC section 5).

    ``started_wall_now`` is the wall clock as it stood when the client started, advanced by the
    deadline clock: a wall-clock step after start-up cannot age or rejuvenate a token.
    The issuer's ``Date`` (``server_time``, whole seconds) wins when given and within
    ``max_clock_skew`` of the local wall clock: the local wall clock if it falls within that
    second, else the end of that second, so age is never undercounted. A ``Date`` further off
    is not trusted (see :func:`date_trusted`).
    """
    issuer_now = _issuer_now(server_time, wall_now, started_wall_now, max_clock_skew)
    remaining, lifetime = (None, None) if expires is None else _by_claims(
        issued_at, expires, issuer_now)
    if expires_in is not None:
        remaining, lifetime = _within_expires_in(remaining, lifetime, expires_in)
    if remaining is None or lifetime is None:
        raise InvalidTokenError(
            "the token has no numeric 'exp' claim and the source gave no expires_in; "
            "return Token(raw, expires_in=SECONDS) from the source for opaque tokens"
        )
    return remaining, lifetime


def _issuer_now(server_time: float | None, wall_now: float, started_wall_now: float,
                max_clock_skew: float) -> float:
    """The issuer's wall clock now, as well as this side can tell (see remaining_at_receipt)."""
    if server_time is not None and date_trusted(server_time, wall_now, max_clock_skew):
        return wall_now if server_time <= wall_now < server_time + 1 else server_time + 1
    return min(wall_now, started_wall_now)


def _by_claims(issued_at: float | None, expires: float,
               issuer_now: float) -> tuple[float, float]:
    """``(remaining, lifetime)`` by the JWT's ``exp`` (and ``iat``, when before ``exp``)."""
    if issued_at is not None and expires > issued_at:
        lifetime = expires - issued_at
        age = min(max(issuer_now - issued_at, 0.0), lifetime)
        return lifetime - age, lifetime
    remaining = expires - issuer_now
    return remaining, max(remaining, 0.0)


def _within_expires_in(remaining: float | None, lifetime: float | None,
                       expires_in: float) -> tuple[float, float]:
    """An opaque token's expires_in counts from the response; a JWT's claims may be shorter."""
    if remaining is None or expires_in < remaining:
        remaining = expires_in
    return remaining, expires_in if lifetime is None else min(lifetime, expires_in)


def date_trusted(server_time: float, wall_now: float, max_clock_skew: float) -> bool:
    """Is the issuer's ``Date`` close enough to the local wall clock to correct it?

    A ``Date`` hours away is more likely a broken or hostile issuer (or proxy) than a local
    clock that far wrong; trusting it would make dead tokens look new.
    """
    return abs(server_time - wall_now) <= max_clock_skew + 1.0  # + its whole-second rounding


def _claim_number(claims: Mapping[str, Any], name: str) -> float | None:
    """A JWT time claim in epoch seconds; None if absent; refused if not a sane number."""
    if name not in claims:
        return None
    value = claims[name]
    number = _sane_number(value)
    if number is None:
        raise InvalidTokenError(
            f"the JWT's {name!r} claim is not a sane time in epoch seconds "
            f"({_kind(value)}); it must be a finite number above 0 and below 1e10; "
            "check the issuer"
        )
    return number


def _sane_number(value: object) -> float | None:
    """``value`` as a float if it is a real, finite number in ``(0, 1e10]``, else None.

    Checked before converting: ``float()`` of a 400-digit integer raises OverflowError.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and not 0 < value <= _ABSURD:
        return None
    number = float(value)
    return number if math.isfinite(number) and 0 < number <= _ABSURD else None


def _kind(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"a {type(value).__name__}"
    if isinstance(value, int) and abs(value) > 10**20:
        return f"an integer of about {int(abs(value).bit_length() * 0.30103) + 1} digits"
    return f"{float(value):g}"


def decode_unverified(raw: str) -> dict[str, Any] | None:
    """The claims of a JWT, its signature NOT checked (None: not a JWT): what a client reads
    for timing, and what ``swr-token inspect`` shows."""
    if raw.count(".") != 2:
        return None
    import jwt  # on first use: a cached CLI call and the engine's import stay light

    try:
        claims = jwt.decode(
            raw,
            options={
                "verify_signature": False,
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
    except jwt.PyJWTError:
        return None
    return claims if isinstance(claims, dict) else None


def unverified_header(raw: str) -> dict[str, Any] | None:
    """The header of a JWT, not checked either (None: not a JWT)."""
    if raw.count(".") != 2:
        return None
    import jwt

    try:
        header = jwt.get_unverified_header(raw)
    except jwt.PyJWTError:
        return None
    return header if isinstance(header, dict) else None


class Token:
    """One token: ``raw`` and, once received by a client, ``expires_at`` and ``remaining()``.

    Sources return ``Token(raw, expires_in=..., server_time=...)`` for opaque tokens or to pass
    the issuer's clock (the response ``Date``); a plain JWT string works too. Immutable; the
    ``repr`` shows a fingerprint, never the token.
    """

    # What the string says lives in one _Parsed, shared by the source's Token and every copy a
    # client receives; a copy adds only its receipt (the engine keeps one per cached key).
    __slots__ = ("_clock", "_deadline", "_expires_at", "_lifetime", "_notes", "_parsed")

    def __init__(
        self, raw: str, *, expires_in: float | None = None, server_time: float | None = None
    ) -> None:
        _check_raw(raw)
        if expires_in is not None and _sane_number(expires_in) is None:
            raise InvalidTokenError(
                f"expires_in must be a finite number of seconds above 0 and below 1e10, got "
                f"{_kind(expires_in)}; check the issuer's answer"
            )
        claims = decode_unverified(raw)
        if claims is None and expires_in is None:
            raise InvalidTokenError(
                "the token is not a parseable JWT and the source gave no expires_in; "
                "return Token(raw, expires_in=SECONDS) for opaque tokens"
            )
        parsed = _Parsed(raw, claims, expires_in, server_time)
        self._bind(parsed, None, 0.0, 0.0, parsed.expires_by, _NOTE_SETS[False, False, False])

    @classmethod
    def _receipt(cls, parsed: _Parsed, clock: Callable[[], float], deadline: float,
                 lifetime: float, expires_at: float, notes: frozenset[str]) -> Token:
        """A received Token: ``parsed`` shared, the receipt its own."""
        token = cls.__new__(cls)
        token._bind(parsed, clock, deadline, lifetime, expires_at, notes)
        return token

    def _bind(self, parsed: _Parsed, clock: Callable[[], float] | None, deadline: float,
              lifetime: float, expires_at: float, notes: frozenset[str]) -> None:
        self._parsed = parsed
        self._clock = clock  # None before receipt: remaining() reads the wall clock
        self._deadline = deadline
        self._lifetime = lifetime
        self._expires_at = expires_at
        #: What the receiving client did not take as given (for its log): see received().
        self._notes = notes

    # -- public, read-only --------------------------------------------------------------

    @property
    def raw(self) -> str:
        """The token string to send (``Authorization: Bearer <raw>``)."""
        return self._parsed.raw

    @property
    def claims(self) -> Mapping[str, Any]:
        """The JWT's claims, decoded without verification (empty for opaque tokens)."""
        return self._parsed.claims

    @property
    def issued_at(self) -> float | None:
        """The JWT's ``iat`` in epoch seconds, if it has one.

        On a received token, None when ``iat`` lay further in the future than the client's
        ``max_clock_skew``: such a token must not look newer than the honest ones after it.
        """
        return None if "iat" in self._notes else self._parsed.iat

    @property
    def notes(self) -> frozenset[str]:
        """What the receiving client adjusted: ``"date"`` (an issuer ``Date`` too far off,
        not trusted), ``"lifetime"`` (capped at ``max_lifetime``), ``"iat"`` (in the
        future, not used for ordering). Empty before receipt."""
        return self._notes

    @property
    def expires_at(self) -> float:
        """When the token expires, in epoch seconds: the client's best estimate at receipt."""
        return self._expires_at

    @property
    def lifetime(self) -> float:
        """``exp - iat`` (or ``expires_in``) as measured at receipt; 0 before receipt."""
        return self._lifetime

    @property
    def fingerprint(self) -> str:
        """A short hash of the token, safe to log."""
        return fingerprint(self._parsed.raw)

    def remaining(self) -> float:
        """Seconds this token still lives, on the receiving client's deadline clock.

        Before a client has received it, by the wall clock: until ``exp``, or ``expires_in``
        from when the Token was made.
        """
        if self._clock is None:
            return self._expires_at - time.time()
        return self._deadline - self._clock()

    # -- receipt ------------------------------------------------------------------------

    def received(
        self, *, deadline_now: float, deadline_clock: Callable[[], float], wall_now: float,
        started_wall_now: float, max_lifetime: float = DEFAULT_MAX_LIFETIME,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    ) -> Token:
        """Return a copy bound to a client's clock, with its age accounted for.

        Lifetime and remaining life are capped at ``max_lifetime``. Raises
        :class:`InvalidTokenError` if less than a second is left on arrival, or if the token
        expired by the local clock more than ``max_clock_skew`` ago, whatever ``Date`` says.
        """
        parsed = self._parsed
        # "This machine's clock": the earlier of the wall clock and the start-up wall clock
        # advanced by the deadline clock, so a wall-clock step after start-up changes nothing.
        _check_not_long_expired(parsed.exp, min(wall_now, started_wall_now), max_clock_skew)
        remaining, lifetime = remaining_at_receipt(
            issued_at=parsed.iat,
            expires=parsed.exp,
            expires_in=parsed.expires_in,
            server_time=parsed.server_time,
            wall_now=wall_now,
            started_wall_now=started_wall_now,
            max_clock_skew=max_clock_skew,
        )
        capped = lifetime > max_lifetime or remaining > max_lifetime
        if capped:
            lifetime, remaining = min(lifetime, max_lifetime), min(remaining, max_lifetime)
        _check_arrival(remaining)
        notes = _NOTE_SETS[
            parsed.server_time is not None
            and not date_trusted(parsed.server_time, wall_now, max_clock_skew),
            capped,
            parsed.iat is not None
            and parsed.iat > max(wall_now, started_wall_now) + max_clock_skew,
        ]
        return Token._receipt(parsed, deadline_clock, deadline_now + remaining,
                              parsed.shared(lifetime), wall_now + remaining, notes)

    @property
    def deadline(self) -> float:
        """When it expires on the receiving client's deadline clock (internal use)."""
        return self._deadline

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Token) and other._parsed.raw == self._parsed.raw

    def __hash__(self) -> int:
        return hash(self._parsed.raw)

    def __repr__(self) -> str:
        return f"<Token {self.fingerprint} expires_at={self._expires_at:.0f}>"

    def __reduce__(self) -> Any:
        raise TypeError("Token objects are not picklable: they hold a secret")


class _Parsed:
    """What a token string says, checked once: shared by a Token and all its received copies.

    Never changed after construction. No repr of its own (the default shows no field).
    """

    __slots__ = ("claims", "exp", "expires_by", "expires_in", "iat", "lifetime", "raw",
                 "server_time")

    def __init__(self, raw: str, claims: dict[str, Any] | None, expires_in: float | None,
                 server_time: float | None) -> None:
        self.raw = raw
        self.claims: Mapping[str, Any] = claims or {}
        self.exp = _claim_number(self.claims, "exp")
        self.iat = _claim_number(self.claims, "iat")
        if claims is not None and expires_in is None and self.exp is None:
            raise InvalidTokenError(
                "the JWT has no numeric 'exp' claim, so its expiry is unknown; "
                "have the issuer set 'exp' or return Token(raw, expires_in=SECONDS)"
            )
        self.expires_in = None if expires_in is None else float(expires_in)
        self.server_time = server_time
        #: The lifetime the token's own fields give (exp - iat, expires_in: the shorter), or
        #: None when only the time of receipt tells (an ``exp`` without a usable ``iat``).
        self.lifetime = _stated_lifetime(self.exp, self.iat, self.expires_in)
        #: The wall time it expires by until a client receives it: an expires_in counts from
        #: now (the source makes the Token as the answer arrives); receipt measures it again
        #: on the client's clocks.
        self.expires_by = _expires_by(self.exp, self.expires_in)

    def shared(self, lifetime: float) -> float:
        """``lifetime``, as this object's float when equal: a received copy then owns none."""
        return self.lifetime if lifetime == self.lifetime else lifetime


#: Every combination of Token.notes, keyed by ("date", "lifetime", "iat"): a received copy
#: points at one of these instead of owning a set.
_NOTE_SETS: dict[tuple[bool, bool, bool], frozenset[str]] = {
    (date, lifetime, iat): frozenset(
        name for name, on in (("date", date), ("lifetime", lifetime), ("iat", iat)) if on)
    for date in (False, True) for lifetime in (False, True) for iat in (False, True)
}


def _check_raw(raw: object) -> None:
    if not isinstance(raw, str) or not raw:
        raise InvalidTokenError(
            f"a token must be a non-empty string, got {type(raw).__name__}; "
            "the source should return the raw token or a Token"
        )


def _stated_lifetime(exp: float | None, iat: float | None,
                     expires_in: float | None) -> float | None:
    lifetime = exp - iat if exp is not None and iat is not None and exp > iat else None
    if expires_in is not None:
        return expires_in if lifetime is None else min(lifetime, expires_in)
    return lifetime


def _expires_by(exp: float | None, expires_in: float | None) -> float:
    if expires_in is None:
        return exp or 0.0
    by_answer = time.time() + expires_in
    return by_answer if exp is None else min(exp, by_answer)


def _check_not_long_expired(exp: float | None, local_now: float, max_clock_skew: float) -> None:
    if exp is not None and exp < local_now - max_clock_skew:
        raise InvalidTokenError(
            f"the token expired {local_now - exp:.0f} s ago by this machine's clock, "
            f"more than max_clock_skew={max_clock_skew:g} s; it is never served, whatever "
            "the issuer's clock says; check the issuer's and this machine's clocks"
        )


def _check_arrival(remaining: float) -> None:
    if remaining < MIN_REMAINING:
        raise InvalidTokenError(
            f"the token arrived with {max(remaining, 0.0):.3g} s left (already expired or "
            "about to); it is given to no one; check the issuer's clock and the token "
            "lifetime it is configured with"
        )
