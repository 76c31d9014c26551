"""The store transaction: the only way to write a state, a read-only block changes nothing, delete() takes the lock too."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from freshtoken import config as config_module
from freshtoken.cli import main
from freshtoken.model import AccountState, Secret
from freshtoken.oauth import Timeouts, TokenClient, make_session
from freshtoken.refresh import Refresher
from freshtoken.store import Store
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer

DAMAGED = b'{"access_token": "A", "expires_at": 1e300, "refresh_token": "R"}'
CONFIG = (
    "state_dir: {state}\ntoken_dir: {tokens}\naccounts:\n  demo:\n    token_url: {token_url}\n"
    "    client_id: {cid}\n    client_secret: {secret}\n{extra}"
)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.suffix != ".lock"}


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def config_for(write_config: Callable[..., Path], auth_server: AuthServer, extra: str = "") -> Path:
    return write_config(CONFIG, token_url=auth_server.token_url, cid=DEMO_CLIENT_ID, secret=DEMO_CLIENT_SECRET, extra=extra)


def test_a_transaction_that_only_reads_leaves_a_damaged_state_where_it_is(
    write_config: Callable[..., Path], auth_server: AuthServer, dirs: dict[str, Path]
) -> None:
    """A damaged state reads as empty inside a transaction, and stays untouched unless the transaction writes (write_current does not)."""
    state = dirs["state"]
    state.mkdir(mode=0o700, parents=True)
    (state / "demo.json").write_bytes(DAMAGED)
    before = snapshot(state)
    store = Store(state)
    with store.transaction("demo") as tx:
        assert tx.state == AccountState()
        assert tx.unusable is not None and str(state / "demo.json") in str(tx.unusable)
    assert snapshot(state) == before
    config = config_module.load(config_for(write_config, auth_server), os.environ)
    session = make_session()
    try:
        refresher = Refresher(config, store, TokenClient(session, Timeouts(5, 5)))
        assert refresher.write_current(config.accounts["demo"]) is None
    finally:
        session.close()
    assert snapshot(state) == before


def test_store_delete_waits_for_a_transaction_on_the_account(tmp_path: Path) -> None:
    """Store.delete takes the account lock: it waits for a transaction in progress and deletes what that one saved."""
    holder, deleter = Store(tmp_path), Store(tmp_path)
    blocked = threading.Event()
    deleter.on_lock_busy = lambda account: blocked.set()
    results: list[bool] = []
    with holder.transaction("demo") as tx:
        thread = threading.Thread(target=lambda: results.append(deleter.delete("demo")))
        thread.start()
        assert blocked.wait(timeout=30)  # it found the lock held
        tx.save(AccountState(refresh_token=Secret("R")))
        assert results == []
    thread.join(timeout=30)
    assert results == [True]
    assert not (tmp_path / "demo.json").exists()


def test_a_second_transaction_on_one_account_in_the_same_thread_fails_at_once(tmp_path: Path) -> None:
    """Nesting a transaction (or Store.delete) inside one on the same account raises at once instead of waiting on itself."""
    store = Store(tmp_path, lock_timeout=3600)
    with store.transaction("demo") as tx:
        with pytest.raises(RuntimeError, match="demo: this thread already holds the account's transaction"):
            store.delete("demo")
        with store.transaction("other"):  # another account is fine
            pass
        tx.save(AccountState(refresh_token=Secret("R")))
    assert store.delete("demo") is True  # and the account is free again afterwards


@pytest.mark.parametrize("seeded", [False, True], ids=["no seed", "seed in config"])
def test_logout_of_a_damaged_state_leaves_no_copy_of_it(
    seeded: bool, write_config: Callable[..., Path], auth_server: AuthServer, dirs: dict[str, Path]
) -> None:
    """logout deletes a damaged state (saying so) rather than setting it aside, with or without a seed left in the config."""
    extra = f"    refresh_token: {auth_server.issue_refresh_token(DEMO_CLIENT_ID)}\n" if seeded else ""
    path = config_for(write_config, auth_server, extra)
    dirs["state"].mkdir(mode=0o700, parents=True)
    (dirs["state"] / "demo.json").write_bytes(DAMAGED)
    code, out, err = run("-c", str(path), "logout", "demo", "--no-revoke")
    assert code == 0, err
    assert f"{dirs['state'] / 'demo.json'} is unusable" in out and "deleting it" in out
    assert not [p for p in dirs["state"].iterdir() if ".damaged-" in p.name]
    if seeded:  # a state that remembers the config's seed as used, and nothing of the damaged file
        left = Store(dirs["state"]).load("demo")
        assert (left.needs_login, left.refresh_token) == (True, None)
    else:
        assert not (dirs["state"] / "demo.json").exists()
