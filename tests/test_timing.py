"""When to refresh and how long to back off: the pure policy functions of timing.py."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshtoken.timing import (
    backoff,
    default_margin,
    effective_margin,
    parse_retry_after,
    refresh_at,
    retry_after_capped,
    token_state,
)

FAST = settings(max_examples=300, deadline=None)


def rng(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 (reproducible jitter, not cryptography)


NOW = 1_800_000_000.0
lifetimes = st.floats(min_value=0.001, max_value=10**9, allow_nan=False)


@pytest.mark.parametrize(
    ("lifetime", "margin"),
    [(3600, 360), (86400, 8640), (600, 60), (300, 30), (100, 30), (60, 30), (40, 20), (10, 5), (1, 0.5)],
)
def test_default_margin_examples(lifetime: float, margin: float) -> None:
    """10 % of the lifetime, at least 30 s, at most half the lifetime."""
    assert default_margin(lifetime) == pytest.approx(margin)


@FAST
@given(lifetimes)
def test_default_margin_stays_between_its_bounds(lifetime: float) -> None:
    """default_margin(L) is at most L/2 and at least min(30, L/2)."""
    margin = default_margin(lifetime)
    assert margin <= lifetime / 2
    assert margin >= min(30.0, lifetime / 2)


@pytest.mark.parametrize(
    ("configured", "lifetime", "margin"),
    [
        (None, 3600, 360),
        (300, 3600, 300),
        (0, 3600, 0),
        (3000, 3600, 1800),
        (3600, 3600, 1800),
        (None, 20, 10),
        (300, 0, 0),
        (None, -5, 0),
        (None, 0, 0),
    ],
)
def test_effective_margin_examples(configured: int | None, lifetime: float, margin: float) -> None:
    """The configured margin wins, but never beyond half the lifetime; no lifetime means no margin."""
    assert effective_margin(configured, lifetime) == margin


@FAST
@given(st.one_of(st.none(), st.integers(min_value=0, max_value=10**10)), lifetimes)
def test_effective_margin_never_exceeds_half_the_lifetime(configured: int | None, lifetime: float) -> None:
    """Whatever is configured, the margin is in [0, L/2] and equals the configured one when that fits."""
    margin = effective_margin(configured, lifetime)
    assert 0 <= margin <= lifetime / 2
    if configured is not None and configured <= lifetime / 2:
        assert margin == configured


def test_refresh_at_moves_only_earlier_within_a_tenth_of_the_margin() -> None:
    """With a margin of 300 s the refresh lands between 330 s and 300 s before expiry, spread by the rng."""
    jitter = rng(0)
    times = [refresh_at(NOW + 3600, 300, now=NOW, rng=jitter) for _ in range(200)]
    assert all(NOW + 3600 - 330 <= t <= NOW + 3600 - 300 for t in times)
    assert max(times) - min(times) > 20  # it really jitters


def test_refresh_at_in_the_past_is_now() -> None:
    """A token already inside its margin (or expired) is refreshed at once, not in the past."""
    jitter = rng(0)
    assert refresh_at(NOW + 10, 300, now=NOW, rng=jitter) == NOW
    assert refresh_at(NOW - 3600, 300, now=NOW, rng=jitter) == NOW


def test_refresh_at_with_zero_margin_is_the_expiry() -> None:
    """No margin, no jitter: the refresh is due exactly at expiry."""
    assert refresh_at(NOW + 100, 0, now=NOW, rng=rng(1)) == NOW + 100


@FAST
@given(
    expires_in=st.floats(min_value=-(10**6), max_value=10**8, allow_nan=False),
    margin=st.floats(min_value=0, max_value=10**6, allow_nan=False),
    seed=st.integers(0, 2**32),
)
def test_refresh_at_is_earlier_only_and_never_before_now(expires_in: float, margin: float, seed: int) -> None:
    """now <= refresh_at <= max(now, expires_at - margin), and at most 10 % of the margin earlier."""
    expires_at = NOW + expires_in
    at = refresh_at(expires_at, margin, now=NOW, rng=rng(seed))
    assert at >= NOW
    assert at <= max(NOW, expires_at - margin)
    assert at >= min(max(NOW, expires_at - margin), expires_at - 1.1 * margin - 1e-6)


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 2), (1, 2), (2, 4), (3, 8), (5, 32), (8, 256), (9, 300), (50, 300), (10**9, 300)],
)
def test_backoff_doubles_up_to_the_cap_with_jitter_of_at_most_half(attempt: int, ceiling: float) -> None:
    """Retry n waits between half and all of min(300, 2 * 2**(n-1)) seconds."""
    delays = [backoff(attempt, rng=rng(seed)) for seed in range(50)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > ceiling / 10


def test_backoff_honours_retry_after_as_a_floor() -> None:
    """A server's Retry-After is never undercut, even when it is above the cap."""
    assert backoff(1, rng=rng(0), retry_after=7) == 7
    assert backoff(1, rng=rng(0), cap=300, retry_after=900) == 900
    assert backoff(9, rng=rng(0), retry_after=7) >= 150


