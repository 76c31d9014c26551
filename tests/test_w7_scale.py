"""Template users at scale, the CI short form of bench/pgscale.py: real `freshtoken run` daemons sharing grants through claims.

The grants are rows stored with freshtoken_put_grant(); the daemons claim the due ones
(pgstore.claim_due, SKIP LOCKED) and refresh them under the row lock. The authorization
server rotates refresh tokens and revokes the whole grant on reuse, so a refresh token spent
twice shows in `reuse_count`, and a rotated token that was never saved shows as a stored
token that is no longer the grant's current one.
"""

# ruff: noqa: F811  (pytest fixtures imported from pgcluster are parameters here)

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install '.[postgres]')")

from fakes import poll  # noqa: E402
from freshtoken.model import AccountState, Secret  # noqa: E402
from freshtoken.pgstore import PgStore  # noqa: E402
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer  # noqa: E402
from pgcluster import pg_cluster, pg_dsn  # noqa: E402, F401  (fixtures)

LIFETIME = 16.0  # seconds; a template's default margin is then half of it: each grant falls due 8 s after its refresh
DUE_AFTER = LIFETIME / 2
SLACK = 1.0  # the daemon dates a token from its request's start, the server from its answer: a refresh may be due this much early


def config_text(tmp_path: Path, host: str, dsn: str, server: AuthServer, workers: int = 4) -> Path:
    path = tmp_path / f"{host}.yaml"
    path.write_text(
        f"state_dir: {tmp_path / host / 'state'}\n"
        f"token_dir: {tmp_path / host / 'tokens'}\n"
        f'shared_state: "{dsn}"\n'
        f"workers: {workers}\n"
        "min_refresh_interval: 1s\n"
        "templates:\n"
        "  app:\n"
        f"    token_url: {server.token_url}\n"
        f"    client_id: {DEMO_CLIENT_ID}\n"
        f"    client_secret: {DEMO_CLIENT_SECRET}\n"
    )
    os.chmod(path, 0o600)
    return path


def put_grants(dsn: str, server: AuthServer, users: int) -> None:
    rows = [(f"app/user{i}", server.issue_refresh_token(DEMO_CLIENT_ID, "s", user=f"user{i}")) for i in range(users)]
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany("SELECT freshtoken_put_grant(%s, %s)", rows)


def query(dsn: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]  # the test's own constant SQL


def stored_refresh_tokens(dsn: str) -> dict[str, str]:
    return {str(a): str(t) for a, t in query(dsn, "SELECT account, doc->>'refresh_token' FROM freshtoken_account")}


class Daemons:
    """`python -m freshtoken -c CFG run` per config, stderr kept in a file each."""

    def __init__(self, configs: list[Path]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.logs = [c.with_suffix(".log") for c in configs]
        self.procs = []
        for config, log in zip(configs, self.logs, strict=True):
            with open(log, "wb") as err:
                argv = [sys.executable, "-m", "freshtoken", "-c", str(config), "run"]
                self.procs.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err))

    def all_alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> list[int]:
        """SIGTERM each, then wait for every exit code."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        return [proc.wait(timeout=60) for proc in self.procs]

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def stderr(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in self.logs)


@pytest.fixture
def daemons() -> Iterator[list[Daemons]]:
    started: list[Daemons] = []
    yield started
    for group in started:
        group.kill()


@pytest.mark.slow
def test_two_daemons_keep_300_users_fresh_refreshing_each_grant_once_per_cycle(tmp_path: Path, pg_dsn: str, daemons: list[Daemons]) -> None:
    """Two daemons share 300 template users: all fresh, no refresh token spent twice, each grant refreshed at most once per cycle."""
    users, cycles = 300, 3
    with AuthServer(token_lifetime=LIFETIME, request_log_size=None) as server:
        put_grants(pg_dsn, server, users)
        group = Daemons([config_text(tmp_path, host, pg_dsn, server) for host in ("a", "b")])
        daemons.append(group)
        started = time.time()

        def fresh() -> bool:
            assert group.all_alive(), group.stderr()
            return query(pg_dsn, "SELECT count(*) FROM freshtoken_tokens WHERE expires_at > now()") == [(users,)]

        assert poll(fresh, 180, interval=0.2), group.stderr()
        # put_grant stores version 1 and each refresh's save adds one: wait until every grant has had `cycles` refreshes.
        assert poll(lambda: query(pg_dsn, "SELECT min(version) FROM freshtoken_account") >= [(1 + cycles,)], 300, interval=0.2), (
            group.stderr()
        )
        assert group.stop() == [0, 0], group.stderr()
        elapsed = time.time() - started

        assert server.reuse_count == 0
        # Every answer the server gave was saved: each stored refresh token is its grant's current one.
        stored = stored_refresh_tokens(pg_dsn)
        assert len(stored) == users
        assert [a for a, token in stored.items() if server.current_refresh_token(token) != token] == []
        # At most one refresh per grant per cycle: a grant falls due DUE_AFTER seconds after its refresh, so two
        # refreshes of one grant closer than that (less SLACK) mean a second host refreshed it in the same cycle
        # (it should have found the fresh token under the lock and sent nothing).
        times: dict[str | None, list[float]] = defaultdict(list)
        for r in server.requests:
            if r.form.get("grant_type") == "refresh_token" and r.status == 200:
                times[server.current_refresh_token(r.form["refresh_token"])].append(r.time)
        assert len(times) == users
        gaps = [b - a for t in times.values() for a, b in itertools.pairwise(sorted(t))]
        assert min(gaps) >= DUE_AFTER - SLACK, sorted(gaps)[:5]
        # Hence the total: users x (elapsed / (DUE_AFTER - SLACK) + 1) at most.
        bound = math.floor(elapsed / (DUE_AFTER - SLACK)) + 1
        assert server.refreshes_ok == sum(len(t) for t in times.values()) <= users * bound


@pytest.mark.slow
def test_a_stopped_daemon_saves_the_answer_of_a_refresh_in_flight(tmp_path: Path, pg_dsn: str, daemons: list[Daemons]) -> None:
    """SIGTERM while a template user's token request is at the server: the daemon waits for the answer and saves the rotated token."""
    with AuthServer(token_lifetime=3600) as server:
        put_grants(pg_dsn, server, 1)
        server.script(delay=0.5)  # the first refresh is answered half a second after it arrives; the grant rotates then
        group = Daemons([config_text(tmp_path, "a", pg_dsn, server, workers=1)])
        daemons.append(group)
        assert poll(lambda: server.inflight == 1 or not group.all_alive(), 60), group.stderr()
        assert group.stop() == [0], group.stderr()
        assert poll(lambda: server.inflight == 0, 30)  # without the wait, the server still rotates the grant after the daemon is gone
        assert server.refreshes_ok == 1
        (token,) = stored_refresh_tokens(pg_dsn).values()
        assert server.current_refresh_token(token) == token, "the rotated refresh token died with the daemon"


def test_saving_template_users_leaves_nothing_per_user_in_the_stores_memory(pg_dsn: str) -> None:
    """A store remembers the versions it saved for config accounts only: a daemon's memory does not grow with a template's users."""
    with PgStore(pg_dsn) as store:
        for name in ("app/user1", "app/user2", "team"):
            with store.transaction(name) as tx:
                tx.save(AccountState(refresh_token=Secret("r"), last_refresh=1.0))
        assert list(store.saved_versions) == ["team"]
