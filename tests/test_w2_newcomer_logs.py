"""`--log-format json` (and $FRESHTOKEN_LOG_FORMAT): one JSON object per log line, for Loki or Elasticsearch; never a secret."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from fakes import poll
from freshtoken import cli, systemd
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer

TWO = """\
state_dir: {state}
token_dir: {tokens}
accounts:
  good:
    token_url: {token_url}
    client_id: {client_id}
    client_secret: {secret}
    refresh_token: {good}
  bad:
    token_url: {token_url}
    client_id: {client_id}
    client_secret: {secret}
    refresh_token: {bad}
"""


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_", "JOURNAL_STREAM", "FRESHTOKEN_"))}
    env.update(extra)
    return env


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Every line as a JSON object with the four fixed fields; the time is RFC 3339 in UTC."""
    entries = []
    for line in text.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        assert entry["time"].endswith("Z")
        assert datetime.fromisoformat(entry["time"]).utcoffset() is not None
        entries.append(entry)
    return entries


@pytest.fixture
def two_accounts(write_config: Callable[..., Path], auth_server: AuthServer) -> tuple[Path, list[str]]:
    """A config with a live account `good` and an account `bad` whose refresh token the server refuses; and the secrets in it."""
    good = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    bad = "not-a-refresh-token-the-server-knows-0123456789"
    path = write_config(TWO, token_url=auth_server.token_url, client_id=DEMO_CLIENT_ID, secret=DEMO_CLIENT_SECRET, good=good, bad=bad)
    return path, [good, bad, DEMO_CLIENT_SECRET]


@pytest.mark.slow
def test_run_with_log_format_json_writes_only_json_lines(
    tmp_path: Path, dirs: dict[str, Path], two_accounts: tuple[Path, list[str]]
) -> None:
    """A real `freshtoken --log-format json -v run`: every stderr line is a JSON object; the refresh line carries
    account, event and expires_in as fields, the failing account's error line its account, and no line a secret."""
    config, secrets = two_accounts
    log = tmp_path / "daemon.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "freshtoken", "-c", str(config), "--log-format", "json", "-v", "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=child_env(),
        )
        try:
            assert poll(lambda: '"ready: ' in log.read_text() or process.poll() is not None), log.read_text()
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(5)
    text = log.read_text()
    entries = parse_lines(text)
    refreshed = [e for e in entries if e.get("event") == "refreshed"]
    assert [(e["account"], e["level"], e["logger"]) for e in refreshed] == [("good", "info", "freshtoken.refresh")]
    assert isinstance(refreshed[0]["expires_in"], int) and 3500 < refreshed[0]["expires_in"] <= 3600
    assert refreshed[0]["rotated"] in (True, False)
    assert any(e["level"] == "error" and e.get("account") == "bad" and "invalid_grant" in e["message"] for e in entries), text
    assert entries[-1]["message"] == "stopped"
    access_token = (dirs["tokens"] / "good.token").read_text().strip()
    for secret in [*secrets, access_token]:
        assert secret not in text


def test_log_format_comes_from_the_environment(two_accounts: tuple[Path, list[str]]) -> None:
    """With FRESHTOKEN_LOG_FORMAT=json, `refresh -v` logs JSON lines (its own summary stays plain on stdout)."""
    config, secrets = two_accounts
    out, err = io.StringIO(), io.StringIO()
    environ = {**os.environ, "FRESHTOKEN_LOG_FORMAT": "json"}
    cli.main(["-c", str(config), "-v", "refresh", "good"], environ=environ, stdout=out, stderr=err)
    entries = parse_lines(err.getvalue())
    assert [(e["event"], e["account"]) for e in entries if "event" in e] == [("refreshed", "good")]
    assert out.getvalue().startswith("good: refreshed; expires in ")
    assert not any(secret in err.getvalue() for secret in secrets)


def test_the_option_wins_over_the_environment_and_a_bad_value_is_refused(two_accounts: tuple[Path, list[str]]) -> None:
    """`--log-format plain` beats FRESHTOKEN_LOG_FORMAT=json; FRESHTOKEN_LOG_FORMAT=xml is exit 2 naming the variable."""
    config, _ = two_accounts
    err = io.StringIO()
    env = {**os.environ, "FRESHTOKEN_LOG_FORMAT": "json"}
    cli.main(["-c", str(config), "-v", "refresh", "good", "--log-format", "plain"], environ=env, stdout=io.StringIO(), stderr=err)
    assert " INFO refreshed account=good " in err.getvalue()
    assert "{" not in err.getvalue()
    err = io.StringIO()
    code = cli.main(
        ["-c", str(config), "refresh", "good"], environ={**env, "FRESHTOKEN_LOG_FORMAT": "xml"}, stdout=io.StringIO(), stderr=err
    )
    assert code == 2
    assert err.getvalue() == "freshtoken: $FRESHTOKEN_LOG_FORMAT must be one of plain, json, not 'xml'\n"


@pytest.mark.parametrize(("option", "prefix"), [([], "<6>refreshed account=good "), (["--log-format", "json"], '<6>{"time": ')])
def test_in_the_journal_plain_stays_the_default(
    tmp_path: Path, two_accounts: tuple[Path, list[str]], option: list[str], prefix: str
) -> None:
    """With stderr on the journal ($JOURNAL_STREAM), the journal's plain format stays the default; json keeps the <N> priority prefix."""
    config, _ = two_accounts
    with open(tmp_path / "journal", "w+") as journal:
        info = os.fstat(journal.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        cli.main(["-c", str(config), "-v", *option, "refresh", "good"], environ=env, stdout=io.StringIO(), stderr=journal)
        journal.seek(0)
        (line,) = [line for line in journal.read().splitlines() if "refreshed" in line]
    assert line.startswith(prefix)
    if option:
        assert json.loads(line[3:])["account"] == "good"


def record(message: str, *args: object, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("freshtoken.test", level, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_json_formatter_fields() -> None:
    """Canonical key=value lines become fields (a scope with blanks stays whole, an account named 123 stays text),
    `NAME: ...` lines of a configured account get that account, and a newline never splits a record."""
    formatter = systemd.JsonFormatter(lambda: {"alpha", "123"})
    as_json = lambda r: json.loads(formatter.format(r))  # noqa: E731
    entry = as_json(record("login account=%s scope=%s", "123", "read write"))
    assert (entry["event"], entry["account"], entry["scope"]) == ("login", "123", "read write")
    entry = as_json(record("account=%s next_refresh_in=%ds", "alpha", -1))
    assert ("event" in entry, entry["next_refresh_in"]) == (False, -1)
    assert as_json(record("%s: refresh refused: invalid_grant", "alpha"))["account"] == "alpha"
    assert as_json(record("hook for %s exited 1: /bin/false", "alpha"))["account"] == "alpha"
    assert "account" not in as_json(record("ready: 2 account(s)"))
    assert as_json(record("something", account="beta"))["account"] == "beta"
    line = formatter.format(record("two\nlines\x1b[31m", level=logging.WARNING))
    assert "\n" not in line and json.loads(line)["message"] == "two\nlines\x1b[31m"
    assert json.loads(line)["level"] == "warning"


def test_cli_and_systemd_agree_on_the_log_formats() -> None:
    """cli keeps its own copy of the format names (so that `get` need not import logging): the same as systemd's."""
    assert cli.LOG_FORMATS == systemd.LOG_FORMATS
