"""The state and token dirs under odd conditions: symlinks, other owners, root, damaged state, look-alike names, two daemons.

Tests that need another user run as root (CI does) and switch the effective
uid for a moment with os.seteuid; elsewhere they are skipped.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from freshtoken import cli
from freshtoken import config as config_module
from freshtoken.config import Account
from freshtoken.errors import AlreadyRunning, FreshtokenError
from freshtoken.fsutil import TEMP_MARK, clean_stale_temps
from freshtoken.model import AccessToken, AccountState, Secret
from freshtoken.oauth import Timeouts, TokenClient, make_session
from freshtoken.outputs import write_all
from freshtoken.refresh import Refresher
from freshtoken.store import Store
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer

NOBODY = 65534
OWNER, GROUP = 4242, 4243  # ids of no one in particular: root may chown to any
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
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make files of other users (CI runs as root)")


@contextlib.contextmanager
def effective_uid(uid: int) -> Iterator[None]:
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A 0755 dir in /tmp that another uid can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="freshtoken-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_config(path: Path, state: Path, tokens: Path, server: AuthServer) -> Path:
    seed = server.issue_refresh_token(DEMO_CLIENT_ID)
    path.write_text(
        CONFIG.format(state=state, tokens=tokens, url=server.token_url, cid=DEMO_CLIENT_ID, secret=DEMO_CLIENT_SECRET, seed=seed)
    )
    path.chmod(0o600)
    return path


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), environ=dict(os.environ), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# ------------------------------------------------------------------ symlinks and owners


def test_a_symlinked_state_dir_is_refused_and_its_target_keeps_its_mode(tmp_path: Path) -> None:
    """A state dir that is a symlink is refused by name; the dir it points to is not chmod'ed through the link."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    target.chmod(0o755)
    (tmp_path / "state").symlink_to(target)
    with pytest.raises(FreshtokenError, match=f"^state dir {tmp_path / 'state'} is a symbolic link"):
        Store(tmp_path / "state").prepare()
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


@needs_root
def test_a_state_dir_of_another_user_is_refused_naming_the_owner_and_sudo(shared_dir: Path) -> None:
    """A non-root user is refused a state dir that belongs to someone else, told whose it is and how to run as them."""
    state = shared_dir / "state"
    state.mkdir(mode=0o700)  # root's
    with effective_uid(NOBODY), pytest.raises(FreshtokenError) as caught:
        Store(state).prepare()
    assert str(caught.value) == (
        f"state dir {state} belongs to root (uid 0), not to uid {NOBODY}; run freshtoken as its owner: `sudo -u root freshtoken ...`"
    )


@needs_root
def test_a_one_shot_refresh_as_root_keeps_the_owners_of_the_state_and_token_dirs(tmp_path: Path, auth_server: AuthServer) -> None:
    """`sudo freshtoken refresh` on a system install leaves every file it creates owned as its directory is, so the daemon goes on."""
    state, tokens = tmp_path / "state", tmp_path / "tokens"
    state.mkdir(mode=0o700)
    tokens.mkdir(mode=0o750)
    os.chown(state, OWNER, GROUP)
    os.chown(tokens, OWNER, GROUP)
    path = make_config(tmp_path / "freshtoken.yaml", state, tokens, auth_server)
    code, _, err = run_cli("-c", str(path), "refresh")
    assert (code, err) == (0, "")
    created = sorted(p.name for p in state.iterdir())
    assert created == ["demo.json", "demo.lock"]
    for name in created:
        info = (state / name).stat()
        assert (info.st_uid, info.st_gid) == (OWNER, GROUP), name
    for name in ("demo.token", "demo.json"):
        info = (tokens / name).stat()
        assert (info.st_uid, info.st_gid) == (OWNER, GROUP), name


@needs_root
def test_permission_errors_name_the_path(shared_dir: Path, auth_server: AuthServer) -> None:
    """A lock file the user may not open gives a one-line error naming it, for a refresh and for the daemon lock."""
    state, tokens = shared_dir / "state", shared_dir / "tokens"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    for name in ("demo.lock", "daemon.pid"):
        (state / name).touch(mode=0o600)  # root's, left by an earlier run as root
    config = config_module.load(make_config(shared_dir / "freshtoken.yaml", state, tokens, auth_server), os.environ)
    session = make_session()
    try:
        refresher = Refresher(config, Store(state), TokenClient(session, Timeouts(5, 5)))
        with effective_uid(NOBODY):
            with pytest.raises(FreshtokenError) as refresh_error:
                refresher.refresh(config.accounts["demo"])
            with pytest.raises(FreshtokenError) as lock_error:
                Store(state).daemon_lock(tokens).acquire()
    finally:
        session.close()
    assert str(refresh_error.value) == f"cannot open lock {state / 'demo.lock'}: Permission denied"
    assert str(lock_error.value) == f"cannot open lock {state / 'daemon.pid'}: Permission denied"
    assert auth_server.token_requests == 0


