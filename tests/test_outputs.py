"""What readers see and what the daemon keeps: formats, atomic files, the token dir's outputs, the state store."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshtoken.config import Account, Output
from freshtoken.errors import AlreadyRunning, TemporaryError
from freshtoken.formats import UnsafeToken, check_token, render
from freshtoken.fsutil import (
    TEMP_MARK,
    atomic_write,
    clean_stale_temps,
    ensure_dir,
    fsync_dir,
    locked_file,
    probe_writable,
    resolve_group,
)
from freshtoken.model import AccessToken, AccountState, Secret
from freshtoken.outputs import OutputError, all_outputs, token_paths, write_all
from freshtoken.store import Store

EXPIRES = 1_800_003_600  # 2027-01-15T09:00:00Z
TOKEN = AccessToken(Secret("BQD4x-_.~+/=tok"), "Bearer", EXPIRES + 0.7, "playlist-modify-private playlist-read")
THROWAWAY_GID = 54_321  # root may chown to any gid, named or not


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def temps_in(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(TEMP_MARK)]


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def spare_gid() -> int:
    """A gid other than our own that we may chown to: any when root, else a supplementary group; skips otherwise."""
    if os.geteuid() == 0:
        return THROWAWAY_GID
    others = [g for g in os.getgroups() if g != os.getegid()]
    if not others:
        pytest.skip("not root and in fewer than two groups: no second group to chown to")
    return others[0]


def account(**changes: object) -> Account:
    return Account(name="spotify", token_url="https://accounts.example/api/token", client_id="id", **changes)  # type: ignore[arg-type]


# ---------------------------------------------------------------- formats


def test_render_raw_is_the_token_and_a_newline() -> None:
    """raw: the access token and one newline, nothing else."""
    assert render("raw", TOKEN, "spotify") == b"BQD4x-_.~+/=tok\n"


def test_render_header_is_one_authorization_line() -> None:
    """header: 'Authorization: Bearer <token>' and a newline, ready for curl -H @file."""
    assert render("header", TOKEN, "spotify") == b"Authorization: Bearer BQD4x-_.~+/=tok\n"


def test_render_env_has_the_token_and_its_expiry() -> None:
    """env: NAME=<token> and NAME_EXPIRES_AT=<epoch int>, with a settable name."""
    assert render("env", TOKEN, "spotify") == b"ACCESS_TOKEN=BQD4x-_.~+/=tok\nACCESS_TOKEN_EXPIRES_AT=1800003600\n"
    assert render("env", TOKEN, "spotify", "SPOTIFY") == b"SPOTIFY=BQD4x-_.~+/=tok\nSPOTIFY_EXPIRES_AT=1800003600\n"


def test_render_json_has_exactly_the_spec_keys() -> None:
    """json: access_token, token_type, expires_at (int), expires_at_iso (RFC 3339 UTC), scope, account — exact bytes."""
    expected = (
        b"{\n"
        b'  "access_token": "BQD4x-_.~+/=tok",\n'
        b'  "token_type": "Bearer",\n'
        b'  "expires_at": 1800003600,\n'
        b'  "expires_at_iso": "2027-01-15T09:00:00Z",\n'
        b'  "scope": "playlist-modify-private playlist-read",\n'
        b'  "account": "spotify"\n'
        b"}\n"
    )
    assert render("json", TOKEN, "spotify") == expected
    doc = json.loads(expected)
    assert type(doc["expires_at"]) is int
    assert list(doc) == ["access_token", "token_type", "expires_at", "expires_at_iso", "scope", "account"]


def test_render_json_without_scope_has_null() -> None:
    """A token without a scope still has the key, as null."""
    token = AccessToken(Secret("t"), "Bearer", 0, None)
    assert json.loads(render("json", token, "a")) == {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_at": 0,
        "expires_at_iso": "1970-01-01T00:00:00Z",
        "scope": None,
        "account": "a",
    }


def test_render_unknown_format_is_refused() -> None:
    """A format outside raw/json/header/env raises ValueError naming it."""
    with pytest.raises(ValueError, match="unknown output format 'yaml'"):
        render("yaml", TOKEN, "spotify")


@pytest.mark.parametrize(
    "value", ["", "a b", "a\nb", "a\rb", "a\r\nb", "a\tb", "a\x00b", "a\x7fb", "a\x1bb", "tökén", "a\u2028b", " a", "a\n"]
)
def test_check_token_rejects_what_could_inject_a_line(value: str) -> None:
    """Empty, spaces, CR/LF, other control characters and non-ASCII are refused, in every format."""
    with pytest.raises(UnsafeToken):
        check_token(value)
    for fmt in ("raw", "json", "header", "env"):
        with pytest.raises(UnsafeToken):
            render(fmt, AccessToken(Secret(value), "Bearer", EXPIRES), "spotify")


def test_check_token_accepts_printable_ascii() -> None:
    """Every printable ASCII character except space is a fine token character."""
    check_token("".join(chr(c) for c in range(0x21, 0x7F)))


def test_header_refuses_an_unsafe_token_type() -> None:
    """A token_type with a newline cannot smuggle a second header line."""
    token = AccessToken(Secret("tok"), "Bearer\r\nX-Evil: 1", EXPIRES)
    with pytest.raises(UnsafeToken):
        render("header", token, "spotify")


EXPECTED_LINES = {"raw": 1, "header": 1, "env": 2, "json": 8}


@settings(max_examples=400, deadline=None)
@given(
    value=st.text(min_size=0, max_size=40) | st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=40),
    token_type=st.sampled_from(["Bearer", "MAC", "bear er", "x\ny", "DPoP"]) | st.text(max_size=8),
    scope=st.none() | st.text(max_size=20),
    fmt=st.sampled_from(["raw", "json", "header", "env"]),
)
def test_no_token_yields_an_extra_line(value: str, token_type: str, scope: str | None, fmt: str) -> None:
    """Any token renders to exactly the format's lines (carrying the token whole) or is refused."""
    token = AccessToken(Secret(value), token_type, EXPIRES, scope)
    try:
        data = render(fmt, token, "spotify")
    except UnsafeToken:
        return
    text = data.decode("ascii")
    lines = text.split("\n")
    assert lines[-1] == ""
    assert len(lines) - 1 == EXPECTED_LINES[fmt]
    assert "\r" not in text
    if fmt == "raw":
        assert text == f"{value}\n"
    elif fmt == "header":
        assert text == f"Authorization: {token_type} {value}\n"
    elif fmt == "env":
        assert lines[0] == f"ACCESS_TOKEN={value}"
    else:
        assert json.loads(text)["access_token"] == value


