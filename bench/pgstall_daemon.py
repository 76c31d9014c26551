"""The stall race at the daemon level: a real `freshtoken run` frozen with SIGSTOP while it holds an account's lock.

    python bench/pgstall_daemon.py                       # 5 trials per freeze point, idle_in_transaction 4 s
    python bench/pgstall_daemon.py --trials 20 --idle 4

bench/pgstall.py plays the protocol by hand; here both hosts are real daemons
(`python -m freshtoken -c CFG run`), on a private PostgreSQL cluster (durable, as in
bench/pgfleet.py) whose sessions end after --idle seconds idle in a transaction: the DSN
carries `options='-c idle_in_transaction_session_timeout=<idle>s'`, and the daemons' request
budget follows it (idle - min(5, idle / 4)). The AuthServer (this process) rotates refresh
tokens and revokes the whole grant when a spent one comes back. Each trial has an account of
its own, seeded in both configs; daemon A starts alone, its start-up pass refreshes the
account, and it is frozen at one of two points while it holds the account's row lock:

  before-send  A holds the row lock and is recording its attempt (the step right before the
               liveness check and the send). The hook: this process holds an uncommitted row of
               freshtoken_attempt for the account, so A's INSERT waits on it; once A is seen
               waiting (pg_locks), A is stopped and the row rolled back. A's sessions then sit idle
               in their transactions and the server ends them after --idle seconds.
  in-request   A's token request has reached the server, which holds it --delay seconds
               (AuthServer.script(delay=...)); A is stopped while it is held (checked after the
               stop: the server has not answered yet). The answer rotates the refresh token and
               waits in A's socket.

Then daemon B starts (same account, same seed) while A stays frozen, for longer than the lock's
life: until B has saved a refresh of its own (before-send), or until B has met A's attempt
record and logged that it waits for A rather than spend the token twice (in-request). Then
SIGCONT, and the trial ends when both hosts' token files hold the stored access token, no
attempt is left, and the stored refresh token is the grant's live one ("settled"); or, when A's
answer was lost (its request's deadline passed while it was frozen, and on SIGCONT the deadline
watchdog shuts the socket before the answer is read), once A and B have both declined again to
send the token A may have spent ("answer lost; both wait": they wait pgstore.ATTEMPT_WAIT, 600 s,
then try it; the grant needs a login).

Figures, per point: double spends (AuthServer.reuse_count; goal 0); B's requests while A was
frozen; A's requests after SIGCONT; grants lost; and the windows, from the freeze (CLOCK_BOOTTIME
for the lock, the server's clock for requests): until A's locked session was gone (polled every
10 ms: the lock's remaining life), and until B's first request reached the server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import psycopg  # noqa: E402
from harness import DaemonProcess, clean_env, machine, source_version, wait_for  # noqa: E402
from pgfleet import cluster_for  # noqa: E402

import pgcluster  # noqa: E402
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer  # noqa: E402

POINTS = ("before-send", "in-request")
PATIENCE = 120.0  # seconds any one condition of a trial may take to come true (a generous deadline, not a figure)
WAITS_FOR_A = "has not saved the answer; waiting for it"  # what B logs on meeting A's attempt (pgstore.before_send)


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass
class Trial:
    point: str
    account: str
    hit: bool  # A was frozen at the intended point (in-request: the server had not answered yet)
    double_spends: int
    b_requests_while_frozen: int
    a_requests_after_cont: int
    outcome: str  # "settled" (both files hold the stored token, which is the live one), "answer lost; both wait", "grant revoked"
    grant_lost: bool  # the stored refresh token is not the grant's live one (or the grant is revoked): a login is needed
    lock_gone_after_s: float  # freeze -> A's locked session ended by the server
    b_sent_after_s: float | None  # freeze -> B's first request at the server (None: B sent nothing while A was frozen)
    frozen_s: float


class Stall:
    def __init__(self, workdir: Path, cluster: pgcluster.PgCluster, server: AuthServer, idle: float, delay: float) -> None:
        self.workdir = workdir
        self.server = server
        self.idle = idle
        self.delay = delay
        self.dbname = f"stall{os.getpid()}"
        cluster.sql(f'CREATE DATABASE "{self.dbname}"')
        self.dsn = cluster.dsn(self.dbname)
        from freshtoken.pgstore import PgStore

        with PgStore(self.dsn) as store:
            store.migrate()
        self.env = clean_env(workdir)
        self.verbose = bool(os.environ.get("PGSTALL_VERBOSE"))  # the daemons' debug logs, to read a trial's story

    def config(self, host: str, account: str, seed: str) -> Path:
        home = self.workdir / account / host
        home.mkdir(parents=True)
        dsn = f"{self.dsn} application_name=stall-{host} options='-c idle_in_transaction_session_timeout={self.idle:g}s'"
        text = (
            f"state_dir: {json.dumps(str(home / 'state'))}\n"
            f"token_dir: {json.dumps(str(home / 'tokens'))}\n"
            f"shared_state: {json.dumps(dsn)}\n"
            "min_refresh_interval: 1s\n"
            f"accounts:\n  {account}:\n    token_url: {self.server.token_url}\n"
            f"    client_id: {DEMO_CLIENT_ID}\n    client_secret: {DEMO_CLIENT_SECRET}\n    refresh_token: {seed}\n"
        )
        path = self.workdir / account / f"{host}.yaml"
        path.write_text(text)
        os.chmod(path, 0o600)
        return path

    def sql(self, query: str, *params: object) -> Any:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]  # constant queries
        return row[0] if row else None

    def stored_refresh_token(self, account: str) -> str | None:
        return self.sql("SELECT doc->>'refresh_token' FROM freshtoken_account WHERE account = %s", account)  # type: ignore[no-any-return]

    def a_holds_a_session_in_transaction(self) -> bool:
        return bool(
            self.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'stall-A' AND state LIKE 'idle in transaction%%'")
        )

    def settled(self, account: str, seed: str, hosts: list[Path]) -> bool:
        """No attempt left, the stored refresh token is the grant's live one, and every host's file holds the stored access token."""
        live = self.server.current_refresh_token(seed)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT doc->>'refresh_token', doc->>'access_token', (SELECT count(*) FROM freshtoken_attempt WHERE account = %s)"
                " FROM freshtoken_account WHERE account = %s",
                (account, account),
            ).fetchone()
        if row is None or row[2] or live is None or row[0] != live or not row[1]:
            return False
        for token_dir in hosts:
            try:
                if (token_dir / f"{account}.token").read_text().strip() != row[1]:
                    return False
            except FileNotFoundError:
                return False
        return True

    def trial(self, point: str, n: int) -> Trial:
        account = f"{point}-{n}"
        seed = self.server.issue_refresh_token(DEMO_CLIENT_ID, "stall")
        configs = {h: self.config(h, account, seed) for h in ("A", "B")}
        token_dirs = [self.workdir / account / h / "tokens" for h in ("A", "B")]
        reuse_before = self.server.reuse_count
        hook = psycopg.connect(self.dsn)  # before-send: holds the attempt row A's INSERT waits on
        try:
            if point == "before-send":
                hook.execute(
                    "INSERT INTO freshtoken_attempt (account, version, host, presence) VALUES (%s, 0, 'bench-hook', 0)",
                    (account,),
                )
            else:
                self.server.script(delay=self.delay)
            a = DaemonProcess(configs["A"], self.workdir / account / "A.log", env=self.env, verbose=self.verbose).start()
            b = DaemonProcess(configs["B"], self.workdir / account / "B.log", env=self.env, verbose=self.verbose)
            try:
                return self._freeze(point, account, seed, a, b, hook, token_dirs, reuse_before)
            finally:
                for daemon in (a, b):
                    if daemon.proc is not None:
                        os.kill(daemon.pid, signal.SIGCONT)
                        daemon.stop(timeout=30)
        finally:
            hook.close()

    def _freeze(
        self,
        point: str,
        account: str,
        seed: str,
        a: DaemonProcess,
        b: DaemonProcess,
        hook: psycopg.Connection[Any],
        token_dirs: list[Path],
        reuse_before: int,
    ) -> Trial:
        if point == "before-send":
            waiting = (
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s USING (pid) WHERE NOT l.granted AND s.application_name = 'stall-A'"
            )
            assert wait_for(lambda: bool(self.sql(waiting)), PATIENCE), "A never came to record its attempt"
        else:
            assert self.server.wait_until(lambda s: s.inflight >= 1, PATIENCE), "A's token request never reached the server"
        os.kill(a.pid, signal.SIGSTOP)
        os.waitpid(a.pid, os.WUNTRACED)
        frozen, frozen_wall = boottime(), time.time()
        hit = point == "before-send" or self.server.inflight >= 1
        if point == "before-send":
            hook.rollback()  # A's INSERT goes through in the server; A, stopped, never commits it
        requests_at_freeze = len(self.server.requests)
        b.start()
        assert wait_for(lambda: not self.a_holds_a_session_in_transaction(), PATIENCE, poll=0.01), "A's lock never ended"
        lock_gone = boottime() - frozen
        if point == "before-send":  # until B has refreshed and saved: the stored refresh token is the grant's live one, not the seed
            assert wait_for(
                lambda: self.stored_refresh_token(account) in ({self.server.current_refresh_token(seed)} - {seed}), PATIENCE, poll=0.02
            ), "B never refreshed"
        else:  # until B has met A's attempt and chosen to wait
            assert wait_for(lambda: WAITS_FOR_A in b.log.read_text(errors="replace"), PATIENCE, poll=0.02), "B never met A's attempt"
        while_frozen = self.server.requests[requests_at_freeze:]
        requests_at_cont = len(self.server.requests)
        frozen_for = boottime() - frozen
        b_waits = b.log.read_text(errors="replace").count(WAITS_FOR_A)
        os.kill(a.pid, signal.SIGCONT)

        def over() -> bool:
            """Settled; or A's answer is lost and both hosts, A included, decline to send the token it may have spent."""
            if self.settled(account, seed, token_dirs) or self.server.current_refresh_token(seed) is None:
                return True  # settled, or the grant revoked (a refresh token was spent twice)
            return WAITS_FOR_A in a.log.read_text(errors="replace") and b.log.read_text(errors="replace").count(WAITS_FOR_A) > b_waits

        assert wait_for(over, PATIENCE, poll=0.05), "the trial never settled"
        settled = self.settled(account, seed, token_dirs)
        after_cont = len(self.server.requests) - requests_at_cont
        b_sent = [r.time for r in while_frozen if r.path.endswith("/token")]
        return Trial(
            point=point,
            account=account,
            hit=hit,
            double_spends=self.server.reuse_count - reuse_before,
            b_requests_while_frozen=len(b_sent),
            a_requests_after_cont=after_cont,
            outcome="settled"
            if settled
            else "grant revoked"
            if self.server.current_refresh_token(seed) is None
            else "answer lost; both wait",
            grant_lost=self.server.current_refresh_token(seed) != self.stored_refresh_token(account),
            lock_gone_after_s=round(lock_gone, 3),
            b_sent_after_s=round(b_sent[0] - frozen_wall, 3) if b_sent else None,
            frozen_s=round(frozen_for, 3),
        )


