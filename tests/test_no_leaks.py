"""Known secrets (client secret, refresh tokens, access tokens) never show up in logs, stderr, errors or hooks."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes import FakeClock
from freshtoken import cli
from freshtoken import config as config_module
from freshtoken.config import Account
from freshtoken.errors import FreshtokenError, InvalidGrant
from freshtoken.model import Secret
from freshtoken.oauth import Timeouts, TokenClient, make_session
from freshtoken.refresh import Refresher
from freshtoken.store import Store
from freshtoken.testing import AuthServer

CLIENT_ID = "leak-test-client"
CLIENT_SECRET = "CLIENTSECRET-4f9a1c-never-print-me"

CONFIG = """\
state_dir: {state}
token_dir: {tokens}
hook_timeout: 5
accounts:
  demo:
    token_url: {token_url}
    client_id: {client_id}
    client_secret: {secret}
    client_auth: {auth}
    refresh_token: {seed}
{extra}
"""


@pytest.fixture
def server() -> Iterator[AuthServer]:
    """An AuthServer whose only confidential client has a distinctive secret."""
    with AuthServer(clients={CLIENT_ID: CLIENT_SECRET}, token_lifetime=3600) as s:
        yield s


class Secrets:
    """Every secret a test has seen: the client secret, the seed, and whatever the state has held since."""

    def __init__(self, seed: str, state_dir: Path) -> None:
        self.known = {CLIENT_SECRET, seed}
        self.state_dir = state_dir

    def collect(self) -> set[str]:
        path = self.state_dir / "demo.json"
        if path.exists():
            state = json.loads(path.read_text())
            self.known |= {state[k] for k in ("refresh_token", "access_token") if state.get(k)}
        return self.known

    def assert_absent(self, text: str, where: str) -> None:
        for secret in self.collect():
            assert secret not in text, f"a secret leaked into {where}"


def write(write_config: Callable[..., Path], server: AuthServer, seed: str, auth: str = "basic", extra: str = "") -> Path:
    return write_config(CONFIG, token_url=server.token_url, client_id=CLIENT_ID, secret=CLIENT_SECRET, auth=auth, seed=seed, extra=extra)


# Error replies that try hard to make us print a secret back.
def hostile_replies(seed: str) -> list[dict[str, Any]]:
    return [
        {"status": 400, "json": {"error": "invalid_grant", "error_description": f"refresh_token={seed} is revoked"}},
        {"status": 401, "json": {"error": "invalid_client", "error_description": f"client_secret {CLIENT_SECRET} is wrong"}},
        {"status": 400, "json": {"error": f"weird_{seed}", "error_description": "x"}},
        {"status": 500, "json": {"error": "server_error", "error_description": f"echo: grant_type=refresh_token&refresh_token={seed}"}},
        {"status": 503, "body": f"<html>{seed} {CLIENT_SECRET}</html>"},
        {"status": 200, "raw": f'{{"refresh_token": "{seed}", "access_token": '.encode(), "headers": {"Content-Type": "application/json"}},
        {"status": 404, "body": f"<html>no such page for {CLIENT_SECRET}</html>"},
        {"status": 429, "json": {"error": "slow_down", "error_description": CLIENT_SECRET}, "headers": {"Retry-After": "3"}},
        {"drop": True},
        {"delay": 2.0, "status": 500},
    ]


@pytest.mark.parametrize("auth", ["basic", "post"])
def test_http_error_paths_never_carry_a_secret(server: AuthServer, auth: str) -> None:
    """str(), repr() and the printed traceback of every HTTP failure hold no secret, however the server echoes them."""
    seed = server.issue_refresh_token(CLIENT_ID)
    account = Account(
        name="demo",
        token_url=server.token_url,
        client_id=CLIENT_ID,
        client_secret=Secret(CLIENT_SECRET),
        client_auth=auth,
        refresh_token=Secret(seed),
    )
    session = make_session()
    client = TokenClient(session, Timeouts(2.0, 0.3), clock=FakeClock())
    try:
        replies = hostile_replies(seed)
        for reply in replies:
            server.script(**reply)
            with pytest.raises(FreshtokenError) as caught:
                client.refresh(account, Secret(seed))
            error = caught.value
            printed = "".join(traceback.format_exception(error)) + repr(error) + repr(error.args)
            for secret in (seed, CLIENT_SECRET):
                assert secret not in printed, reply
    finally:
        session.close()
    assert server.token_requests == len(replies)


def test_connection_errors_do_not_echo_url_credentials(server: AuthServer) -> None:
    """A token_url with user:password in it is named by host only in a connection error."""
    account = Account(
        name="demo", token_url="http://someone:URLPASSWORD@127.0.0.1:9/api/token", client_id=CLIENT_ID, client_secret=Secret(CLIENT_SECRET)
    )
    session = make_session()
    try:
        with pytest.raises(FreshtokenError) as caught:
            TokenClient(session, Timeouts(2.0, 1.0)).refresh(account, Secret("rt"))
    finally:
        session.close()
    assert "URLPASSWORD" not in "".join(traceback.format_exception(caught.value))
    assert "127.0.0.1:9" in str(caught.value)


def test_debug_logs_of_refreshes_and_failures_hold_no_secret(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, write_config: Callable[..., Path], server: AuthServer
) -> None:
    """At DEBUG (urllib3 included), successes, every failure kind and a chatty hook log no secret."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")
    seed = server.issue_refresh_token(CLIENT_ID)
    hook = tmp_path / "hook.sh"
    # A hook that prints the token it read, as `set -x` or a failing curl would, then fails.
    hook.write_text('#!/bin/sh\necho "bad token: $(cat "$FRESHTOKEN_TOKEN_FILE")" >&2\nexit 3\n')
    hook.chmod(0o755)
    path = write(write_config, server, seed, extra=f'    on_refresh: ["{hook}"]')
    config = config_module.load(path, os.environ)
    session = make_session()
    clock = FakeClock()
    refresher = Refresher(config, Store(config.state_dir), TokenClient(session, Timeouts(2.0, 0.3), clock=clock), clock=clock)
    secrets = Secrets(seed, config.state_dir)
    account = config.accounts["demo"]
    try:
        refresher.refresh(account)
        rotated = json.loads((config.state_dir / "demo.json").read_text())["refresh_token"]
        for reply in hostile_replies(rotated)[1:]:
            server.script(**reply)
            with pytest.raises(FreshtokenError):
                refresher.refresh(account)
        server.script(200, json={"access_token": "UNSAFE\nTOKEN-leak", "refresh_token": "ROTATED-IN-BAD-ANSWER", "expires_in": 3600})
        with pytest.raises(FreshtokenError):
            refresher.refresh(account)
        secrets.known |= {"UNSAFE", "ROTATED-IN-BAD-ANSWER"}
        with pytest.raises(InvalidGrant):
            refresher.refresh(account)  # spends the token from the refused answer, which the server never issued
    finally:
        session.close()
    assert any(r.getMessage().endswith("hook.sh (bad token: <redacted>)") for r in caplog.records)
    assert any(r.name.startswith("urllib3") for r in caplog.records)
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records) + caplog.text
    secrets.assert_absent(text, "logs")


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), environ=dict(os.environ), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_one_shot_commands_print_no_secret(write_config: Callable[..., Path], server: AuthServer) -> None:
    """refresh (ok and failing, -vv), status, status --json and check-config print no secret on stdout or stderr."""
    seed = server.issue_refresh_token(CLIENT_ID)
    path = write(write_config, server, seed)
    config = config_module.load(path, os.environ)
    secrets = Secrets(seed, config.state_dir)
    printed = []
    assert run_cli("-vv", "-c", str(path), "refresh")[0] == 0
    printed.append(run_cli("-vv", "-c", str(path), "refresh"))
    server.script(401, json={"error": "invalid_client", "error_description": f"bad secret {CLIENT_SECRET}"})
    printed.append(run_cli("-vv", "-c", str(path), "refresh"))
    state = json.loads((config.state_dir / "demo.json").read_text())
    server.script(400, json={"error": "invalid_grant", "error_description": f"token {state['refresh_token']} revoked"})
    printed.append(run_cli("-vv", "-c", str(path), "refresh"))
    printed.append(run_cli("-c", str(path), "status"))
    printed.append(run_cli("-c", str(path), "status", "--json"))
    printed.append(run_cli("-c", str(path), "check-config"))
    assert [code for code, _, _ in printed] == [0, 1, 1, 0, 0, 0]
    for _code, out, err in printed:
        secrets.assert_absent(out + err, "command output")
    assert "invalid_client" in printed[1][2] and "invalid_grant" in printed[2][2]


