"""Pacing token requests per provider: a shared token bucket and a shared Retry-After pause.

`workers` bounds how many refreshes run at once; this bounds how fast they
start, and makes one account's 429 hold back every account of that token
endpoint and client id (what providers rate-limit), so thousands of refreshes
never pile onto a provider that has just asked for a break. A shared pause
never makes another account's token expire, though: that account still goes
at half of what its token has left. The limiter does no I/O: its clock and
sleep are injected.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from freshtoken.errors import TemporaryError
from freshtoken.model import Account, Secret, TokenResponse
from freshtoken.oauth import BeforeSend, Timeouts, TokenClient

if TYPE_CHECKING:
    import requests

DEFAULT_TIMEOUTS = Timeouts()
MAX_SHARED_PAUSE = 60.0  # a Retry-After longer than this still delays its own account, but not all of them


class RateLimiter:
    """At most `rate` acquisitions a second after an initial `burst`, shared by threads; plus `pause()`.

    A generic cell rate algorithm: every acquisition reserves its own slot
    under the lock, so concurrent callers never share one, and sleeps outside
    the lock. `rate=None` paces nothing but still honours pauses.
    """

    def __init__(
        self,
        rate: float | None = None,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive (or None for no limit)")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        self._tat = float("-inf")  # theoretical arrival time of the next request
        self._paused_until = float("-inf")

    def reserve(self, pause_limit: float | None = None) -> float:
        """Book the next slot and return the clock time at which its holder may go (now, or later).

        `pause_limit`: a pause holds this caller at most that many seconds from now.
        """
        with self._lock:
            now = self.clock()
            start = max(now, self._held_until(now, pause_limit))
            if self.rate is None:
                return start
            interval = 1.0 / self.rate
            tat = max(self._tat, start)
            go = max(start, tat - (self.burst - 1) * interval)
            self._tat = tat + interval
            return go

    def acquire(self, pause_limit: float | None = None) -> float:
        """Block until this caller may send; returns the seconds waited (a pause counts at most `pause_limit`)."""
        started = self.clock()
        go = self.reserve(pause_limit)
        while True:
            now = self.clock()
            with self._lock:
                # A pause that began while we waited holds us too.
                go = max(go, self._held_until(started, pause_limit))
            if go <= now:
                return now - started
            self.sleep(go - now)

    def _held_until(self, since: float, pause_limit: float | None) -> float:
        return self._paused_until if pause_limit is None else min(self._paused_until, since + pause_limit)

    def pause(self, seconds: float) -> None:
        """Hold every caller for `seconds` from now (a pause only ever grows)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self.clock() + seconds)


class PacedTokenClient(TokenClient):
    """A TokenClient whose grants wait their turn at their token endpoint and client id's limiter.

    A TemporaryError carrying Retry-After pauses that endpoint and client for
    every account (capped at `max_pause`); the account that got it still backs
    off the full time through the daemon's own policy. Inside `token_expiry()`,
    the pause holds a grant at most half of what that account's token has left.
    Code exchanges (a user is waiting at the browser) are not paced. `rate=None`
    paces nothing but the pauses.
    """

    def __init__(
        self,
        session: requests.Session | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        clock: Callable[[], float] = time.time,
        *,
        rate: float | None = None,
        burst: int = 1,
        max_pause: float = MAX_SHARED_PAUSE,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(session, timeouts, clock)
        self.rate = rate
        self.burst = burst
        self.max_pause = max_pause
        self.monotonic = monotonic
        self.sleep = sleep
        self._limiters: dict[tuple[str, str, str], RateLimiter] = {}
        self._limiters_lock = threading.Lock()
        self._local = threading.local()

    def limiter(self, account: Account) -> RateLimiter:
        """The limiter shared by every account of this token endpoint (scheme, host, port and path) and client id."""
        parts = urlsplit(account.token_url or "")
        key = (f"{parts.scheme}://{parts.netloc}".lower(), parts.path or "/", account.client_id)
        with self._limiters_lock:
            limiter = self._limiters.get(key)
            if limiter is None:
                limiter = self._limiters[key] = RateLimiter(self.rate, self.burst, clock=self.monotonic, sleep=self.sleep)
            return limiter

    def refresh(self, account: Account, refresh_token: Secret, *, before_send: BeforeSend | None = None) -> TokenResponse:
        # before_send runs after the pacing wait, right before the request leaves: a shared store's lock budget is not spent waiting.
        return self._paced(account, lambda: super(PacedTokenClient, self).refresh(account, refresh_token, before_send=before_send))

    def client_credentials(self, account: Account, *, before_send: BeforeSend | None = None) -> TokenResponse:
        return self._paced(account, lambda: super(PacedTokenClient, self).client_credentials(account, before_send=before_send))

    @contextlib.contextmanager
    def token_expiry(self, expires_at: float | None) -> Iterator[None]:
        """Grants this thread sends inside the block are for an account whose current token dies at `expires_at`.

        A shared pause then holds them at most half of what that token has left (the
        own-account retry rule of the daemon), so another account's 429 never makes it expire.
        """
        previous = getattr(self._local, "expires_at", None)
        self._local.expires_at = expires_at
        try:
            yield
        finally:
            self._local.expires_at = previous

    def _paced(self, account: Account, grant: Callable[[], TokenResponse]) -> TokenResponse:
        limiter = self.limiter(account)
        expires_at: float | None = getattr(self._local, "expires_at", None)
        left = None if expires_at is None else expires_at - self.clock()
        # A token already dead gains nothing from going early: then the pause holds in full.
        limiter.acquire(pause_limit=left / 2 if left is not None and left > 0 else None)
        try:
            return grant()
        except TemporaryError as exc:
            if exc.retry_after:
                limiter.pause(min(exc.retry_after, self.max_pause))
            raise
