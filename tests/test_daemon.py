"""The daemon in-process: the pure plan_next policy, and Daemon driven by a FakeClock with its scheduler paused.

Refreshes go over real loopback HTTP to an AuthServer that shares the test's clock. Tests drive the
daemon through its public surface: startup(), the request_* methods, step() (one turn of its loop:
requests handled, due runs run on the test's thread), beat() (the heartbeat), and read snapshot().
Two tests start the scheduler for real: a run in flight during a reload, and the wall-clock jump.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from fakes import FakeClock
from freshtoken import config as config_module
from freshtoken.daemon import AccountView, Daemon
from freshtoken.errors import InvalidGrant, RefreshFailed, TemporaryError
from freshtoken.model import AccessToken, AccountState, Secret
from freshtoken.outputs import OutputError
from freshtoken.pacing import PacedTokenClient
from freshtoken.refresh import Refresher
from freshtoken.store import Store
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer
from freshtoken.timing import MAX_PLAN, PERMANENT_BASE, bounded, plan_next

HOUR = 3600.0
DAY = 86400.0


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 (reproducible jitter, not cryptography)


# ---------------------------------------------------------------- plan_next (pure)


def _state(now: float, lifetime: float) -> AccountState:
    access = AccessToken(Secret("t"), "Bearer", now + lifetime)
    return AccountState(refresh_token=Secret("r"), access=access, last_refresh=now)


@pytest.mark.parametrize(("configured", "margin"), [(None, 360.0), (300, 300.0), (5000, 1800.0)])
def test_plan_after_success_refreshes_margin_before_expiry_with_jitter_only_earlier(configured, margin):
    """After a 1 h token, the next refresh is `margin` before expiry, moved at most 10 % of it earlier, never later."""
    now = 1_800_000_000.0
    ats = []
    for seed in range(300):
        plan = plan_next(_state(now, HOUR), attempts=4, margin_config=configured, now=now, rng=seeded(seed), backoff_cap=300)
        assert (0, "scheduled") == (plan.attempts, plan.reason)
        ats.append(plan.at - (now + HOUR))
    assert max(ats) <= -margin
    assert min(ats) >= -1.1 * margin
    assert max(ats) - min(ats) > 0.08 * margin  # the jitter is real, and spreads over most of its 10 %


def test_plan_after_temporary_errors_backs_off_exponentially_up_to_the_cap():
    """Retries 1, 2, 3, ... wait 1-2 s, 2-4 s, 4-8 s, ... and never more than backoff_max (300 s)."""
    now, rng, attempts = 1_800_000_000.0, seeded(0), 0
    for n in range(1, 13):
        plan = plan_next(TemporaryError("HTTP 503"), attempts=attempts, margin_config=None, now=now, rng=rng, backoff_cap=300)
        ceiling = min(300.0, 2.0**n)
        assert (n, "retry") == (plan.attempts, plan.reason)
        assert ceiling / 2 <= plan.at - now <= ceiling
        attempts = plan.attempts
    assert 150 <= plan.at - now <= 300


@pytest.mark.parametrize(
    ("attempts", "retry_after", "low", "high"),
    [(0, 2.0, 2.0, 2.0), (0, 120.0, 120.0, 120.0), (8, 120.0, 150.0, 300.0), (3, 1000.0, 1000.0, 1000.0)],
)
def test_plan_never_retries_before_retry_after(attempts, retry_after, low, high):
    """Retry-After is a floor: 429 with Retry-After 2 waits exactly 2 s on a first retry, 1000 s even above the cap."""
    now = 1_800_000_000.0
    for seed in range(50):
        error = TemporaryError("HTTP 429", retry_after=retry_after)
        plan = plan_next(error, attempts=attempts, margin_config=None, now=now, rng=seeded(seed), backoff_cap=300)
        assert low <= plan.at - now <= high
        assert plan.at - now >= retry_after


def test_plan_parks_an_account_after_invalid_grant():
    """invalid_grant plans no retry at all (at None) and leaves the attempt count as it was."""
    plan = plan_next(InvalidGrant("HTTP 400 invalid_grant"), attempts=2, margin_config=None, now=0.0, rng=seeded(0), backoff_cap=300)
    assert (None, 2, "needs login") == (plan.at, plan.attempts, plan.reason)


@pytest.mark.parametrize("error", [RefreshFailed("HTTP 401 invalid_client"), OutputError("a: could not write x")])
def test_plan_retries_permanent_errors_slowly(error):
    """invalid_client or a broken output retries after 15-30 s, then 30-60 s, ... up to the cap, not after 1-2 s."""
    now, attempts, delays = 1_800_000_000.0, 0, []
    for n in range(1, 7):
        plan = plan_next(error, attempts=attempts, margin_config=None, now=now, rng=seeded(n), backoff_cap=300)
        ceiling = min(300.0, PERMANENT_BASE * 2 ** (n - 1))
        assert ceiling / 2 <= plan.at - now <= ceiling
        attempts = plan.attempts
        delays.append(plan.at - now)
    assert 15.0 <= delays[0] <= 30.0
    assert 150.0 <= delays[-1] <= 300.0
    small_cap = plan_next(error, attempts=0, margin_config=None, now=now, rng=seeded(0), backoff_cap=10)
    assert 5.0 <= small_cap.at - now <= 10.0


# ---------------------------------------------------------------- fixtures for the Daemon


@pytest.fixture
def server(clock: FakeClock) -> Iterator[AuthServer]:
    """The loopback server on the test's FakeClock: 1 h tokens, rotating refresh tokens."""
    with AuthServer(token_lifetime=3600, clock=clock) as s:
        yield s


