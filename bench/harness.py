"""Shared by the benchmarks and by tests/test_crash.py and tests/test_resilience.py.

Runs the real daemon (`python -m freshtoken -c CFG run`) as a subprocess,
writes its configs, reads its files the way a user's scripts would, and reads
/proc for memory and CPU. Stdlib only; nothing here imports requests.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from freshtoken.fsutil import TEMP_MARK

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- configs


@dataclass(frozen=True)
class AccountSpec:
    token_url: str
    client_id: str
    client_secret: str
    refresh_token: str


def write_config(
    path: Path,
    *,
    state_dir: Path,
    token_dir: Path,
    accounts: Mapping[str, AccountSpec],
    settings: Mapping[str, object] | None = None,
) -> Path:
    """Write a daemon config (0600); `settings` are extra top-level keys such as workers or read_timeout."""
    lines = [f"state_dir: {json.dumps(str(state_dir))}", f"token_dir: {json.dumps(str(token_dir))}"]
    lines += [f"{key}: {json.dumps(value)}" for key, value in (settings or {}).items()]
    lines.append("accounts:")
    for name, spec in accounts.items():
        lines += [
            f"  {name}:",
            f"    token_url: {spec.token_url}",
            f"    client_id: {json.dumps(spec.client_id)}",
            f"    client_secret: {json.dumps(spec.client_secret)}",
            f"    refresh_token: {json.dumps(spec.refresh_token)}",
        ]
    temp = path.with_name(path.name + ".new")
    temp.write_text("\n".join(lines) + "\n")
    os.chmod(temp, 0o600)
    os.replace(temp, path)
    return path


# ---------------------------------------------------------------- the daemon process


def clean_env(home: Path, source: Path | None = None) -> dict[str, str]:
    """A minimal environment for the daemon: no proxies, no systemd sockets, no FRESHTOKEN_* from the caller.

    `source` is a `daemon/` directory to import freshtoken from instead of the installed one
    (a benchmark of a given commit, exported with `git archive HEAD daemon`).
    """
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    elif os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]  # the caller's choice of freshtoken, e.g. a patched copy
    return env


class DaemonProcess:
    """`python -m freshtoken -c CONFIG run` with stderr appended to `log`."""

    def __init__(self, config: Path, log: Path, *, env: Mapping[str, str] | None = None, verbose: bool = False) -> None:
        self.config = config
        self.log = log
        self.env = dict(os.environ if env is None else env)
        self.verbose = verbose
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.monotonic() just before the fork

    def start(self) -> DaemonProcess:
        argv = [sys.executable, "-m", "freshtoken", "-c", str(self.config)]
        argv += ["-v", "run"] if self.verbose else ["run"]
        with open(self.log, "ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no handler, no cleanup, no flush; as a power cut looks to this process."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code (SIGKILL after `timeout`)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


# ---------------------------------------------------------------- /proc


def rss_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of `pid` in MiB, from /proc/PID/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` (all threads) so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "source": source_version(),
    }


def source_version() -> str:
    """The commit the daemon was measured at, and whether daemon/ had uncommitted changes."""
    git = ["git", "-C", str(Path(__file__).resolve().parents[1])]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()  # noqa: S607
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "daemon"], capture_output=True, text=True, check=True).stdout  # noqa: S607
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in daemon/" if dirty.strip() else "")


def baseline_rss_mib(settle: float = 1.0) -> float:
    """RSS of an idle `python -c "import requests, yaml, apscheduler.schedulers.background"` (kept alive to be read)."""
    code = "import requests, yaml, apscheduler.schedulers.background, sys; print('ok', flush=True); sys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(settle)
        return rss_mib(proc.pid)[0]
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]


def open_server_connections(port: int) -> int:
    """Server-side TCP connections on 127.0.0.1:`port` that are still to be read (ESTABLISHED or CLOSE_WAIT).

    Read from /proc/net/tcp, so it also counts connections still waiting in
    the listen backlog, which the server has not accepted (or logged) yet.
    """
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] in ("01", "08"):
            count += 1
    return count


# ---------------------------------------------------------------- files as readers see them


def temp_files(*directories: Path) -> list[Path]:
    found = []
    for directory in directories:
        try:
            found += [Path(e.path) for e in os.scandir(directory) if e.name.startswith(TEMP_MARK)]
        except FileNotFoundError:
            pass
    return found


class TornFile(AssertionError):
    """A token or state file that was not whole: what atomic replacement must make impossible."""


def read_token(token_dir: Path, account: str) -> str | None:
    """The account's token from its `.token` file (None if absent); raises TornFile unless whole."""
    try:
        data = (token_dir / f"{account}.token").read_bytes()
    except FileNotFoundError:
        return None
    if not data.endswith(b"\n") or data.count(b"\n") != 1 or len(data) < 2:
        raise TornFile(f"{account}.token is not one whole line: {len(data)} bytes")
    return data[:-1].decode()


