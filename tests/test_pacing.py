"""Pacing: the shared token bucket and the shared Retry-After pause, on an injected clock."""

from __future__ import annotations

import threading

import pytest

from fakes import FakeClock
from freshtoken.config import Account
from freshtoken.errors import TemporaryError
from freshtoken.model import Secret
from freshtoken.oauth import Timeouts, make_session
from freshtoken.pacing import PacedTokenClient, RateLimiter
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer


class SleepingClock(FakeClock):
    """A FakeClock whose sleep() moves it, and which remembers every sleep."""

    def __init__(self) -> None:
        super().__init__(100.0)  # monotonic-sized numbers: epoch seconds would eat the float precision of 1/rate
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)


def test_bucket_lets_a_burst_through_then_spaces_requests_at_the_rate() -> None:
    """With rate 10/s and burst 3, the first three go at once and each later one 0.1 s after the previous."""
    clock = FakeClock(100.0)
    limiter = RateLimiter(10, burst=3, clock=clock)
    slots = [limiter.reserve() - clock.now for _ in range(6)]
    assert slots == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3])


def test_bucket_refills_while_idle_but_never_beyond_the_burst() -> None:
    """After a long quiet spell only `burst` requests go at once again."""
    clock = FakeClock(100.0)
    limiter = RateLimiter(10, burst=2, clock=clock)
    for _ in range(5):
        limiter.reserve()
    clock.advance(60)
    slots = [limiter.reserve() - clock.now for _ in range(4)]
    assert slots == pytest.approx([0, 0, 0.1, 0.2])


def test_acquire_sleeps_until_its_slot() -> None:
    """acquire() blocks through the injected sleep for exactly the time its slot is away, and reports it."""
    clock = SleepingClock()
    limiter = RateLimiter(4, clock=clock, sleep=clock.sleep)
    waited = [limiter.acquire() for _ in range(3)]
    assert waited == pytest.approx([0, 0.25, 0.25])
    assert clock.sleeps == pytest.approx([0.25, 0.25])


def test_concurrent_callers_never_share_a_slot() -> None:
    """Eight threads reserving 200 slots each get 1600 distinct slots, spaced exactly 1/rate apart."""
    clock = FakeClock(100.0)
    limiter = RateLimiter(1000, burst=1, clock=clock)
    slots: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        mine = [limiter.reserve() for _ in range(200)]
        with lock:
            slots.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    slots.sort()
    assert len(slots) == 1600
    gaps = [b - a for a, b in zip(slots, slots[1:], strict=False)]
    assert min(gaps) == pytest.approx(0.001, abs=1e-6) and max(gaps) == pytest.approx(0.001, abs=1e-6)


def test_pause_holds_every_caller_including_those_already_waiting() -> None:
    """A pause set while a caller waits for its slot delays that caller to the end of the pause."""
    clock = SleepingClock()
    limiter = RateLimiter(1, clock=clock, sleep=clock.sleep)
    limiter.acquire()
    # The second caller's slot is 1 s away; a 5 s pause arrives as it starts to wait.
    original_sleep = clock.sleep
    pauses = iter([5.0])

    def sleep_with_pause(seconds: float) -> None:
        for pause in pauses:
            limiter.pause(pause)
        original_sleep(seconds)

    limiter.sleep = sleep_with_pause
    assert limiter.acquire() == pytest.approx(5.0)


def test_pause_only_grows_and_unlimited_rate_still_honours_it() -> None:
    """rate=None never spaces requests, but a pause holds them; a shorter later pause does not cut it."""
    clock = FakeClock(100.0)
    limiter = RateLimiter(None, clock=clock)
    assert [limiter.reserve() for _ in range(3)] == [clock.now] * 3
    limiter.pause(10)
    limiter.pause(2)
    assert limiter.reserve() == clock.now + 10


def test_bad_settings_are_refused() -> None:
    """A rate of zero or a burst below one is a programming error."""
    with pytest.raises(ValueError):
        RateLimiter(0)
    with pytest.raises(ValueError):
        RateLimiter(1, burst=0)


def _account(server: AuthServer, name: str = "acct") -> Account:
    return Account(name=name, token_url=server.token_url, client_id=DEMO_CLIENT_ID, client_secret=Secret(DEMO_CLIENT_SECRET))


def test_a_429_pauses_every_account_of_that_endpoint(auth_server: AuthServer) -> None:
    """After one account's 429 with Retry-After: 7, the next account of the same server waits 7 s before it sends."""
    clock = SleepingClock()
    paced = PacedTokenClient(make_session(), Timeouts(2, 2), monotonic=clock, sleep=clock.sleep)
    one, two = _account(auth_server, "one"), _account(auth_server, "two")
    try:
        auth_server.script(429, json={"error": "too_many_requests"}, headers={"Retry-After": "7"})
        with pytest.raises(TemporaryError):
            paced.refresh(one, Secret(auth_server.issue_refresh_token()))
        response = paced.refresh(two, Secret(auth_server.issue_refresh_token()))
    finally:
        paced.session.close()
    assert response.access.access_token.reveal()
    assert clock.sleeps == pytest.approx([7.0])
    assert auth_server.token_requests == 2


def test_shared_pause_is_capped_and_other_servers_are_not_held(auth_server: AuthServer) -> None:
    """A Retry-After of an hour holds the endpoint's other accounts for max_pause only, and another server not at all."""
    clock = SleepingClock()
    paced = PacedTokenClient(make_session(), Timeouts(2, 2), max_pause=30, monotonic=clock, sleep=clock.sleep)
    try:
        with AuthServer(token_lifetime=60) as other:
            auth_server.script(429, json={"error": "too_many_requests"}, headers={"Retry-After": "3600"})
            with pytest.raises(TemporaryError):
                paced.refresh(_account(auth_server), Secret(auth_server.issue_refresh_token()))
            paced.refresh(_account(other), Secret(other.issue_refresh_token()))
            assert clock.sleeps == []
            paced.refresh(_account(auth_server, "two"), Secret(auth_server.issue_refresh_token()))
            assert clock.sleeps == pytest.approx([30.0])
    finally:
        paced.session.close()


def test_rate_spaces_refreshes_against_one_server(auth_server: AuthServer) -> None:
    """With rate 2/s, three refreshes against one server start 0.5 s apart, and all succeed."""
    clock = SleepingClock()
    paced = PacedTokenClient(make_session(), Timeouts(2, 2), rate=2, monotonic=clock, sleep=clock.sleep)
    try:
        for name in ("a", "b", "c"):
            paced.refresh(_account(auth_server, name), Secret(auth_server.issue_refresh_token()))
    finally:
        paced.session.close()
    assert clock.sleeps == pytest.approx([0.5, 0.5])
    assert auth_server.refreshes_ok == 3
