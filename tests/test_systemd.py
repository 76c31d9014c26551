"""systemd integration: notify datagrams, watchdog, journal logging, and the unit files."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from freshtoken import systemd

UNITS = Path(__file__).resolve().parent.parent / "systemd"
SYSTEM_UNIT = UNITS / "freshtoken.service"
USER_UNIT = UNITS / "freshtoken-user.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    address = str(tmp_path / "notify")
    with _receiver(address) as sock:
        yield sock, {"NOTIFY_SOCKET": address}


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, dict[str, str]]]:
    name = f"freshtoken-test-{uuid.uuid4().hex}"
    with _receiver("\0" + name) as sock:
        yield sock, {"NOTIFY_SOCKET": "@" + name}


def test_notify_sends_one_datagram_to_a_path_socket(path_socket):
    """A string message arrives byte for byte at the socket NOTIFY_SOCKET names."""
    sock, environ = path_socket
    assert systemd.notify("READY=1\nSTATUS=2 accounts fresh", environ=environ)
    assert sock.recv(4096) == b"READY=1\nSTATUS=2 accounts fresh"


def test_notify_reaches_an_abstract_socket(abstract_socket):
    """A leading @ in NOTIFY_SOCKET addresses a Linux abstract socket."""
    sock, environ = abstract_socket
    assert systemd.notify("STOPPING=1", environ=environ)
    assert sock.recv(4096) == b"STOPPING=1"


def test_notify_joins_mapping_fields_one_per_line(abstract_socket):
    """A mapping becomes KEY=value lines in order, and a newline in a value cannot forge a field."""
    sock, environ = abstract_socket
    assert systemd.notify({"WATCHDOG": 1, "STATUS": "ok\nREADY=1"}, environ=environ)
    assert sock.recv(4096) == b"WATCHDOG=1\nSTATUS=ok READY=1"


def test_reloading_sends_reloading_with_the_monotonic_clock(path_socket):
    """reloading() sends RELOADING=1 and MONOTONIC_USEC read from CLOCK_MONOTONIC, plus STATUS."""
    sock, environ = path_socket
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading(environ, status="reloading config")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)\nSTATUS=reloading config", sock.recv(4096))
    assert match is not None
    assert before <= int(match[1]) <= after


@pytest.mark.parametrize("value", [None, "", "relative/path", "vsock:2:1234"])
def test_notify_is_a_no_op_without_a_usable_socket(value):
    """Without NOTIFY_SOCKET (or with an address it cannot use) notify returns False."""
    environ = {} if value is None else {"NOTIFY_SOCKET": value}
    assert systemd.notify("READY=1", environ=environ) is False


def test_notify_returns_false_when_nobody_listens(tmp_path):
    """A socket error (no listener at the path) is reported as False, never raised."""
    assert not systemd.notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")})
    name = f"@freshtoken-test-{uuid.uuid4().hex}"
    assert not systemd.notify("READY=1", environ={"NOTIFY_SOCKET": name})


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "120000000"}, 60.0),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid())}, 60.0),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_this_pid_only(environ, expected):
    """The ping interval is half WATCHDOG_USEC, and None when WATCHDOG_PID is another pid."""
    assert systemd.watchdog_interval(environ) == expected


def test_stderr_is_journal_when_dev_and_inode_match(tmp_path):
    """JOURNAL_STREAM naming the fd's own device and inode means the journal."""
    with open(tmp_path / "stream", "w") as f:
        st = os.fstat(f.fileno())
        environ = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert systemd.stderr_is_journal(environ, f.fileno())


def test_stderr_is_not_journal_when_the_variable_is_merely_set(tmp_path):
    """An inherited JOURNAL_STREAM naming another file, or garbage, is not the journal."""
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        st = os.fstat(a.fileno())
        environ = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert not systemd.stderr_is_journal(environ, b.fileno())
        assert not systemd.stderr_is_journal({}, a.fileno())
        assert not systemd.stderr_is_journal({"JOURNAL_STREAM": "8:x"}, a.fileno())
        closed = os.dup(a.fileno())
        os.close(closed)
        assert not systemd.stderr_is_journal(environ, closed)


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.DEBUG, 7),
        (logging.INFO, 6),
        (logging.WARNING, 4),
        (logging.ERROR, 3),
        (logging.CRITICAL, 2),
        (25, 6),
        (5, 7),
    ],
)
def test_journal_formatter_prefixes_the_syslog_priority(level, priority):
    """Each level maps to its syslog priority prefix; levels in between round down."""
    record = logging.LogRecord("freshtoken", level, __file__, 1, "refreshed %s", ("a",), None)
    assert systemd.JournalFormatter().format(record) == f"<{priority}>refreshed a"


