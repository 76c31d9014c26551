"""The stall race of the PostgreSQL store, measured: a lock holder frozen with SIGSTOP past its session's life.

    python bench/pgstall.py                          # 10 trials per freeze point, idle timeout 1 s, 500 window samples
    python bench/pgstall.py --trials 30 --idle 2 --samples 2000

A private PostgreSQL cluster (tests/pgcluster.py) and an in-process AuthServer
that rotates refresh tokens and revokes the whole grant when a spent one comes
back. Host A is a child process running the refresh protocol of
freshtoken.pgstore (transaction -> skip if an attempt is pending -> before_send
-> check the budget -> send -> save); it freezes itself with SIGSTOP at one of three points:

  before-check  holding the lock, before ensure_alive()
  after-check   right after ensure_alive() succeeded, before sending
  after-send    after the token answer arrived, before saving it (field notes, trap 4)

Host B (this process) then waits for the lock, gets it when the server ends A's
session (idle_in_transaction_session_timeout), refreshes, and commits; then A
is continued. A *double spend* is a refresh token the server saw twice
(AuthServer.reuse_count). Figures:

- window: from A's last liveness check to B holding the lock (CLOCK_BOOTTIME,
  system-wide), i.e. how long a request sent right after the check could still
  run under A's lock: the request budget (idle - margin) must stay below it.
- send gap: from the end of the last local check (before_send + remaining())
  to the server having the whole request, over --samples requests on a
  kept-alive connection and on a new one. A freeze longer than the idle timeout
  that starts inside this gap is the one no lock can stop.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer  # noqa: E402
from freshtoken.model import AccessToken, AccountState, Secret  # noqa: E402
from freshtoken.pgstore import FencedOff, LockLost, PgStore, PgTimeouts  # noqa: E402

POINTS = ("before-check", "after-check", "after-send")


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def refresh(store: PgStore, account: str, token_url: str, session: requests.Session, freeze_at: str | None = None) -> str:
    """One refresh under the account's lock, as the daemon is to do it; returns what happened, one word."""
    with store.transaction(account) as tx:
        old = tx.state.refresh_token
        assert old is not None
        if tx.attempt is not None:  # an earlier holder may have spent `old`: never send it blindly
            return "attempt-pending"
        if freeze_at == "before-check":
            print(f"freezing {boottime()}", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        try:
            tx.before_send()
        except LockLost:
            return "lock-lost-at-check"
        if freeze_at == "after-check":
            print(f"freezing {tx.checked_at}", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        budget = tx.remaining()  # CLOCK_BOOTTIME since the check: a freeze since then shows here
        if budget <= 0:
            store.clear_attempt(account, tx.version)  # it never left: withdraw it
            return "budget-spent"
        form = {"grant_type": "refresh_token", "refresh_token": old.reveal()}
        answer = session.post(token_url, data=form, auth=(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET), timeout=budget)
        if answer.status_code != 200:
            return f"refused-{answer.status_code}"
        body = answer.json()
        if freeze_at == "after-send":
            print(f"freezing {boottime()}", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        new = AccountState(
            refresh_token=Secret(body.get("refresh_token") or old.reveal()),
            access=AccessToken(Secret(body["access_token"]), "Bearer", time.time() + float(body["expires_in"])),
            last_refresh=time.time(),
        )
        read_version = tx.version
        try:
            tx.save(new)
            return "saved"
        except LockLost:
            try:
                store.save_if_version(account, read_version, new)
                return "recovered"
            except FencedOff:
                return "save-fenced"


def child(dsn: str, account: str, token_url: str, idle: float, freeze_at: str) -> None:
    with PgStore(dsn, host="A", timeouts=timeouts(idle)) as store, requests.Session() as session:
        print(f"result {refresh(store, account, token_url, session, freeze_at)}", flush=True)


def timeouts(idle: float) -> PgTimeouts:
    return PgTimeouts(idle_in_transaction=idle, margin=idle / 4, lock=idle * 10 + 10, statement=idle * 10 + 10)


def seed(store: PgStore, server: AuthServer, account: str) -> None:
    with store.transaction(account) as tx:
        tx.save(AccountState(refresh_token=Secret(server.issue_refresh_token())))


def trial(dsn: str, server: AuthServer, b: PgStore, session: requests.Session, point: str, idle: float, n: int) -> dict[str, object]:
    account = f"{point}-{n}"
    seed(b, server, account)
    reuse_before = server.reuse_count
    argv = [sys.executable, __file__, "--child", dsn, account, server.token_url, str(idle), point]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as a:
        assert a.stdout is not None
        line = a.stdout.readline().split()
        assert line[0] == "freezing", line
        froze_at = float(line[1])
        os.waitpid(a.pid, os.WUNTRACED)  # A is stopped now, holding (or having held) the lock
        with b.transaction(account):  # blocks until the server ends A's session
            got_lock = boottime()
        b_result = refresh(b, account, server.token_url, session)
        os.kill(a.pid, signal.SIGCONT)
        a_result = a.stdout.readline().split()[1]
        a.wait(60)
    final = b.load(account).refresh_token
    live = server.current_refresh_token(final.reveal()) if final else None
    return {
        "point": point,
        "window": got_lock - froze_at,
        "a": a_result,
        "b": b_result,
        "double_spends": server.reuse_count - reuse_before,
        "stored_token_live": live is not None and final is not None and live == final.reveal(),
    }


def send_gaps(store: PgStore, server: AuthServer, samples: int, keep_alive: bool) -> list[float]:
    """Seconds from the end of the last check to the server having the request (server clock = time.time, same process)."""
    account = f"gap-{keep_alive}"
    seed(store, server, account)
    gaps = []
    session = requests.Session()
    try:
        for _ in range(samples):
            if not keep_alive:
                session.close()
                session = requests.Session()
            with store.transaction(account) as tx:
                old = tx.state.refresh_token
                assert old is not None
                tx.before_send()
                budget = tx.remaining()
                checked = time.time()
                server.clear_requests()
                form = {"grant_type": "refresh_token", "refresh_token": old.reveal()}
                body = session.post(server.token_url, data=form, auth=(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET), timeout=budget).json()
                gaps.append(server.requests[0].time - checked)
                access = AccessToken(Secret(body["access_token"]), "Bearer", time.time() + 60)
                tx.save(AccountState(refresh_token=Secret(body["refresh_token"]), access=access, last_refresh=time.time()))
    finally:
        session.close()
    return gaps


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
        "min_ms": round(ordered[0] * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per freeze point")
    parser.add_argument("--idle", type=float, default=1.0, help="idle_in_transaction_session_timeout, seconds")
    parser.add_argument("--samples", type=int, default=500, help="send-gap samples per connection kind")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "pgstall.json")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        dsn, account, url, idle, point = args.child
        child(dsn, account, url, float(idle), point)
        return

    import pgcluster

    cluster = pgcluster.start_cluster()
    try:
        cluster.sql("CREATE DATABASE stall")
        dsn = cluster.dsn("stall")
        server = AuthServer(token_lifetime=3600, rotate_refresh_tokens=True, revoke_grant_on_reuse=True, request_log_size=10)
        with server, PgStore(dsn, host="B", timeouts=timeouts(args.idle)) as b, requests.Session() as session:
            b.migrate()
            trials = [trial(dsn, server, b, session, point, args.idle, n) for point in POINTS for n in range(args.trials)]
            gaps = {kind: send_gaps(b, server, args.samples, kind == "kept-alive") for kind in ("kept-alive", "new-connection")}
    finally:
        cluster.stop()

    limits = timeouts(args.idle)
    report: dict[str, object] = {"idle_s": args.idle, "margin_s": limits.margin, "request_budget_s": limits.request_budget}
    print(f"idle_in_transaction_session_timeout {args.idle:g} s, request budget {limits.request_budget:g} s")
    for point in POINTS:
        rows = [t for t in trials if t["point"] == point]
        windows = [float(t["window"]) for t in rows]  # type: ignore[arg-type]
        outcome = {
            "trials": len(rows),
            "double_spends": sum(int(t["double_spends"]) for t in rows),  # type: ignore[call-overload]
            "a": dict.fromkeys(sorted({str(t["a"]) for t in rows}), 0),
            "b": dict.fromkeys(sorted({str(t["b"]) for t in rows}), 0),
            "stored_token_live": sum(bool(t["stored_token_live"]) for t in rows),
            "window": summary(windows),
        }
        for t in rows:
            outcome["a"][str(t["a"])] += 1  # type: ignore[index]
            outcome["b"][str(t["b"])] += 1  # type: ignore[index]
        report[point] = outcome
        w = outcome["window"]
        print(
            f"{point:13} trials {len(rows)}  double spends {outcome['double_spends']}  A {outcome['a']}  B {outcome['b']}  "
            f"stored token live {outcome['stored_token_live']}/{len(rows)}  window freeze->B locked: "
            f"min {w['min_ms']:.0f} median {w['median_ms']:.0f} max {w['max_ms']:.0f} ms"  # type: ignore[index]
        )
    for kind, values in gaps.items():
        report[f"send_gap_{kind}"] = summary(values)
        s = summary(values)
        print(f"send gap ({kind}, {len(values)} requests): median {s['median_ms']:.3f} p99 {s['p99_ms']:.3f} max {s['max_ms']:.3f} ms")
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
