"""Hardening of the daemon (issue 8): one account never poisons the others, a floor between refreshes,
a shared 429 pause keyed by endpoint and client that never lets another token expire, logins picked up
at once, and unsaved rotated tokens retried quickly. In-process, on the FakeClock of tests/test_daemon.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import test_daemon
from freshtoken import config as config_module
from freshtoken.config import Account
from freshtoken.daemon import Daemon
from freshtoken.errors import RotatedTokenNotSaved, StateWriteError, TemporaryError
from freshtoken.model import AccessToken, AccountState, Secret, TokenResponse
from freshtoken.oauth import BeforeSend, Timeouts, make_session
from freshtoken.pacing import PacedTokenClient
from freshtoken.store import Store
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer
from freshtoken.timing import PERMANENT_BASE, plan_next
from test_daemon import account_yaml, jobs_by_id, run_until, seeded, store_token, token_in, view
from test_pacing import SleepingClock

# The fixtures of tests/test_daemon.py: a FakeClock-driven Daemon against a loopback AuthServer.
server, mono, write, make_daemon, own_signals = (
    test_daemon.server,
    test_daemon.mono,
    test_daemon.write,
    test_daemon.make_daemon,
    test_daemon.own_signals,
)

HOUR = 3600.0


def unusable_state(state_dir: Path, name: str, seed: str, *, expires_at: float) -> None:
    """A state as an older freshtoken stored it from a server answering expires_in in milliseconds."""
    store_token(state_dir, name, seed, "stored-token", expires_at=expires_at, last_refresh=1_700_000_000.0)


def error_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("freshtoken")]


# ---------------------------------------------------------------- one account never poisons the daemon


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
    """A state file json cannot parse without RecursionError neither stops the start-up pass nor beat(); the other account runs."""
    caplog.set_level(logging.INFO, logger="freshtoken")
    seeds = {n: server.issue_refresh_token(DEMO_CLIENT_ID) for n in ("bad", "good")}
    path = write(account_yaml("bad", server, seeds["bad"]), account_yaml("good", server, seeds["good"]))
    daemon = make_daemon(path)
    server.revoke_grant(seeds["bad"])
    daemon.startup()
    daemon.step()
    assert view(daemon, "bad").needs_login
    (dirs["state"] / "bad.json").write_text("[" * 100_000)

    daemon.beat()  # the parked account's state changed: it is re-read
    restarted = make_daemon(path)
    restarted.startup()
    restarted.step()

    assert server.is_valid_access_token(token_in(dirs, "good").strip())
    said = [r.getMessage() for r in error_lines(caplog)]
    assert said and all("bad" in line for line in said), said  # reported, naming the account (or its file)
    assert all(r.exc_info is None for r in error_lines(caplog))


class BuggyClient(PacedTokenClient):
    """A token client with a bug: every refresh raises an exception no code path expects."""

    def refresh(self, account: Account, refresh_token: Secret, *, before_send: BeforeSend | None = None) -> TokenResponse:
        raise OverflowError("timestamp out of range for platform time_t")


def test_a_scheduled_run_that_hits_an_unexpected_error_logs_one_line_and_retries(server, clock, dirs, write, make_daemon, caplog):
    """A run that meets a bug (here OverflowError) logs '<name>: internal error ...' without a traceback and plans a slow retry.

    (Stored data the code cannot use, what used to raise here, is now set aside by the store: see test_hard_store_files.)
    """
    caplog.set_level(logging.INFO, logger="freshtoken")
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    daemon = make_daemon(write(account_yaml("bad", server, seed)), client=BuggyClient(make_session(), Timeouts(2, 2), clock))
    daemon.startup()  # nothing stored yet: `bad` is planned for now

    daemon.step()

    bad = view(daemon, "bad")
    assert bad.planned_at is not None and PERMANENT_BASE / 2 <= bad.planned_at - clock() <= PERMANENT_BASE
    [line] = error_lines(caplog)
    assert line.getMessage().startswith("bad: internal error refreshing: OverflowError; retry 1 in ")
    assert line.exc_info is None
    assert "retrying" == bad.status


def test_reload_adding_an_account_with_unusable_state_keeps_the_daemon_going(server, clock, dirs, write, make_daemon):
    """An account added by a reload whose stored expiry is absurd does not make the reload fail; it is refreshed at once."""
    seeds = {n: server.issue_refresh_token(DEMO_CLIENT_ID) for n in ("bad", "good")}
    path = write(account_yaml("good", server, seeds["good"]))
    daemon = make_daemon(path)
    daemon.startup()
    daemon.step()
    unusable_state(dirs["state"], "bad", seeds["bad"], expires_at=1e300)
    write(account_yaml("good", server, seeds["good"]), account_yaml("bad", server, seeds["bad"]))

    daemon.request_reload()
    daemon.step()  # the reload starts `bad` (its damaged state is set aside), then runs it

    assert server.is_valid_access_token(token_in(dirs, "bad").strip())
    assert "ok" == view(daemon, "bad").status


# ---------------------------------------------------------------- a floor between two refreshes


@pytest.mark.parametrize(("top", "floor"), [("", 10.0), ("min_refresh_interval: 1s\n", 1.0)])
def test_one_second_tokens_are_refreshed_no_more_often_than_the_floor(top, floor, clock, dirs, write, make_daemon):
    """A server answering expires_in 1 gets one request per min_refresh_interval (default 10 s), not one per half second."""
    with AuthServer(token_lifetime=1, clock=clock) as fast:
        daemon = make_daemon(write(account_yaml("a", fast, fast.issue_refresh_token(DEMO_CLIENT_ID)), top=top))
        started = clock()
        daemon.startup()
        daemon.step()
        while (at := view(daemon, "a").planned_at) is not None and at < started + 30:
            assert at >= clock() + floor
            clock.advance(at - clock())
            daemon.step()
        assert fast.refreshes_ok == 30 / floor


def test_a_restart_plans_a_short_token_at_once_without_the_floor(server, clock, dirs, write, make_daemon):
    """A restart that finds a token with 1 s left, refreshed 3 s ago, plans its refresh now, not after the 10 s floor."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    store_token(dirs["state"], "a", seed, "stored", expires_at=clock() + 1, last_refresh=clock() - 3)
    daemon = make_daemon(write(account_yaml("a", server, seed)))
    daemon.startup()
    assert clock() == view(daemon, "a").planned_at


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
    # The token b's readers hold now: 10 s left, due for its refresh at once.
    store_token(dirs["state"], "b", seeds["b"], "stored-b", expires_at=clock() + 10, last_refresh=clock() - HOUR + 10)
    path = write(*(account_yaml(n, server, seeds[n]) for n in seeds))
    paced = PacedTokenClient(make_session(), Timeouts(2, 2), clock, monotonic=sleeper, sleep=sleeper.sleep)
    daemon = make_daemon(path, client=paced)
    server.script(429, json={"error": "too_many_requests"}, headers={"Retry-After": "60"})
    daemon.startup()

    daemon.step()  # a, then b, then c: all due now

    assert ("retrying", "ok", "ok") == tuple(view(daemon, n).status for n in ("a", "b", "c"))
    # b waited 5 s (half of what its token had left); c had no token to protect, so the pause held in full.
    assert sleeper.sleeps == pytest.approx([5.0, 55.0])