def test_a_token_dir_every_user_may_read_or_write_is_warned_of_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 1777 or 0755 token dir is logged once as a warning naming it and its mode; the default 0750 is not."""
    account = Account(name="demo", token_url="http://127.0.0.1:1/t", client_id="x")
    token = AccessToken(Secret("tok"), "Bearer", time.time() + 3600)
    for mode in (0o1777, 0o755, 0o750):
        directory = tmp_path / f"tokens-{mode:o}"
        directory.mkdir()
        directory.chmod(mode)
        with caplog.at_level(logging.WARNING, logger="freshtoken.outputs"):
            caplog.clear()
            write_all(directory, account, token)
            write_all(directory, account, token)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        if mode == 0o750:
            assert warnings == []
        else:
            assert len(warnings) == 1
            assert warnings[0].startswith(f"token dir {directory} has mode {mode:04o}: every user can")


# ------------------------------------------------------------------ damaged state: reported, never fatal, moved only by a writer

UNUSABLE = {
    "not json": b"{not json",
    "empty": b"",
    "absurd expiry": b'{"access_token": "A", "expires_at": 1e300, "refresh_token": "R"}',
    "milliseconds": b'{"access_token": "A", "expires_at": 1700000000000, "refresh_token": "R"}',
    "NaN": b'{"access_token": "A", "expires_at": NaN}',
    "400 digits": b'{"last_refresh": ' + b"9" * 400 + b"}",
    "string number": b'{"access_token": "A", "expires_at": "soon"}',
    "number token": b'{"refresh_token": 12345}',
    "list": b"[1, 2]",
    "newer version": b'{"version": 2}',
    "deep": b"[" * 100_000,
}


@pytest.mark.parametrize("content", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_an_unusable_state_is_reported_by_readers_without_touching_it(content: bytes, tmp_path: Path, auth_server: AuthServer) -> None:
    """Store.load and `freshtoken status` report an unusable state in one line naming the file, and change nothing on disk."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "demo.json").write_bytes(content)
    before = snapshot(state)
    with pytest.raises(FreshtokenError) as caught:
        Store(state).load("demo")
    assert str(caught.value).startswith(f"state {state / 'demo.json'} is unusable (")
    assert "\n" not in str(caught.value)
    path = make_config(tmp_path / "freshtoken.yaml", state, tmp_path / "tokens", auth_server)
    _, out, err = run_cli("-c", str(path), "status")
    assert str(state / "demo.json") in out + err
    assert "Traceback" not in out + err
    assert snapshot(state) == before


