"""The real daemon: `python -m freshtoken -c CFG -v run` subprocesses against loopback AuthServers with 2-5 s tokens.

Every wait is bounded; the daemon's stderr goes to a file the tests read. Marked slow, but CI runs them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fakes import poll
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer

pytestmark = pytest.mark.slow

TOKEN = re.compile(rb"[A-Za-z0-9_-]{20,}\n")  # the devserver's tokens (token_urlsafe) and a newline: nothing torn or empty
SYSTEMD_AND_OURS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "FRESHTOKEN_")


def child_env(**extra: str) -> dict[str, str]:
    """This environment without systemd's or freshtoken's variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SYSTEMD_AND_OURS)}
    env.update(extra)
    return env


class DaemonProcess:
    """`freshtoken run` in a child process with stderr in a file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._stderr = open(log, "ab")  # noqa: SIM115 - closed in close()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "freshtoken", "-c", str(config), "-v", "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env=env if env is not None else child_env(),
        )
        self.pid = self.popen.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def count(self, text: str) -> int:
        return self.text().count(text)

    def wait_for(self, text: str, timeout: float = 10.0) -> bool:
        """True once `text` is in the log; False after `timeout` or as soon as the process has exited without it."""
        poll(lambda: self.popen.poll() is not None or text in self.text(), timeout)
        return text in self.text()  # read after the exit was seen: the last lines are in by then

    def ready(self, timeout: float = 10.0) -> None:
        assert self.wait_for("ready: ", timeout), self.text()

    def send(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 5.0) -> tuple[int, float]:
        """Send `sig`; return the exit code and the seconds it took."""
        started = time.monotonic()
        self.popen.send_signal(sig)
        code = self.popen.wait(timeout)
        return code, time.monotonic() - started

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
        self._stderr.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(config: Path, *, log: Path | None = None, env: dict[str, str] | None = None) -> DaemonProcess:
        process = DaemonProcess(config, log or tmp_path / f"daemon-{len(started)}.log", env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


@pytest.fixture
def servers() -> Iterator[Callable[..., AuthServer]]:
    """Start loopback AuthServers; all are stopped at the end."""
    made: list[AuthServer] = []

    def make(**kwargs: Any) -> AuthServer:
        server = AuthServer(**kwargs).start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


def account_yaml(name: str, server: AuthServer, seed: str, **extra: object) -> str:
    lines = [
        f"  {name}:",
        f"    token_url: {server.token_url}",
        f"    client_id: {DEMO_CLIENT_ID}",
        f"    client_secret: {DEMO_CLIENT_SECRET}",
        f"    refresh_token: {seed}",
    ]
    lines += [f"    {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def config_text(*accounts: str, state: Path, tokens: Path, top: str = "") -> str:
    # 2-5 s tokens: the default floor between two refreshes (10 s) would hold them expired most of the time.
    return f"state_dir: {state}\ntoken_dir: {tokens}\nmin_refresh_interval: 1s\n{top}accounts:\n" + "".join(accounts)


@pytest.fixture
def cfg(tmp_path: Path, dirs: dict[str, Path]) -> Callable[..., Path]:
    """Write (or rewrite) tmp_path/freshtoken.yaml, 0600, with the given account blocks."""
    path = tmp_path / "freshtoken.yaml"

    def write(*accounts: str, top: str = "", mode: int = 0o600) -> Path:
        path.write_text(config_text(*accounts, state=dirs["state"], tokens=dirs["tokens"], top=top))
        os.chmod(path, mode)
        return path

    return write


def read_token(dirs: dict[str, Path], name: str) -> str | None:
    try:
        return (dirs["tokens"] / f"{name}.token").read_text().strip()
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------- tokens stay valid


def test_readers_always_see_a_whole_valid_token(servers, cfg, dirs, spawn):
    """Sampling the token files every 50 ms for 8 s of 3 s tokens: no torn or empty read, every token valid when read, 4-7 refreshes."""
    server = servers(token_lifetime=3)
    daemon = spawn(cfg(account_yaml("a", server, server.issue_refresh_token(DEMO_CLIENT_ID))))
    daemon.ready()
    before = server.refreshes_ok
    samples: list[tuple[bytes, bytes, bool]] = []
    bad: list[bytes] = []

    def reader() -> None:
        token_file, json_file = dirs["tokens"] / "a.token", dirs["tokens"] / "a.json"
        end = time.monotonic() + 8.0
        while time.monotonic() < end:
            raw, doc = token_file.read_bytes(), json_file.read_bytes()
            valid = TOKEN.fullmatch(raw) is not None and server.is_valid_access_token(raw.decode().strip())
            samples.append((raw, doc, valid))
            if not valid:
                bad.append(raw)
            time.sleep(0.05)

    thread = threading.Thread(target=reader)
    thread.start()
    thread.join(15)
    refreshes = server.refreshes_ok - before

    assert len(samples) >= 120  # ~160 at 50 ms
    assert [] == bad
    for _, doc, _ in samples:
        parsed = json.loads(doc)
        assert TOKEN.fullmatch(parsed["access_token"].encode() + b"\n")
        assert ("a", "Bearer") == (parsed["account"], parsed["token_type"])
    assert 4 <= refreshes <= 7  # 3 s tokens, 1.5 s margin (-10 % jitter): one every 1.35-1.5 s
    assert refreshes - 1 <= len({raw for raw, _, _ in samples}) <= refreshes + 1
    assert 0 == server.reuse_count
    assert all(r.status == 200 for r in server.requests)
    assert 0 == daemon.stop()[0]


# ---------------------------------------------------------------- faults, each followed by recovery


FAULTS: dict[str, dict[str, Any] | None] = {
    "refused": None,  # the server is stopped, then started again on the same port
    "reset": {"drop": True},
    "e500": {"status": 500, "json": {"error": "server_error", "error_description": "injected"}},
    "e429": {"status": 429, "json": {"error": "too_many_requests"}, "headers": {"Retry-After": "2"}},
    "hang": {"status": 504, "body": "<html>gateway timeout</html>", "delay": 3.0},  # past read_timeout: 1
    "html": {"status": 200, "body": "<html><body>Please sign in</body></html>"},
    "truncated": {
        "status": 200,
        "raw": b'{"access_token": "abc", "token_type": "Bearer", "expi',
        "headers": {"Content-Type": "application/json"},
    },
}
LOGGED = {
    "refused": "refused: cannot reach 127.0.0.1:{port}: connection refused; retry 1 in ",
    "reset": "reset: cannot reach 127.0.0.1:{port}",
    "e500": "e500: HTTP 500 server_error: injected; retry 1 in ",
    "e429": "e429: HTTP 429 too_many_requests; retry 1 in 2s",
    "hang": "hang: timed out waiting for an answer (127.0.0.1:{port}); retry 1 in ",
    "html": "html: HTTP 200 but the answer is not JSON (text/html); retry 1 in ",
    "truncated": "truncated: HTTP 200 but the answer is not JSON (application/json, truncated or invalid); retry 1 in ",
}
# What the server recorded for the faulty request: None is a connection closed without an answer
# (a hang's 504 goes out 3 s late, after the client has given up, and may be recorded or not yet).
FAULTY_STATUS = {"reset": (None,), "e500": (500,), "e429": (429,), "hang": (None, 504), "html": (200,), "truncated": (200,)}
# Seconds from the faulty request to the next one: the first backoff is 1-2 s, but never more than half
# of what the current token has left (about 2 s here, so 0.5-1 s); Retry-After 2 s is a floor; a hang
# first costs the 1 s read timeout. The upper bounds add 0.6 s for scheduling on a busy CI machine.
RETRY_AFTER = {
    "reset": (0.5, 2.6),
    "e500": (0.5, 2.6),
    "e429": (2.0, 2.6),
    "hang": (1.5, 3.6),
    "html": (0.5, 2.6),
    "truncated": (0.5, 2.6),
}


@dataclass
class FaultRun:
    code: int
    log: str
    ports: dict[str, int]
    requests: dict[str, list[tuple[float, int | None]]]
    samples: dict[str, list[tuple[float, bytes]]]
    outage: tuple[float, float] = (0.0, 0.0)
    recovered: dict[str, bool] = field(default_factory=dict)
    reuse: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultRun]:
    """One daemon, one account per fault mode, each on its own 4 s-token server; faults hit the first scheduled refresh."""
    tmp = tmp_path_factory.mktemp("faults")
    servers = {name: AuthServer(token_lifetime=4).start() for name in FAULTS}
    process = None
    try:
        accounts = [account_yaml(name, s, s.issue_refresh_token(DEMO_CLIENT_ID)) for name, s in servers.items()]
        path = tmp / "freshtoken.yaml"
        path.write_text(config_text(*accounts, state=tmp / "state", tokens=tmp / "tokens", top="read_timeout: 1\nbackoff_max: 4\n"))
        os.chmod(path, 0o600)
        process = DaemonProcess(path, tmp / "daemon.log")
        process.ready()
        samples: dict[str, list[tuple[float, bytes]]] = {name: [] for name in FAULTS}
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                for name in FAULTS:
                    samples[name].append((time.time(), (tmp / "tokens" / f"{name}.token").read_bytes()))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        first = {name: (tmp / "tokens" / f"{name}.token").read_text().strip() for name in FAULTS}
        stopped = time.time()
        for name, fault in FAULTS.items():
            if fault is None:
                servers[name].stop()
            else:
                servers[name].script(**fault)
        assert process.wait_for("refused: cannot reach", 10)
        servers["refused"].start()
        outage = (stopped, time.time())

        def recovered(name: str) -> bool:
            # A new token in the file: the server counts the retry before the daemon has written its answer,
            # and the first token may still be valid then.
            token = (tmp / "tokens" / f"{name}.token").read_text().strip()
            return servers[name].refreshes_ok >= 2 and token != first[name] and servers[name].is_valid_access_token(token)

        done = {name: poll(lambda name=name: recovered(name), 15) for name in FAULTS}
        settled = time.time()  # one more sampling round, so every account's samples include its recovered token
        poll(lambda: all(samples[name] and samples[name][-1][0] > settled for name in FAULTS), 2)
        sampling.set()
        sampler.join(5)
        code, _ = process.stop()
        yield FaultRun(
            code=code,
            log=process.text(),
            ports={name: s.port for name, s in servers.items()},
            requests={name: [(r.time, r.status) for r in s.requests if r.path == "/api/token"] for name, s in servers.items()},
            samples=samples,
            outage=outage,
            recovered=done,
            reuse={name: s.reuse_count for name, s in servers.items()},
        )
    finally:
        if process is not None:
            process.close()
        for s in servers.values():
            s.stop()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_keeps_the_last_good_token_and_is_recovered_from(fault_run, fault):
    """During the fault the token file keeps the last good token (never torn); the retry comes after the expected backoff and succeeds."""
    run = fault_run
    assert run.recovered[fault], run.log
    assert LOGGED[fault].format(port=run.ports[fault]) in run.log
    requests = run.requests[fault]
    if fault == "refused":
        window = run.outage  # the server saw nothing while it was down
        assert [200, 200] == [status for _, status in requests]
    else:
        assert 200 == requests[0][1]
        faulty, retry = requests[1], requests[2]
        assert faulty[1] in FAULTY_STATUS[fault]
        assert 200 == retry[1]
        low, high = RETRY_AFTER[fault]
        assert low <= retry[0] - faulty[0] <= high
        window = (faulty[0], retry[0])
    samples = run.samples[fault]
    assert all(TOKEN.fullmatch(raw) for _, raw in samples)
    last_good = [raw for t, raw in samples if t < window[0]][-1]
    during = [raw for t, raw in samples if window[0] <= t < window[1]]
    assert len(during) >= 20  # at least 0.4 s of samples inside the fault
    assert {last_good} == set(during)
    assert samples[-1][1] != last_good  # recovered: a new token replaced it
    assert 0 == run.reuse[fault]


def test_the_fault_run_ended_cleanly(fault_run):
    """The daemon that went through every fault mode stops with exit code 0 and never logged a traceback."""
    assert 0 == fault_run.code
    assert "Traceback" not in fault_run.log
    assert "stopped" in fault_run.log


# ---------------------------------------------------------------- invalid_grant and a new login


def test_invalid_grant_parks_one_account_the_other_goes_on_and_a_new_seed_with_sighup_resumes(servers, cfg, dirs, spawn):
    """A revoked grant parks only its account (no more requests, hint logged once, file kept); a new seed plus SIGHUP brings it back."""
    sa, sb = servers(token_lifetime=2), servers(token_lifetime=2)
    seed_a = sa.issue_refresh_token(DEMO_CLIENT_ID)
    b = account_yaml("b", sb, sb.issue_refresh_token(DEMO_CLIENT_ID))
    daemon = spawn(cfg(account_yaml("a", sa, seed_a), b))
    daemon.ready()
    sa.revoke_grant(seed_a)
    assert daemon.wait_for("a: refresh token refused (HTTP 400 invalid_grant", 5)
    parked_requests, good_a = sa.token_requests, read_token(dirs, "a")
    b_before = sb.refreshes_ok

    assert sb.wait_until(lambda s: s.refreshes_ok >= b_before + 3, 6)  # b refreshes ~every second
    assert parked_requests == sa.token_requests  # a: not one retry
    assert good_a == read_token(dirs, "a")
    assert sb.is_valid_access_token(read_token(dirs, "b"))
    assert 1 == daemon.count("run `freshtoken login a`")

    cfg(account_yaml("a", sa, sa.issue_refresh_token(DEMO_CLIENT_ID)), b)
    daemon.send(signal.SIGHUP)
    assert poll(lambda: read_token(dirs, "a") != good_a and sa.is_valid_access_token(read_token(dirs, "a") or ""), 5)
    assert daemon.wait_for("a: changed; applying", 1)
    assert 1 == daemon.count("run `freshtoken login a`")
    assert sa.wait_until(lambda s: s.refreshes_ok >= 3, 4)  # and it goes on refreshing
    assert 0 == daemon.stop()[0]


# ---------------------------------------------------------------- signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_exits_0_promptly(servers, cfg, spawn, sig):
    """SIGTERM and SIGINT stop the daemon with exit code 0 in under 3 s, saying why."""
    server = servers(token_lifetime=3600)
    daemon = spawn(cfg(account_yaml("a", server, server.issue_refresh_token(DEMO_CLIENT_ID))))
    daemon.ready()
    code, took = daemon.stop(sig)
    assert (0, True) == (code, took < 3.0)
    assert f"received {sig.name}, stopping" in daemon.text()


def test_sigterm_during_a_hung_request_exits_0_within_3_s(servers, cfg, dirs, spawn):
    """A refresh stuck waiting on the server does not hold up SIGTERM: exit 0 in under 3 s, the file keeps its token."""
    server = servers(token_lifetime=3600)
    daemon = spawn(cfg(account_yaml("a", server, server.issue_refresh_token(DEMO_CLIENT_ID))))
    daemon.ready()
    token = read_token(dirs, "a")
    server.script(504, body="<html>slow</html>", delay=30)
    daemon.send(signal.SIGUSR1)
    assert server.wait_until(lambda s: s.token_requests == 2, 5)

    code, took = daemon.stop(signal.SIGTERM)

    assert (0, True) == (code, took < 3.0)
    assert "a: abandoning the in-flight refresh" in daemon.text()
    assert token == read_token(dirs, "a")


def test_sighup_with_a_broken_config_is_reported_and_the_daemon_goes_on(servers, cfg, spawn):
    """SIGHUP with a malformed config logs the error with the file, keeps running and keeps refreshing."""
    server = servers(token_lifetime=2)
    path = cfg(account_yaml("a", server, server.issue_refresh_token(DEMO_CLIENT_ID)))
    daemon = spawn(path)
    daemon.ready()
    path.write_text("accounts: [\n")
    daemon.send(signal.SIGHUP)
    assert daemon.wait_for("reload failed, keeping the old config", 3)
    before = server.refreshes_ok

    assert server.wait_until(lambda s: s.refreshes_ok >= before + 2, 4)
    assert daemon.popen.poll() is None
    assert f"reload failed, keeping the old config: {path}" in daemon.text()
    assert 0 == daemon.stop()[0]


def test_sighup_adding_an_account_writes_its_token(servers, cfg, dirs, spawn):
    """An account added to the config and announced by SIGHUP gets its token file within seconds."""
    server = servers(token_lifetime=3600)
    a = account_yaml("a", server, server.issue_refresh_token(DEMO_CLIENT_ID))
    daemon = spawn(cfg(a))
    daemon.ready()
    assert read_token(dirs, "b") is None
    cfg(a, account_yaml("b", server, server.issue_refresh_token(DEMO_CLIENT_ID)))
    daemon.send(signal.SIGHUP)
    assert poll(lambda: server.is_valid_access_token(read_token(dirs, "b") or ""), 3)
    assert "b: added" in daemon.text()
    assert 2 == server.refreshes_ok  # a was not refreshed again
    assert 0 == daemon.stop()[0]


def test_sigusr1_refreshes_every_account_now(servers, cfg, dirs, spawn):
    """SIGUSR1 refreshes both accounts at once although their 1 h tokens are fresh: 2 more refreshes, 2 new tokens."""
    server = servers(token_lifetime=3600)
    accounts = [account_yaml(n, server, server.issue_refresh_token(DEMO_CLIENT_ID)) for n in ("a", "b")]
    daemon = spawn(cfg(*accounts))
    daemon.ready()
    assert 2 == server.refreshes_ok
    before = {n: read_token(dirs, n) for n in ("a", "b")}
    started = time.monotonic()
    daemon.send(signal.SIGUSR1)
    assert server.wait_until(lambda s: s.refreshes_ok == 4, 3)
    took = time.monotonic() - started
    assert poll(lambda: all(read_token(dirs, n) not in (None, before[n]) for n in ("a", "b")), 2)
    assert took < 1.5
    assert 4 == server.refreshes_ok
    assert 0 == daemon.stop()[0]


def test_a_second_daemon_on_the_same_state_dir_refuses_to_start(servers, cfg, spawn):
    """A second `run` with the same state dir exits 1 at once and names the pid of the first."""
    server = servers(token_lifetime=3600)
    path = cfg(account_yaml("a", server, server.issue_refresh_token(DEMO_CLIENT_ID)))
    first = spawn(path)
    first.ready()
    second = subprocess.run(
        [sys.executable, "-m", "freshtoken", "-c", str(path), "run"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
        env=child_env(),
    )
    assert 1 == second.returncode
    assert f"another freshtoken daemon (pid {first.pid}) is already using state dir" in second.stderr
    assert 1 == server.token_requests  # the second one sent nothing
    assert first.popen.poll() is None
    assert 0 == first.stop()[0]


# ---------------------------------------------------------------- systemd


def test_systemd_notify_protocol(servers, cfg, dirs, spawn, tmp_path):
    """READY=1 (once the token file exists) with STATUS=, WATCHDOG=1 each second, RELOADING=1 + MONOTONIC_USEC then READY=1, STOPPING=1."""
    server = servers(token_lifetime=3600)
    path = cfg(account_yaml("a", server, server.issue_refresh_token(DEMO_CLIENT_ID)))
    address = str(tmp_path / "notify")
    received: list[tuple[float, str, bool]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(0.05)
        done = threading.Event()

        def receive() -> None:
            while not done.is_set():
                try:
                    data = sock.recv(4096).decode()
                except TimeoutError:
                    continue
                received.append((time.monotonic(), data, (dirs["tokens"] / "a.token").exists()))

        receiver = threading.Thread(target=receive)
        receiver.start()
        try:
            daemon = spawn(path, env=child_env(NOTIFY_SOCKET=address, WATCHDOG_USEC="2000000"))

            def messages(field: str) -> list[tuple[float, str, bool]]:
                return [m for m in list(received) if field in m[1].splitlines()]

            assert poll(lambda: messages("READY=1"), 10), daemon.text()
            assert poll(lambda: len(messages("WATCHDOG=1")) >= 3, 4)
            daemon.send(signal.SIGHUP)
            assert poll(lambda: len(messages("READY=1")) >= 2, 3)
            hup_sent = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            code, _ = daemon.stop()
            assert poll(lambda: messages("STOPPING=1"), 2)
        finally:
            done.set()
            receiver.join(5)

    assert 0 == code
    first_ready = messages("READY=1")[0]
    assert first_ready[2]  # the token file existed when READY=1 arrived
    assert re.search(r"^STATUS=1 account\(s\): 1 ok; next refresh in \d+m", first_ready[1], re.M)
    pings = [t for t, _, _ in messages("WATCHDOG=1")]
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    # WATCHDOG_USEC 2 s: the daemon pings every second (half of it), so a late ping never reaches 2 s.
    assert all(0.6 <= gap <= 1.9 for gap in gaps), gaps
    assert 1.0 == pytest.approx(sum(gaps) / len(gaps), abs=0.2)
    [reloading] = messages("RELOADING=1")
    usec = int(re.search(r"^MONOTONIC_USEC=(\d+)$", reloading[1], re.M).group(1))  # type: ignore[union-attr]
    assert 0 <= hup_sent - usec <= 3_000_000  # the same CLOCK_MONOTONIC, taken when the reload began
    second_ready = messages("READY=1")[1]
    assert reloading[0] <= second_ready[0]
    [stopping] = messages("STOPPING=1")
    assert stopping[0] >= second_ready[0]
    assert "STATUS=stopping" in stopping[1]


@pytest.mark.parametrize("matching", [True, False])
def test_log_lines_carry_priorities_only_when_stderr_is_the_journal(servers, cfg, spawn, tmp_path, matching):
    """With JOURNAL_STREAM naming stderr's dev:ino every line starts <N> (<4> warning, <6> info, <7> debug); otherwise none does."""
    server = servers(token_lifetime=3600)
    # World-readable with a literal secret: a config warning that gets logged at start.
    path = cfg(account_yaml("a", server, server.issue_refresh_token(DEMO_CLIENT_ID)), mode=0o644)
    log = tmp_path / "stderr.log"
    log.touch()
    st = log.stat()
    stream = f"{st.st_dev}:{st.st_ino}" if matching else f"{st.st_dev}:{st.st_ino + 1}"
    daemon = spawn(path, log=log, env=child_env(JOURNAL_STREAM=stream))
    daemon.ready()
    assert 0 == daemon.stop()[0]
    lines = daemon.text().splitlines()

    assert len(lines) >= 4
    if matching:
        assert all(re.match(r"<[0-7]>", line) for line in lines), lines
        assert any(line.startswith("<4>") and "readable by every user" in line for line in lines)
        assert any(line.startswith("<6>ready: 1 account(s): 1 ok") for line in lines)
        assert any(line.startswith("<7>") for line in lines)
    else:
        assert not any(line.startswith("<") for line in lines)
        assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ", line) for line in lines), lines
