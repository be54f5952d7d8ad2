"""Validators for configuration options, shared so that one option reads the same everywhere.

They check what a caller passed to a constructor, never what an issuer answered: a response
value is hostile input with its own rules, parsed where it is read.
"""

from __future__ import annotations

import math

from ._errors import ConfigurationError

__all__ = ["seconds"]


def seconds(name: str, value: object, *, allow_zero: bool = True, hint: str = "") -> float:
    """``value`` as a float number of seconds, finite and ``>= 0`` (``> 0`` without
    ``allow_zero``); else :class:`ConfigurationError` naming the option and the value.

    ``bool`` is refused though it is an ``int``: ``timeout=True`` is a mistake, not one second.
    ``hint`` (e.g. ``"0: no throttle"``) is added to the message in parentheses.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise ConfigurationError(_with_hint(f"{name} must be a number of seconds, got "
                                            f"{_shown(value)}", hint))
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigurationError(_with_hint(
            f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}", hint))
    return float(value)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past float's range: not a number of seconds either
        return False


def _shown(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        # repr() of a huge int is slow, and past 4,300 digits raises ValueError.
        return f"an integer of {value.bit_length()} bits"
    return repr(value)


def _with_hint(message: str, hint: str) -> str:
    return f"{message} ({hint})" if hint else message