def test_a_refresh_moves_an_unusable_state_aside_and_starts_from_the_seed(tmp_path: Path, auth_server: AuthServer) -> None:
    """The locked write path moves an unusable state to <name>.damaged-<time>, bytes intact, and refreshes from the config's seed."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "demo.json").write_bytes(UNUSABLE["absurd expiry"])
    path = make_config(tmp_path / "freshtoken.yaml", state, tmp_path / "tokens", auth_server)
    code, _, err = run_cli("-c", str(path), "refresh")
    assert code == 0
    [aside] = [p for p in state.iterdir() if p.name.startswith("demo.json.damaged-")]
    assert aside.read_bytes() == UNUSABLE["absurd expiry"]
    assert f"{state / 'demo.json'} is unusable (expires_at 1e+300 is out of range); moved it to {aside}" in err
    assert Store(state).load("demo").refresh_token is not None
    assert auth_server.refreshes_ok == 1


@pytest.mark.parametrize(
    "document",
    [
        {"access_token": "A", "expires_at": float("inf")},
        {"access_token": "A", "expires_at": -1},
        {"access_token": "A"},
        {"refresh_token_expires_at": 10**20},
        {"last_error_at": True},
        {"needs_login": "yes"},
        {"seed": 7},
    ],
)
def test_from_json_refuses_absurd_numbers_and_wrong_types(document: dict[str, object]) -> None:
    """AccountState.from_json raises ValueError or TypeError for out-of-range times and mistyped fields."""
    with pytest.raises((ValueError, TypeError)):
        AccountState.from_json(document)


def test_from_json_reads_a_state_that_holds_an_extra_key() -> None:
    """A state file from an older version, with its `extra` object (of any shape), still loads; the key is dropped on the next save."""
    data = {"refresh_token": "R", "access_token": "A", "expires_at": 1_800_000_000, "extra": [1]}
    state = AccountState.from_json(data)
    assert (state.refresh_token, state.access) == (Secret("R"), AccessToken(Secret("A"), "Bearer", 1_800_000_000.0))
    assert "extra" not in state.to_json()


def test_from_json_accepts_what_to_json_writes() -> None:
    """A state round-trips through to_json and from_json, integer times included."""
    state = AccountState(
        refresh_token=Secret("R"),
        refresh_token_expires_at=1_900_000_000,
        access=AccessToken(Secret("A"), "Bearer", 1_800_000_000.5, "s"),
        last_refresh=1_799_999_000,
        needs_login=True,
    )
    assert AccountState.from_json(json.loads(json.dumps(state.to_json()))) == state


# ------------------------------------------------------------------ the temp-file sweep


def test_the_sweep_never_deletes_the_files_of_an_account_named_like_a_temp_file(tmp_path: Path) -> None:
    """Files of an account called `.freshtoken-tmp-x` (state, lock, token files) survive the sweep; a real old temp file does not."""
    state, tokens = tmp_path / "state", tmp_path / "tokens"
    name = f"{TEMP_MARK}x"
    store = Store(state)
    with store.transaction(name) as tx:
        tx.save(AccountState(refresh_token=Secret("R")))
    write_all(tokens, Account(name=name, token_url="http://127.0.0.1:1/t", client_id="x"), AccessToken(Secret("t"), "Bearer", 2e9))
    leftover = state / f"{TEMP_MARK}{name}.json.0badc0de"
    leftover.write_text("half")
    old = time.time() - 3600
    for path in [*state.iterdir(), *tokens.iterdir()]:
        os.utime(path, (old, old))
    Store(state).prepare()
    clean_stale_temps(tokens)
    assert sorted(p.name for p in state.iterdir()) == sorted([f"{name}.json", f"{name}.lock"])
    assert sorted(p.name for p in tokens.iterdir()) == sorted([f"{name}.json", f"{name}.token"])


# ------------------------------------------------------------------ one daemon per token dir


def test_a_second_daemon_lock_on_the_same_token_dir_is_refused(tmp_path: Path) -> None:
    """With another state dir but the same token dir the daemon lock is refused, naming pid, state dir and token dir."""
    tokens = tmp_path / "tokens"
    with Store(tmp_path / "one").daemon_lock(tokens):
        with pytest.raises(AlreadyRunning) as caught:
            Store(tmp_path / "two").daemon_lock(tokens).acquire()
        assert (
            str(caught.value)
            == f"another freshtoken daemon (pid {os.getpid()}, state dir {tmp_path / 'one'}) is already writing token dir {tokens}"
        )
        with Store(tmp_path / "two").daemon_lock(tmp_path / "other-tokens"):  # the refused attempt let go of "two"
            pass
    assert sorted(p.name for p in tokens.iterdir()) == [".freshtoken-daemon.lock"]
    with Store(tmp_path / "two").daemon_lock(tokens):
        pass


def test_run_refuses_a_token_dir_another_daemon_is_writing(
    tmp_path: Path, auth_server: AuthServer, write_config: Callable[..., Path]
) -> None:
    """`freshtoken run` exits 1 at once when another daemon (another state dir) holds the token dir."""
    tokens = tmp_path / "tokens"
    path = make_config(tmp_path / "second.yaml", tmp_path / "state-two", tokens, auth_server)
    with Store(tmp_path / "state-one").daemon_lock(tokens):
        done = subprocess.run(
            [sys.executable, "-m", "freshtoken", "-c", str(path), "run"], capture_output=True, text=True, timeout=60, env=dict(os.environ)
        )
    assert done.returncode == 1
    assert f"is already writing token dir {tokens}" in done.stderr
    assert auth_server.token_requests == 0