# ---------------------------------------------------------------- fsutil


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o400])
@pytest.mark.parametrize("mask", [0, 0o077])
def test_atomic_write_creates_the_file_with_its_final_mode(tmp_path: Path, mode: int, mask: int) -> None:
    """The file ends up with exactly the requested mode, whatever the umask."""
    path = tmp_path / "a.token"
    with umask(mask):
        atomic_write(path, b"one\n", mode)
    assert path.read_bytes() == b"one\n"
    assert mode_of(path) == mode
    assert temps_in(tmp_path) == []


def test_atomic_write_replaces_and_resets_the_mode(tmp_path: Path) -> None:
    """An existing file is replaced by a new inode carrying the new mode and contents."""
    path = tmp_path / "a.token"
    path.write_bytes(b"old token, longer than the new one\n")
    os.chmod(path, 0o666)  # noqa: S103 (a too-wide old file must not pass its mode on)
    before = os.stat(path).st_ino
    atomic_write(path, b"new\n", 0o640)
    assert path.read_bytes() == b"new\n"
    assert mode_of(path) == 0o640
    assert os.stat(path).st_ino != before


def test_atomic_write_sets_the_group(tmp_path: Path) -> None:
    """group: the file gets the group (by gid or its digits as a string), and keeps its mode after the chown."""
    gid = spare_gid()
    for group in (gid, str(gid)):
        path = tmp_path / f"g{type(group).__name__}.token"
        atomic_write(path, b"tok\n", 0o640, group)
        assert os.stat(path).st_gid == gid
        assert mode_of(path) == 0o640


