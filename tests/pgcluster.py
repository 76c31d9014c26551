"""A private PostgreSQL cluster for the tests: one per pytest session, a fresh database per test.

The cluster lives in a temp dir under /tmp (not pytest's tmp_path: that is 0700
root's, and the server may run as another user), listens on a unix socket in
that dir and on a free 127.0.0.1 port, trusts every local connection, and
skips durability (fsync=off): it is thrown away at the end of the session.
initdb and pg_ctl refuse to run as root, so as root they run as Debian's
`postgres` user through runuser.

Use it from a test module with `from pgcluster import pg_cluster, pg_dsn  # noqa: F401`
(fixtures imported into several modules still share one cluster: it is kept in
the session's stash). Without PostgreSQL installed the tests skip, except under
CI=true, where a missing server is an install bug and fails.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SETTINGS = {
    "fsync": "off",  # a throwaway cluster: durability costs seconds and proves nothing here
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "60",
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_permissions": "0777",
    "log_min_messages": "warning",
    "max_wal_senders": "0",
    "wal_level": "minimal",
}
SUPERUSER = "postgres"
TEMPLATE = "freshtoken_template"  # migrated once; every test gets a copy


def find_bindir() -> Path | None:
    """Debian's newest /usr/lib/postgresql/<ver>/bin, else wherever initdb is on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(os.path.realpath(initdb)).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgCluster:
    bindir: Path
    root: Path  # holds data/, the socket and the log
    run_as: str | None  # a user name when we are root, else None
    port: int = 0
    started_in: float = 0.0  # seconds initdb + start + the migrated template took
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def _run(self, *args: str, timeout: float = 60) -> None:
        argv = [str(self.bindir / args[0]), *args[1:]]
        if self.run_as:
            argv = ["runuser", "-u", self.run_as, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:1])} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")

    def start(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in SETTINGS.items())
        for attempt in range(3):  # another process may take the free port between our probe and the bind
            self.port = _free_port()
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", f"-p {self.port} -k {self.root}", "start"
                )
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def pause(self, mode: str = "immediate") -> None:
        """Stop the server, keeping its data (a crash with `immediate`; every session ends); resume() brings it back."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", timeout=60)

    def resume(self) -> None:
        """Start the server paused by pause(), on the same port and socket."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", f"-p {self.port} -k {self.root}", "start")

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER, *, tcp: bool = False) -> str:
        """A key=value conninfo for the socket (or, with tcp, for 127.0.0.1)."""
        host = "127.0.0.1" if tcp else str(self.root)
        return f"host={host} port={self.port} dbname={dbname} user={user}"

    def sql(self, statement: str, dbname: str = "postgres") -> None:
        """Run one statement as the superuser, in autocommit (CREATE DATABASE refuses a transaction)."""
        import psycopg

        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]  # test-made SQL, no user input

    def new_database(self, template: str = "template1") -> str:
        name = f"t{os.getpid()}_{next(self._names)}"
        self.sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return name


def start_cluster() -> PgCluster:
    bindir = find_bindir()
    if bindir is None:
        reason = "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on PATH; .ci/install-test-deps.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    run_as = None
    root = Path(tempfile.mkdtemp(prefix="ftpg-", dir="/tmp"))  # short: a socket path is limited to 107 bytes
    if os.geteuid() == 0:
        run_as = "postgres"
        try:
            entry = pwd.getpwnam(run_as)
        except KeyError:
            pytest.fail("running as root, and there is no 'postgres' user to run initdb as (initdb refuses root)")
        os.chown(root, entry.pw_uid, entry.pw_gid)
    cluster = PgCluster(bindir=bindir, root=root, run_as=run_as)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


_KEY = pytest.StashKey[PgCluster]()


@pytest.fixture(scope="session")
def pg_cluster(request: pytest.FixtureRequest) -> PgCluster:
    """The session's one cluster (started at first use, stopped when the session ends)."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install '.[postgres]')")
    stash = request.config.stash
    if _KEY not in stash:
        started = time.monotonic()
        cluster = start_cluster()
        stash[_KEY] = cluster
        request.config.add_cleanup(cluster.stop)
        from freshtoken.pgstore import PgStore

        cluster.sql(f'CREATE DATABASE "{TEMPLATE}"')
        with PgStore(cluster.dsn(TEMPLATE)) as store:
            store.migrate()
        cluster.started_in = time.monotonic() - started
    return stash[_KEY]


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> str:
    """A conninfo for a database of this test's own, already migrated."""
    return pg_cluster.dsn(pg_cluster.new_database(TEMPLATE))


def lock_waiters(dsn: str) -> int:
    """How many sessions of the cluster are waiting for a lock right now."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
    return int(row[0]) if row else 0


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """fakes.poll that fails naming what it waited for."""
    from fakes import poll

    if not poll(predicate, timeout, interval=0.005):
        raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------- a lock holder in a process of its own


@contextlib.contextmanager
def holder(dsn: str, account: str, idle: float) -> Iterator[subprocess.Popen[str]]:
    """A child that takes the account's lock, says `locked <version>`, then waits for a line on stdin.

    Given one, it checks its session (`alive` or `lost <class>`), tries to save a state with refresh
    token "from-holder" (`saved <version>` or `refused <class>`), and, if refused, tries the fenced
    recovery save on the version it read (`recovered <version>` or `fenced`). Killed at the end.
    """
    argv = [sys.executable, __file__, "holder", dsn, account, str(idle)]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        try:
            yield child
        finally:
            child.kill()  # SIGKILL ends a stopped child too; Popen's exit then waits and closes the pipes


def _holder(dsn: str, account: str, idle: float) -> None:
    from freshtoken.model import AccountState, Secret
    from freshtoken.pgstore import FencedOff, LockLost, PgStore, PgTimeouts
    from freshtoken.statestore import SaveFailed

    timeouts = PgTimeouts(idle_in_transaction=idle, margin=min(1.0, idle / 2), lock=10, statement=10)
    mine = AccountState(refresh_token=Secret("from-holder"), last_refresh=time.time())
    with PgStore(dsn, host="holder", timeouts=timeouts) as store, store.transaction(account) as tx:
        read_version = tx.version
        print(f"locked {read_version}", flush=True)
        sys.stdin.readline()
        try:
            tx.ensure_alive()
            print("alive", flush=True)
        except LockLost as exc:
            print(f"lost {type(exc).__name__}", flush=True)
        try:
            tx.save(mine)
            print(f"saved {tx.version}", flush=True)
            return
        except SaveFailed as exc:
            print(f"refused {type(exc).__name__}", flush=True)
        try:
            print(f"recovered {store.save_if_version(account, read_version, mine)}", flush=True)
        except FencedOff:
            print("fenced", flush=True)


if __name__ == "__main__" and sys.argv[1] == "holder":
    _holder(sys.argv[2], sys.argv[3], float(sys.argv[4]))
