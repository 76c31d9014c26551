"""Hardening of the config, `check-config`, `run`'s start-up checks, `status` and `get` (issue 8)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshtoken import cli, config, status
from freshtoken.errors import ConfigError
from freshtoken.model import AccessToken, AccountState, Secret

PUBLIC = "    token_url: http://127.0.0.1:1/t\n    client_id: x\n    client_auth: none\n"
DIRS = "state_dir: {state}\ntoken_dir: {tokens}\n"


def main(*argv: str, environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    """cli.main in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), environ=dict(os.environ) if environ is None else environ, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def freshtoken_process(*argv: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m freshtoken ARGV` as a real process; the timeout only bounds a failure (a daemon that keeps running)."""
    return subprocess.run(
        [sys.executable, "-m", "freshtoken", *argv], env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )


def tree(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every path under `root` with its mode, mtime and content: a snapshot to prove nothing was written."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        found[str(path)] = (info.st_mode, info.st_mtime_ns, path.read_bytes() if path.is_file() else b"")
    return found


# ---------------------------------------------------------------- 1. account names


@pytest.mark.parametrize("name", [".freshtoken-tmp-x", ".freshtoken-tmp-probe.1234", ".hidden", "-dash", "_under", ".", ".."])
def test_account_names_cannot_look_like_freshtoken_files(name: str) -> None:
    """An account name must start with a letter or digit, so its files never match the temp-file sweep or hide as dot-files."""
    document = {"accounts": {name: {"token_url": "http://127.0.0.1:1/t", "client_id": "x", "client_auth": "none"}}}
    with pytest.raises(ConfigError) as info:
        config.parse(document, "f.yaml", {"XDG_RUNTIME_DIR": "/run/user/1", "HOME": "/home/u"})
    assert "start with a letter or digit" in str(info.value)


@pytest.mark.parametrize("name", ["a", "9lives", "spotify.work", "a_b-c.d", "X"])
def test_ordinary_account_names_still_pass(name: str) -> None:
    """Names starting with a letter or digit and using letters, digits, '_', '.' and '-' are accepted."""
    document = {"accounts": {name: {"token_url": "http://127.0.0.1:1/t", "client_id": "x", "client_auth": "none"}}}
    assert list(config.parse(document, "f.yaml", {"XDG_RUNTIME_DIR": "/run/user/1", "HOME": "/home/u"}).accounts) == [name]


# ---------------------------------------------------------------- 2. check-config hides userinfo


def test_check_config_prints_no_userinfo(write_config: Callable[..., Path]) -> None:
    """check-config prints token_url, authorize_url and redirect_uri without their `user:password@` part."""
    path = write_config(
        DIRS + "accounts:\n  demo:\n    token_url: http://alice:tok-pass@127.0.0.1:1/t?x=1\n"
        "    authorize_url: https://bob:auth-pass@login.example/authorize\n"
        "    redirect_uri: http://carol:cb-pass@127.0.0.1:8888/callback\n    client_id: x\n    client_auth: none\n"
    )
    code, out, err = main("-c", str(path), "check-config")
    assert code == 0, err
    for leaked in ("alice", "tok-pass", "bob", "auth-pass", "carol", "cb-pass", "@"):
        assert leaked not in out + err
    assert "refresh_token grant at http://127.0.0.1:1/t?x=1 (client x, auth none)" in out
    assert "login at https://login.example/authorize (redirect http://127.0.0.1:8888/callback)" in out


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@host/t", "https://host/t"),
        ("https://u:p@w@host:8443/t?q=a@b#f@g", "https://host:8443/t?q=a@b#f@g"),
        ("http://host/path@x", "http://host/path@x"),
        ("http://[::1]:9/t", "http://[::1]:9/t"),
        ("https://u@[::1/t", "https://[::1/t"),
        ("https://user:pass@host", "https://host"),
    ],
)
def test_public_url_drops_only_the_userinfo(url: str, shown: str) -> None:
    """public_url removes the authority's userinfo (up to its last @) and keeps path, query and fragment."""
    assert status.public_url(url) == shown


# ---------------------------------------------------------------- 3. warnings: metrics_listen and output modes


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "[::]:9464", "192.168.1.5:9464", "metrics.example:9464"])
def test_metrics_listen_beyond_loopback_warns(listen: str) -> None:
    """metrics_listen on a non-loopback address (or a host name) gives a warning naming the key."""
    document = {"metrics_listen": listen, "accounts": {"a": {"token_url": "http://127.0.0.1:1/t", "client_id": "x", "client_auth": "none"}}}
    result = config.parse(document, "f.yaml", {"XDG_RUNTIME_DIR": "/run/user/1", "HOME": "/home/u"})
    (warning,) = result.warnings
    assert warning.startswith("f.yaml: metrics_listen: ") and "not a loopback address" in warning


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "127.0.0.53:1", "[::1]:9464", "localhost:9464"])
def test_metrics_listen_on_loopback_is_quiet(listen: str) -> None:
    """metrics_listen on a loopback address gives no warning."""
    document = {"metrics_listen": listen, "accounts": {"a": {"token_url": "http://127.0.0.1:1/t", "client_id": "x", "client_auth": "none"}}}
    assert config.parse(document, "f.yaml", {"XDG_RUNTIME_DIR": "/run/user/1", "HOME": "/home/u"}).warnings == ()


@pytest.mark.parametrize(("mode", "warns"), [("'0644'", True), ("'0604'", True), ("0444", True), ("'0640'", False), ("'0600'", False)])
def test_world_readable_output_mode_warns(mode: str, warns: bool, write_config: Callable[..., Path]) -> None:
    """An output mode every user can read gives a check-config warning naming the output's mode key and line."""
    path = write_config(DIRS + "accounts:\n  demo:\n" + PUBLIC + f"    outputs:\n      - path: {{tmp}}/out.token\n        mode: {mode}\n")
    code, _, err = main("-c", str(path), "check-config")
    assert code == 0, err
    expected = f"warning: {path}:10: accounts.demo.outputs[0].mode: "
    assert (expected in err) is warns, err
    if warns:
        assert "lets every user on this host read the token" in err


def test_world_writable_output_mode_is_still_refused() -> None:
    """A world-writable output mode stays an error (stricter than a warning): anyone could swap the token."""
    document = {
        "accounts": {
            "a": {"token_url": "http://127.0.0.1:1/t", "client_id": "x", "client_auth": "none", "outputs": [{"path": "/x", "mode": "0666"}]}
        }
    }
    with pytest.raises(ConfigError, match="world-writable"):
        config.parse(document, "f.yaml", {"XDG_RUNTIME_DIR": "/run/user/1", "HOME": "/home/u"})


# ---------------------------------------------------------------- 4. run refuses what check-config refuses


def test_run_exits_78_on_a_token_dir_that_cannot_be_created(write_config: Callable[..., Path], tmp_path: Path) -> None:
    """`run` with a token dir under a regular file exits 78 naming file, line, key and problem, as check-config does."""
    (tmp_path / "blocker").write_text("")
    path = write_config("state_dir: {state}\ntoken_dir: {tmp}/blocker/tokens\naccounts:\n  demo:\n" + PUBLIC)
    proc = freshtoken_process("-c", str(path), "run")
    assert proc.returncode == 78, proc
    assert f"freshtoken: {path}:2: token_dir: {tmp_path}/blocker/tokens is not writable" in proc.stderr
    assert "Traceback" not in proc.stderr
    check = freshtoken_process("-c", str(path), "check-config")
    assert check.returncode == 78 and check.stderr == proc.stderr


def test_metrics_listen_without_prometheus_client_is_a_config_error(write_config: Callable[..., Path], tmp_path: Path) -> None:
    """With prometheus_client not importable, check-config and run both exit 78 naming metrics_listen and the pip extra."""
    shadow = tmp_path / "shadow" / "prometheus_client"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'prometheus_client'\", name='prometheus_client')\n")
    path = write_config(DIRS + "metrics_listen: 127.0.0.1:9\naccounts:\n  demo:\n" + PUBLIC)
    for command in ("check-config", "run"):
        proc = freshtoken_process("-c", str(path), command, PYTHONPATH=str(tmp_path / "shadow"))
        assert proc.returncode == 78, (command, proc)
        assert f"freshtoken: {path}:3: metrics_listen: needs prometheus_client" in proc.stderr
        assert "pip install 'freshtoken[metrics]'" in proc.stderr


# ---------------------------------------------------------------- 5. status and get survive any stored content


def _state(expires_at: Any = None, **fields: Any) -> dict[str, Any]:
    now = time.time()
    data = AccountState(
        refresh_token=Secret("rt-secret-value"),
        access=AccessToken(Secret("at-secret-value"), "Bearer", now + 3000),
        last_refresh=now - 600,
    ).to_json()
    if expires_at is not None:
        data["expires_at"] = expires_at
    return {**data, **fields}


def _four_accounts(write_config: Callable[..., Path]) -> Path:
    accounts = "".join(f"  {name}:\n" + PUBLIC for name in ("good", "garbled", "far", "wordy", "deep"))
    return write_config(DIRS + "accounts:\n" + accounts)


def test_status_shows_a_damaged_state_in_its_row_and_goes_on(write_config: Callable[..., Path], dirs: dict[str, Path]) -> None:
    """Damaged or absurd state files each give an `error` row saying why; the healthy account is shown; exit 1; no secret."""
    path = _four_accounts(write_config)
    dirs["state"].mkdir(mode=0o700)
    (dirs["state"] / "good.json").write_text(json.dumps(_state()))
    (dirs["state"] / "garbled.json").write_text('{"refresh_token": "rt-secret-value", ')
    (dirs["state"] / "far.json").write_text(json.dumps(_state(1e300)))
    (dirs["state"] / "wordy.json").write_text(json.dumps(_state("tomorrow")))
    (dirs["state"] / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    code, out, err = main("-c", str(path), "status")
    assert code == 1, (out, err)
    rows = {line.split()[0]: line for line in out.split("\n\n", 1)[1].splitlines()[1:]}
    assert rows["good"].split()[1] == "fresh"
    assert f"{dirs['state']}/garbled.json is unusable" in rows["garbled"] and rows["garbled"].split()[1] == "error"
    assert f"{dirs['state']}/far.json is unusable (expires_at" in rows["far"] and "out of range" in rows["far"]
    assert f"{dirs['state']}/wordy.json is unusable" in rows["wordy"]
    assert f"{dirs['state']}/deep.json is unusable" in rows["deep"]
    code, out, _ = main("-c", str(path), "status", "--json")
    assert code == 1
    by_name = {row["account"]: row for row in json.loads(out)}
    assert by_name["good"]["state"] == "fresh" and by_name["far"]["state"] == "error"
    assert "out of range" in by_name["far"]["error"]
    assert "secret-value" not in out


def test_status_writes_nothing(write_config: Callable[..., Path], dirs: dict[str, Path], tmp_path: Path) -> None:
    """`status` moves, creates and changes nothing: a damaged state file stays where it is, missing dirs stay missing."""
    path = _four_accounts(write_config)
    code, _, _ = main("-c", str(path), "status")
    assert code == 0
    assert not dirs["state"].exists() and not dirs["tokens"].exists()
    dirs["state"].mkdir(mode=0o700)
    (dirs["state"] / "garbled.json").write_text("{not json")
    (dirs["state"] / "far.json").write_text(json.dumps(_state(float("inf"))))
    before = tree(tmp_path)
    for args in (("status",), ("status", "--json")):
        assert main("-c", str(path), *args)[0] == 1
    assert tree(tmp_path) == before


TOKEN_FILES = {
    "empty": b"",
    "garbage": b"\xff\xfe not utf-8",
    "not an object": b"[1, 2]",
    "huge expires_at": b'{"access_token": "t", "expires_at": 1e300}',
    "overflowing expires_at": b'{"access_token": "t", "expires_at": 1e400}',
    "a 5000-digit expires_at": b'{"access_token": "t", "expires_at": ' + b"9" * 5000 + b"}",
    "string expires_at": b'{"access_token": "t", "expires_at": "99999999999"}',
    "boolean expires_at": b'{"access_token": "t", "expires_at": true}',
    "NaN expires_at": b'{"access_token": "t", "expires_at": NaN}',
    "Infinity expires_at": b'{"access_token": "t", "expires_at": Infinity}',
    "number token": b'{"access_token": 12345, "expires_at": 99999999999}',
    "object token": b'{"access_token": {"a": 1}, "expires_at": 99999999999}',
    "empty token": b'{"access_token": "", "expires_at": 99999999999}',
    "list token type": b'{"access_token": "t", "token_type": [1], "expires_at": 99999999999}',
    "nested a million deep": b'{"access_token": ' + b"[" * 1_000_000 + b"]" * 1_000_000 + b"}",
    "5 MiB": b'{"access_token": "' + b"t" * (5 << 20) + b'", "expires_at": 99999999999}',
}


@pytest.mark.parametrize("content", list(TOKEN_FILES.values()), ids=list(TOKEN_FILES))
def test_get_refuses_any_odd_token_file_in_one_line(content: bytes, dirs: dict[str, Path]) -> None:
    """`get` on a damaged or absurd token file exits 1 with one line naming the file, never a traceback or a bogus token."""
    dirs["tokens"].mkdir()
    (dirs["tokens"] / "demo.json").write_bytes(content)
    code, out, err = main("get", "demo", "--token-dir", str(dirs["tokens"]))
    assert (code, out) == (1, "")
    assert err == f"freshtoken: {dirs['tokens']}/demo.json is not a freshtoken token file\n"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    document=st.dictionaries(
        st.sampled_from(["access_token", "expires_at", "token_type", "scope"]),
        json_values | st.sampled_from(["tok", 99999999999, 1.5e9]),
        max_size=4,
    )
)
def test_get_prints_a_token_or_one_line_for_any_json(document: dict[str, Any], tmp_path: Path) -> None:
    """For any JSON object in the token file, `get` prints a token (exit 0) or one `freshtoken: ...` line (exit 1)."""
    tokens = tmp_path / "hyp-tokens"
    tokens.mkdir(exist_ok=True)
    (tokens / "demo.json").write_text(json.dumps(document))
    code, out, err = main("get", "demo", "--token-dir", str(tokens))
    if code == 0:
        assert out == f"{document['access_token']}\n" and err == ""
    else:
        assert (code, out) == (1, "") and err.startswith("freshtoken: ") and err.count("\n") == 1


@pytest.mark.parametrize("account", ["../demo", ".demo", "a/b", "", "-"])
def test_get_refuses_a_name_no_account_can_have(account: str, dirs: dict[str, Path]) -> None:
    """`get` refuses (exit 2) a name that is not an account name instead of reading a path built from it."""
    code, out, err = main("get", "--token-dir", str(dirs["tokens"]), "--", account)
    assert code == 2 and out == ""
    assert "not an account name" in err or "usage" in err


# ---------------------------------------------------------------- 6. an OSError names its file


def test_run_names_the_file_of_an_os_error(write_config: Callable[..., Path], dirs: dict[str, Path]) -> None:
    """An OSError reaching the command line is printed with its path (here: a directory where the daemon's pid file goes)."""
    path = write_config(DIRS + "accounts:\n  demo:\n" + PUBLIC)
    (dirs["state"] / "daemon.pid").mkdir(parents=True)
    os.chmod(dirs["state"], 0o700)
    proc = freshtoken_process("-c", str(path), "run")
    assert proc.returncode == 1, proc
    assert f"{dirs['state']}/daemon.pid" in proc.stderr
    assert "Traceback" not in proc.stderr