def test_temp_file_is_never_wider_than_the_final_file(tmp_path: Path) -> None:
    """With umask 0, a watcher sees the temp file only as 0600, or with group bits once its group is already set."""
    gid = spare_gid()
    path = tmp_path / "big.token"
    data = b"x" * (4 << 20)
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for name in temps_in(tmp_path):
                with contextlib.suppress(FileNotFoundError):
                    info = os.stat(tmp_path / name)
                    seen.append((stat.S_IMODE(info.st_mode), info.st_gid))

    watcher = threading.Thread(target=watch, daemon=True)
    with umask(0):
        watcher.start()
        try:
            deadline = time.monotonic() + 10
            writes = 0
            while (len(seen) < 3 or writes < 5) and time.monotonic() < deadline:
                atomic_write(path, data, 0o640, gid)
                writes += 1
        finally:
            stop.set()
            watcher.join(5)
    assert seen, "the watcher never caught a temp file"
    for mode, file_gid in seen:
        assert mode & ~0o640 == 0, oct(mode)  # never wider than the final 0640
        assert mode & 0o070 == 0 or file_gid == gid  # group bits only once the group is the final one
    assert mode_of(path) == 0o640 and os.stat(path).st_gid == gid


def test_atomic_write_into_a_missing_directory_creates_nothing(tmp_path: Path) -> None:
    """A file where a directory should be fails the write (even as root) and leaves nothing behind."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(NotADirectoryError):
        atomic_write(blocker / "a.token", b"tok\n", 0o640)
    assert os.listdir(tmp_path) == ["blocker"]


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    """A write that fails half-way (file size limit: EFBIG) leaves the old file whole and removes the temp file."""
    path = tmp_path / "a.token"
    path.write_bytes(b"old\n")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills us instead of failing write()
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(OSError) as info:
            atomic_write(path, b"y" * 100_000, 0o640)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert info.value.errno == 27  # EFBIG
    assert path.read_bytes() == b"old\n"
    assert sorted(os.listdir(tmp_path)) == ["a.token"]


def test_failed_rename_removes_the_temp_file(tmp_path: Path) -> None:
    """When the rename fails (a non-empty directory in the way), the temp file is removed and the directory kept."""
    target = tmp_path / "a.token"
    target.mkdir()
    (target / "inside").write_text("keep")
    with pytest.raises(OSError):
        atomic_write(target, b"tok\n", 0o640)
    assert sorted(os.listdir(tmp_path)) == ["a.token"]
    assert (target / "inside").read_text() == "keep"


def test_unknown_group_name_fails_before_any_file_exists(tmp_path: Path) -> None:
    """An unknown group name raises LookupError and creates no temp file."""
    with pytest.raises(LookupError, match="no such group 'no-such-group-freshtoken'"):
        atomic_write(tmp_path / "a.token", b"tok\n", 0o640, "no-such-group-freshtoken")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("group", "gid"), [(None, -1), (0, 0), ("0", 0), (4242, 4242), ("4242", 4242)])
def test_resolve_group_examples(group: str | int | None, gid: int) -> None:
    """None leaves the group alone (-1); numbers and digit strings are gids."""
    assert resolve_group(group) == gid


@pytest.mark.parametrize("group", [-1, -5, 2**32 - 1, 2**40, "99999999999", "²"])
def test_resolve_group_refuses_what_fchown_would_misread(group: str | int) -> None:
    """-1 would silently mean 'leave alone', and values outside gid_t would overflow: both are LookupError."""
    with pytest.raises(LookupError):
        resolve_group(group)


def test_fsync_dir_takes_a_directory_only(tmp_path: Path) -> None:
    """The directory fsync that makes a rename durable works on a directory and refuses a file."""
    fsync_dir(tmp_path)
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "f")


def test_clean_stale_temps_removes_only_old_temp_files(tmp_path: Path) -> None:
    """Temp files older than the limit go; young temp files (another writer's) and ordinary files stay."""
    now = 1_800_000_000.0
    files = {
        f"{TEMP_MARK}a.token.0123abcd": now - 120,
        f"{TEMP_MARK}a.json.89ef4567": now - 5,
        "a.token": now - 10_000,
        "a.json": now - 10_000,
        f"{TEMP_MARK}b.token.deadbeef": now - 60,
    }
    for name, mtime in files.items():
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (mtime, mtime))
    assert clean_stale_temps(tmp_path, older_than=60, now=now) == 2
    assert sorted(os.listdir(tmp_path)) == sorted(["a.token", "a.json", f"{TEMP_MARK}a.json.89ef4567"])
    assert clean_stale_temps(tmp_path / "missing", now=now) == 0


