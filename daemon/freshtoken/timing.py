"""When to refresh and how long to back off. Pure: every function takes `now` (and `rng`)."""

from __future__ import annotations

import random
from datetime import UTC
from email.utils import parsedate_to_datetime

MIN_MARGIN = 30.0
JITTER_SHARE = 0.1  # refreshes move up to 10 % of the margin earlier, never later
BACKOFF_BASE = 2.0


def default_margin(lifetime: float) -> float:
    """10 % of the token's lifetime, at least 30 s, at most half the lifetime."""
    return min(max(0.1 * lifetime, MIN_MARGIN), lifetime / 2)


def effective_margin(configured: float | None, lifetime: float) -> float:
    """The configured margin, or the default; never more than half the lifetime.

    A margin as long as the token itself would make every refresh due at once,
    a refresh storm against the provider; half the lifetime is the most that
    still leaves a token in use for a while.
    """
    if lifetime <= 0:
        return 0.0
    if configured is None:
        return default_margin(lifetime)
    return min(float(configured), lifetime / 2)


def refresh_at(expires_at: float, margin: float, *, now: float, rng: random.Random) -> float:
    """`margin` before expiry, moved up to 10 % of the margin earlier (never later), never in the past."""
    return max(now, expires_at - margin - rng.uniform(0, JITTER_SHARE * margin))


def is_due(expires_at: float | None, margin: float, *, now: float) -> bool:
    """True when a token expiring at `expires_at` is inside its margin (or there is none)."""
    return expires_at is None or now >= expires_at - margin


def token_state(expires_at: float | None, margin: float, *, now: float) -> str:
    """'missing', 'expired', 'stale' (inside the margin) or 'fresh'."""
    if expires_at is None:
        return "missing"
    if now >= expires_at:
        return "expired"
    if now >= expires_at - margin:
        return "stale"
    return "fresh"


def backoff(
    attempt: int,
    *,
    rng: random.Random,
    cap: float = 300.0,
    base: float = BACKOFF_BASE,
    retry_after: float | None = None,
) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...).

    Exponential from `base`, capped at `cap`, with jitter that takes up to a half
    away so that many accounts failing together do not retry in lockstep. A
    server's Retry-After is a floor: we never come back sooner than it asked.
    """
    exponent = min(max(attempt, 1) - 1, 30)
    ceiling = min(cap, base * 2.0**exponent)
    delay = ceiling * rng.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or junk."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit alone takes "²", which float() refuses
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # The asctime form carries no zone; every HTTP-date is UTC (RFC 9110 §5.6.7).
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def retry_after_capped(retry_after: float | None, limit: float = 3600.0) -> float | None:
    """A Retry-After above an hour is more likely a misconfigured server than a plan: cap it."""
    return None if retry_after is None else min(retry_after, limit)
