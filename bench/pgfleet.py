"""Several hosts on one PostgreSQL: real daemons, SIGKILLed and restarted, the database restarted, every host's files read.

    python bench/pgfleet.py                                   # 3 daemons, 100 accounts, 30 s tokens, 10 minutes
    python bench/pgfleet.py --accounts 10 --lifetime 10 --duration 45 --kill-every 10   # the CI short form's size

What runs. A private PostgreSQL cluster (tests/pgcluster.py) with durability on (fsync,
synchronous_commit and full_page_writes on; `--no-fsync` turns them off), one database made
with `PgStore.migrate()` (what `freshtoken db init` runs), and an AuthServer in this process
that rotates refresh tokens and revokes the whole grant when a spent one comes back. HOSTS
real `python -m freshtoken -c CFG run` processes stand in for hosts: each has a state_dir and
a token_dir of its own, `min_refresh_interval: 1s`, the same ACCOUNTS accounts (the same seeds),
and a DSN with `application_name=fleet-hN` so that its sessions can be told apart.

Faults. Every KILL_EVERY seconds one daemon drawn at random (seeded) gets SIGKILL and is started
again at once. Once, at PG_RESTART_AT seconds, PostgreSQL itself is stopped (`pg_ctl -m fast`)
and started again. `--kill-mode`:
  outside-window (default)  the victim is first stopped (SIGSTOP); if it has an open attempt
        (a row of freshtoken_attempt whose presence lock one of its sessions holds, or whose
        presence nobody holds), it is continued and tried again 50 ms later (at most 10 s, then
        killed anyway and counted as forced). An open attempt is the lost-response window: the
        refresh token may have left and the answer is not saved; a kill there costs the grant
        whatever the client does (bench/crash.py and RESULTS.md, "The one window"). Outside it,
        any refresh token spent twice is a fault of the coordination.
  anywhere  killed at once; kills that landed in an open attempt are counted (each is expected
        to cost one reuse and one revoked grant).

Figures (JSON in --out, a summary on stdout).
- reuse: refresh tokens the server saw twice (AuthServer.reuse_count). Goal 0.
- valid share, per host: a reader thread per host reads a random account's `.token` file every
  --sample-interval seconds and asks the server whether the token works
  (AuthServer.is_valid_access_token); a missing file counts as not valid. Sampling starts once
  every host's files hold a valid token for every account (after all start-up passes) and
  runs until the daemons are stopped; kills, restarts and the database restart all fall inside
  it. Goal 100 %.
- requests against the minimum. Over the span S from the end of the start-up passes (when
  sampling starts: every account has been refreshed once) to the stop, with L the token
  lifetime and M = timing.default_margin(L) (15 s for 30 s tokens):
    minimum = ACCOUNTS x (1 + S / (L - M x (1 + JITTER_SHARE / 2)))
  i.e. the first refresh at start, then one per mean interval of ONE daemon's own schedule (a
  refresh is planned M before expiry, moved earlier by a uniform draw of up to JITTER_SHARE x M:
  on average M x 0.05). Also reported against the jitter-free bound ACCOUNTS x (1 + S / (L - M)),
  which no jittered schedule reaches. Requests are counted from the first daemon's start, so the
  start-up passes' are in, while S leaves them out: the minimum errs low. Goal <= 1.05 x minimum.
- commit -> file delay: this process LISTENs on freshtoken_state too; at each NOTIFY it reads the
  row's access token (skipped if the row moved on meanwhile) and notes the time. inotify on every
  token dir notes when each host's `.token` file came to hold that token. For each token the
  first host to write it is taken to be the one that committed it (it writes right after its
  commit, without the NOTIFY round trip) and is left out; the delays of the other hosts are
  reported (p50, p99, max), with tokens a host never wrote counted apart, for the commits made
  after sampling began; and again without the commits of the 10 s after the database restart
  (the daemons' LISTEN sessions reconnect with a backoff of 1 s, then 2 s); and again without
  the delays of a host between its SIGKILL and its new daemon's `ready:` line (no daemon runs
  there to hear anything; its start-up pass rewrites every file). Goal: within 2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import random
import select
import signal
import statistics
import struct
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import psycopg  # noqa: E402
from harness import DaemonProcess, Sampler, clean_env, machine, source_version, wait_for  # noqa: E402

import pgcluster  # noqa: E402
from freshtoken.pgstore import PgStore  # noqa: E402
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer  # noqa: E402
from freshtoken.timing import JITTER_SHARE, default_margin  # noqa: E402

DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
KILL_RETRY = 0.05  # seconds a victim found in its window is left running before it is looked at again
KILL_PATIENCE = 10.0  # then it is killed anyway (counted as forced)
AFTER_RESTART = 10.0  # commit -> file delays are also reported without the commits of this many seconds after the database restart


@dataclass
class FleetOptions:
    hosts: int = 3
    accounts: int = 100
    lifetime: float = 30.0
    duration: float = 600.0
    kill_every: float = 30.0
    pg_restart_at: float | None = None  # seconds after sampling starts; None: half-way, between two kills
    kill_mode: str = "outside-window"
    durable: bool = True
    sample_interval: float = 0.01
    seed: int = 1
    startup_timeout: float = 120.0


@dataclass
class Kill:
    at: float  # seconds after sampling started
    host: str
    looks: int  # how many times it was stopped and looked at
    in_window_at_first_look: bool
    forced: bool  # killed inside its window after KILL_PATIENCE (outside-window mode)
    restart_s: float = 0.0  # from SIGKILL until the new daemon logged `ready:` (its start-up pass is over)


@dataclass
class FleetReport:
    options: dict[str, Any]
    span_s: float = 0.0  # from the end of the start-up passes (every host's files valid) to the stop
    startup_s: float = 0.0  # from the first daemon's start to the end of the start-up passes
    requests: int = 0
    refreshes_ok: int = 0
    reuse: int = 0
    revoked_accounts: int = 0
    stale_rows: int = 0  # accounts whose stored refresh token is not the grant's live one at the end
    minimum: float = 0.0
    minimum_no_jitter: float = 0.0
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)
    kills: list[Kill] = field(default_factory=list)
    pg_restart: dict[str, float] = field(default_factory=dict)
    delays: dict[str, Any] = field(default_factory=dict)
    daemon_exits: dict[str, list[int | None]] = field(default_factory=dict)
    log_lines: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.requests / self.minimum if self.minimum else 0.0

    @property
    def all_valid(self) -> bool:
        return all(s["samples"] > 0 and s["valid"] == s["samples"] for s in self.samples.values())


# ---------------------------------------------------------------- inotify (stdlib has none)


class Inotify:
    """IN_MOVED_TO and IN_CLOSE_WRITE events of some directories, through libc (token files are replaced by rename)."""

    MASK = 0x80 | 0x08
    _HEADER = struct.Struct("iIII")

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._tags: dict[int, str] = {}

    def watch(self, directory: Path, tag: str) -> None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), self.MASK)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        self._tags[wd] = tag

    def events(self, timeout: float) -> list[tuple[str, str]]:
        """(tag, file name) of what happened, waiting at most `timeout` seconds for the first."""
        if not select.select([self.fd], [], [], timeout)[0]:
            return []
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        found, offset = [], 0
        while offset < len(data):
            wd, _mask, _cookie, length = self._HEADER.unpack_from(data, offset)
            name = data[offset + self._HEADER.size : offset + self._HEADER.size + length].rstrip(b"\0").decode()
            offset += self._HEADER.size + length
            if wd in self._tags:
                found.append((self._tags[wd], name))
        return found

    def close(self) -> None:
        os.close(self.fd)


def _percentiles(delays: list[float]) -> dict[str, Any]:
    if not delays:
        return {"delays": 0}
    ordered = sorted(delays)
    return {
        "delays": len(ordered),
        "p50_s": round(statistics.median(ordered), 4),
        "p99_s": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 4),
        "max_s": round(ordered[-1], 4),
        "over_2s": sum(d > 2.0 for d in ordered),
    }


# ---------------------------------------------------------------- the fleet


class Fleet:
    """The cluster, the server, the daemons and the observers of one run (see the module's docstring)."""

    def __init__(self, workdir: Path, options: FleetOptions, cluster: pgcluster.PgCluster, server: AuthServer) -> None:
        self.workdir = workdir
        self.options = options
        self.cluster = cluster
        self.server = server
        self.rng = random.Random(options.seed)  # noqa: S311  # a seeded simulation
        self.hosts = [f"h{i + 1}" for i in range(options.hosts)]
        self.names = [f"acct{i:03d}" for i in range(options.accounts)]
        self.dbname = f"fleet{os.getpid()}"
        cluster.sql(f'CREATE DATABASE "{self.dbname}"')
        self.dsn = cluster.dsn(self.dbname)
        with PgStore(self.dsn) as store:
            store.migrate()
        seeds = {name: server.issue_refresh_token(DEMO_CLIENT_ID, "fleet") for name in self.names}
        self.seeds = seeds
        self.configs = {host: self._write_config(host, seeds) for host in self.hosts}
        self.env = clean_env(workdir)
        self.daemons: dict[str, DaemonProcess] = {}
        self.exits: dict[str, list[int | None]] = {host: [] for host in self.hosts}
        self.stopping = threading.Event()
        self.commits: dict[str, float] = {}  # access token -> when this process heard its commit
        self.writes: dict[tuple[str, str], float] = {}  # (host, access token) -> when the host's file first held it
        self._threads: list[threading.Thread] = []
        self.t0_wall = time.time()  # when sampling began (reset then)
        self.pg_restart_at: float | None = None  # seconds after sampling began

    def token_dir(self, host: str) -> Path:
        return self.workdir / host / "tokens"

    def _write_config(self, host: str, seeds: dict[str, str]) -> Path:
        (self.workdir / host).mkdir(parents=True, exist_ok=True)
        dsn = f"{self.dsn} application_name=fleet-{host}"
        lines = [
            f"state_dir: {json.dumps(str(self.workdir / host / 'state'))}",
            f"token_dir: {json.dumps(str(self.token_dir(host)))}",
            f"shared_state: {json.dumps(dsn)}",
            "min_refresh_interval: 1s",
            "accounts:",
        ]
        for name, seed in seeds.items():
            lines += [
                f"  {name}:",
                f"    token_url: {self.server.token_url}",
                f"    client_id: {DEMO_CLIENT_ID}",
                f"    client_secret: {DEMO_CLIENT_SECRET}",
                f"    refresh_token: {seed}",
            ]
        path = self.workdir / f"{host}.yaml"
        path.write_text("\n".join(lines) + "\n")
        os.chmod(path, 0o600)
        return path

    # ------------------------------------------------ daemons

    def start(self, host: str) -> None:
        self.daemons[host] = DaemonProcess(self.configs[host], self.workdir / f"{host}.log", env=self.env).start()

    def holds_current_tokens(self, host: str) -> bool:
        """Every account's `.token` file on `host` holds a token the server takes."""
        for name in self.names:
            try:
                token = (self.token_dir(host) / f"{name}.token").read_text().strip()
            except FileNotFoundError:
                return False
            if not self.server.is_valid_access_token(token):
                return False
        return True

    def open_attempts(self, host: str) -> int:
        """Attempts (refresh tokens about to leave, or gone, with the answer unsaved) that may be `host`'s.

        Those whose presence lock a session of `host` holds, and those whose presence nobody holds
        (a sender whose session ended with a database restart: it may be `host`, still holding the answer).
        """
        query = """
            SELECT count(*) FROM freshtoken_attempt a
             WHERE NOT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity s ON s.pid = l.pid
                                WHERE l.locktype = 'advisory' AND l.granted AND s.application_name <> %(app)s
                                  AND ((l.classid::bigint << 32) | l.objid::bigint) = a.presence)
        """
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(query, {"app": f"fleet-{host}"}).fetchone()
        return int(row[0]) if row else 0

    def kill(self, host: str, at: float) -> Kill:
        """SIGKILL `host`'s daemon (outside its window, by kill_mode) and start it again at once."""
        daemon = self.daemons[host]
        looks, first, forced = 0, None, False
        patience = time.monotonic() + KILL_PATIENCE
        while True:
            os.kill(daemon.pid, signal.SIGSTOP)
            os.waitpid(daemon.pid, os.WUNTRACED)  # stopped now: it sends and commits nothing until continued or killed
            looks += 1
            try:
                open_now = self.open_attempts(host) > 0
            except psycopg.Error:
                open_now = True  # the database is restarting: cannot tell
            first = open_now if first is None else first  # type: ignore[has-type]
            if not open_now or self.options.kill_mode == "anywhere":
                break
            if time.monotonic() > patience:
                forced = True
                break
            os.kill(daemon.pid, signal.SIGCONT)
            time.sleep(KILL_RETRY)  # let it finish its refresh; then look again
        killed = time.monotonic()
        daemon.kill()
        self.exits[host].append(daemon.proc.returncode if daemon.proc else None)
        readies = self.readies(host)
        self.start(host)
        record = Kill(round(at, 3), host, looks, bool(first), forced)
        # Until the new daemon's start-up pass is over (its "ready:" line; not a goal, -1 if not within 60 s).
        ready = wait_for(lambda: self.readies(host) > readies, 60, poll=0.05)
        record.restart_s = round(time.monotonic() - killed, 3) if ready else -1.0
        return record

    def readies(self, host: str) -> int:
        """How many times `host`'s daemon has logged the end of its start-up pass."""
        try:
            return (self.workdir / f"{host}.log").read_text(errors="replace").count(" INFO ready: ")
        except FileNotFoundError:
            return 0

    def restart_postgres(self) -> dict[str, float]:
        """pg_ctl stop -m fast, then start on the same port and socket; the seconds each took."""
        c = self.cluster
        began = time.monotonic()
        c._run("pg_ctl", "-D", str(c.data), "-m", "fast", "-w", "stop", timeout=120)  # noqa: SLF001  # the fixture's own runner
        stopped = time.monotonic()
        c._run("pg_ctl", "-D", str(c.data), "-l", str(c.log), "-w", "-t", "120", "-o", f"-p {c.port} -k {c.root}", "start", timeout=150)  # noqa: SLF001
        return {"stop_s": round(stopped - began, 3), "down_s": round(time.monotonic() - began, 3)}

    # ------------------------------------------------ observers

    def _thread(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _listen(self) -> None:
        """Note when each access token was committed (NOTIFY, as the daemons hear it); reconnects across a restart."""
        while not self.stopping.is_set():
            try:
                with (
                    psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as ear,
                    psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as reader,
                ):
                    ear.execute("LISTEN freshtoken_state")
                    while not self.stopping.is_set():
                        for note in ear.notifies(timeout=0.5):
                            heard = time.time()
                            account, _, version = note.payload.rpartition(":")
                            row = reader.execute(
                                "SELECT doc->>'access_token' FROM freshtoken_account WHERE account = %s AND version = %s",
                                (account, int(version)),
                            ).fetchone()
                            if row and row[0]:
                                self.commits.setdefault(row[0], heard)
            except psycopg.Error:
                self.stopping.wait(0.2)

    def _watch_files(self) -> None:
        inotify = Inotify()
        try:
            for host in self.hosts:
                self.token_dir(host).mkdir(mode=0o700, parents=True, exist_ok=True)
                inotify.watch(self.token_dir(host), host)
            while not self.stopping.is_set():
                for host, name in inotify.events(0.5):
                    if not name.endswith(".token"):
                        continue
                    seen = time.time()
                    try:
                        token = (self.token_dir(host) / name).read_text().strip()
                    except FileNotFoundError:
                        continue
                    self.writes.setdefault((host, token), seen)
        finally:
            inotify.close()

    def delays(self, kills: list[Kill]) -> dict[str, Any]:
        """Commit -> another host's file, per the module's docstring."""
        others: list[tuple[float, float]] = []  # (commit, seconds after sampling began; delay)
        running: list[float] = []  # leaving out each host from its SIGKILL until its new daemon's `ready:` line
        missed, slow = 0, []

        def down(host: str, at: float) -> bool:
            return any(k.host == host and k.at <= at <= (k.at + k.restart_s if k.restart_s >= 0 else math.inf) for k in kills)

        for token, committed in self.commits.items():
            if committed < self.t0_wall:
                continue  # the start-up passes
            seen = sorted((self.writes[(h, token)] - committed, h) for h in self.hosts if (h, token) in self.writes)
            missed += len(self.hosts) - len(seen)
            others += [(committed - self.t0_wall, delay) for delay, _ in seen[1:]]  # the first writer is the committer
            running += [delay for delay, h in seen[1:] if not down(h, committed - self.t0_wall)]
            slow += [(round(committed - self.t0_wall, 2), h, round(delay, 3)) for delay, h in seen[1:] if delay > 1.0]
        restart = self.pg_restart_at
        calm = [d for at, d in others if restart is None or not restart <= at < restart + AFTER_RESTART]
        return {
            "commits": len(self.commits),
            "missed": missed,
            **_percentiles([d for _, d in others]),
            f"outside_{AFTER_RESTART:g}s_after_pg_restart": _percentiles(calm),
            "hosts_running": _percentiles(running),
            "over_1s": sorted(slow),  # (commit, seconds after sampling began; host; delay)
        }

    # ------------------------------------------------ the run

    def run(self) -> FleetReport:
        o = self.options
        report = FleetReport(options=asdict(o))
        self._thread(self._listen, "listen")
        self._thread(self._watch_files, "inotify")
        began = time.monotonic()
        for host in self.hosts:
            self.start(host)
        if not wait_for(lambda: all(self.holds_current_tokens(h) for h in self.hosts), o.startup_timeout, poll=0.1):
            raise RuntimeError(f"the fleet's start-up passes did not end within {o.startup_timeout:g}s; see {self.workdir}/h*.log")
        samplers = {
            h: Sampler(
                self.token_dir(h),
                self.names,
                self.server.is_valid_access_token,
                interval=o.sample_interval,
                rng=random.Random(i),
                also_json=False,
            )
            for i, h in enumerate(self.hosts)
        }
        for sampler in samplers.values():
            sampler.start()
        t0, self.t0_wall = time.monotonic(), time.time()
        restart_at = o.pg_restart_at if o.pg_restart_at is not None else (o.duration // 2 // o.kill_every) * o.kill_every + o.kill_every / 2
        events = [(k * o.kill_every, "kill") for k in range(1, int(o.duration // o.kill_every) + 1) if k * o.kill_every < o.duration]
        events += [(restart_at, "pg")] if restart_at < o.duration else []
        for at, what in sorted(events):
            self.stopping.wait(max(0.0, t0 + at - time.monotonic()))  # the schedule of faults: wall-clock times, not a wait for anything
            if what == "kill":
                report.kills.append(self.kill(self.rng.choice(self.hosts), time.monotonic() - t0))
            else:
                self.pg_restart_at = time.monotonic() - t0
                report.pg_restart = {"at": round(self.pg_restart_at, 3), **self.restart_postgres()}
        self.stopping.wait(max(0.0, t0 + o.duration - time.monotonic()))
        for host, sampler in samplers.items():
            report.samples[host] = {**asdict(sampler.stop()), "torn": len(sampler.stats.torn)}
            report.samples[host].pop("invalid_by_account")
            report.samples[host]["invalid_accounts"] = sorted(sampler.stats.invalid_by_account)
        report.span_s = round(time.monotonic() - t0, 3)
        report.startup_s = round(t0 - began, 3)
        report.requests, report.refreshes_ok, report.reuse = self.server.token_requests, self.server.refreshes_ok, self.server.reuse_count
        for host, daemon in self.daemons.items():
            self.exits[host].append(daemon.stop(timeout=30))
        self.stopping.set()
        report.daemon_exits = self.exits
        margin = default_margin(o.lifetime)
        report.minimum = round(o.accounts * (1 + report.span_s / (o.lifetime - margin * (1 + JITTER_SHARE / 2))), 1)
        report.minimum_no_jitter = round(o.accounts * (1 + report.span_s / (o.lifetime - margin)), 1)
        report.delays = self.delays(report.kills)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = dict(conn.execute("SELECT account, doc->>'refresh_token' FROM freshtoken_account").fetchall())
        for name in self.names:
            live = self.server.current_refresh_token(self.seeds[name])
            report.revoked_accounts += live is None
            report.stale_rows += live is not None and rows.get(name) != live
        for host in self.hosts:
            text = (self.workdir / f"{host}.log").read_text(errors="replace")
            report.log_lines[host] = {word: text.count(word) for word in (" ERROR ", " WARNING ", "Traceback")}
        return report


@contextlib.contextmanager
def cluster_for(durable: bool) -> Iterator[pgcluster.PgCluster]:
    """A private cluster; with `durable`, fsync, synchronous_commit and full_page_writes on (tests/pgcluster.py turns them off)."""
    saved = pgcluster.SETTINGS
    if durable:
        pgcluster.SETTINGS = {**saved, **DURABLE}
    try:
        cluster = pgcluster.start_cluster()
    finally:
        pgcluster.SETTINGS = saved
    try:
        yield cluster
    finally:
        cluster.stop()


def run_fleet(workdir: Path, options: FleetOptions, cluster: pgcluster.PgCluster | None = None) -> FleetReport:
    """One run in `workdir`, on `cluster` (or a private one made for it, durable as options say)."""
    with contextlib.ExitStack() as stack:
        if cluster is None:
            cluster = stack.enter_context(cluster_for(options.durable))
        server = stack.enter_context(AuthServer(token_lifetime=options.lifetime, request_log_size=1000))
        fleet = Fleet(workdir, options, cluster, server)
        try:
            return fleet.run()
        finally:
            fleet.stopping.set()
            for daemon in fleet.daemons.values():
                daemon.__exit__()


def summary(report: FleetReport) -> str:
    o = report.options
    lines = [
        f"{o['hosts']} daemons, {o['accounts']} accounts, {o['lifetime']:g} s tokens, {report.span_s:.0f} s, "
        f"{len(report.kills)} SIGKILLs ({o['kill_mode']}), PostgreSQL restart {report.pg_restart or 'none'}",
        f"refresh tokens spent twice (reuse): {report.reuse}; grants revoked: {report.revoked_accounts}; "
        f"rows not at the live token: {report.stale_rows}",
        f"token requests {report.requests} (ok {report.refreshes_ok}); minimum {report.minimum:g} -> {report.ratio:.3f}x; "
        f"jitter-free bound {report.minimum_no_jitter:g} -> {report.requests / report.minimum_no_jitter:.3f}x",
    ]
    for host, s in report.samples.items():
        lines.append(
            f"  {host}: valid {s['valid']}/{s['samples']} samples ({100 * s['valid'] / max(1, s['samples']):.3f} %), torn {s['torn']}"
        )
    d = report.delays
    for what, p in (
        ("", d),
        (f", outside the {AFTER_RESTART:g} s after the restart", d.get(f"outside_{AFTER_RESTART:g}s_after_pg_restart", {})),
        (", hosts running (not from a SIGKILL to the new daemon's ready)", d.get("hosts_running", {})),
    ):
        if p.get("delays"):
            lines.append(
                f"commit -> other host's file{what}: {p['delays']} delays, p50 {p['p50_s'] * 1000:.0f} ms, p99 {p['p99_s'] * 1000:.0f} ms, "
                f"max {p['max_s'] * 1000:.0f} ms, over 2 s {p['over_2s']}"
            )
    lines.append(f"commits a host never wrote: {d.get('missed')}")
    in_window = sum(k.in_window_at_first_look for k in report.kills)
    lines.append(
        f"kills in an open attempt at first look: {in_window}; forced: {sum(k.forced for k in report.kills)}; "
        f"SIGKILL to the new daemon's ready: max {max((k.restart_s for k in report.kills), default=0):.2f} s"
    )
    lines.append(f"log lines: {report.log_lines}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    defaults = FleetOptions()
    parser.add_argument("--hosts", type=int, default=defaults.hosts)
    parser.add_argument("--accounts", type=int, default=defaults.accounts)
    parser.add_argument("--lifetime", type=float, default=defaults.lifetime, help="access token lifetime, seconds")
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds of sampling and faults")
    parser.add_argument("--kill-every", type=float, default=defaults.kill_every)
    parser.add_argument("--pg-restart-at", type=float, default=None, help="seconds into the run (default: half-way, between two kills)")
    parser.add_argument("--kill-mode", choices=("outside-window", "anywhere"), default=defaults.kill_mode)
    parser.add_argument("--no-fsync", action="store_true", help="cluster without durability (faster; not realistic)")
    parser.add_argument("--sample-interval", type=float, default=defaults.sample_interval)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "pgfleet.json")
    args = parser.parse_args()
    options = FleetOptions(
        hosts=args.hosts,
        accounts=args.accounts,
        lifetime=args.lifetime,
        duration=args.duration,
        kill_every=args.kill_every,
        pg_restart_at=args.pg_restart_at,
        kill_mode=args.kill_mode,
        durable=not args.no_fsync,
        sample_interval=args.sample_interval,
        seed=args.seed,
    )
    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pgfleet-"))
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    report = run_fleet(workdir, options)
    out = {
        "machine": machine(),
        "source": source_version(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "workdir": str(workdir),
        "ratio": round(report.ratio, 4),
        **asdict(report),
    }
    print(summary(report))
    print(f"load average before {load_before}, after {os.getloadavg()}")
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