def test_journal_formatter_prefixes_every_line():
    """A multi-line record (a traceback) keeps its priority on every journal line."""
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("freshtoken", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = systemd.JournalFormatter().format(record).split("\n")
    assert lines[0] == "<3>failed" and lines[-1] == "<3>ValueError: boom"
    assert all(line.startswith("<3>") for line in lines)


def _emit(handler: logging.Handler, message: str) -> None:
    handler.handle(logging.LogRecord("freshtoken", logging.INFO, __file__, 1, message, (), None))


def test_log_handler_uses_journal_style_on_the_journal(tmp_path):
    """On the journal's stream the handler writes priority-prefixed lines without timestamps."""
    path = tmp_path / "journal"
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        handler = systemd.make_log_handler({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream)
        _emit(handler, "started")
    assert path.read_text() == "<6>started\n"


def test_log_handler_uses_human_style_elsewhere(tmp_path):
    """Off the journal (another file, or a stream without an fd) lines carry time and level."""
    path = tmp_path / "log"
    with open(path, "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(other.fileno())
        _emit(
            systemd.make_log_handler({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream),
            "x",
        )
    buffer = io.StringIO()
    _emit(systemd.make_log_handler({"JOURNAL_STREAM": "1:1"}, buffer), "y")
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO "
    assert re.fullmatch(stamp + "x\n", path.read_text())
    assert re.fullmatch(stamp + "y\n", buffer.getvalue())


def _service_settings(unit: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_system_unit_keeps_what_the_daemon_relies_on():
    """The system unit is Type=notify, reloads on SIGHUP, keeps the token dir and network."""
    s = _service_settings(SYSTEM_UNIT)
    assert s["Type"] == ["notify"]
    assert s["ExecStart"] == ["/usr/local/bin/freshtoken -c /etc/freshtoken/config.yaml run"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert (s["User"], s["Group"]) == (["freshtoken"], ["freshtoken"])
    assert "DynamicUser" not in s
    assert s["RuntimeDirectoryMode"] == ["0750"] and s["RuntimeDirectoryPreserve"] == ["yes"]
    assert s["StateDirectoryMode"] == ["0700"]
    assert s["RestartPreventExitStatus"] == ["78"]
    assert s["LoadCredential"] == ["spotify-client-secret:/etc/freshtoken/spotify-client-secret"]
    assert set(s["RestrictAddressFamilies"][0].split()) == {
        "AF_INET",
        "AF_INET6",
        "AF_UNIX",
    }
    assert "WatchdogSec" in s and "PrivateNetwork" not in s


def _fake_command(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    command = directory / "freshtoken"
    command.write_text("#!/bin/sh\nexit 0\n")
    command.chmod(0o755)
    return command


def _analyze(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@needs_analyze
def test_system_unit_passes_systemd_analyze_verify(tmp_path):
    """systemd-analyze verify accepts the system unit without a single warning."""
    # verify insists that ExecStart's binary exists: point it at a stand-in.
    text = SYSTEM_UNIT.read_text()
    command = _fake_command(tmp_path / "bin")
    assert text.count("ExecStart=/usr/local/bin/freshtoken ") == 1
    unit = tmp_path / "freshtoken.service"
    unit.write_text(text.replace("ExecStart=/usr/local/bin/freshtoken ", f"ExecStart={command} "))
    result = _analyze("verify", "--man=no", str(unit))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_analyze
def test_user_unit_passes_systemd_analyze_verify(tmp_path):
    """systemd-analyze --user verify accepts the user unit as shipped, with %h resolved."""
    _fake_command(tmp_path / "home" / ".local" / "bin")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "XDG_RUNTIME_DIR": str(runtime),
    }
    result = _analyze("--user", "verify", "--man=no", str(USER_UNIT), env=env)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_analyze
def test_system_unit_exposure_is_at_most_1_5():
    """systemd-analyze security rates the shipped system unit at 1.5 or lower."""
    result = _analyze("security", "--offline=true", "--no-pager", str(SYSTEM_UNIT))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match[1]) <= 1.5


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_sysusers_creates_the_static_freshtoken_user(tmp_path):
    """systemd-sysusers creates a freshtoken user and group with a nologin shell."""
    (tmp_path / "etc").mkdir()
    conf = UNITS / "sysusers.d" / "freshtoken.conf"
    subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(conf)],  # noqa: S607 (found on PATH, like systemd-analyze)
        check=True,
        capture_output=True,
        timeout=60,
    )
    passwd = (tmp_path / "etc" / "passwd").read_text().splitlines()
    user = next(line.split(":") for line in passwd if line.startswith("freshtoken:"))
    group = next(line.split(":") for line in (tmp_path / "etc" / "group").read_text().splitlines() if line.startswith("freshtoken:"))
    assert user[3] == group[2]
    assert user[5] == "/var/lib/freshtoken" and user[6].endswith("/nologin")
