"""Hardening of the real daemon (issue 8): a `freshtoken run` subprocess picks up a login done while it runs
at once, through its wake socket, instead of at the next 30 s heartbeat."""

from __future__ import annotations

import os
import time

import pytest

import test_daemon_e2e
from fakes import poll
from freshtoken.model import AccountState, Secret
from freshtoken.store import WAKE_SOCKET, Store
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
from test_daemon_e2e import read_token

pytestmark = pytest.mark.slow

# The fixtures of tests/test_daemon_e2e.py: loopback servers, the config writer and daemon subprocesses.
servers, cfg, spawn = test_daemon_e2e.servers, test_daemon_e2e.cfg, test_daemon_e2e.spawn


def test_a_login_while_the_daemon_runs_is_picked_up_within_2_s(servers, cfg, dirs, spawn):
    """A new grant stored for a parked account, then wake_daemon(), gets its token file written well within 2 s, not at the next beat."""
    server = servers(token_lifetime=3600)
    account = f"  a:\n    token_url: {server.token_url}\n    client_id: {DEMO_CLIENT_ID}\n    client_secret: {DEMO_CLIENT_SECRET}\n"
    daemon = spawn(cfg(account))
    daemon.ready()  # READY follows the account's first run, which parked it: no refresh token yet
    assert "a: no refresh token yet" in daemon.text()
    assert (dirs["state"] / WAKE_SOCKET).exists()

    # What `freshtoken login a` leaves behind: a new grant in the state, then a word to the daemon.
    with Store(dirs["state"]).transaction("a") as tx:
        tx.save(AccountState(refresh_token=Secret(server.issue_refresh_token(DEMO_CLIENT_ID))))
    woken = time.time()
    assert Store(dirs["state"]).wake_daemon()

    token_file = dirs["tokens"] / "a.token"
    assert poll(token_file.exists, 20), daemon.text()
    took = os.stat(token_file).st_mtime - woken
    assert took < 2.0, daemon.text()
    print(f"picked up {took:.3f} s after the wake")
    assert server.is_valid_access_token(read_token(dirs, "a") or "")
    assert "a: new login found; resuming" in daemon.text()
    assert 0 == daemon.stop()[0]
    assert not (dirs["state"] / WAKE_SOCKET).exists()  # our own socket, removed on the way out
    assert not Store(dirs["state"]).wake_daemon()
