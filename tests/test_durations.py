"""Durations as the config writes them: parse_duration, format_duration, humanize."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshtoken.durations import MAX_DURATION, format_duration, humanize, parse_duration

FAST = settings(max_examples=300, deadline=None)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0),
        (45, 45),
        ("45", 45),
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1d", 86400),
        ("180d", 15_552_000),
        (" 5m ", 300),
        ("5 m", 300),
        ("0s", 0),
        ("007m", 420),
        ("36500d", 3_153_600_000),
    ],
)
def test_parse_duration_examples(value: object, seconds: int) -> None:
    """Integers are seconds; strings take an optional s/m/h/d suffix."""
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (-1, "a duration cannot be negative"),
        ("-5m", "'-5m' is not a duration (use seconds or 30s, 5m, 1h, 1d)"),
        ("5M", "'5M' is not a duration (use seconds or 30s, 5m, 1h, 1d)"),
        ("1h30m", "'1h30m' is not a duration (use seconds or 30s, 5m, 1h, 1d)"),
        ("1.5h", "'1.5h' is not a duration (use seconds or 30s, 5m, 1h, 1d)"),
        ("", "'' is not a duration (use seconds or 30s, 5m, 1h, 1d)"),
        ("m", "'m' is not a duration (use seconds or 30s, 5m, 1h, 1d)"),
        ("5w", "'5w' is not a duration (use seconds or 30s, 5m, 1h, 1d)"),
        ("１２m", "'１２m' is not a duration (use seconds or 30s, 5m, 1h, 1d)"),
        ("١٢", "'١٢' is not a duration (use seconds or 30s, 5m, 1h, 1d)"),
        ("36501d", "a duration cannot be longer than 100 years (36500d)"),
        (MAX_DURATION + 1, "a duration cannot be longer than 100 years (36500d)"),
        ("9" * 400 + "s", "a duration cannot be longer than 100 years (36500d)"),
        (True, "expected a duration such as 30s, 5m, 1h or 1d, got a boolean"),
        (1.5, "expected a duration such as 30s, 5m, 1h or 1d, got float"),
        (None, "expected a duration such as 30s, 5m, 1h or 1d, got NoneType"),
        ([5], "expected a duration such as 30s, 5m, 1h or 1d, got list"),
    ],
)
def test_parse_duration_rejects_with_a_reason(value: object, reason: str) -> None:
    """Negative, over 100 years, compound, fractional, non-ASCII digits and non-scalars are refused with a user-facing reason."""
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value) == reason


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (1, "1s"),
        (59, "59s"),
        (60, "1m"),
        (90, "90s"),
        (3600, "1h"),
        (5400, "90m"),
        (86400, "1d"),
        (90000, "25h"),
        (15_552_000, "180d"),
        (-300, "-5m"),
        (12.9, "12s"),
    ],
)
def test_format_duration_uses_the_largest_exact_unit(seconds: float, text: str) -> None:
    """format_duration picks the largest unit that divides the whole seconds exactly."""
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (61, "1m 1s"), (3552, "59m 12s"), (11100, "3h 5m"), (15_552_000, "180d 0h"), (-61, "-1m 1s")],
)
def test_humanize_examples(seconds: float, text: str) -> None:
    """humanize gives two units at most, for people."""
    assert humanize(seconds) == text


@FAST
@given(st.integers(min_value=0, max_value=MAX_DURATION))
def test_format_then_parse_round_trips(seconds: int) -> None:
    """parse_duration(format_duration(s)) == s for every non-negative whole number of seconds."""
    assert parse_duration(format_duration(seconds)) == seconds


@FAST
@given(st.integers(min_value=0, max_value=36500), st.sampled_from(["s", "m", "h", "d"]))
def test_parse_multiplies_by_the_unit(number: int, unit: str) -> None:
    """'<n><unit>' is n times the unit's seconds."""
    assert parse_duration(f"{number}{unit}") == number * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


junk = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="0123456789smhdSMHD .-+_e\t\n١２", max_size=12),
    st.floats(allow_nan=True),
    st.integers(),
    st.booleans(),
    st.none(),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@FAST
@given(junk)
def test_junk_gives_seconds_or_value_error_only(value: object) -> None:
    """Any input yields a non-negative int or raises ValueError — never another exception."""
    try:
        result = parse_duration(value)
    except ValueError as exc:
        assert str(exc)
    else:
        assert type(result) is int and result >= 0