def test_ensure_dir_creates_with_mode_and_keeps_an_existing_one(tmp_path: Path) -> None:
    """A new directory (parents too) gets the mode despite the umask; an existing one keeps its own; a file is refused."""
    with umask(0o077):
        ensure_dir(tmp_path / "a" / "b", 0o750)
    assert mode_of(tmp_path / "a" / "b") == 0o750
    (tmp_path / "c").mkdir(mode=0o755)
    os.chmod(tmp_path / "c", 0o755)  # noqa: S103 (an existing dir keeps its own mode)
    ensure_dir(tmp_path / "c", 0o700)
    assert mode_of(tmp_path / "c") == 0o755
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError):
        ensure_dir(tmp_path / "f", 0o750)


def test_probe_writable(tmp_path: Path) -> None:
    """The start-up probe passes in a writable directory, leaves nothing, and fails under a file."""
    probe_writable(tmp_path)
    assert os.listdir(tmp_path) == []
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError):
        probe_writable(tmp_path / "f")


def test_locked_file_is_exclusive_per_open(tmp_path: Path) -> None:
    """A second open of the lock file times out while the first holds it, and gets it once released."""
    lock = tmp_path / "a.lock"
    with locked_file(lock):
        assert mode_of(lock) == 0o600
        with pytest.raises(TimeoutError, match="is locked by another process"), locked_file(lock, timeout=0.1, poll=0.02):
            pass
    with locked_file(lock, timeout=0.1):
        pass
    assert lock.exists()  # never deleted: everybody must lock the same inode


