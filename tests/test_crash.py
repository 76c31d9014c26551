"""Crash safety: SIGKILL the real daemon at random moments, restart it at once, and count what it cost.

The server rotates refresh tokens and revokes the whole grant when a consumed
one comes back (RFC 9700 §4.14.2), so a single refresh token spent twice would
show up as a reuse and an account needing a new login. Access tokens live 1 s,
so the daemon refreshes several times a second and kills land inside refreshes.

There is exactly one window in which a kill costs a grant: after the server
has rotated the refresh token and before our state file holding the new one
is renamed into place (a kill does not lose the page cache, so the fsync that
follows guards against power loss only). The server's answer dies with the
process; no client can close that window, only keep it short (the state is
renamed into place before anything else: bench/crashwindow.py measures it).
The loop recognises each such kill from the server's request log, logs that
account in again (as the user would have to) and counts it; every other kill
must cost nothing. The long run, with figures, is bench/crash.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from crashkit import CrashLoop, CrashReport  # noqa: E402
from harness import clean_env  # noqa: E402

from freshtoken.config import load  # noqa: E402
from freshtoken.errors import InvalidGrant, TemporaryError  # noqa: E402
from freshtoken.oauth import Timeouts, TokenClient, make_session  # noqa: E402
from freshtoken.refresh import Refresher  # noqa: E402
from freshtoken.store import Store  # noqa: E402
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer  # noqa: E402

KILLS = int(os.environ.get("FRESHTOKEN_TEST_CRASH_KILLS", "50"))  # bench/crash.py runs hundreds

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> CrashReport:
    """One kill loop for the whole module: 5 accounts, 1 s tokens, KILLS SIGKILLs, then a clean run."""
    workdir = tmp_path_factory.mktemp("crash")
    with CrashLoop(workdir / "run", accounts=5, token_lifetime=1, seed=20261128, env=clean_env(workdir)) as loop:
        report = loop.run(KILLS)
    print(report.summary())
    return report


def test_random_sigkills_never_spend_a_refresh_token_twice(crashed: CrashReport) -> None:
    """After KILLS kills and restarts no grant was revoked and every account holds the server's live refresh token."""
    assert crashed.kills == KILLS
    assert crashed.early_exits == []
    assert crashed.no_request_cycles == 0
    assert crashed.reuse_count == 0
    assert crashed.unexplained == []
    assert crashed.needs_login_at_end == []
    assert crashed.mismatched_at_end == []
    assert crashed.final_exit_code == 0
    # Every cycle reached the server, and some kills visibly landed inside a refresh.
    assert crashed.token_requests >= KILLS
    assert crashed.mid_refresh_kills >= 1


def test_only_the_lost_response_window_costs_a_login_and_it_is_rare(crashed: CrashReport) -> None:
    """Kills that cost a grant all landed between the server's answer and the state's rename, and they are rare."""
    assert crashed.relogins == len(crashed.window) + len(crashed.unexplained)
    assert crashed.unexplained == []
    assert len(crashed.window) <= KILLS // 5, crashed.window


def test_token_and_state_files_are_always_whole(crashed: CrashReport) -> None:
    """A reader polling the token and state files through every kill never sees a partial or unparsable file."""
    assert crashed.torn == []
    assert crashed.reader_samples > 1000


def test_temp_files_left_by_kills_do_not_accumulate(crashed: CrashReport) -> None:
    """Temp files that kills leave in the state dir are removed by the next start once they are stale."""
    assert crashed.stale_temps_left_in("state") == []
    # One planted leftover, plus what the last kill or two left before a start could sweep it.
    assert crashed.max_state_temp_files <= 6


def test_temp_files_in_the_token_dir_are_removed_too(crashed: CrashReport) -> None:
    """Stale temp files in the token dir (from a kill inside an output write) are removed by the next start."""
    assert crashed.stale_temps_left_in("tokens") == []


def test_lost_response_is_the_one_window_that_costs_a_grant(auth_server: AuthServer, write_config: Callable[..., Path]) -> None:
    """A dropped request the server never handled costs nothing; a dropped answer after the server rotated costs the grant."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    path = write_config(
        """\
        state_dir: {state}
        token_dir: {tokens}
        accounts:
          acct:
            token_url: {url}
            client_id: {cid}
            client_secret: {secret}
            refresh_token: {seed}
        """,
        url=auth_server.token_url,
        cid=DEMO_CLIENT_ID,
        secret=DEMO_CLIENT_SECRET,
        seed=seed,
    )
    config = load(path, os.environ)
    account = config.accounts["acct"]
    store = Store(config.state_dir)
    client = TokenClient(make_session(), Timeouts(2, 2))
    refresher = Refresher(config, store, client)
    try:
        # The connection dies before the server looks at the request: retrying is safe.
        auth_server.script(drop=True)
        with pytest.raises(TemporaryError):
            refresher.refresh(account)
        assert auth_server.current_refresh_token(seed) == seed
        refresher.refresh(account)
        held = store.load("acct").refresh_token
        assert held is not None and held.reveal() == auth_server.current_refresh_token(seed) != seed

        # The server rotates, then the answer is lost (as when we are killed before the state's rename):
        # we still hold the consumed token, and presenting it revokes the grant.
        auth_server.script(drop=True, process=True)
        with pytest.raises(TemporaryError):
            refresher.refresh(account)
        assert store.load("acct").refresh_token == held
        assert auth_server.current_refresh_token(seed) != held.reveal()
        with pytest.raises(InvalidGrant):
            refresher.refresh(account)
        assert auth_server.reuse_count == 1
        assert auth_server.current_refresh_token(seed) is None
        assert store.load("acct").needs_login
    finally:
        client.session.close()
