"""Refresher + Store: one refresh as one transaction, against the loopback AuthServer over real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fakes import FakeClock
from freshtoken import config as config_module
from freshtoken.config import Config
from freshtoken.errors import InvalidGrant, RefreshFailed, TemporaryError
from freshtoken.model import AccessToken, Secret, TokenResponse
from freshtoken.oauth import Timeouts, TokenClient, make_session
from freshtoken.outputs import OutputError
from freshtoken.refresh import Refresher, RefreshPolicy, apply_seed, merge
from freshtoken.store import Store
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer
from freshtoken.timing import refresh_margin, skip_threshold

ACCOUNT = """\
state_dir: {state}
token_dir: {tokens}
{top}
accounts:
  demo:
    token_url: {token_url}
    client_id: {client_id}
    client_secret: {secret}
{account}
"""

MakeConfig = Callable[..., Path]


@pytest.fixture
def make_config(write_config: Callable[..., Path], auth_server: AuthServer) -> MakeConfig:
    """Write a one-account config for `auth_server`; `account` adds indented lines to the account, `top` top-level lines."""

    def make(account: str = "", top: str = "", name: str = "freshtoken.yaml") -> Path:
        return write_config(
            ACCOUNT,
            name=name,
            top=top,
            account=account,
            token_url=auth_server.token_url,
            client_id=DEMO_CLIENT_ID,
            secret=DEMO_CLIENT_SECRET,
        )

    return make


@pytest.fixture
def client(clock: FakeClock) -> Iterator[TokenClient]:
    session = make_session()
    yield TokenClient(session, Timeouts(2.0, 2.0), clock=clock)
    session.close()


@pytest.fixture
def refresher_for(client: TokenClient, clock: FakeClock) -> Callable[[Path], Refresher]:
    """A Refresher over the config at a path (a fresh Store each time, as a new process would have)."""

    def make(path: Path) -> Refresher:
        config = config_module.load(path, os.environ)
        return Refresher(config, Store(config.state_dir), client, clock=clock)

    return make


def seed_line(seed: str) -> str:
    return f"    refresh_token: {seed}"


def files(config: Config) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(config.token_dir.iterdir())}


# ------------------------------------------------------------------ the transaction


def test_refresh_writes_state_and_token_files(
    auth_server: AuthServer, make_config: MakeConfig, refresher_for: Callable[[Path], Refresher], clock: FakeClock
) -> None:
    """A refresh stores the rotated refresh token and the access token, and writes .token and .json."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID, scope="demo")
    refresher = refresher_for(make_config(seed_line(seed)))
    result = refresher.refresh(refresher.config.accounts["demo"])
    state = refresher.store.load("demo")
    assert (result.refreshed, result.rotated) == (True, True)
    assert state.refresh_token is not None and state.refresh_token.reveal() == auth_server.current_refresh_token(seed)
    assert state.access is not None and state.access.expires_at == clock.now + 3600
    assert state.last_refresh == clock.now
    token = state.access.access_token.reveal()
    assert auth_server.is_valid_access_token(token)
    tokens = refresher.config.token_dir
    assert (tokens / "demo.token").read_text() == token + "\n"
    document = json.loads((tokens / "demo.json").read_text())
    assert document["access_token"] == token
    assert document["expires_at"] == int(clock.now + 3600)
    assert document["scope"] == "demo"


