"""The shared option validator: one wording for every "number of seconds" option."""

from __future__ import annotations

import pytest

from swr_token import ConfigurationError
from swr_token._checks import seconds


@pytest.mark.parametrize("value", [0, 0.0, 1, 2.5, 10**9])
def test_accepts_finite_non_negative_numbers(value: float) -> None:
    result = seconds("poll_interval", value)
    assert result == value and type(result) is float


@pytest.mark.parametrize("value", [True, False, "5", None, [1], float("nan"), float("inf"),
                                   -float("inf")])
def test_refuses_what_is_not_a_finite_number(value: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        seconds("poll_interval", value)
    assert str(caught.value) == f"poll_interval must be a number of seconds, got {value!r}"
    assert isinstance(caught.value, ValueError)


def test_refuses_negative_and_optionally_zero() -> None:
    with pytest.raises(ConfigurationError) as caught:
        seconds("margin", -1)
    assert str(caught.value) == "margin must be >= 0, got -1"
    with pytest.raises(ConfigurationError) as caught:
        seconds("fetch_timeout", 0, allow_zero=False)
    assert str(caught.value) == "fetch_timeout must be > 0, got 0"
    assert seconds("fetch_timeout", 0.5, allow_zero=False) == 0.5


def test_an_integer_too_large_for_a_float_is_refused_without_echoing_it() -> None:
    for value in (10**400, 10**5000):  # float() overflows; repr() of the second raises
        with pytest.raises(ConfigurationError, match="must be a number of seconds") as caught:
            seconds("leeway", value)
        assert len(str(caught.value)) < 100


def test_a_hint_is_added_in_parentheses() -> None:
    with pytest.raises(ConfigurationError) as caught:
        seconds("min_refresh_interval", -1, hint="0: no throttle")
    assert str(caught.value) == "min_refresh_interval must be >= 0, got -1 (0: no throttle)"