def test_readers_never_see_a_partial_or_empty_token(tmp_path: Path) -> None:
    """While a writer alternates two tokens (>= 200 writes), >= 2000 reads each see one whole token."""
    path = tmp_path / "a.token"
    first, second = b"A" * 300 + b"\n", b"B" * 9000 + b"\n"
    atomic_write(path, first, 0o640)
    reads: list[bytes] = []
    writes = 0
    done = threading.Event()

    def reader() -> None:
        while not done.is_set() or len(reads) < 2000:
            with open(path, "rb") as handle:
                reads.append(handle.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while (writes < 200 or len(reads) < 2000) and time.monotonic() < deadline:
        atomic_write(path, second if writes % 2 == 0 else first, 0o640)
        writes += 1
    done.set()
    thread.join(10)
    assert not thread.is_alive()
    assert writes >= 200 and len(reads) >= 2000
    bad = [r[:20] for r in reads if r not in (first, second)]
    assert bad == []
    assert {first, second} <= set(reads)
    assert temps_in(tmp_path) == []


# ---------------------------------------------------------------- outputs


def test_write_all_writes_the_token_dir_files(tmp_path: Path) -> None:
    """<account>.token holds the token and a newline, <account>.json the JSON; files 0640 in a 0750 dir."""
    token_dir = tmp_path / "run" / "freshtoken"
    with umask(0o077):
        write_all(token_dir, account(), TOKEN)
    token_file, json_file = token_paths(token_dir, "spotify")
    assert token_file == token_dir / "spotify.token" and json_file == token_dir / "spotify.json"
    assert token_file.read_bytes() == b"BQD4x-_.~+/=tok\n"
    assert json.loads(json_file.read_bytes()) == {
        "access_token": "BQD4x-_.~+/=tok",
        "token_type": "Bearer",
        "expires_at": EXPIRES,
        "expires_at_iso": "2027-01-15T09:00:00Z",
        "scope": "playlist-modify-private playlist-read",
        "account": "spotify",
    }
    assert mode_of(token_dir) == 0o750
    assert mode_of(token_file) == 0o640 and mode_of(json_file) == 0o640
    assert sorted(os.listdir(token_dir)) == ["spotify.json", "spotify.token"]


def test_write_all_writes_extra_outputs_with_their_modes(tmp_path: Path) -> None:
    """Each configured output gets its format, mode, group and variable name."""
    gid = spare_gid()
    home = tmp_path / "home"
    home.mkdir()
    extra = (
        Output(path=home / ".spotify_token", format="raw", mode=0o600),
        Output(path=home / "header", format="header", mode=0o640, group=gid),
        Output(path=home / "token.env", format="env", mode=0o644, name="SPOTIFY_TOKEN"),
        Output(path=home / "token.json", format="json", mode=0o400),
    )
    with umask(0):
        write_all(tmp_path / "tokens", account(outputs=extra), TOKEN)
    assert (home / ".spotify_token").read_bytes() == b"BQD4x-_.~+/=tok\n"
    assert (home / "header").read_bytes() == b"Authorization: Bearer BQD4x-_.~+/=tok\n"
    assert (home / "token.env").read_bytes() == b"SPOTIFY_TOKEN=BQD4x-_.~+/=tok\nSPOTIFY_TOKEN_EXPIRES_AT=1800003600\n"
    assert json.loads((home / "token.json").read_bytes())["account"] == "spotify"
    assert [mode_of(o.path) for o in extra] == [0o600, 0o640, 0o644, 0o400]
    assert os.stat(home / "header").st_gid == gid


def test_write_all_replaces_the_previous_token(tmp_path: Path) -> None:
    """A second write replaces every file's contents with the new token."""
    write_all(tmp_path, account(), TOKEN)
    write_all(tmp_path, account(), AccessToken(Secret("second"), "Bearer", EXPIRES + 3600))
    assert (tmp_path / "spotify.token").read_bytes() == b"second\n"
    assert json.loads((tmp_path / "spotify.json").read_bytes())["expires_at"] == EXPIRES + 3600


def test_a_failing_output_is_named_and_the_others_are_still_written(tmp_path: Path) -> None:
    """An output under a file fails with OutputError naming its path, after every other output was written."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    extra = (Output(path=blocker / "token"), Output(path=tmp_path / "after.token"))
    with pytest.raises(OutputError) as info:
        write_all(tmp_path / "tokens", account(outputs=extra), TOKEN)
    assert str(info.value) == f"could not write {blocker / 'token'}: Not a directory"
    assert (tmp_path / "tokens" / "spotify.token").read_bytes() == b"BQD4x-_.~+/=tok\n"
    assert (tmp_path / "tokens" / "spotify.json").exists()
    assert (tmp_path / "after.token").read_bytes() == b"BQD4x-_.~+/=tok\n"
    assert temps_in(tmp_path) == []


def test_an_unusable_token_dir_is_an_output_error_and_extras_are_written(tmp_path: Path) -> None:
    """A file where the token dir should be gives one OutputError naming the dir; outputs elsewhere still get the token."""
    token_dir = tmp_path / "tokens"
    token_dir.write_text("")
    extra = (Output(path=tmp_path / "elsewhere.token"),)
    with pytest.raises(OutputError) as info:
        write_all(token_dir, account(outputs=extra), TOKEN)
    assert str(info.value) == f"could not write {token_dir}: exists and is not a directory"
    assert (tmp_path / "elsewhere.token").read_bytes() == b"BQD4x-_.~+/=tok\n"


def test_an_unknown_group_is_an_output_error(tmp_path: Path) -> None:
    """A group that does not exist fails only that output, naming path and group."""
    extra = (Output(path=tmp_path / "x.token", group="no-such-group-freshtoken"),)
    with pytest.raises(OutputError) as info:
        write_all(tmp_path / "tokens", account(outputs=extra), TOKEN)
    assert str(info.value) == f"could not write {tmp_path / 'x.token'}: no such group 'no-such-group-freshtoken'"
    assert (tmp_path / "tokens" / "spotify.token").exists()


def test_an_unsafe_token_writes_nothing(tmp_path: Path) -> None:
    """A token that could inject a line is refused before any file is touched."""
    with pytest.raises(UnsafeToken):
        write_all(tmp_path / "tokens", account(), AccessToken(Secret("a\nb"), "Bearer", EXPIRES))
    assert os.listdir(tmp_path / "tokens") == []


def test_all_outputs_lists_json_then_token_then_extras(tmp_path: Path) -> None:
    """The token dir's .json comes first (what `get` reads), then .token, then the configured outputs."""
    extra = Output(path=tmp_path / "x")
    assert [o.path.name for o in all_outputs(tmp_path, account(outputs=(extra,)))] == ["spotify.json", "spotify.token", "x"]


# ---------------------------------------------------------------- store


STATE = AccountState(
    refresh_token=Secret("R1"),
    refresh_token_obtained_at=1_790_000_000.0,
    seed="abcd",
    access=AccessToken(Secret("A1"), "Bearer", float(EXPIRES), "s"),
    last_refresh=1_800_000_000.0,
)


def test_store_creates_a_private_dir_and_private_files(tmp_path: Path) -> None:
    """The state dir is created 0700 and each state file 0600, whatever the umask."""
    store = Store(tmp_path / "state")
    with umask(0), store.transaction("spotify") as tx:
        tx.save(STATE)
    assert mode_of(tmp_path / "state") == 0o700
    assert mode_of(tmp_path / "state" / "spotify.json") == 0o600
    assert store.load("spotify") == STATE


def test_store_tightens_a_wider_state_dir(tmp_path: Path) -> None:
    """An existing state dir with group/other bits is tightened to 0700."""
    (tmp_path / "state").mkdir()
    os.chmod(tmp_path / "state", 0o755)  # noqa: S103 (the too-wide dir to be tightened)
    Store(tmp_path / "state").prepare()
    assert mode_of(tmp_path / "state") == 0o700


def test_store_prepare_removes_stale_temps(tmp_path: Path) -> None:
    """Temp files a crash left in the state dir are removed at start."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    stale = state / f"{TEMP_MARK}spotify.json.0000dead"
    stale.write_text("{}")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    Store(state).prepare()
    assert not stale.exists()


def test_load_of_a_missing_state_is_empty(tmp_path: Path) -> None:
    """No state file yet: an empty AccountState, and no file or dir created."""
    assert Store(tmp_path / "state").load("spotify") == AccountState()
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("damage", [b"{not json", b"", b"[1, 2]", b'{"access_token": "A", "expires_at": "soon"}', b"\xff\xfe", b'"x"'])
def test_damaged_state_is_moved_aside(tmp_path: Path, damage: bytes) -> None:
    """On the write path an unreadable state file is moved to <name>.damaged-<time> with its bytes intact, and starts afresh."""
    store = Store(tmp_path)
    (tmp_path / "spotify.json").write_bytes(damage)
    with store.transaction("spotify") as tx:
        assert tx.state == AccountState()
        tx.reserve()  # the first write of the transaction
        assert not (tmp_path / "spotify.json").exists()
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith("spotify.json.damaged-")]
    assert aside.read_bytes() == damage
    assert aside.name.removeprefix("spotify.json.damaged-").isdigit()


def test_store_mtime(tmp_path: Path) -> None:
    """mtime is None before the first save and the file's mtime after."""
    store = Store(tmp_path)
    assert store.mtime("spotify") is None
    with store.transaction("spotify") as tx:
        tx.save(STATE)
    assert store.mtime("spotify") == os.stat(tmp_path / "spotify.json").st_mtime


def test_account_lock_times_out_as_a_temporary_error(tmp_path: Path) -> None:
    """While one holder has the account lock, another gives up after lock_timeout with a TemporaryError."""
    with Store(tmp_path).transaction("spotify"):
        with pytest.raises(TemporaryError, match="spotify: another freshtoken process has held the account lock"):
            with Store(tmp_path, lock_timeout=0.1).transaction("spotify"):
                pass
        with Store(tmp_path).transaction("other"):  # other accounts are not blocked
            pass


def test_second_daemon_lock_in_process_is_refused(tmp_path: Path) -> None:
    """A second DaemonLock (another open file description) is refused with our pid; after release it is free again."""
    store = Store(tmp_path / "state")
    with store.daemon_lock():
        assert (tmp_path / "state" / "daemon.pid").read_text() == f"{os.getpid()}\n"
        with pytest.raises(AlreadyRunning) as info:
            store.daemon_lock().acquire()
        assert str(info.value) == f"another freshtoken daemon (pid {os.getpid()}) is already using state dir {tmp_path / 'state'}"
    with store.daemon_lock():
        pass


HOLD_LOCK = """
import sys
from pathlib import Path
from freshtoken.store import Store
with Store(Path(sys.argv[1])).daemon_lock():
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_daemon_lock_held_by_another_process_names_its_pid(tmp_path: Path) -> None:
    """While another process holds the daemon lock, acquiring it fails with that process's pid; once it exits, it works."""
    state = tmp_path / "state"
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(state)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], 20)
        assert ready and holder.stdout.readline() == "locked\n"
        with pytest.raises(AlreadyRunning, match=rf"\(pid {holder.pid}\) is already using state dir {state}$"):
            Store(state).daemon_lock().acquire()
        holder.stdin.close()
        assert holder.wait(timeout=20) == 0
    with Store(state).daemon_lock():
        assert (state / "daemon.pid").read_text() == f"{os.getpid()}\n"