def read_token_json(token_dir: Path, account: str) -> dict[str, object] | None:
    try:
        data = (token_dir / f"{account}.json").read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        raise TornFile(f"{account}.json does not parse: {len(data)} bytes") from None
    if not isinstance(doc, dict) or not doc.get("access_token") or not isinstance(doc.get("expires_at"), int):
        raise TornFile(f"{account}.json lacks access_token/expires_at")
    return doc


def read_state(state_dir: Path, account: str) -> dict[str, object] | None:
    try:
        data = (state_dir / f"{account}.json").read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        raise TornFile(f"state {account}.json does not parse: {len(data)} bytes") from None
    if not isinstance(doc, dict):
        raise TornFile(f"state {account}.json is not an object")
    return doc


@dataclass
class SampleStats:
    samples: int = 0
    valid: int = 0
    missing: int = 0
    torn: list[str] = field(default_factory=list)
    invalid_by_account: dict[str, int] = field(default_factory=dict)

    @property
    def valid_share(self) -> float:
        return self.valid / self.samples if self.samples else 0.0


class Sampler(threading.Thread):
    """A reader that, every `interval` seconds, reads one account's token file and asks `is_valid` about it.

    Accounts are drawn at random (seeded), so with thousands of accounts the
    share still estimates the share of (account, moment) pairs holding a good
    token. A missing file counts as not valid; a torn one is recorded. With
    `state_dir`, the account's state file is read too and must parse.
    """

    def __init__(
        self,
        token_dir: Path,
        accounts: Iterable[str],
        is_valid: Callable[[str], bool],
        *,
        interval: float = 0.01,
        rng: random.Random | None = None,
        also_json: bool = True,
        state_dir: Path | None = None,
    ) -> None:
        super().__init__(name="sampler", daemon=True)
        self.token_dir = token_dir
        self.accounts = list(accounts)
        self.is_valid = is_valid
        self.interval = interval
        self.rng = rng or random.Random(0)  # noqa: S311 - seeded simulation, not secrets
        self.also_json = also_json
        self.state_dir = state_dir
        self.stats = SampleStats()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample_once()

    def sample_once(self) -> None:
        self._sample(self.rng.choice(self.accounts))

    def _sample(self, account: str) -> None:
        stats = self.stats
        try:
            token = read_token(self.token_dir, account)
            if self.also_json:
                read_token_json(self.token_dir, account)
            if self.state_dir is not None:
                read_state(self.state_dir, account)
        except TornFile as exc:
            stats.torn.append(str(exc))
            return
        stats.samples += 1
        if token is not None and self.is_valid(token):
            stats.valid += 1
            return
        if token is None:
            stats.missing += 1
        stats.invalid_by_account[account] = stats.invalid_by_account.get(account, 0) + 1

    def stop(self) -> SampleStats:
        self._halt.set()
        self.join(timeout=10)
        return self.stats


def wait_for(predicate: Callable[[], bool], timeout: float, poll: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