def test_rotated_refresh_token_is_saved_before_outputs(
    tmp_path: Path, auth_server: AuthServer, make_config: MakeConfig, refresher_for: Callable[[Path], Refresher]
) -> None:
    """When an output cannot be written the refresh fails with OutputError, yet the rotated refresh token is kept."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")  # a file where a directory should be: fails even as root
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    path = make_config(seed_line(seed) + f"\n    outputs:\n      - path: {blocker}/token\n")
    refresher = refresher_for(path)
    with pytest.raises(OutputError) as caught:
        refresher.refresh(refresher.config.accounts["demo"])
    assert str(blocker / "token") in str(caught.value)
    state = Store(refresher.config.state_dir).load("demo")
    assert state.refresh_token is not None
    assert state.refresh_token.reveal() == auth_server.current_refresh_token(seed)
    assert state.last_error is not None and "could not write" in state.last_error
    # The next refresh (another process) spends the rotated token, not the consumed seed.
    again = refresher_for(path)
    with pytest.raises(OutputError):
        again.refresh(again.config.accounts["demo"])
    assert (auth_server.refreshes_ok, auth_server.reuse_count) == (2, 0)


def test_server_without_rotation_keeps_the_old_refresh_token(
    make_config: MakeConfig, refresher_for: Callable[[Path], Refresher], auth_server: AuthServer
) -> None:
    """An answer without refresh_token keeps the stored one, and the result says it did not rotate."""
    auth_server.rotate_refresh_tokens = False
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    refresher = refresher_for(make_config(seed_line(seed)))
    result = refresher.refresh(refresher.config.accounts["demo"])
    second = refresher.refresh(refresher.config.accounts["demo"])
    assert (result.rotated, second.rotated) == (False, False)
    stored = refresher.store.load("demo").refresh_token
    assert stored is not None and stored.reveal() == seed
    assert auth_server.refreshes_ok == 2


def test_refresh_token_expiry_from_the_answer_is_recorded(
    make_config: MakeConfig, refresher_for: Callable[[Path], Refresher], auth_server: AuthServer, clock: FakeClock
) -> None:
    """refresh_token_expires_in in an answer becomes the state's refresh_token_expires_at."""
    auth_server.refresh_token_expires_in = 30 * 86400
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    refresher = refresher_for(make_config(seed_line(seed)))
    refresher.refresh(refresher.config.accounts["demo"])
    expires_at = refresher.store.load("demo").refresh_token_expires_at
    assert expires_at is not None
    assert clock.now + 30 * 86400 - 5 <= expires_at <= clock.now + 30 * 86400


# ------------------------------------------------------------------ seed precedence


def test_changed_config_seed_wins_over_the_state(
    make_config: MakeConfig, refresher_for: Callable[[Path], Refresher], auth_server: AuthServer
) -> None:
    """A refresh_token in the config that differs from the one the state was seeded from is used next."""
    first = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    refresher = refresher_for(make_config(seed_line(first)))
    refresher.refresh(refresher.config.accounts["demo"])
    second = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    refresher = refresher_for(make_config(seed_line(second)))
    refresher.refresh(refresher.config.accounts["demo"])
    assert auth_server.requests[-1].form["refresh_token"] == second
    stored = refresher.store.load("demo").refresh_token
    assert stored is not None and stored.reveal() == auth_server.current_refresh_token(second)
    assert auth_server.reuse_count == 0


def test_unchanged_config_seed_does_not_override_the_rotated_token(
    make_config: MakeConfig, refresher_for: Callable[[Path], Refresher], auth_server: AuthServer
) -> None:
    """With the same seed still in the config, the state's rotated token is spent, never the consumed seed."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    path = make_config(seed_line(seed))
    for _ in range(3):
        refresher = refresher_for(path)
        refresher.refresh(refresher.config.accounts["demo"])
    assert [r.form["refresh_token"] == seed for r in auth_server.requests] == [True, False, False]
    assert (auth_server.refreshes_ok, auth_server.reuse_count) == (3, 0)


def test_stale_config_seed_does_not_win_after_a_login(
    make_config: MakeConfig, refresher_for: Callable[[Path], Refresher], auth_server: AuthServer, clock: FakeClock
) -> None:
    """After adopt() stores a login's grant, the older seed still in the config is not used again."""
    stale = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    refresher = refresher_for(make_config(seed_line(stale)))
    account = refresher.config.accounts["demo"]
    refresher.refresh(account)
    fresh = auth_server.issue_refresh_token(DEMO_CLIENT_ID)  # what a login would have obtained
    login = TokenResponse(
        access=AccessToken(Secret("login-access-token"), "Bearer", clock.now + 3600),
        refresh_token=Secret(fresh),
    )
    refresher.adopt(account, login)
    assert (refresher.config.token_dir / "demo.token").read_text() == "login-access-token\n"
    refresher_for(make_config(seed_line(stale))).refresh(account)
    assert auth_server.requests[-1].form["refresh_token"] == fresh
    assert auth_server.reuse_count == 0


