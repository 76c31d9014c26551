"""A rotated refresh token is never lost to a local failure: a full disk, a failed save, a refused answer.

The full-disk tests mount a small tmpfs of their own (root only; CI runs as
root) and fill it for real; the server is the loopback AuthServer, which
revokes the whole grant when a spent refresh token comes back.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes import FakeClock
from freshtoken import cli
from freshtoken import config as config_module
from freshtoken.config import Account
from freshtoken.errors import MalformedAnswer, RotatedTokenNotSaved, StateWriteError
from freshtoken.fsutil import RESERVE
from freshtoken.model import AccountState, Secret, TokenResponse
from freshtoken.oauth import BeforeSend, Timeouts, TokenClient, make_session
from freshtoken.refresh import Refresher
from freshtoken.store import Store
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer

CONFIG = """\
state_dir: {state}
token_dir: {tokens}
accounts:
  demo:
    token_url: {url}
    client_id: {cid}
    client_secret: {secret}
    refresh_token: {seed}
"""

CHUNK = 64 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of its own at tmp_path/fs, unmounted afterwards (needs root, as CI has)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_bin, umount_bin = shutil.which("mount"), shutil.which("umount")
    if mount_bin is None or umount_bin is None:
        pytest.skip("no mount(8)")
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run([mount_bin, "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run([umount_bin, "-l", str(mount)], check=False)


def fill(mount: Path, *, leave: int = 0) -> None:
    """Fill the file system to the last page, then free `leave` bytes (a multiple of CHUNK) again."""
    filler = mount / "filler"
    filler.mkdir(exist_ok=True)
    number = 0
    for size in (CHUNK, 4096):  # whole chunks first, then the last pages one by one
        while True:
            number += 1
            try:
                (filler / f"{number}").write_bytes(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                (filler / f"{number}").unlink(missing_ok=True)
                break
    chunks = [p for p in filler.iterdir() if p.stat().st_size == CHUNK]
    for path in chunks[: leave // CHUNK]:
        path.unlink()


def empty(mount: Path) -> None:
    for path in (mount / "filler").iterdir():
        path.unlink()


@pytest.fixture
def setup(small_fs: Path, tmp_path: Path, auth_server: AuthServer, clock: FakeClock) -> Iterator[tuple[Path, Refresher, Account, str]]:
    """(config path, refresher, account, seed) with the state dir on the small tmpfs and one refresh done."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    path = tmp_path / "freshtoken.yaml"
    path.write_text(
        CONFIG.format(
            state=small_fs / "state",
            tokens=tmp_path / "tokens",
            url=auth_server.token_url,
            cid=DEMO_CLIENT_ID,
            secret=DEMO_CLIENT_SECRET,
            seed=seed,
        )
    )
    config = config_module.load(path, os.environ)
    session = make_session()
    refresher = Refresher(config, Store(config.state_dir), TokenClient(session, Timeouts(5, 5), clock=clock), clock=clock)
    account = config.accounts["demo"]
    refresher.refresh(account)
    yield path, refresher, account, seed
    session.close()


def stored_refresh_token(refresher: Refresher) -> str:
    token = Store(refresher.config.state_dir).load("demo").refresh_token
    assert token is not None
    return token.reveal()


def sent(auth_server: AuthServer) -> list[str]:
    """The refresh tokens presented to the server, in order."""
    return [r.form["refresh_token"] for r in auth_server.requests if r.form.get("grant_type") == "refresh_token"]


def run_cli(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), environ=dict(os.environ), stdout=out, stderr=err)
    return code, err.getvalue()


def test_full_state_disk_sends_nothing_and_names_the_path(
    setup: tuple[Path, Refresher, Account, str], small_fs: Path, auth_server: AuthServer
) -> None:
    """With the state dir's disk full, refresh raises StateWriteError (exit 75 for `refresh`) naming the state file, sending no request."""
    path, refresher, account, seed = setup
    live = stored_refresh_token(refresher)
    requests = auth_server.token_requests
    fill(small_fs)
    with pytest.raises(StateWriteError) as caught:
        refresher.refresh(account)
    state_file = refresher.store.path("demo")
    assert str(caught.value) == f"cannot write state {state_file}: No space left on device"
    code, err = run_cli("-c", str(path), "refresh")
    assert code == 75
    assert f"{state_file}: No space left on device" in err
    assert auth_server.token_requests == requests  # the refresh token was never spent
    assert auth_server.current_refresh_token(seed) == live == stored_refresh_token(refresher)
    empty(small_fs)
    refresher.refresh(account)
    assert (auth_server.reuse_count, auth_server.refreshes_ok) == (0, 2)


def big_answer(auth_server: AuthServer) -> str:
    """Script one 200 answer whose state cannot fit the reservation; its refresh token is a live one of a new grant."""
    rotated = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    auth_server.script(
        200, json={"access_token": "A" * (2 * RESERVE), "token_type": "Bearer", "expires_in": 3600, "refresh_token": rotated}
    )
    return rotated


