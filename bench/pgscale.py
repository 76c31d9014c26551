"""Scale on the shared state: N template users' grants in PostgreSQL, shared by several `freshtoken run` daemons.

    python bench/pgscale.py                                   # 100,000 users, 4 daemons, 720 s tokens
    python bench/pgscale.py --users 5000 --lifetime 120 --window 60
    python bench/pgscale.py provider --grants 10 --lifetime 60 --tokens-out t.json   # the provider alone

What runs, all on this machine:

- a private PostgreSQL cluster (tests/pgcluster.PgCluster) with durability ON by default
  (fsync, synchronous_commit, full_page_writes; `--no-fsync` for the test suite's settings);
- a lean token endpoint in a process of its own (`provider` below): asyncio, HTTP/1.1 keep-alive,
  the same rule as freshtoken.testing.AuthServer (each refresh rotates the grant's refresh token; a
  refresh token that is not the grant's current one counts in `reuse_count`, revokes the grant and
  answers invalid_grant). AuthServer (http.server, a thread per connection, a request log) is not
  used: at hundreds of refreshes a second it would be the bench's bottleneck on 2 cores;
- the users' grants, inserted with `SELECT freshtoken_put_grant('app/user<i>', <refresh token the
  provider issued>)` in one pipelined executemany;
- `--daemons` real `python -m freshtoken -c hN.yaml run` processes, each with its own state_dir
  and token_dir, one template `app` and no accounts, `workers: --workers`. Each daemon's template
  has a client_id of its own (hN), all accepted by the provider for every grant, so the provider
  counts each daemon's share of the refreshes (the daemons all report the same host name to the
  database: they run on one machine).

Figures:

- cold start: from the daemons' fork until the freshtoken_tokens view shows an access token valid
  now (expires_at > now()) for every user (polled with count(*) every --poll seconds);
- steady state: the provider's refreshes per second over --window seconds, starting when the
  second cycle of refreshes begins (the first refreshes' tokens fall due again), and the fewest
  users with a valid token seen by any poll during the window (goal: all of them);
- the database: pg_total_relation_size('freshtoken_account') (table + indexes + TOAST), after the
  cold start and at the end, and the dead tuples the updates left;
- each daemon's RSS (VmRSS, sampled at each poll) and peak (VmHWM) from /proc;
- double spends: the provider's reuse_count (goal 0); also invalid_grant answers of any kind.

Token lifetime: a template user's grant falls due `margin` before its token expires, with the
default margin max(10 % of the lifetime, 30 s). For refreshes to keep flowing after the cold start
the second cycle must start about when the first ends, so the lifetime is chosen with
lifetime - margin a little longer than the cold start: 720 s (due 648 s after each refresh) for a
cold start of 5-10 minutes; steady load is then users / 648 s, about 154 refreshes/s at 100,000.

Results go to --out (JSON) and a summary to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))

TEMPLATE = "app"
CLIENT_SECRET = "scale-secret"  # noqa: S105 - the bench provider's shared client secret, not a real one


# ---------------------------------------------------------------- the provider


class Grants:
    """Refresh tokens with rotation and reuse detection, the rule of freshtoken.testing.AuthServer."""

    def __init__(self, n: int, lifetime: float) -> None:
        self.lifetime = lifetime
        self.current = [secrets.token_urlsafe(18) for _ in range(n)]
        self.owner = {token: i for i, token in enumerate(self.current)}  # every refresh token ever issued -> its grant
        self.revoked = bytearray(n)
        self.token_requests = 0
        self.refreshes_ok = 0
        self.reuse_count = 0
        self.invalid_grant = 0
        self.by_client: dict[str, int] = {}
        self.started = time.time()

    def refresh(self, client: str, token: str) -> tuple[int, dict[str, Any]]:
        self.token_requests += 1
        grant = self.owner.get(token)
        if grant is None:
            self.invalid_grant += 1
            return 400, {"error": "invalid_grant", "error_description": "refresh token unknown"}
        if token != self.current[grant]:
            self.reuse_count += 1
            self.invalid_grant += 1
            self.revoked[grant] = 1
            return 400, {"error": "invalid_grant", "error_description": "refresh token already used: grant revoked"}
        if self.revoked[grant]:
            self.invalid_grant += 1
            return 400, {"error": "invalid_grant", "error_description": "grant revoked"}
        new = secrets.token_urlsafe(18)
        self.current[grant] = new
        self.owner[new] = grant
        del self.owner[token]  # reuse of it is still caught: an unknown token is refused (counted only as invalid_grant)
        self.refreshes_ok += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        expires = time.time() + self.lifetime
        return 200, {
            "access_token": f"at.{grant}.{expires:.0f}.{secrets.token_urlsafe(8)}",
            "token_type": "Bearer",
            "expires_in": int(self.lifetime),
            "refresh_token": new,
        }

    def stats(self) -> dict[str, Any]:
        return {
            "token_requests": self.token_requests,
            "refreshes_ok": self.refreshes_ok,
            "reuse_count": self.reuse_count,
            "invalid_grant": self.invalid_grant,
            "by_client": dict(self.by_client),
            "revoked": sum(self.revoked),
        }


def _client(headers: dict[str, str], form: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        try:
            user, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        except ValueError:
            return None
        user, secret = unquote_plus(user), unquote_plus(secret)
    else:
        user, secret = form.get("client_id", ""), form.get("client_secret", "")
    return user if secret == CLIENT_SECRET else None


async def _serve_connection(grants: Grants, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            form = dict(parse_qsl(body.decode()))
            client = _client(headers, form)
            if not lines[0].startswith("POST "):
                status, answer = 405, {"error": "invalid_request"}
            elif client is None:
                status, answer = 401, {"error": "invalid_client"}
            elif form.get("grant_type") != "refresh_token":
                status, answer = 400, {"error": "unsupported_grant_type"}
            else:
                status, answer = grants.refresh(client, form.get("refresh_token", ""))
            data = json.dumps(answer).encode()
            reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 405: "Method Not Allowed"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
                f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


def provider_main(args: argparse.Namespace) -> int:
    """Print {"token_url"} on stdout, then answer `stats` lines on stdin with one JSON line each; EOF stops."""
    grants = Grants(args.grants, args.lifetime)
    Path(args.tokens_out).write_text(json.dumps(grants.current))

    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: _serve_connection(grants, r, w), "127.0.0.1", 0, backlog=512)
        port = server.sockets[0].getsockname()[1]
        print(json.dumps({"token_url": f"http://127.0.0.1:{port}/token"}), flush=True)
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def commands() -> None:  # a thread: the counters are read under the GIL, never torn
            for line in sys.stdin:
                if line.strip() == "stats":
                    print(json.dumps({**grants.stats(), "at": time.time()}), flush=True)
            loop.call_soon_threadsafe(done.set_result, None)

        threading.Thread(target=commands, daemon=True).start()
        await done
        server.close()

    asyncio.run(main())
    return 0


class Provider:
    """The provider as a child process."""

    def __init__(self, grants: int, lifetime: float, workdir: Path) -> None:
        tokens = workdir / "provider-tokens.json"
        argv = [sys.executable, __file__, "provider", "--grants", str(grants), "--lifetime", str(lifetime), "--tokens-out", str(tokens)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None
        self.token_url: str = json.loads(self.proc.stdout.readline())["token_url"]
        self.seeds: list[str] = json.loads(tokens.read_text())
        tokens.unlink()
        self._lock = threading.Lock()

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write("stats\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ---------------------------------------------------------------- the database and the daemons


def start_database(fsync: bool, statements: bool = False) -> Any:
    """A private cluster (tests/pgcluster.py); with `fsync`, the durability a production server has."""
    import pgcluster

    if statements:
        pgcluster.SETTINGS["shared_preload_libraries"] = "'pg_stat_statements'"

    if fsync:
        pgcluster.SETTINGS.update(fsync="on", synchronous_commit="on", full_page_writes="on", wal_level="replica", max_wal_senders="10")
    pgcluster.SETTINGS.update(shared_buffers="128MB", max_connections="200")
    return pgcluster.start_cluster()


def put_grants(dsn: str, seeds: list[str], *, batch: int = 10_000) -> float:
    """freshtoken_put_grant() for every user, pipelined; returns the seconds it took."""
    import psycopg

    started = time.monotonic()
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for first in range(0, len(seeds), batch):
            rows = [(f"{TEMPLATE}/user{i}", seeds[i]) for i in range(first, min(first + batch, len(seeds)))]
            cur.executemany("SELECT freshtoken_put_grant(%s, %s)", rows)
            conn.commit()
    return time.monotonic() - started


def daemon_config(path: Path, *, host: str, dsn: str, token_url: str, workers: int, workdir: Path) -> Path:
    text = (
        f"state_dir: {workdir / host / 'state'}\n"
        f"token_dir: {workdir / host / 'tokens'}\n"
        f'shared_state: "{dsn}"\n'
        f"workers: {workers}\n"
        "min_refresh_interval: 1s\n"
        "templates:\n"
        f"  {TEMPLATE}:\n"
        f"    token_url: {token_url}\n"
        f"    client_id: {host}\n"
        f"    client_secret: {CLIENT_SECRET}\n"
    )
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


class Db:
    """The bench's own connection, for polling."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True)

    def one(self, query: str, *params: Any) -> Any:
        row = self.conn.execute(query, params).fetchone()  # type: ignore[arg-type]  # the bench's own constant SQL
        assert row is not None
        return row[0] if len(row) == 1 else row

    def sessions(self) -> int:
        """Sessions ever opened on this database (PostgreSQL 14+): a pool that closes its surplus opens new ones."""
        return int(self.one("SELECT sessions FROM pg_stat_database WHERE datname = current_database()"))

    def fresh(self) -> int:
        return int(self.one("SELECT count(*) FROM freshtoken_tokens WHERE expires_at > now()"))

    def sizes(self) -> dict[str, Any]:
        total, table, indexes, dead, live = self.one(
            """SELECT pg_total_relation_size('freshtoken_account'), pg_relation_size('freshtoken_account'),
                      pg_indexes_size('freshtoken_account'), n_dead_tup, n_live_tup
                 FROM pg_stat_user_tables WHERE relname = 'freshtoken_account'"""
        )
        return {
            "account_total_mib": total / 2**20,
            "account_heap_mib": table / 2**20,
            "account_indexes_mib": indexes / 2**20,
            "attempt_total_mib": self.one("SELECT pg_total_relation_size('freshtoken_attempt')") / 2**20,
            "database_mib": self.one("SELECT pg_database_size(current_database())") / 2**20,
            "dead_tuples": dead,
            "live_tuples": live,
        }


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM in MiB, and user+system CPU seconds."""
    from harness import cpu_seconds, rss_mib

    try:
        rss, hwm = rss_mib(pid)
        return {"rss": rss, "hwm": hwm, "cpu": cpu_seconds(pid)}
    except (FileNotFoundError, ProcessLookupError):
        return {"rss": 0.0, "hwm": 0.0, "cpu": 0.0}


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages: other work on the machine shows here."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from harness import DaemonProcess, clean_env, machine

    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    result: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "users": args.users,
        "daemons": args.daemons,
        "workers": args.workers,
        "lifetime": args.lifetime,
        "fsync": not args.no_fsync,
        "load_before": loadavg(),
        "source": args.source or "this checkout",
    }
    cluster = start_database(fsync=not args.no_fsync, statements=args.statements)
    provider = None
    daemons: list[DaemonProcess] = []
    try:
        cluster.sql("CREATE DATABASE scale")
        if args.statements:
            cluster.sql("CREATE EXTENSION pg_stat_statements", "scale")
        dsn = cluster.dsn("scale")
        from freshtoken.pgstore import PgStore

        with PgStore(dsn) as store:
            store.migrate()
        provider = Provider(args.users, args.lifetime, workdir)
        result["put_grants_s"] = put_grants(dsn, provider.seeds)
        provider.seeds = []
        print(f"{args.users} grants stored in {result['put_grants_s']:.1f}s; load {loadavg()}", flush=True)
        db = Db(dsn)
        env = clean_env(workdir)
        env["PYTHONPATH"] = args.source or str(HERE.parent / "daemon")  # this checkout's freshtoken unless --source
        configs = [
            daemon_config(
                workdir / f"h{n}.yaml", host=f"h{n}", dsn=dsn, token_url=provider.token_url, workers=args.workers, workdir=workdir
            )
            for n in range(1, args.daemons + 1)
        ]
        started = time.monotonic()
        daemons = [DaemonProcess(c, workdir / f"{c.stem}.log", env=env).start() for c in configs]
        timeline: list[dict[str, Any]] = []
        peak_rss = [0.0] * len(daemons)

        def sample(phase: str) -> dict[str, Any]:
            for d in daemons:
                if not d.alive():
                    raise RuntimeError(f"daemon {d.config.stem} exited ({d.proc.returncode if d.proc else '?'}); see {d.log}")
            stats = provider.stats() if provider else {}
            procs = [proc_status(d.pid) for d in daemons]
            for i, p in enumerate(procs):
                peak_rss[i] = max(peak_rss[i], p["rss"])
            point = {
                "t": round(time.monotonic() - started, 2),
                "phase": phase,
                "fresh": db.fresh(),
                "refreshes_ok": stats.get("refreshes_ok", 0),
                "token_requests": stats.get("token_requests", 0),
                "reuse_count": stats.get("reuse_count", 0),
                "rss": [round(p["rss"], 1) for p in procs],
                "cpu": [round(p["cpu"], 1) for p in procs],
                "load": loadavg(),
            }
            timeline.append(point)
            return point

        # ---- cold start
        deadline = started + args.cold_timeout
        last_print = 0.0
        while True:
            point = sample("cold")
            if point["fresh"] >= args.users:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {point['fresh']} of {args.users} fresh after {args.cold_timeout}s")
            if time.monotonic() - last_print > 30:
                last_print = time.monotonic()
                print(f"  t={point['t']:.0f}s fresh {point['fresh']} refreshes {point['refreshes_ok']} rss {point['rss']}", flush=True)
            time.sleep(args.poll)
        cold = point["t"]
        first_refresh_t = next((p["t"] for p in timeline if p["refreshes_ok"] > 0), 0.0)
        result.update(
            cold_start_s=cold,
            cold_refreshes=point["refreshes_ok"],
            cold_token_requests=point["token_requests"],
            cold_rate=point["refreshes_ok"] / cold,
            rss_after_cold=point["rss"],
            cpu_after_cold=point["cpu"],
            size_after_cold=db.sizes(),
            postgres_cpu_cold_s=postgres_cpu(cluster),
            sessions_cold=db.sessions(),
        )
        print(f"cold start: {args.users} fresh after {cold:.1f}s ({result['cold_rate']:.0f} refreshes/s); load {loadavg()}", flush=True)

        # ---- wait for the second cycle, then the steady window
        from freshtoken.timing import default_margin

        margin = default_margin(args.lifetime)  # what grant_due_at uses for a template without refresh_margin
        second_cycle = first_refresh_t + (args.lifetime - margin)
        min_fresh_gap = args.users
        while time.monotonic() - started < second_cycle:
            point = sample("gap")
            min_fresh_gap = min(min_fresh_gap, point["fresh"])
            time.sleep(args.poll)
        w0 = sample("steady")
        pg_cpu_w0 = postgres_cpu(cluster)
        sessions_w0 = db.sessions()
        w0_at = time.monotonic()
        min_fresh = w0["fresh"]
        while time.monotonic() - w0_at < args.window:
            time.sleep(args.poll)
            point = sample("steady")
            min_fresh = min(min_fresh, point["fresh"])
            if time.monotonic() - last_print > 30:
                last_print = time.monotonic()
                print(f"  t={point['t']:.0f}s fresh {point['fresh']} refreshes {point['refreshes_ok']} rss {point['rss']}", flush=True)
        w1 = point
        window = w1["t"] - w0["t"]
        statuses = [proc_status(d.pid) for d in daemons]
        result.update(
            second_cycle_at_s=second_cycle,
            min_fresh_between=min_fresh_gap,
            window_s=window,
            window_refreshes=w1["refreshes_ok"] - w0["refreshes_ok"],
            steady_rate=(w1["refreshes_ok"] - w0["refreshes_ok"]) / window,
            needed_rate=args.users / (args.lifetime - margin),
            min_fresh_in_window=min_fresh,
            window_cpu=[round(b - a, 1) for a, b in zip(w0["cpu"], w1["cpu"], strict=True)],
            rss_end=[round(s["rss"], 1) for s in statuses],
            rss_peak_vmhwm=[round(s["hwm"], 1) for s in statuses],
            rss_peak_sampled=[round(r, 1) for r in peak_rss],
            load_end=loadavg(),
        )
        result["sessions_window"] = db.sessions() - sessions_w0
        result["postgres_cpu_s"] = postgres_cpu(cluster)
        result["postgres_cpu_window_s"] = result["postgres_cpu_s"] - pg_cpu_w0
        result["daemon_cpu_per_refresh_ms"] = sum(result["window_cpu"]) / max(1, result["window_refreshes"]) * 1000
        for d in daemons:
            d.stop(timeout=60)
        result["exit_codes"] = [d.proc.returncode if d.proc else None for d in daemons]
        stats = provider.stats()
        result.update(
            reuse_count=stats["reuse_count"],
            invalid_grant=stats["invalid_grant"],
            revoked=stats["revoked"],
            token_requests=stats["token_requests"],
            refreshes_ok=stats["refreshes_ok"],
            by_daemon=stats["by_client"],
            size_end=db.sizes(),
            never_refreshed=int(db.one("SELECT count(*) FROM freshtoken_account WHERE expires_at IS NULL")),
        )
        if args.statements:
            rows = db.conn.execute(
                """SELECT calls, round(total_exec_time)::int, round(mean_exec_time::numeric, 3)::float8,
                          left(regexp_replace(query, '\\s+', ' ', 'g'), 90)
                     FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 12"""
            ).fetchall()
            result["statements"] = [list(r) for r in rows]
            for r in rows:
                print(f"  {r[0]:>8} calls {r[1]:>7} ms total {r[2]:>8} ms each  {r[3]}")
        result["timeline"] = timeline
        return result
    finally:
        for d in daemons:
            if d.alive():
                d.stop(timeout=30)
        if provider is not None:
            provider.stop()
        if args.keep:
            print(f"kept: cluster in {cluster.root} (stop it with pg_ctl), work dir {workdir}")
        else:
            cluster.stop()


def postgres_cpu(cluster: Any) -> float:
    """CPU seconds of the whole cluster so far: the postmaster, its reaped children (cutime, cstime) and its live ones."""
    from harness import TICKS, cpu_seconds

    pidfile = cluster.data / "postmaster.pid"
    master = int(pidfile.read_text().split()[0])
    stat = Path(f"/proc/{master}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    total = (int(fields[13]) + int(fields[14])) / TICKS  # children that exited
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
                if int(entry) == master or ppid == master:
                    total += cpu_seconds(int(entry))
            except (OSError, ValueError):
                continue
    return total


def summary(r: dict[str, Any]) -> str:
    size = r["size_end"]
    lines = [
        f"{r['users']} users, {r['daemons']} daemons x {r['workers']} workers, {r['lifetime']:.0f}s tokens, "
        f"fsync {'on' if r['fsync'] else 'off'}",
        f"grants stored in {r['put_grants_s']:.1f}s",
        f"cold start: every user fresh after {r['cold_start_s']:.1f}s ({r['cold_refreshes']} refreshes, {r['cold_rate']:.0f}/s)",
        f"steady: {r['window_refreshes']} refreshes in {r['window_s']:.0f}s = {r['steady_rate']:.1f}/s "
        f"(needed {r['needed_rate']:.1f}/s); fewest fresh in the window {r['min_fresh_in_window']}",
        f"RSS end {r['rss_end']} MiB, peak (VmHWM) {r['rss_peak_vmhwm']} MiB",
        f"freshtoken_account {size['account_total_mib']:.1f} MiB (heap {size['account_heap_mib']:.1f}, indexes "
        f"{size['account_indexes_mib']:.1f}); database {size['database_mib']:.1f} MiB; dead tuples {size['dead_tuples']}",
        f"reuse_count {r['reuse_count']}, invalid_grant {r['invalid_grant']}, token requests {r['token_requests']}, "
        f"refreshes {r['refreshes_ok']}; by daemon {r['by_daemon']}",
        f"CPU: postgres {r['postgres_cpu_cold_s']:.0f}s in the cold start, {r['postgres_cpu_window_s']:.0f}s in the window; "
        f"daemons' in the window {r['window_cpu']} ({r['daemon_cpu_per_refresh_ms']:.1f} ms per refresh, all daemons)",
        f"new database sessions: {r['sessions_cold']} in the cold start, {r['sessions_window']} in the window",
        f"load {r['load_before']} -> {r['load_end']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    prov = sub.add_parser("provider", help="run the lean token endpoint alone")
    prov.add_argument("--grants", type=int, required=True)
    prov.add_argument("--lifetime", type=float, required=True)
    prov.add_argument("--tokens-out", required=True)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--daemons", type=int, default=4)
    parser.add_argument("--workers", type=int, default=8, help="each daemon's `workers` (default 8)")
    parser.add_argument("--lifetime", type=float, default=720.0, help="access-token lifetime, seconds (default 720; see above)")
    parser.add_argument("--window", type=float, default=180.0, help="steady window, seconds (default 180)")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between polls of the database (default 2)")
    parser.add_argument("--cold-timeout", type=float, default=1200.0)
    parser.add_argument("--no-fsync", action="store_true", help="the test suite's cluster settings (fsync off)")
    parser.add_argument("--workdir", default="/tmp/ft-pgscale")  # noqa: S108 - the bench's own directory
    parser.add_argument("--out", default=str(HERE / "out" / "pgscale.json"))
    parser.add_argument("--statements", action="store_true", help="load pg_stat_statements and print the costliest queries")
    parser.add_argument("--source", default="", help="a daemon/ dir the daemons import freshtoken from (e.g. `git archive` of a commit)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster running and the work dir")
    args = parser.parse_args(argv)
    if args.command == "provider":
        return provider_main(args)
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
