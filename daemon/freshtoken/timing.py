"""When to refresh, how long to back off, what comes after a run. Pure: every function takes `now` (and `rng`).

The one place for timing policy and its defaults: the daemon, `refresh`,
`status` and `check-config` ask this module; none works a figure out itself.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from freshtoken.model import USER_SEPARATOR

if TYPE_CHECKING:
    from freshtoken.errors import FreshtokenError
    from freshtoken.model import AccountState, Config

STOP_GRACE = 2.0  # seconds a refresh in flight at SIGTERM gets to save what it got (a stop must not wait out a read timeout)
DEFAULT_LIFETIME = 3600.0  # assumed when a state does not tell how long its token lives
MIN_MARGIN = 30.0
JITTER_SHARE = 0.1  # refreshes move up to 10 % of the margin earlier, never later
BACKOFF_BASE = 2.0  # first retry after a retryable failure: 1-2 s
PERMANENT_BASE = 30.0  # first retry after a permanent refusal: a user has to fix something; do not hammer the provider
BACKOFF_CAP = 300.0
MIN_RETRY = 1.0  # the shortest cap on a retry while the current token still lives
MAX_PLAN = 366 * 86400.0  # no plan lies further ahead: an absurd stored expiry must not overflow the scheduler's datetime
RETRY_AFTER_LIMIT = 3600.0  # a longer Retry-After is more likely a misconfigured server than a plan
REFRESH_TOKEN_WARNING = 14 * 86400.0  # warn (log, `status`, metrics) from this long before a refresh token dies
REFRESH_TOKEN_WARN_EVERY = 86400.0  # ... once a day, not once a heartbeat


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


def lifetime(state: AccountState) -> float:
    """How long the state's access token lives (from its last refresh to its expiry), or DEFAULT_LIFETIME if unknown."""
    if state.access and state.last_refresh and state.access.expires_at > state.last_refresh:
        return state.access.expires_at - state.last_refresh
    return DEFAULT_LIFETIME


def refresh_margin(configured: float | None, state: AccountState) -> float:
    """How long before its expiry the state's token is refreshed: `configured` (the config's margin) or the default."""
    return effective_margin(configured, lifetime(state))


def skip_threshold(margin: float) -> float:
    """Validity left above which a scheduled run is a no-op (someone else refreshed already): past the jitter, plus 1 s."""
    return margin * (1 + JITTER_SHARE) + 1.0


def refresh_at(expires_at: float, margin: float, *, now: float, rng: random.Random) -> float:
    """`margin` before expiry, moved up to 10 % of the margin earlier (never later), never in the past."""
    return max(now, expires_at - margin - rng.uniform(0, JITTER_SHARE * margin))


def token_state(expires_at: float | None, margin: float, *, now: float) -> str:
    """'missing', 'expired', 'stale' (inside the margin) or 'fresh'."""
    if expires_at is None:
        return "missing"
    if now >= expires_at:
        return "expired"
    if now >= expires_at - margin:
        return "stale"
    return "fresh"


def expiring_soon(refresh_token_expires_at: float | None, *, now: float) -> bool:
    """True when a refresh token's known expiry is less than REFRESH_TOKEN_WARNING away (an unknown one: False)."""
    return refresh_token_expires_at is not None and refresh_token_expires_at - now < REFRESH_TOKEN_WARNING


def backoff(
    attempt: int,
    *,
    rng: random.Random,
    cap: float = BACKOFF_CAP,
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


def retry_after_capped(retry_after: float | None, limit: float = RETRY_AFTER_LIMIT) -> float | None:
    """A Retry-After above an hour is more likely a misconfigured server than a plan: cap it."""
    return None if retry_after is None else min(retry_after, limit)


# ---------------------------------------------------------------- the plan after a run


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do after one run: refresh again at `at`, or park the account (at None)."""

    at: float | None
    attempts: int
    reason: str


def plan_next(
    outcome: FreshtokenError | AccountState,
    *,
    attempts: int,
    margin_config: float | None,
    now: float,
    rng: random.Random,
    backoff_cap: float,
    token_expires_at: float | None = None,
    min_interval: float = 0.0,
) -> Plan:
    """The next step for an account after a run that ended in `outcome` (a state, or the error).

    The kind of an error is its class's `outcome` and `retryable` (see errors.py):
    invalid_grant parks the account until a new login; a retryable error comes
    back soon (a new refresh token that could not be saved is as urgent as a
    network error); anything else may be fixed by the user at any moment, so it
    is retried too, but slowly. `token_expires_at` is when the token the readers
    have now dies: a retryable failure never waits past half of what it has
    left, so that two or three tries still fit before it expires (a server's
    Retry-After stays a floor). `min_interval` is the floor between two
    refreshes: however short-lived the tokens a server hands out, freshtoken
    never becomes its load generator.
    """
    if not isinstance(outcome, BaseException):
        access = outcome.access
        if access is None:  # cannot happen after a success; be safe and retry
            return Plan(now + backoff(1, rng=rng, cap=backoff_cap), 1, "no token")
        margin = refresh_margin(margin_config, outcome)
        last = now if outcome.last_refresh is None else min(outcome.last_refresh, now)
        return Plan(max(refresh_at(access.expires_at, margin, now=now, rng=rng), last + min_interval), 0, "scheduled")
    if outcome.outcome == "invalid_grant":
        return Plan(None, attempts, "needs login")
    n = attempts + 1
    if not outcome.retryable:
        return Plan(now + backoff(n, rng=rng, cap=backoff_cap, base=PERMANENT_BASE), n, "retry")
    cap = backoff_cap
    if token_expires_at is not None and token_expires_at > now:
        cap = min(cap, max(MIN_RETRY, (token_expires_at - now) / 2))
    return Plan(now + backoff(n, rng=rng, cap=cap, retry_after=outcome.retry_after), n, "retry")


GRANT_RETRY = 60.0  # a template user's grant whose refresh failed is claimed again this much later


def grant_due_at(state: AccountState, margin_config: float | None) -> float | None:
    """When some host should next refresh a state a shared store saves (None: never, until a new login).

    The daemons claim a template user's grant by this time (pgstore.claim_due), so it carries the
    whole plan: the refresh margin before expiry, a slow retry after an error, nothing for a grant
    that needs a login. A host's own schedule (plan_next) still decides for the config's accounts.
    """
    if state.needs_login or state.refresh_token is None:
        return None
    if state.last_error_at is not None and (state.last_refresh is None or state.last_error_at >= state.last_refresh):
        return state.last_error_at + GRANT_RETRY
    if state.access is None:
        return state.last_refresh or 0.0
    expires_at = state.access.expires_at
    return expires_at - refresh_margin(margin_config, state) if math.isfinite(expires_at) else None


def grant_due(config: Config, name: str, state: AccountState) -> float | None:
    """grant_due_at for the account (or template user TEMPLATE/USER) `name` of `config`: what a shared store saves."""
    account = config.accounts.get(name) or config.templates.get(name.partition(USER_SEPARATOR)[0])
    return grant_due_at(state, config.margin_for(account) if account else config.refresh_margin)


def bounded(at: float, *, now: float) -> float:
    """`at`, but at most MAX_PLAN ahead; `now` for a non-number (a plan from an absurd stored expiry: 1e300, inf, NaN)."""
    return min(at, now + MAX_PLAN) if math.isfinite(at) else now