def test_load_is_a_read_that_never_writes_the_state(
    make_config: MakeConfig, refresher_for: Callable[[Path], Refresher], auth_server: AuthServer
) -> None:
    """load() (used before taking the lock) applies a new seed in memory only, so it cannot overwrite a rotated token."""
    first = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    refresher = refresher_for(make_config(seed_line(first)))
    refresher.refresh(refresher.config.accounts["demo"])
    before = refresher.store.path("demo").read_bytes()
    second = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    other = refresher_for(make_config(seed_line(second)))
    seen = other.load(other.config.accounts["demo"])
    assert seen.refresh_token is not None and seen.refresh_token.reveal() == second
    assert other.store.path("demo").read_bytes() == before


# ------------------------------------------------------------------ lock and skip


def test_a_waiting_refresh_reads_the_state_after_taking_the_lock(
    make_config: MakeConfig, refresher_for: Callable[[Path], Refresher], auth_server: AuthServer, clock: FakeClock
) -> None:
    """A refresh waiting on the lock sees the token another process stored meanwhile, and sends no request."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    path = make_config(seed_line(seed))
    holder = refresher_for(path)
    waiter = refresher_for(path)
    blocked = threading.Event()
    waiter.store.on_lock_busy = lambda account: blocked.set()
    account = holder.config.accounts["demo"]
    results = []
    with holder.store.transaction("demo") as tx:
        thread = threading.Thread(target=lambda: results.append(waiter.refresh(account, RefreshPolicy.IF_NEEDED)))
        thread.start()
        assert blocked.wait(timeout=30)  # it found the lock held, before reading any state
        assert results == []
        # What another process would have done while holding the lock.
        response = holder.client.refresh(account, Secret(seed))
        tx.save(merge(apply_seed(account, tx.state, clock.now), response, clock.now), rotated=True)
    thread.join(timeout=10)
    (result,) = results
    assert result.refreshed is False
    assert auth_server.token_requests == 1
    assert (holder.config.token_dir / "demo.token").read_text() == response.access.access_token.reveal() + "\n"


@pytest.mark.parametrize("policy", [RefreshPolicy.IF_NEEDED, RefreshPolicy.SCHEDULED])
def test_a_policy_refreshes_only_a_token_inside_its_window(
    policy: RefreshPolicy, make_config: MakeConfig, refresher_for: Callable[[Path], Refresher], auth_server: AuthServer, clock: FakeClock
) -> None:
    """IF_NEEDED sends only inside the refresh margin, SCHEDULED only inside timing's skip threshold; ALWAYS sends anyway."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    refresher = refresher_for(make_config(seed_line(seed)))
    account = refresher.config.accounts["demo"]
    state = refresher.refresh(account).state
    assert state.access is not None
    margin = refresh_margin(None, state)
    window = margin if policy is RefreshPolicy.IF_NEEDED else skip_threshold(margin)
    clock.advance(state.access.expires_at - clock.now - window - 1)  # 1 s outside the window
    assert refresher.refresh(account, policy).refreshed is False
    assert refresher.refresh(account).refreshed is True  # RefreshPolicy.ALWAYS, the default
    clock.advance(3600 - window + 1)  # 1 s inside the window of the new token
    assert refresher.refresh(account, policy).refreshed is True
    assert auth_server.refreshes_ok == 3


# ------------------------------------------------------------------ failures