def test_config_errors_do_not_echo_the_secret(write_config: Callable[..., Path], server: AuthServer) -> None:
    """A config error about an account (a bad client_auth) does not print the secret next to it."""
    path = write_config(
        CONFIG, token_url=server.token_url, client_id=CLIENT_ID, secret=CLIENT_SECRET, auth="sometimes", seed="SEED-in-config-xyz", extra=""
    )
    code, out, err = run_cli("-c", str(path), "check-config")
    assert code == 78
    assert "client_auth" in err
    assert CLIENT_SECRET not in out + err and "SEED-in-config-xyz" not in out + err


def test_daemon_failure_logs_hold_no_secret(write_config: Callable[..., Path], server: AuthServer) -> None:
    """`freshtoken -vv run` refreshing, then hitting an echoing invalid_grant, writes no secret to stderr."""
    seed = server.issue_refresh_token(CLIENT_ID)
    server.script(400, json={"error": "invalid_grant", "error_description": f"refresh token {seed} revoked, secret {CLIENT_SECRET}"})
    path = write(write_config, server, seed)
    config = config_module.load(path, os.environ)
    process = subprocess.Popen(
        [sys.executable, "-m", "freshtoken", "-vv", "-c", str(path), "run"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    told = threading.Event()  # set once the daemon has logged what the user must do: the line this test is about

    def read_output() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "freshtoken login demo" in line:
                told.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        assert told.wait(timeout=30), "".join(lines)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        reader.join(timeout=20)
        assert process.stdout is not None
        process.stdout.close()
    output = "".join(lines)
    assert process.returncode == 0, output
    assert "invalid_grant" in output
    assert '"needs_login": true' in _read(config.state_dir / "demo.json")
    Secrets(seed, config.state_dir).assert_absent(output, "daemon output")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_hooks_get_no_secret_in_argv_or_environment(
    tmp_path: Path, write_config: Callable[..., Path], server: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hook's argv and environment hold no secret, even when freshtoken's own environment carries them."""
    seed = server.issue_refresh_token(CLIENT_ID)
    monkeypatch.setenv("SPOTIFY_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("SPOTIFY_REFRESH_TOKEN", seed)
    dump = tmp_path / "dump"
    hook = tmp_path / "hook.py"
    hook.write_text(
        f"#!{sys.executable}\nimport sys\nenviron = open('/proc/self/environ', 'rb').read()\n"
        f"open({str(dump)!r}, 'wb').write(environ + b'\\0ARGV\\0' + '\\0'.join(sys.argv).encode())\n"
    )
    hook.chmod(0o755)
    path = write_config(
        CONFIG.replace("client_secret: {secret}", "client_secret: ${{SPOTIFY_CLIENT_SECRET}}").replace(
            "refresh_token: {seed}", "refresh_token: ${{SPOTIFY_REFRESH_TOKEN}}"
        ),
        token_url=server.token_url,
        client_id=CLIENT_ID,
        auth="post",
        extra=f'    on_refresh: ["{hook}", "--account", "demo"]',
    )
    code, out, err = run_cli("-c", str(path), "refresh")
    assert code == 0, err
    dumped = dump.read_text()
    assert "FRESHTOKEN_TOKEN_FILE=" in dumped and "--account" in dumped
    config = config_module.load(path, os.environ)
    Secrets(seed, config.state_dir).assert_absent(dumped, "hook argv/env")
