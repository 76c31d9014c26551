"""Hardening of the daemon (issue 8): one account never poisons the others, a floor between refreshes,
a shared 429 pause keyed by endpoint and client that never lets another token expire, logins picked up
at once, and unsaved rotated tokens retried quickly. In-process, on the FakeClock of tests/test_daemon.py.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import test_daemon
from freshtoken import config as config_module
from freshtoken.config import Account
from freshtoken.daemon import Daemon, plan_next
from freshtoken.devserver import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer
from freshtoken.errors import RotatedTokenNotSaved, StateWriteError, TemporaryError
from freshtoken.model import AccessToken, AccountState, Secret
from freshtoken.oauth import Timeouts, make_session
from freshtoken.pacing import PacedTokenClient
from freshtoken.store import Store
from test_daemon import account_yaml, seeded, store_token, token_in
from test_pacing import SleepingClock

# The fixtures of tests/test_daemon.py: a FakeClock-driven Daemon against a loopback AuthServer.
server, mono, write, make_daemon = test_daemon.server, test_daemon.mono, test_daemon.write, test_daemon.make_daemon

HOUR = 3600.0


def unusable_state(state_dir: Path, name: str, seed: str, *, expires_at: float) -> None:
    """A state as an older freshtoken stored it from a server answering expires_in in milliseconds."""
    store_token(state_dir, name, seed, "stored-token", expires_at=expires_at, last_refresh=1_700_000_000.0)


def error_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("freshtoken")]


# ---------------------------------------------------------------- one account never poisons the daemon


@pytest.fixture
def own_signals() -> Iterator[None]:
    """Daemon.run installs signal handlers; put the test process's back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def run_until(daemon: Daemon, done: Callable[[], bool], timeout: float = 10.0) -> tuple[int, bool]:
    """Daemon.run() on this (main) thread until `done()` holds; returns its exit code and whether `done` was met."""
    met = threading.Event()

    def watch() -> None:
        deadline = threading.Event()
        for _ in range(int(timeout / 0.02)):
            if done():
                met.set()
                break
            deadline.wait(0.02)
        daemon.events.put(("stop", "test over"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        code = daemon.run()
    finally:
        daemon.events.put(("stop", "test over"))
        watcher.join(timeout + 5)
    return code, met.is_set()


@pytest.mark.parametrize("expires_at", [1e300, 1.7e12])
def test_run_starts_the_healthy_account_beside_a_stored_state_it_cannot_use(expires_at, server, clock, dirs, write, caplog, own_signals):
    """A stored expiry of 1e300 (or milliseconds) in one account is reported in one line; run() goes on and the other is refreshed."""
    caplog.set_level(logging.INFO, logger="freshtoken")
    seeds = {n: server.issue_refresh_token(DEMO_CLIENT_ID) for n in ("bad", "good")}
    unusable_state(dirs["state"], "bad", seeds["bad"], expires_at=expires_at)
    path = write(account_yaml("bad", server, seeds["bad"]), account_yaml("good", server, seeds["good"]), top="workers: 1\n")
    daemon = Daemon(config_module.load(path, {}), clock=clock, rng=seeded(0), environ={})
    tokens = [dirs["tokens"] / f"{n}.token" for n in ("bad", "good")]

    code, met = run_until(daemon, lambda: daemon.ready and all(t.exists() for t in tokens))

    assert (0, True) == (code, met)
    for name in ("good", "bad"):  # the unusable stored token was replaced by a refresh
        assert server.is_valid_access_token(token_in(dirs, name).strip())
    said = [r.getMessage() for r in error_lines(caplog) if r.getMessage().startswith("bad: ")]
    assert [] == [r.getMessage() for r in error_lines(caplog) if r not in said and "bad" not in r.getMessage()]
    assert all(r.exc_info is None for r in error_lines(caplog))  # one line each, no traceback


def test_a_state_too_deeply_nested_to_parse_is_reported_at_start_and_in_the_heartbeat(server, clock, dirs, write, make_daemon, caplog):
    """A state file json cannot parse without RecursionError neither stops start_account nor beat(); the other account runs."""
    caplog.set_level(logging.INFO, logger="freshtoken")
    seeds = {n: server.issue_refresh_token(DEMO_CLIENT_ID) for n in ("bad", "good")}
    daemon = make_daemon(write(account_yaml("bad", server, seeds["bad"]), account_yaml("good", server, seeds["good"])))
    server.revoke_grant(seeds["bad"])
    daemon.run_account("bad")
    assert daemon.slots["bad"].needs_login
    (dirs["state"] / "bad.json").write_text("[" * 100_000)

    daemon.beat()  # the parked account's state changed: it is re-read
    daemon.start_account("bad")
    daemon.start_account("good")
    daemon.run_account("good")

    assert server.is_valid_access_token(token_in(dirs, "good").strip())
    said = [r.getMessage() for r in error_lines(caplog)]
    assert said and all("bad" in line for line in said), said  # reported, naming the account (or its file)
    assert all(r.exc_info is None for r in error_lines(caplog))


def test_a_scheduled_run_that_hits_unusable_data_logs_one_line_and_refreshes(server, clock, dirs, write, make_daemon, caplog):
    """A run whose stored state is unusable (expiry 1e300) logs one line naming the file it moved aside, no traceback,
    and refreshes from the config's seed: the account is healthy again after one run."""
    caplog.set_level(logging.INFO, logger="freshtoken")
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    daemon = make_daemon(write(account_yaml("bad", server, seed)))
    unusable_state(dirs["state"], "bad", seed, expires_at=1e300)

    plan = daemon.run_account("bad")

    assert plan is not None and plan.reason == "scheduled"
    [line] = error_lines(caplog)
    assert "bad.json is unusable (expires_at" in line.getMessage() and "moved it to" in line.getMessage()
    assert line.exc_info is None
    assert "ok" == daemon.slots["bad"].last_outcome
    assert server.is_valid_access_token(token_in(dirs, "bad").strip())


def test_reload_adding_an_account_with_unusable_state_keeps_the_daemon_going(server, clock, dirs, write, make_daemon):
    """An account added by a reload whose stored expiry is absurd does not make reload() raise; its refresh is forced."""
    seeds = {n: server.issue_refresh_token(DEMO_CLIENT_ID) for n in ("bad", "good")}
    path = write(account_yaml("good", server, seeds["good"]))
    daemon = make_daemon(path)
    unusable_state(dirs["state"], "bad", seeds["bad"], expires_at=1e300)
    write(account_yaml("good", server, seeds["good"]), account_yaml("bad", server, seeds["bad"]))

    daemon.reload()

    assert clock() == daemon.slots["bad"].planned_at
    daemon.run_account("bad")
    assert server.is_valid_access_token(token_in(dirs, "bad").strip())


def test_an_absurd_plan_never_reaches_the_scheduler(server, clock, write, make_daemon):
    """schedule() given 1e300, infinity or NaN plans at most a year ahead (a non-number: now), and summary() still reads."""
    daemon = make_daemon(write(account_yaml("a", server, server.issue_refresh_token(DEMO_CLIENT_ID))))
    for at, expected in ((1e300, clock() + 366 * 86400), (float("inf"), clock()), (float("nan"), clock())):
        daemon.schedule("a", at)
        assert expected == daemon.slots["a"].planned_at
    assert daemon.summary().startswith("1 account(s): 1 pending; next refresh in ")


# ---------------------------------------------------------------- a floor between two refreshes


@pytest.mark.parametrize(("top", "floor"), [("", 10.0), ("min_refresh_interval: 1s\n", 1.0)])
def test_one_second_tokens_are_refreshed_no_more_often_than_the_floor(top, floor, clock, dirs, write, make_daemon):
    """A server answering expires_in 1 gets one request per min_refresh_interval (default 10 s), not one per half second."""
    with AuthServer(token_lifetime=1, clock=clock) as fast:
        daemon = make_daemon(write(account_yaml("a", fast, fast.issue_refresh_token(DEMO_CLIENT_ID)), top=top))
        started = clock()
        plan = daemon.run_account("a")
        while plan is not None and plan.at is not None and plan.at < started + 30:
            assert plan.at >= clock() + floor
            clock.advance(plan.at - clock())
            plan = daemon.run_account("a")
        assert fast.refreshes_ok == 30 / floor


def test_the_floor_counts_from_the_last_refresh() -> None:
    """After a run that found a 1 s token refreshed 5 s ago, the next refresh is 5 s away; a long-lived token keeps its margin."""
    now = 1_800_000_000.0
    short = AccountState(access=AccessToken(Secret("t"), "Bearer", now + 1), last_refresh=now - 5)
    assert now + 5 == plan_next(short, attempts=0, margin_config=None, now=now, rng=seeded(0), backoff_cap=300, min_interval=10).at
    long = AccountState(access=AccessToken(Secret("t"), "Bearer", now + HOUR), last_refresh=now)
    plan = plan_next(long, attempts=0, margin_config=None, now=now, rng=seeded(0), backoff_cap=300, min_interval=10)
    assert now + HOUR - 396 <= plan.at <= now + HOUR - 360


# ---------------------------------------------------------------- the shared 429 pause


def test_the_shared_pause_is_keyed_by_token_endpoint_and_client_id(clock) -> None:
    """A 429 for one client id holds no account of another client id, nor another endpoint path, of the same host."""
    sleeper = SleepingClock()
    with AuthServer(token_lifetime=60, clients={DEMO_CLIENT_ID: DEMO_CLIENT_SECRET, "other": "other-secret"}) as auth:
        paced = PacedTokenClient(make_session(), Timeouts(2, 2), clock, monotonic=sleeper, sleep=sleeper.sleep)
        try:
            mine = account("one", auth.token_url, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)
            other = account("two", auth.token_url, "other", "other-secret")
            auth.script(429, json={"error": "slow_down"}, headers={"Retry-After": "30"})
            with pytest.raises(TemporaryError, match="429"):
                paced.refresh(mine, Secret(auth.issue_refresh_token(DEMO_CLIENT_ID)))
            paced.refresh(other, Secret(auth.issue_refresh_token("other")))
            assert [] == sleeper.sleeps
            assert paced.limiter(mine) is not paced.limiter(account("x", auth.token_url + "/v2", DEMO_CLIENT_ID, DEMO_CLIENT_SECRET))
            assert paced.limiter(mine) is paced.limiter(account("y", auth.token_url, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET))
        finally:
            paced.session.close()


def account(name: str, token_url: str, client_id: str, secret: str) -> Account:
    return Account(name=name, token_url=token_url, client_id=client_id, client_secret=Secret(secret))


def test_another_accounts_pause_never_makes_this_token_expire(server, clock, dirs, write, make_daemon) -> None:
    """After one account's 429 with Retry-After 60, another account whose token has 10 s left goes after 5 s, not 60 s."""
    sleeper = SleepingClock()
    seeds = {n: server.issue_refresh_token(DEMO_CLIENT_ID) for n in ("a", "b", "c")}
    path = write(*(account_yaml(n, server, seeds[n]) for n in seeds))
    daemon = make_daemon(path)
    daemon.client.session.close()
    daemon.client = daemon.refresher.client = PacedTokenClient(
        make_session(), Timeouts(2, 2), clock, monotonic=sleeper, sleep=sleeper.sleep
    )
    server.script(429, json={"error": "too_many_requests"}, headers={"Retry-After": "60"})
    daemon.run_account("a")
    assert "retrying" == daemon.slots["a"].last_outcome

    daemon.slots["b"].expires_at = clock() + 10  # the token its readers hold now
    daemon.run_account("b")
    assert [5.0] == sleeper.sleeps
    assert "ok" == daemon.slots["b"].last_outcome
    daemon.run_account("c")  # no token yet: nothing to protect, so the pause holds in full
    assert sleeper.sleeps == pytest.approx([5.0, 55.0])


# ---------------------------------------------------------------- a new login is picked up at once


def test_rescan_picks_up_a_new_login_that_replaced_a_valid_grant(server, clock, dirs, write, make_daemon):
    """A login stored over a still-valid grant is run at once on 'rescan': its token is written out without a token request."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    daemon = make_daemon(write(account_yaml("a", server, seed)))
    daemon.run_account("a")
    planned = daemon.slots["a"].planned_at
    requests = server.token_requests
    new = Store(dirs["state"]).load("a")
    access = AccessToken(Secret("logged-in-token"), "Bearer", clock() + HOUR)
    Store(dirs["state"]).save(
        "a", AccountState(refresh_token=Secret(server.issue_refresh_token()), seed=new.seed, access=access, last_refresh=clock())
    )

    daemon.events.put(("rescan", None))
    daemon.events.put(("stop", "test"))
    daemon._loop()

    assert (clock(), True) == (daemon.slots["a"].planned_at, planned > clock())
    daemon.run_account("a")
    assert "logged-in-token\n" == token_in(dirs, "a")
    assert requests == server.token_requests


def test_rescan_leaves_unchanged_accounts_alone(server, clock, write, make_daemon):
    """A rescan with no state file changed moves no plan."""
    daemon = make_daemon(write(account_yaml("a", server, server.issue_refresh_token(DEMO_CLIENT_ID))))
    daemon.run_account("a")
    job = daemon.slots["a"].job
    daemon.rescan()
    assert job == daemon.slots["a"].job


# ---------------------------------------------------------------- rotated tokens not saved


@pytest.mark.parametrize(
    "error",
    [RotatedTokenNotSaved("refresh token rotated but could not be saved: /s/a.json: No space left on device"), StateWriteError("/s: full")],
)
def test_a_state_that_could_not_be_saved_is_retried_quickly(error) -> None:
    """RotatedTokenNotSaved and StateWriteError retry after 1-2 s, then 2-4 s, like a network error, not after 15-30 s."""
    now = 1_800_000_000.0
    first = plan_next(error, attempts=0, margin_config=None, now=now, rng=seeded(0), backoff_cap=300)
    second = plan_next(error, attempts=1, margin_config=None, now=now, rng=seeded(0), backoff_cap=300)
    assert (1.0 <= first.at - now <= 2.0, 2.0 <= second.at - now <= 4.0, first.attempts) == (True, True, 1)