# ---------------------------------------------------------------- a new login is picked up at once


def test_rescan_picks_up_a_new_login_that_replaced_a_valid_grant(server, clock, dirs, write, make_daemon):
    """A login stored over a still-valid grant is run at once on 'rescan': its token is written out without a token request."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    daemon = make_daemon(write(account_yaml("a", server, seed)))
    daemon.startup()
    daemon.step()
    requests = server.token_requests
    access = AccessToken(Secret("logged-in-token"), "Bearer", clock() + HOUR)
    with Store(dirs["state"]).transaction("a") as tx:
        tx.save(AccountState(refresh_token=Secret(server.issue_refresh_token()), seed=tx.state.seed, access=access, last_refresh=clock()))

    daemon.request_rescan()
    daemon.step()  # the rescan plans `a` for now, and runs it

    assert "logged-in-token\n" == token_in(dirs, "a")
    assert requests == server.token_requests
    assert {"current": 1, "success": 1} == view(daemon, "a").runs


def test_rescan_leaves_unchanged_accounts_alone(server, clock, write, make_daemon):
    """A rescan with no state file changed moves no plan."""
    daemon = make_daemon(write(account_yaml("a", server, server.issue_refresh_token(DEMO_CLIENT_ID))))
    daemon.startup()
    daemon.step()
    jobs, planned = set(jobs_by_id(daemon)), view(daemon, "a").planned_at
    daemon.request_rescan()
    daemon.step()
    assert (jobs, planned) == (set(jobs_by_id(daemon)), view(daemon, "a").planned_at)


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