def test_invalid_grant_marks_needs_login_and_stops_sending(
    make_config: MakeConfig, refresher_for: Callable[[Path], Refresher], auth_server: AuthServer
) -> None:
    """invalid_grant sets needs_login; the next refresh fails at once, without any HTTP request, with the login hint."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    auth_server.revoke_grant(seed)
    refresher = refresher_for(make_config(seed_line(seed)))
    account = refresher.config.accounts["demo"]
    with pytest.raises(InvalidGrant) as first:
        refresher.refresh(account)
    assert "invalid_grant" in str(first.value)
    assert "freshtoken login demo" in str(first.value)
    state = refresher.store.load("demo")
    assert state.needs_login is True
    assert state.last_error is not None and "invalid_grant" in state.last_error
    with pytest.raises(InvalidGrant) as second:
        refresher_for(make_config(seed_line(seed))).refresh(account)
    assert "`freshtoken login demo`" in str(second.value)
    assert str(second.value).count("freshtoken login") == 1
    assert auth_server.token_requests == 1


def test_no_refresh_token_at_all_asks_for_a_login(
    make_config: MakeConfig, refresher_for: Callable[[Path], Refresher], auth_server: AuthServer
) -> None:
    """An account without seed or stored token fails with one login hint and sends nothing."""
    refresher = refresher_for(make_config())
    with pytest.raises(InvalidGrant) as caught:
        refresher.refresh(refresher.config.accounts["demo"])
    assert str(caught.value) == "no refresh token yet; run `freshtoken login demo` (or set a new refresh_token in the config)"
    assert auth_server.token_requests == 0


def test_temporary_failure_keeps_the_last_good_token_files(
    make_config: MakeConfig, refresher_for: Callable[[Path], Refresher], auth_server: AuthServer, clock: FakeClock
) -> None:
    """A 503 records last_error in the state and leaves the token files byte for byte as they were."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    refresher = refresher_for(make_config(seed_line(seed)))
    account = refresher.config.accounts["demo"]
    refresher.refresh(account)
    before = files(refresher.config)
    good = refresher.store.load("demo")
    clock.advance(60)
    auth_server.script(503, headers={"Retry-After": "30"})
    with pytest.raises(TemporaryError) as caught:
        refresher.refresh(account)
    assert caught.value.retry_after == 30.0
    assert files(refresher.config) == before
    state = refresher.store.load("demo")
    assert (state.last_error, state.last_error_at) == ("HTTP 503", clock.now)
    assert state.refresh_token == good.refresh_token and state.access == good.access
    assert state.needs_login is False
    refresher.refresh(account)  # and it recovers: the error is cleared
    assert refresher.store.load("demo").last_error is None


def test_unsafe_access_token_is_refused_but_its_rotated_refresh_token_kept(
    make_config: MakeConfig, refresher_for: Callable[[Path], Refresher], auth_server: AuthServer
) -> None:
    """An access token with a newline is not published, while the new refresh token in the same answer is stored."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    refresher = refresher_for(make_config(seed_line(seed)))
    account = refresher.config.accounts["demo"]
    refresher.refresh(account)
    before = files(refresher.config)
    good = refresher.store.load("demo")
    auth_server.script(
        200,
        json={"access_token": "evil\nX-Injected: 1", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "rotated-by-evil-answer"},
    )
    with pytest.raises(RefreshFailed) as caught:
        refresher.refresh(account)
    assert "refusing to write it" in str(caught.value)
    assert "evil" not in str(caught.value)
    state = refresher.store.load("demo")
    assert state.refresh_token is not None and state.refresh_token.reveal() == "rotated-by-evil-answer"
    assert state.access == good.access
    assert state.last_refresh == good.last_refresh
    assert files(refresher.config) == before


def test_client_credentials_grant(make_config: MakeConfig, refresher_for: Callable[[Path], Refresher], auth_server: AuthServer) -> None:
    """A client_credentials account gets a working access token and stores no refresh token."""
    refresher = refresher_for(make_config("    grant: client_credentials\n    scopes: [read]"))
    result = refresher.refresh(refresher.config.accounts["demo"])
    assert result.state.refresh_token is None
    assert result.state.access is not None
    assert auth_server.is_valid_access_token(result.state.access.access_token.reveal())
    assert auth_server.requests[0].form == {"grant_type": "client_credentials", "scope": "read"}


# ------------------------------------------------------------------ hooks


HOOK = """\
#!{python}
import json, os, sys, time
raw = open("/proc/self/environ", "rb").read().split(b"\\0")
env = dict(item.decode().split("=", 1) for item in raw if item)
with open({out!r}, "w") as handle:
    json.dump({{"argv": sys.argv, "env": env, "pid": os.getpid()}}, handle)