def run_stall(workdir: Path, trials: int, idle: float = 4.0, delay: float = 2.0, *, durable: bool = True) -> list[Trial]:
    """`trials` trials per freeze point on a private cluster; see the module's docstring."""
    with cluster_for(durable) as cluster, AuthServer(token_lifetime=3600, request_log_size=None) as server:
        stall = Stall(workdir, cluster, server, idle, delay)
        points = [p for p in POINTS if p in os.environ.get("PGSTALL_POINTS", ",".join(POINTS)).split(",")]
        return [stall.trial(point, n) for point in points for n in range(trials)]


def summarise(trials: list[Trial]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for point in POINTS:
        rows = [t for t in trials if t.point == point]
        if not rows:
            continue
        lock = sorted(t.lock_gone_after_s for t in rows)
        sent = sorted(t.b_sent_after_s for t in rows if t.b_sent_after_s is not None)
        out[point] = {
            "trials": len(rows),
            "hit": sum(t.hit for t in rows),
            "double_spends": sum(t.double_spends for t in rows),
            "grants_lost": sum(t.grant_lost for t in rows),
            "outcomes": {o: sum(t.outcome == o for t in rows) for o in sorted({t.outcome for t in rows})},
            "b_requests_while_frozen": sum(t.b_requests_while_frozen for t in rows),
            "a_requests_after_cont": sum(t.a_requests_after_cont for t in rows),
            "lock_gone_after_s": {"min": lock[0], "median": statistics.median(lock), "max": lock[-1]},
            "b_sent_after_s": {"min": sent[0], "median": statistics.median(sent), "max": sent[-1]} if sent else None,
            "frozen_s_max": max(t.frozen_s for t in rows),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="trials per freeze point")
    parser.add_argument("--idle", type=float, default=4.0, help="idle_in_transaction_session_timeout, seconds")
    parser.add_argument("--delay", type=float, default=2.0, help="in-request: seconds the server holds A's request")
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "pgstall_daemon.json")
    args = parser.parse_args()
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="pgstall-daemon-"))
    load_before = os.getloadavg()
    trials = run_stall(workdir, args.trials, args.idle, args.delay, durable=not args.no_fsync)
    report = {
        "machine": machine(),
        "source": source_version(),
        "idle_s": args.idle,
        "delay_s": args.delay,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "summary": summarise(trials),
        "trials": [asdict(t) for t in trials],
    }
    for point, s in report["summary"].items():  # type: ignore[attr-defined]
        print(point, json.dumps(s))
    print(f"load average before {load_before}, after {os.getloadavg()}; workdir {workdir}")
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