@FAST
@given(
    attempt=st.integers(min_value=-5, max_value=10**6),
    cap=st.floats(min_value=1, max_value=10**6, allow_nan=False),
    retry_after=st.one_of(st.none(), st.floats(min_value=0, max_value=10**7, allow_nan=False)),
    seed=st.integers(0, 2**32),
)
def test_backoff_bounds(attempt: int, cap: float, retry_after: float | None, seed: int) -> None:
    """backoff never exceeds max(cap, retry_after), never goes below retry_after, and is positive."""
    delay = backoff(attempt, rng=rng(seed), cap=cap, retry_after=retry_after)
    assert 0 < delay <= max(cap, retry_after or 0)
    if retry_after is not None:
        assert delay >= retry_after


@FAST
@given(
    first=st.integers(min_value=1, max_value=200),
    later=st.integers(min_value=0, max_value=200),
    cap=st.floats(min_value=1, max_value=10**6, allow_nan=False),
    seed=st.integers(0, 2**32),
)
def test_backoff_pre_jitter_base_never_decreases(first: int, later: int, cap: float, seed: int) -> None:
    """With the same jitter draw (same seed), a later attempt never waits less than an earlier one."""
    earlier = backoff(first, rng=rng(seed), cap=cap)
    after = backoff(first + later, rng=rng(seed), cap=cap)
    assert after >= earlier


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 120.0),  # IMF-fixdate, 2 minutes after `now`
        ("Wednesday, 21-Oct-15 07:28:00 GMT", 120.0),  # obsolete RFC 850 form
        ("Wed Oct 21 07:28:00 2015", 120.0),  # obsolete asctime form: no zone, and HTTP dates are UTC
        ("Wed, 21 Oct 2015 07:20:00 GMT", 0.0),  # already past: retry now, not a negative wait
        ("Wed, 21 Oct 2015 08:28:00 +0100", 120.0),
    ],
)
def test_parse_retry_after_examples(header: str, seconds: float) -> None:
    """Delta-seconds and all three HTTP-date forms (RFC 9110 §5.6.7) give seconds from now."""
    now = 1445412480.0 - 120  # 2015-10-21 07:26:00 UTC
    assert parse_retry_after(header, now=now) == seconds


@pytest.mark.parametrize("header", [None, "", "   ", "-5", "1.5", "1e3", "soon", "²", "١٢", "Wed, 32 Oct 2015 07:28:00 GMT", "0x10"])
def test_parse_retry_after_junk_is_none(header: str | None) -> None:
    """Absent, negative, fractional, non-ASCII digits and broken dates mean no Retry-After at all."""
    assert parse_retry_after(header, now=NOW) is None


@FAST
@given(st.one_of(st.text(max_size=40), st.text(alphabet="0123456789 ,:-+GMTWedOct²١", max_size=40)))
def test_parse_retry_after_never_raises(header: str) -> None:
    """Whatever a server sends, the result is None or a non-negative number of seconds."""
    result = parse_retry_after(header, now=NOW)
    assert result is None or (isinstance(result, float) and result >= 0 and not math.isnan(result))


def test_retry_after_capped_at_an_hour() -> None:
    """A Retry-After beyond an hour is cut to an hour; None stays None."""
    assert retry_after_capped(None) is None
    assert retry_after_capped(30.0) == 30.0
    assert retry_after_capped(86400.0) == 3600.0


@pytest.mark.parametrize(
    ("expires_in", "margin", "state"),
    [
        (None, 300, "missing"),
        (-1, 300, "expired"),
        (0, 300, "expired"),
        (1, 300, "stale"),
        (300, 300, "stale"),
        (301, 300, "fresh"),
        (3600, 300, "fresh"),
        (1, 0, "fresh"),
    ],
)
def test_token_state(expires_in: float | None, margin: float, state: str) -> None:
    """missing / expired / stale (inside the margin) / fresh."""
    expires_at = None if expires_in is None else NOW + expires_in
    assert token_state(expires_at, margin, now=NOW) == state