time.sleep(float(sys.argv[1]))
"""


def write_hook(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "hook-out.json"
    hook = tmp_path / "hook.py"
    hook.write_text(HOOK.format(python=sys.executable, out=str(out)))
    hook.chmod(0o755)
    return hook, out


def test_hook_gets_four_variables_and_never_the_token(
    tmp_path: Path, make_config: MakeConfig, refresher_for: Callable[[Path], Refresher], auth_server: AuthServer, clock: FakeClock
) -> None:
    """on_refresh runs with exactly PATH/FRESHTOKEN_ACCOUNT/FRESHTOKEN_TOKEN_FILE/FRESHTOKEN_EXPIRES_AT and no secret."""
    hook, out = write_hook(tmp_path)
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    refresher = refresher_for(make_config(seed_line(seed) + f'\n    on_refresh: ["{hook}", "0"]'))
    result = refresher.refresh(refresher.config.accounts["demo"])
    seen = json.loads(out.read_text())
    assert seen["argv"] == [str(hook), "0"]
    assert set(seen["env"]) == {"PATH", "FRESHTOKEN_ACCOUNT", "FRESHTOKEN_TOKEN_FILE", "FRESHTOKEN_EXPIRES_AT"}
    assert seen["env"]["FRESHTOKEN_ACCOUNT"] == "demo"
    assert seen["env"]["FRESHTOKEN_TOKEN_FILE"] == str(refresher.config.token_dir / "demo.token")
    assert seen["env"]["FRESHTOKEN_EXPIRES_AT"] == str(int(clock.now + 3600))
    assert result.state.access is not None and result.state.refresh_token is not None
    dumped = out.read_text()
    for secret in (result.state.access.access_token.reveal(), result.state.refresh_token.reveal(), seed, DEMO_CLIENT_SECRET):
        assert secret not in dumped


def test_hook_is_killed_after_the_timeout(
    tmp_path: Path, make_config: MakeConfig, refresher_for: Callable[[Path], Refresher], auth_server: AuthServer
) -> None:
    """A hook that outlives hook_timeout (1 s) is killed; the refresh itself still succeeds."""
    hook, out = write_hook(tmp_path)
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    refresher = refresher_for(make_config(seed_line(seed) + f'\n    on_refresh: ["{hook}", "30"]', top="hook_timeout: 1"))
    started = time.monotonic()
    result = refresher.refresh(refresher.config.accounts["demo"])
    elapsed = time.monotonic() - started
    assert result.refreshed is True
    assert 1.0 <= elapsed < 10
    pid = json.loads(out.read_text())["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


# ------------------------------------------------------------------ concurrency between processes


def test_concurrent_refresh_processes_never_spend_one_token_twice(make_config: MakeConfig, auth_server: AuthServer) -> None:
    """Six `freshtoken refresh` processes at once: all succeed, one after another, with no refresh-token reuse."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    path = make_config(seed_line(seed))
    auth_server.script(delay=0.15, times=6)  # slow answers, so that the processes overlap
    command = [sys.executable, "-m", "freshtoken", "-c", str(path), "refresh"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outcomes = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        outcomes.append((process.returncode, out, err))
    assert [code for code, _, _ in outcomes] == [0] * 6, outcomes
    assert all(out.startswith("demo: refreshed; expires in") for _, out, _ in outcomes)
    assert (auth_server.refreshes_ok, auth_server.reuse_count) == (6, 0)
    config = config_module.load(path, os.environ)
    stored = Store(config.state_dir).load("demo").refresh_token
    assert stored is not None and stored.reveal() == auth_server.current_refresh_token(seed)
    assert len({r.form["refresh_token"] for r in auth_server.requests}) == 6
