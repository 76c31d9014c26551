"""`status` says whether a daemon runs on the state dir: pid, since when, last heartbeat; it only looks (no lock, no signal)."""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes import poll
from freshtoken import cli, daemon, status
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer

CONFIG = """\
state_dir: {state}
token_dir: {tokens}
accounts:
  demo:
    token_url: {token_url}
    client_id: {client_id}
    client_secret: {secret}
    refresh_token: {seed}
"""


@pytest.fixture
def config(write_config: Callable[..., Path], auth_server: AuthServer, dirs: dict[str, Path]) -> Path:
    dirs["state"].mkdir(mode=0o700)
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    return write_config(CONFIG, token_url=auth_server.token_url, client_id=DEMO_CLIENT_ID, secret=DEMO_CLIENT_SECRET, seed=seed)


def run_status(config: Path, *extra: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(["-c", str(config), "status", *extra], environ=dict(os.environ), stdout=out, stderr=io.StringIO())
    return code, out.getvalue()


def daemon_line(config: Path) -> str:
    (line,) = [line for line in run_status(config)[1].splitlines() if line.startswith("daemon ")]
    return line


def daemon_json(config: Path) -> dict[str, Any]:
    rows = json.loads(run_status(config, "--json")[1])
    assert all(row["daemon"] == rows[0]["daemon"] for row in rows)
    found: dict[str, Any] = rows[0]["daemon"]
    return found


@pytest.fixture
def held_lock(dirs: dict[str, Path]) -> Iterator[Path]:
    """daemon.pid flock'ed by this test process with its pid in it, as DaemonLock does."""
    path = dirs["state"] / "daemon.pid"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        yield path
    finally:
        os.close(fd)


def test_no_daemon_ever_ran(config: Path) -> None:
    """Without a pid file, the header says `daemon     not running` and --json says running false."""
    assert daemon_line(config) == "daemon     not running"
    assert daemon_json(config)["running"] is False


def test_a_pid_file_nobody_locks_is_not_a_running_daemon(config: Path, dirs: dict[str, Path]) -> None:
    """A pid file left behind, even naming a live process (this one), is `not running`: only the lock counts."""
    (dirs["state"] / "daemon.pid").write_text(f"{os.getpid()}\n")
    assert daemon_line(config) == "daemon     not running"
    assert daemon_json(config)["pid"] is None


def test_the_lock_holder_is_running_and_an_older_heartbeat_file_is_ignored(config: Path, dirs: dict[str, Path], held_lock: Path) -> None:
    """A holder of the daemon lock is reported with its pid and start time; a heartbeat file from before it started is not its heartbeat."""
    beat = dirs["state"] / status.HEARTBEAT_FILE
    beat.write_text("")
    os.utime(beat, (1_000_000_000, 1_000_000_000))  # 2001: long before this process started
    found = daemon_json(config)
    assert (found["running"], found["pid"], found["last_heartbeat"]) == (True, os.getpid(), None)
    assert 1_000_000_000 < found["since"] <= time.time()
    assert daemon_line(config).startswith(f"daemon     running, pid {os.getpid()}, since ")
    assert daemon_line(config).endswith(", no heartbeat yet")
    os.utime(beat)
    found = daemon_json(config)
    assert found["last_heartbeat"] == beat.stat().st_mtime
    assert ", last heartbeat " in daemon_line(config) and daemon_line(config).endswith(" ago)")


def test_heartbeat_file_names_agree() -> None:
    """The daemon touches the file status reads (each module names it, so status need not import apscheduler)."""
    assert daemon.HEARTBEAT_FILE == status.HEARTBEAT_FILE


@pytest.mark.slow
def test_status_of_a_real_daemon_then_of_a_stopped_one(tmp_path: Path, config: Path, dirs: dict[str, Path]) -> None:
    """Against a real `freshtoken run`: running with its pid, its start time and a 0600 heartbeat file that advances;
    after SIGTERM the pid file stays but status says not running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_", "JOURNAL_STREAM", "FRESHTOKEN_"))}
    env["WATCHDOG_USEC"] = "400000"  # a heartbeat every 0.2 s (no NOTIFY_SOCKET: the pings go nowhere)
    log = tmp_path / "daemon.log"
    started = time.time()
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "freshtoken", "-c", str(config), "-v", "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )
        try:
            assert poll(lambda: "ready: " in log.read_text() or process.poll() is not None), log.read_text()
            first = daemon_json(config)
            assert (first["running"], first["pid"]) == (True, process.pid)
            assert started - 2 <= first["since"] <= time.time()  # /proc/stat's boot time is whole seconds
            assert first["last_heartbeat"] is not None and first["last_heartbeat"] >= first["since"] - 1
            heartbeat = dirs["state"] / status.HEARTBEAT_FILE
            assert stat.S_IMODE(heartbeat.stat().st_mode) == 0o600
            assert poll(lambda: daemon_json(config)["last_heartbeat"] > first["last_heartbeat"]), log.read_text()
            assert daemon_line(config).startswith(f"daemon     running, pid {process.pid}, since ")
            assert process.poll() is None  # status took no lock from it and sent it nothing
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(5)
    assert (dirs["state"] / "daemon.pid").read_text().strip() == str(process.pid)
    assert daemon_line(config) == "daemon     not running"


def test_an_unreadable_pid_file_is_unknown_not_a_guess(config: Path, dirs: dict[str, Path]) -> None:
    """When the pid file cannot be read (here: it is a directory; for a reader of the system install: permission), the
    daemon line says unknown and why, --json says running null, and the account rows still come with exit 0."""
    (dirs["state"] / "daemon.pid").mkdir()
    code, out = run_status(config)
    assert code == 0
    assert f"daemon     unknown (cannot read {dirs['state'] / 'daemon.pid'}: Is a directory)" in out.splitlines()
    assert daemon_json(config)["running"] is None