@pytest.fixture
def mono() -> FakeClock:
    return FakeClock(start=1000.0)


def account_yaml(name: str, server: AuthServer, seed: str | None, **extra: object) -> str:
    lines = [
        f"  {name}:",
        f"    token_url: {server.token_url}",
        f"    client_id: {DEMO_CLIENT_ID}",
        f"    client_secret: {DEMO_CLIENT_SECRET}",
    ]
    if seed:
        lines.append(f"    refresh_token: {seed}")
    lines += [f"    {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def write(write_config: Callable[..., Path]) -> Callable[..., Path]:
    """Write a config with the given account blocks (state and token dirs from `dirs`)."""

    def write_accounts(*accounts: str, top: str = "", token_dir: str = "{tokens}") -> Path:  # noqa: S107 (a path)
        return write_config(f"state_dir: {{state}}\ntoken_dir: {token_dir}\n{top}accounts:\n" + "".join(accounts))

    return write_accounts


@pytest.fixture
def make_daemon(clock: FakeClock, mono: FakeClock) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(
        path: Path,
        *,
        environ: dict[str, str] | None = None,
        monotonic: Callable[[], float] | None = None,
        heartbeat: float = 30.0,
        running: bool = False,
        client: PacedTokenClient | None = None,
    ) -> Daemon:
        """A Daemon on the test's clocks; its scheduler started paused (jobs are kept, none runs) unless `running`."""
        env = environ or {}
        daemon = Daemon(
            config_module.load(path, env),
            config_loader=lambda: config_module.load(path, env),
            clock=clock,
            monotonic=monotonic or mono,
            rng=seeded(0),
            environ=env,
            heartbeat=heartbeat,
            client=client,
        )
        made.append(daemon)
        daemon.scheduler.start(paused=not running)
        return daemon

    yield make
    for daemon in made:
        daemon.close()
        daemon.client.session.close()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Callable[[str], list[str]]:
    """Messages logged by freshtoken that contain a text."""
    caplog.set_level(logging.DEBUG, logger="freshtoken")

    def matching(text: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if text in r.getMessage()]

    return matching


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
        if until(done, timeout):
            met.set()
        daemon.request_stop("test over")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        code = daemon.run()
    finally:
        daemon.request_stop("test over")
        watcher.join(timeout + 5)
    return code, met.is_set()


def until(done: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `done()` every 10 ms until it holds (True) or `timeout` seconds pass (False)."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.01)
    return True


def view(daemon: Daemon, name: str) -> AccountView:
    return daemon.snapshot()[name]


def store_token(state_dir: Path, name: str, seed: str, token: str, *, expires_at: float, last_refresh: float) -> None:
    """A state as an earlier daemon run would have left it."""
    access = AccessToken(Secret(token), "Bearer", expires_at)
    state = AccountState(refresh_token=Secret(seed), seed=Secret(seed).fingerprint(), access=access, last_refresh=last_refresh)
    with Store(state_dir).transaction(name) as tx:
        tx.save(state)


def token_in(dirs: dict[str, Path], name: str) -> str:
    return (dirs["tokens"] / f"{name}.token").read_text()


def jobs_by_id(daemon: Daemon) -> dict[str, object]:
    return {job.id: job for job in daemon.scheduler.get_jobs()}


def job_of(daemon: Daemon, name: str) -> str:
    """The id of the account's one job in the scheduler (ids are `<account>#<n>`)."""
    [job] = [job_id for job_id in jobs_by_id(daemon) if job_id.rpartition("#")[0] == name]
    return job


def run_date(daemon: Daemon, name: str) -> float:
    """The real epoch second the account's job is due at, as APScheduler sees it."""
    job = jobs_by_id(daemon)[job_of(daemon, name)]
    when: datetime = job.trigger.run_date  # type: ignore[attr-defined]
    return when.timestamp()


def advance(clock: FakeClock, mono: FakeClock, seconds: float) -> None:
    """Time passes: both clocks move (moving only the wall clock is a clock jump)."""
    clock.advance(seconds)
    mono.advance(seconds)


# ---------------------------------------------------------------- start-up


def test_start_writes_a_still_valid_stored_token_at_once_without_a_request(server, clock, dirs, write, make_daemon):
    """A stored token with 30 min left is written out at once without an HTTP request; its refresh is planned 360-396 s before expiry."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    now = clock()
    store_token(dirs["state"], "a", seed, "stored-token", expires_at=now + 1800, last_refresh=now - 1800)
    daemon = make_daemon(write(account_yaml("a", server, seed)))

    daemon.startup()

    assert "stored-token\n" == token_in(dirs, "a")
    assert 0 == len(server.requests)
    a = view(daemon, "a")
    assert now + 1800 - 396 <= a.planned_at <= now + 1800 - 360
    assert "ok" == a.status
    assert daemon.ready  # nothing had to run first
    assert 1 == len(jobs_by_id(daemon))
    # APScheduler (real clock) gets the same distance from now as our FakeClock plan.
    assert abs(run_date(daemon, "a") - (time.time() + a.planned_at - now)) < 1.0


def test_start_refreshes_at_once_when_the_stored_token_has_expired(server, clock, dirs, write, make_daemon):
    """An expired stored token is not written; the account is refreshed at once and READY waits for that run."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    now = clock()
    store_token(dirs["state"], "a", seed, "old-token", expires_at=now - 5, last_refresh=now - 3605)
    daemon = make_daemon(write(account_yaml("a", server, seed)))

    daemon.startup()
    assert not (dirs["tokens"] / "a.token").exists()
    assert (now, False) == (view(daemon, "a").planned_at, daemon.ready)

    daemon.step()
    assert 1 == server.refreshes_ok
    token = token_in(dirs, "a").strip()
    assert server.is_valid_access_token(token)
    assert now + HOUR - 396 <= view(daemon, "a").planned_at <= now + HOUR - 360
    assert daemon.ready


def test_jobs_never_misfire_and_there_is_one_per_account(server, clock, dirs, write, make_daemon):
    """Every job is a date job with misfire_grace_time None, coalesce and max_instances 1, one per account, even re-planned."""
    seeds = {n: server.issue_refresh_token(DEMO_CLIENT_ID) for n in ("a", "b", "c")}
    for name in seeds:
        store_token(dirs["state"], name, seeds[name], "stored", expires_at=clock() + 1800, last_refresh=clock() - 1800)
    daemon = make_daemon(write(*(account_yaml(n, server, seeds[n]) for n in seeds)))
    daemon.startup()
    before = set(jobs_by_id(daemon))
    clock.advance(60)  # a wall-clock jump: every job is re-added at its planned time
    daemon.beat()

    jobs = daemon.scheduler.get_jobs()
    assert 3 == len(jobs)
    assert before.isdisjoint(job.id for job in jobs)  # replaced, never a second one beside the first
    assert {"a", "b", "c"} == {job.id.rpartition("#")[0] for job in jobs}
    for job in jobs:
        assert (None, True, 1) == (job.misfire_grace_time, job.coalesce, job.max_instances)
        assert "DateTrigger" == type(job.trigger).__name__


# ---------------------------------------------------------------- invalid_grant and new logins


def test_invalid_grant_parks_the_account_and_says_so_once(server, clock, mono, dirs, write, make_daemon, logs):
    """After invalid_grant the account has no job, its file keeps the last good token, and the login hint is logged once over 20 beats."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    daemon = make_daemon(write(account_yaml("a", server, seed)))
    daemon.startup()
    daemon.step()
    good = token_in(dirs, "a")
    server.revoke_grant(seed)
    advance(clock, mono, HOUR - 300)  # inside the margin

    daemon.step()

    a = view(daemon, "a")
    assert (None, True, "needs-login") == (a.planned_at, a.needs_login, a.status)
    assert [] == daemon.scheduler.get_jobs()
    assert good == token_in(dirs, "a")
    for _ in range(20):
        advance(clock, mono, 30)
        daemon.beat()
        daemon.step()
    [said] = logs("freshtoken login a")
    assert said.startswith("a: refresh token refused (HTTP 400 invalid_grant")
    assert 2 == server.token_requests  # one success, one refusal; no retries
    assert {"success": 1, "invalid_grant": 1} == view(daemon, "a").runs


def test_a_new_login_is_picked_up_by_the_heartbeat(server, clock, mono, dirs, write, make_daemon, logs):
    """A login stored by another process (Refresher.adopt) while the account is parked resumes it on the next beat, without a restart."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    path = write(account_yaml("a", server, seed))
    daemon = make_daemon(path)
    server.revoke_grant(seed)
    daemon.startup()
    daemon.step()
    assert view(daemon, "a").needs_login
    daemon.beat()
    assert view(daemon, "a").planned_at is None  # nothing changed on disk: still parked

    # What `freshtoken login a` does: exchange, then adopt into the state and the token dir.
    config = config_module.load(path, {})
    login = Refresher(config, Store(config.state_dir), daemon.client, clock=clock)
    response = daemon.client.refresh(config.accounts["a"], Secret(server.issue_refresh_token(DEMO_CLIENT_ID)))
    login.adopt(config.accounts["a"], response)
    advance(clock, mono, 30)
    daemon.beat()

    assert (False, clock()) == (view(daemon, "a").needs_login, view(daemon, "a").planned_at)
    assert ["a: new login found; resuming"] == logs("new login found")
    daemon.step()
    assert view(daemon, "a").planned_at is not None and view(daemon, "a").status == "ok"
    assert server.is_valid_access_token(token_in(dirs, "a").strip())


def test_a_new_seed_in_the_config_and_reload_resume_a_parked_account(server, clock, dirs, write, make_daemon):
    """A parked account whose config gets a new refresh_token is refreshed with that token after a reload, without a restart."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    daemon = make_daemon(write(account_yaml("a", server, seed)))
    server.revoke_grant(seed)
    daemon.startup()
    daemon.step()
    assert view(daemon, "a").needs_login

    new_seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    write(account_yaml("a", server, new_seed))
    daemon.request_reload()
    daemon.step()

    assert new_seed == server.requests[-1].form["refresh_token"]
    assert 200 == server.requests[-1].status
    assert server.is_valid_access_token(token_in(dirs, "a").strip())
    assert (False, "ok") == (view(daemon, "a").needs_login, view(daemon, "a").status)


def test_a_parking_run_does_not_drop_a_newer_schedule(server, clock, dirs, write, make_daemon):
    """If a reload plans a new run while an invalid_grant answer is in flight, the account is not parked: the new run happens."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    daemon = make_daemon(write(account_yaml("a", server, seed)), running=True)
    server.script(400, json={"error": "invalid_grant", "error_description": "revoked"}, delay=0.5)
    daemon.startup()  # the scheduler's pool runs `a` at once
    assert server.wait_until(lambda s: s.token_requests == 1, 5)
    new_seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    write(account_yaml("a", server, new_seed))
    daemon.request_reload()  # the user fixed it while the old token was being refused

    assert until(lambda: daemon.step() and view(daemon, "a").status == "ok")

    assert not view(daemon, "a").needs_login
    assert (seed, new_seed) == (server.requests[0].form["refresh_token"], server.requests[1].form["refresh_token"])
    assert server.is_valid_access_token(token_in(dirs, "a").strip())
    assert 1 == len(jobs_by_id(daemon))  # the next refresh, and only that


def test_the_heartbeat_survives_an_unreadable_state(server, clock, dirs, write, make_daemon, logs):
    """A parked account whose state file became unreadable makes beat() log a warning, not raise."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    daemon = make_daemon(write(account_yaml("a", server, seed)))
    server.revoke_grant(seed)
    daemon.startup()
    daemon.step()
    state_file = dirs["state"] / "a.json"
    state_file.unlink()
    state_file.mkdir()  # a directory where the file should be: unreadable even for root

    daemon.beat()

    assert view(daemon, "a").needs_login
    assert 1 == len(logs("cannot read state"))


# ---------------------------------------------------------------- reload


def test_reload_with_a_broken_config_keeps_the_old_one(server, clock, dirs, write, make_daemon, logs):
    """A config that no longer parses leaves the config, the accounts and their jobs exactly as they were."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    path = write(account_yaml("a", server, seed))
    daemon = make_daemon(path)
    daemon.startup()
    daemon.step()
    before = (daemon.config, daemon.snapshot(), set(jobs_by_id(daemon)))
    path.write_text("accounts: [\n")

    daemon.request_reload()
    daemon.step()

    assert before == (daemon.config, daemon.snapshot(), set(jobs_by_id(daemon)))
    [message] = logs("reload failed")
    assert f"reload failed, keeping the old config: {path}" in message
    assert "malformed YAML" in message


def test_reload_adds_removes_and_changes_accounts(server, clock, dirs, write, make_daemon, logs):
    """Reload drops a removed account's job, starts an added one at once and re-runs a changed one now."""
    seeds = {n: server.issue_refresh_token(DEMO_CLIENT_ID) for n in ("a", "b", "c")}
    now = clock()
    for name in ("a", "b"):
        store_token(dirs["state"], name, seeds[name], f"stored-{name}", expires_at=now + 1800, last_refresh=now - 1800)
    daemon = make_daemon(write(account_yaml("a", server, seeds["a"]), account_yaml("b", server, seeds["b"])))
    daemon.startup()
    a_job, b_job = job_of(daemon, "a"), job_of(daemon, "b")

    write(account_yaml("a", server, seeds["a"], refresh_margin="10m"), account_yaml("c", server, seeds["c"]))
    daemon.request_reload()
    daemon.step()  # the reload, then the runs it made due: `a` (changed) and `c` (added)

    assert ["a", "c"] == sorted(daemon.snapshot())
    assert not {a_job, b_job} & set(jobs_by_id(daemon))
    assert {job_of(daemon, "a"), job_of(daemon, "c")} == set(jobs_by_id(daemon))
    assert 600 == daemon.config.margin_for(daemon.config.accounts["a"])
    assert (["b: removed from the config; no longer refreshed"], ["c: added"], ["a: changed; applying"]) == (
        logs("removed"),
        logs("added"),
        logs("changed"),
    )
    # `a` ran with the changed margin: 10 m before expiry, its token still good so no request for it.
    assert now + 1800 - 660 <= view(daemon, "a").planned_at <= now + 1800 - 600
    assert ({"current": 1}, {"success": 1}) == (view(daemon, "a").runs, view(daemon, "c").runs)
    assert (1, 1) == (server.token_requests, server.refreshes_ok)
    assert server.is_valid_access_token(token_in(dirs, "c").strip())


def test_reload_moving_the_token_dir_writes_the_files_there_without_a_request(server, clock, dirs, write, make_daemon, tmp_path):
    """A new token_dir gets the still-valid token on the account's next run; the server is not asked again."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    daemon = make_daemon(write(account_yaml("a", server, seed)))
    daemon.startup()
    daemon.step()
    token = token_in(dirs, "a")

    write(account_yaml("a", server, seed), token_dir=str(tmp_path / "moved"))
    daemon.request_reload()
    daemon.step()

    assert token == (tmp_path / "moved" / "a.token").read_text()
    assert 1 == server.token_requests


def test_reload_applies_new_http_timeouts(server, write, make_daemon):
    """connect_timeout and read_timeout changed in the config reach the HTTP client on reload."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    daemon = make_daemon(write(account_yaml("a", server, seed)))
    assert (10.0, 30.0) == (daemon.client.timeouts.connect, daemon.client.timeouts.read)
    write(account_yaml("a", server, seed), top="connect_timeout: 2\nread_timeout: 1.5\n")
    daemon.request_reload()
    daemon.step()
    assert (2.0, 1.5) == (daemon.client.timeouts.connect, daemon.client.timeouts.read)


# ---------------------------------------------------------------- READY, requests


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.setblocking(False)
        yield sock, {"NOTIFY_SOCKET": address}


def _datagrams(sock: socket.socket) -> list[str]:
    received = []
    while True:
        try:
            received.append(sock.recv(4096).decode())
        except BlockingIOError:
            return received


def test_ready_waits_for_the_first_run_of_every_account_even_a_failing_one(server, clock, dirs, write, make_daemon, notify_socket):
    """READY=1 is not sent while an account's first run is pending; it is sent once that run has ended, even in a 500."""
    sock, environ = notify_socket
    seeds = {n: server.issue_refresh_token(DEMO_CLIENT_ID) for n in ("a", "b")}
    store_token(dirs["state"], "a", seeds["a"], "stored-a", expires_at=clock() + 1800, last_refresh=clock() - 1800)
    daemon = make_daemon(write(account_yaml("a", server, seeds["a"]), account_yaml("b", server, seeds["b"])), environ=environ)
    daemon.startup()
    assert [] == _datagrams(sock)

    server.script(500, json={"error": "server_error"})
    daemon.step()

    [ready] = _datagrams(sock)
    assert ready.startswith("READY=1\nSTATUS=2 account(s): 1 ok, 1 retrying; next refresh in ")
    assert "stored-a\n" == token_in(dirs, "a")


def test_ready_is_not_held_by_an_account_a_reload_removed(server, clock, dirs, write, make_daemon, notify_socket):
    """An account removed by a reload before its first run finished no longer holds back READY=1."""
    sock, environ = notify_socket
    seeds = {n: server.issue_refresh_token(DEMO_CLIENT_ID) for n in ("a", "b")}
    store_token(dirs["state"], "a", seeds["a"], "stored-a", expires_at=clock() + 1800, last_refresh=clock() - 1800)
    daemon = make_daemon(write(account_yaml("a", server, seeds["a"]), account_yaml("b", server, seeds["b"])), environ=environ)
    daemon.startup()
    write(account_yaml("a", server, seeds["a"]))

    daemon.request_reload()
    daemon.step()

    sent = _datagrams(sock)
    assert sent[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert not sent[1].startswith("READY=1")  # the reload's own status: READY must not come early
    assert sent[2].startswith("READY=1\nSTATUS=1 account(s): 1 ok")
    assert 3 == len(sent)
    assert 0 == server.token_requests  # `b`'s run, due when it was removed, never happened


def test_refresh_all_forces_every_account_now(server, clock, dirs, write, make_daemon):
    """request_refresh_all (SIGUSR1) runs every account now, a parked one included, and forces the refresh of a valid token."""
    seeds = {n: server.issue_refresh_token(DEMO_CLIENT_ID) for n in ("a", "b")}
    daemon = make_daemon(write(account_yaml("a", server, seeds["a"]), account_yaml("b", server, seeds["b"])))
    server.revoke_grant(seeds["b"])
    daemon.startup()
    daemon.step()
    assert (1, True) == (server.refreshes_ok, view(daemon, "b").needs_login)
    clock.advance(60)
    token = token_in(dirs, "a")

    daemon.request_refresh_all()
    daemon.step()

    assert token != token_in(dirs, "a")  # refreshed although the token had 59 min left
    assert 2 == server.refreshes_ok
    assert 2 == view(daemon, "b").runs["invalid_grant"]  # the parked account got one more try


# ---------------------------------------------------------------- clock jumps


def test_backward_clock_jump_keeps_the_refresh_at_the_same_real_moment_and_forces_it(server, clock, mono, dirs, write, make_daemon):
    """After the wall clock goes back 1 h, the plan moves back 1 h (the same real moment) and the run refreshes though expiry looks far."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    now = clock()
    store_token(dirs["state"], "a", seed, "stored-token", expires_at=now + 1800, last_refresh=now - 1800)
    daemon = make_daemon(write(account_yaml("a", server, seed)))
    daemon.startup()
    planned, due = view(daemon, "a").planned_at, run_date(daemon, "a")

    clock.advance(-HOUR)
    daemon.beat()

    assert planned - HOUR == view(daemon, "a").planned_at
    assert abs(run_date(daemon, "a") - due) < 0.5
    advance(clock, mono, planned - HOUR - clock())
    daemon.step()  # by the stepped-back clock the stored token has 1 h 30 min left: only a forced run refreshes it
    assert 1 == server.refreshes_ok
    assert "stored-token\n" != token_in(dirs, "a")


def test_forward_clock_jump_makes_the_passed_refresh_due_now(server, clock, dirs, write, make_daemon):
    """After the wall clock jumps past a planned refresh, its job is due at once for the scheduler."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    now = clock()
    store_token(dirs["state"], "a", seed, "stored-token", expires_at=now + 1800, last_refresh=now - 1800)
    daemon = make_daemon(write(account_yaml("a", server, seed)))
    daemon.startup()
    planned = view(daemon, "a").planned_at

    clock.advance(planned - now + 120)
    daemon.beat()

    assert planned == view(daemon, "a").planned_at
    assert run_date(daemon, "a") <= time.time() - 119


def test_small_drift_is_not_a_jump(server, clock, write, make_daemon):
    """A drift under 10 s between wall and monotonic clocks changes no schedule."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    daemon = make_daemon(write(account_yaml("a", server, seed)))
    daemon.startup()
    daemon.step()
    job = job_of(daemon, "a")
    clock.advance(9.5)
    daemon.beat()
    clock.advance(-9.5)
    daemon.beat()
    assert job == job_of(daemon, "a")


@pytest.mark.slow
def test_forward_wall_clock_jump_runs_the_due_refresh_within_one_heartbeat(server, clock, write, own_signals):
    """With a real scheduler and a 0.2 s heartbeat, a 55 min wall-clock jump gets the now-due refresh sent within one heartbeat."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    path = write(account_yaml("a", server, seed))
    daemon = Daemon(config_module.load(path, {}), clock=clock, rng=seeded(0), environ={}, heartbeat=0.2)
    seen: dict[str, object] = {}

    def jump() -> bool:
        seen["first"] = server.wait_until(lambda s: s.refreshes_ok == 1, 5)
        seen["quiet"] = not server.wait_until(lambda s: s.refreshes_ok > 1, 0.6)  # three heartbeats: nothing is due
        clock.advance(55 * 60)  # the token (1 h) now has 5 min left, inside its 6 min margin
        jumped = time.monotonic()
        seen["second"] = server.wait_until(lambda s: s.refreshes_ok == 2, 5)
        seen["took"] = time.monotonic() - jumped
        return True

    try:
        assert (0, True) == run_until(daemon, jump, timeout=15)
    finally:
        daemon.client.session.close()
    assert (True, True, True) == (seen["first"], seen["quiet"], seen["second"])
    assert seen["took"] <= 0.2 + 0.5  # type: ignore[operator]  # one heartbeat, plus the refresh itself on a busy machine


# ---------------------------------------------------------------- refresh-token expiry warnings


def test_refresh_token_expiry_is_warned_of_once_a_day_from_14_days_before(server, clock, mono, dirs, write, make_daemon, logs):
    """A refresh token with 20 days left warns nothing; from 14 days left, one warning a day, not one a beat."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    daemon = make_daemon(write(account_yaml("a", server, seed, refresh_token_lifetime="20d")))
    daemon.startup()
    daemon.step()
    assert abs(view(daemon, "a").refresh_token_expires_at - (clock() + 20 * DAY)) < 1

    counts = []
    for _ in range(10 * 48):  # ten days of beats every 30 min
        advance(clock, mono, 1800)
        daemon.beat()
        counts.append(len(logs("the refresh token expires in")))
    assert 0 == counts[6 * 48 - 2]  # 6 days in: 14 days + 1 h left
    assert 1 == counts[6 * 48]  # 14 days left: the first warning
    assert 1 == counts[7 * 48 - 1]  # ... and no second one that day
    assert [1, 2, 3, 4] == counts[6 * 48 :: 48]
    said = logs("the refresh token expires in")
    assert "a: the refresh token expires in 13d 23h; run `freshtoken login a` before then" == said[0]
    assert said[3].startswith("a: the refresh token expires in 10d 23h;")


# ---------------------------------------------------------------- hooks


def test_a_slow_hook_never_delays_the_run_or_other_accounts(server, clock, dirs, write, make_daemon, tmp_path):
    """A hook that waits until the test lets it go runs beside the daemon: both accounts' runs return meanwhile, then the hook completes."""
    seeds = {n: server.issue_refresh_token(DEMO_CLIENT_ID) for n in ("a", "b")}
    go = tmp_path / "go"
    hook = f'["/bin/sh", "-c", "while [ ! -e {go} ]; do sleep 0.01; done; echo $FRESHTOKEN_ACCOUNT > {tmp_path}/hook.out"]'
    daemon = make_daemon(write(account_yaml("a", server, seeds["a"], on_refresh=hook), account_yaml("b", server, seeds["b"])))
    daemon.startup()

    daemon.step()  # runs `a`, then `b`; a daemon waiting for the hook would stay here until hook_timeout killed it

    hooks = [t for t in threading.enumerate() if t.name == "hook-a"]
    assert hooks and all(t.is_alive() for t in hooks)  # the hook still waits for `go` ...
    assert not (tmp_path / "hook.out").exists()
    assert 2 == server.refreshes_ok  # ... while both runs are done
    assert os.path.exists(dirs["tokens"] / "b.token")
    go.touch()
    for thread in hooks:
        thread.join(10)
    assert "a\n" == (tmp_path / "hook.out").read_text()


# ---------------------------------------------------------------- single flight and absurd plans


def test_an_account_never_runs_twice_at_once_even_when_re_planned_while_running(server, clock, write, make_daemon):
    """Three re-plans while a slow run is in flight (SIGUSR1 twice, a reload) start no second run beside it; one follows it."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    path = write(account_yaml("a", server, seed))
    daemon = make_daemon(path, running=True)
    server.script(503, json={"error": "temporarily_unavailable"}, delay=0.5)
    daemon.startup()
    assert server.wait_until(lambda s: s.token_requests == 1, 5)
    daemon.request_refresh_all()
    daemon.request_refresh_all()
    write(account_yaml("a", server, seed, refresh_margin="10m"))
    daemon.request_reload()
    daemon.step()
    assert 1 == server.token_requests  # still only the one in flight

    assert until(lambda: daemon.step() and view(daemon, "a").status == "ok")
    assert (2, 1) == (server.token_requests, server.refreshes_ok)  # one run after it, forced, not three
    assert 1 == len(jobs_by_id(daemon))


def test_an_absurd_plan_is_bounded() -> None:
    """A plan from an absurd expiry lies at most MAX_PLAN (366 d) ahead; a non-number (inf, NaN) means now."""
    now = 1_800_000_000.0
    assert (now + MAX_PLAN, now, now, now + 5) == tuple(bounded(at, now=now) for at in (1e300, float("inf"), float("nan"), now + 5))


def test_a_token_valid_for_ten_years_is_planned_a_year_ahead_at_most(server, clock, dirs, write, make_daemon):
    """A stored token 10 years from expiry gets its refresh planned MAX_PLAN ahead, which the scheduler takes; summary() reads it."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    store_token(dirs["state"], "a", seed, "stored", expires_at=clock() + 3650 * DAY, last_refresh=clock() - 60)
    daemon = make_daemon(write(account_yaml("a", server, seed)))
    daemon.startup()
    assert clock() + MAX_PLAN == view(daemon, "a").planned_at
    assert abs(run_date(daemon, "a") - (time.time() + MAX_PLAN)) < 5
    assert daemon.summary().startswith("1 account(s): 1 ok; next refresh in 366d")


@pytest.mark.parametrize("left", [4.0, 20.0, 120.0])
def test_retry_never_waits_past_half_of_what_the_current_token_has_left(left: float) -> None:
    """After a temporary failure the next try comes within half the current token's remaining life, so more tries fit."""
    now = 1_000.0
    for attempts in range(8):
        plan = plan_next(
            TemporaryError("HTTP 503"),
            attempts=attempts,
            margin_config=None,
            now=now,
            rng=seeded(attempts),
            backoff_cap=300,
            token_expires_at=now + left,
        )
        assert plan.at is not None
        assert plan.at - now <= max(1.0, left / 2)


def test_retry_after_still_wins_over_the_token_based_cap() -> None:
    """A server's Retry-After is a floor even when the current token is about to expire."""
    plan = plan_next(
        TemporaryError("HTTP 429", retry_after=7),
        attempts=3,
        margin_config=None,
        now=0.0,
        rng=seeded(0),
        backoff_cap=300,
        token_expires_at=4.0,
    )
    assert plan.at == 7.0