def test_a_rotated_token_that_cannot_be_saved_is_published_held_and_saved_before_the_next_request(
    setup: tuple[Path, Refresher, Account, str], small_fs: Path, auth_server: AuthServer
) -> None:
    """A failed save after a rotation raises RotatedTokenNotSaved, publishes the access token, and holds the new
    refresh token: later refreshes save it first (sending nothing while they cannot) and never send the spent one."""
    _, refresher, account, _ = setup
    spent = stored_refresh_token(refresher)
    rotated = big_answer(auth_server)
    fill(small_fs, leave=RESERVE)  # the reservation fits; the state it must hold does not
    with pytest.raises(RotatedTokenNotSaved) as caught:
        refresher.refresh(account)
    assert str(caught.value) == f"refresh token rotated but could not be saved: {refresher.store.path('demo')}: No space left on device"
    assert (refresher.config.token_dir / "demo.token").read_text() == "A" * (2 * RESERVE) + "\n"
    requests = auth_server.token_requests

    with pytest.raises(StateWriteError, match="still unsaved"):
        refresher.refresh(account)  # the disk is still full: the held token is not saved, and nothing is sent
    with pytest.raises(StateWriteError):
        refresher.write_current(account)
    assert auth_server.token_requests == requests
    assert stored_refresh_token(refresher) == spent

    empty(small_fs)
    refresher.refresh(account)
    assert sent(auth_server)[-1] == rotated
    assert sent(auth_server).count(spent) == 1
    assert auth_server.reuse_count == 0
    assert stored_refresh_token(refresher) == auth_server.current_refresh_token(rotated)
    assert refresher.unsaved == {}


def test_one_shot_refresh_that_cannot_save_the_rotated_token_exits_1_saying_so(
    setup: tuple[Path, Refresher, Account, str], small_fs: Path, auth_server: AuthServer
) -> None:
    """`freshtoken refresh` whose rotated refresh token cannot be saved exits 1 with "refresh token rotated but could not be saved"."""
    path, refresher, _, _ = setup
    big_answer(auth_server)
    fill(small_fs, leave=RESERVE)
    code, err = run_cli("-c", str(path), "refresh")
    assert code == 1
    assert f"refresh token rotated but could not be saved: {refresher.store.path('demo')}: No space left on device" in err
    assert "Traceback" not in err


class RefusingClient(TokenClient):
    """The oauth module's verdict on an answer it refuses (e.g. expires_in 0): MalformedAnswer with the rotated token in it."""

    def refresh(self, account: Account, refresh_token: Secret, *, before_send: BeforeSend | None = None) -> TokenResponse:
        answer = super().refresh(account, refresh_token, before_send=before_send)  # a real grant: the server has rotated the refresh token
        raise MalformedAnswer("malformed token answer: expires_in 0 is not a positive number", refresh_token=answer.refresh_token)


def test_a_refused_answer_keeps_its_rotated_refresh_token_and_the_old_access_token(
    auth_server: AuthServer, tmp_path: Path, clock: FakeClock
) -> None:
    """A MalformedAnswer with a rotated refresh token: that token is saved, outputs keep the old access token, the error is recorded."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    path = tmp_path / "freshtoken.yaml"
    path.write_text(
        CONFIG.format(
            state=tmp_path / "state",
            tokens=tmp_path / "tokens",
            url=auth_server.token_url,
            cid=DEMO_CLIENT_ID,
            secret=DEMO_CLIENT_SECRET,
            seed=seed,
        )
    )
    config = config_module.load(path, os.environ)
    account = config.accounts["demo"]
    session = make_session()
    try:
        good = Refresher(config, Store(config.state_dir), TokenClient(session, Timeouts(5, 5), clock=clock), clock=clock)
        first = good.refresh(account).state.access
        assert first is not None
        refusing = Refresher(config, Store(config.state_dir), RefusingClient(session, Timeouts(5, 5), clock=clock), clock=clock)
        with pytest.raises(MalformedAnswer):
            refusing.refresh(account)
        state = Store(config.state_dir).load("demo")
        assert state.refresh_token is not None and state.refresh_token.reveal() == auth_server.current_refresh_token(seed)
        assert state.access == first
        assert state.last_error == "malformed token answer: expires_in 0 is not a positive number"
        assert (config.token_dir / "demo.token").read_text() == first.access_token.reveal() + "\n"
        good.refresh(account)
        assert auth_server.reuse_count == 0
    finally:
        session.close()


def test_a_login_written_meanwhile_wins_over_a_held_rotated_token(
    setup: tuple[Path, Refresher, Account, str], small_fs: Path, auth_server: AuthServer
) -> None:
    """When the state on disk holds another refresh token than the one spent (a new login), the held one is dropped for it."""
    _, refresher, account, _ = setup
    big_answer(auth_server)
    fill(small_fs, leave=RESERVE)
    with pytest.raises(RotatedTokenNotSaved):
        refresher.refresh(account)
    empty(small_fs)
    login = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    assert account.refresh_token is not None
    with Store(refresher.config.state_dir).transaction("demo") as tx:
        tx.save(AccountState(refresh_token=Secret(login), seed=account.refresh_token.fingerprint()))
    refresher.refresh(account)
    assert sent(auth_server)[-1] == login
    assert refresher.unsaved == {}
