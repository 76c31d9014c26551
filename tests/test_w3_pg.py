"""The PostgreSQL store against a real server: schema, the row-lock transaction, the fence, claims, NOTIFY, the reader role."""

# ruff: noqa: F811  (pytest fixtures imported from pgcluster are parameters here)

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install '.[postgres]')")

from freshtoken.errors import FreshtokenError, TemporaryError  # noqa: E402
from freshtoken.model import AccessToken, AccountState, Secret  # noqa: E402
from freshtoken.pgstore import (  # noqa: E402
    DatabaseUnavailable,
    FencedOff,
    PgStore,
    PgTimeouts,
    SchemaMismatch,
    redact,
)
from freshtoken.statestore import SaveFailed  # noqa: E402
from pgcluster import PgCluster, holder, lock_waiters, pg_cluster, pg_dsn, wait_until  # noqa: E402, F401  (fixtures)

NOW = 1_800_000_000.0


def token_state(refresh: str, access: str = "AT", expires_at: float = NOW + 3600) -> AccountState:
    return AccountState(
        refresh_token=Secret(refresh), access=AccessToken(Secret(access), "Bearer", expires_at, "read"), last_refresh=time.time()
    )


def stored_refresh(store: PgStore, account: str) -> str | None:
    token = store.load(account).refresh_token
    return token.reveal() if token else None


# ---------------------------------------------------------------- schema and connections


def test_migrate_twice_is_a_no_op(pg_cluster: PgCluster) -> None:
    """migrate() creates schema version 1 on an empty database, and a second run changes nothing and keeps the rows."""
    dsn = pg_cluster.dsn(pg_cluster.new_database())
    with PgStore(dsn) as store:
        with pytest.raises(SchemaMismatch, match="schema version 0.*freshtoken db init"):
            store.check_schema()
        assert store.migrate() == 1
        with store.transaction("a") as tx:
            tx.save(token_state("r1"))
        assert store.migrate() == 0
        store.check_schema()
        assert store.schema_version() == 1
        assert stored_refresh(store, "a") == "r1"


def test_connections_carry_the_timeouts_and_keep_the_users_options(pg_dsn: str) -> None:
    """Every connection has lock, idle-in-transaction and statement timeouts set, on top of options the DSN already had."""
    timeouts = PgTimeouts(lock=7, idle_in_transaction=61, statement=9)
    with PgStore(f"{pg_dsn} options='-c search_path=public,pg_catalog'", timeouts=timeouts) as store, store.connect() as conn:
        shown = [conn.execute(f"SHOW {name}").fetchone()[0] for name in ("lock_timeout", "idle_in_transaction_session_timeout")]
        assert shown == ["7s", "61s"]
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "9s"
        assert conn.execute("SHOW search_path").fetchone()[0] == "public,pg_catalog"


def test_request_deadline_must_be_shorter_than_the_idle_timeout() -> None:
    """A token request deadline that could outlive the lock's session is refused, as is a statement timeout below the lock timeout."""
    timeouts = PgTimeouts(idle_in_transaction=60, margin=5)
    timeouts.check_request_deadline(40)
    with pytest.raises(ValueError, match="must be shorter than"):
        timeouts.check_request_deadline(55)
    with pytest.raises(ValueError, match="statement timeout"):
        PgTimeouts(lock=50, statement=10)


def test_passwords_never_reach_messages() -> None:
    """The password of a URI or key=value string is stripped from the shown form and from connection and parse errors."""
    uri = "postgresql://freshtoken:s3cretpw@127.0.0.1:1/db?connect_timeout=2"
    assert "s3cretpw" not in redact(uri) and "127.0.0.1" in redact(uri)
    with PgStore(uri) as store:
        assert "s3cretpw" not in repr(store)
        with pytest.raises(DatabaseUnavailable) as caught:
            store.connect()
    assert "s3cretpw" not in str(caught.value) and "127.0.0.1" in str(caught.value)
    with pytest.raises(FreshtokenError) as bad:
        PgStore("host=db password=se cretpw")
    assert "cretpw" not in str(bad.value)


def test_missing_psycopg_is_a_one_line_exit_78(tmp_path: Path) -> None:
    """Without psycopg, importing the store raises MissingExtra (exit 78) naming the freshtoken[postgres] extra."""
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "try:\n    import freshtoken.pgstore\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc.exit_code, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("MissingExtra 78 ") and "freshtoken[postgres]" in out


# ---------------------------------------------------------------- the transaction


def test_two_transactions_on_one_account_serialize(pg_dsn: str) -> None:
    """A second transaction waits for the first's lock, then sees the state and version the first saved."""
    seen: dict[str, object] = {}

    def second() -> None:
        with PgStore(pg_dsn, host="b") as other, other.transaction("acct") as tx:
            seen["version"], seen["refresh"] = tx.version, tx.state.refresh_token

    with PgStore(pg_dsn, host="a") as store:
        with store.transaction("acct") as tx:
            assert tx.version == 0 and tx.state == AccountState()
            waiter = threading.Thread(target=second)
            waiter.start()
            wait_until(lambda: lock_waiters(pg_dsn) == 1, "the second transaction to wait for the lock")
            assert not seen
            tx.save(token_state("rotated-by-a"))
            assert tx.version == 1
        waiter.join(30)
        assert seen == {"version": 1, "refresh": Secret("rotated-by-a")}
        row = store.read("acct")
        assert row is not None and row.last_refresh_host == "a" and row.expires_at == pytest.approx(NOW + 3600)


def test_the_version_fence_refuses_a_stale_save(pg_dsn: str) -> None:
    """A save based on a version another host has since replaced is refused and the newer row stays as it is."""
    with PgStore(pg_dsn, host="a") as a, PgStore(pg_dsn, host="b") as b:
        with a.transaction("acct") as tx:
            tx.save(token_state("r1"))  # commits: the lock is gone from here on
            with b.transaction("acct") as other:
                assert other.version == 1
                other.save(token_state("r2"))
            with pytest.raises(SaveFailed, match="acct: the stored state changed since version 1 was read .version 2 by b."):
                tx.save(token_state("stale"))
        with pytest.raises(FencedOff):
            a.save_if_version("acct", 1, token_state("stale"))
        assert stored_refresh(a, "acct") == "r2"
        assert a.save_if_version("acct", 2, token_state("r3")) == 3


def test_a_block_that_saves_nothing_releases_the_lock(pg_dsn: str) -> None:
    """Leaving the block without a save, or by an exception, rolls back and frees the lock for the next transaction."""
    with PgStore(pg_dsn, timeouts=PgTimeouts(lock=2, statement=5)) as store:
        with store.transaction("acct"):
            pass
        with pytest.raises(RuntimeError), store.transaction("acct"):
            raise RuntimeError("boom")
        with store.transaction("acct") as tx:
            tx.save(token_state("r1"))
            assert tx.version == 1


def test_notify_carries_only_account_and_version(pg_dsn: str) -> None:
    """After a commit, a listener gets (account, version), and the raw payload is 'account:version', never a token."""
    with PgStore(pg_dsn) as store, store.listen() as listener, psycopg.connect(pg_dsn, autocommit=True) as raw:
        raw.execute("LISTEN freshtoken_state")
        with store.transaction("team:cron") as tx:
            tx.save(token_state("secret-refresh", access="secret-access"))
        assert list(listener.notifications(10, stop_after=1)) == [("team:cron", 1)]
        payloads = [note.payload for note in raw.notifies(timeout=10, stop_after=1)]
        assert payloads == ["team:cron:1"]


def test_nothing_is_notified_for_a_rolled_back_transaction(pg_dsn: str) -> None:
    """A transaction that saves nothing sends no notification (NOTIFY goes out only at commit)."""
    with PgStore(pg_dsn) as store, store.listen() as listener:
        with store.transaction("acct"):
            pass
        with store.transaction("other") as tx:
            tx.save(token_state("r"))
        assert list(listener.notifications(10, stop_after=1)) == [("other", 1)]


def test_an_attempt_outlives_its_senders_session_until_the_recovery_save(pg_cluster: PgCluster, pg_dsn: str) -> None:
    """If the sender's session ends after before_send(), the next holder sees the attempt; the sender's fenced recovery save clears it."""
    dbname = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    with PgStore(pg_dsn, host="a") as a, PgStore(pg_dsn, host="b") as b:
        with a.transaction("acct") as seed:
            seed.save(token_state("r1"))
        with a.transaction("acct") as tx:
            assert tx.attempt is None
            assert 0 < tx.before_send() <= a.timeouts.request_budget
            pg_cluster.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE state = 'idle in transaction'", dbname)
            with b.transaction("acct") as other:
                assert other.attempt is not None and (other.attempt.host, other.attempt.version) == ("a", 1)
                assert not other.attempt.sender_gone  # a's process (its presence lock) is alive: b must wait for it
                assert other.state.refresh_token == Secret("r1")
                with pytest.raises(TemporaryError, match="acct: a sent this refresh token .* and has not saved the answer; waiting"):
                    other.before_send()
            with pytest.raises(SaveFailed, match="acct: the PostgreSQL session holding the account's lock has ended"):
                tx.save(token_state("r2"))
        assert a.save_if_version("acct", 1, token_state("r2")) == 2
        with b.transaction("acct") as other:
            assert other.attempt is None and other.state.refresh_token == Secret("r2")


# ---------------------------------------------------------------- work sharing


def make_due(store: PgStore, names: list[str]) -> None:
    store.due = lambda _name, _state: NOW - 1
    for name in names:
        with store.transaction(name) as tx:
            tx.save(token_state(f"r-{name}"))
    store.due = None


def test_claims_skip_accounts_under_a_refresh_lock(pg_dsn: str) -> None:
    """claim_due passes over an account whose row lock another host holds instead of waiting for it."""
    names = [f"acct{i}" for i in range(4)]
    with PgStore(pg_dsn, host="a") as a, PgStore(pg_dsn, host="b", timeouts=PgTimeouts(lock=1, statement=5)) as b:
        make_due(a, names)
        with a.transaction("acct0"):
            assert b.claim_due(10, NOW) == ["acct1", "acct2", "acct3"]
        assert b.claim_due(10, NOW) == ["acct0"]  # the others are leased to b until NOW + 60
        assert a.claim_due(10, NOW + 61) == names  # leases run out


def test_concurrent_claims_are_disjoint(pg_dsn: str) -> None:
    """Two hosts claiming at the same moment split the due accounts between them: no account twice, none left out."""
    names = [f"acct{i}" for i in range(6)]
    with PgStore(pg_dsn) as setup:
        make_due(setup, names)
    claims: dict[str, list[str]] = {}
    start = threading.Barrier(2)

    def claim(host: str) -> None:
        with PgStore(pg_dsn, host=host) as store:
            store.schema_version()  # connect before the barrier, so that the two claims really overlap
            start.wait()
            claims[host] = store.claim_due(3, NOW)

    threads = [threading.Thread(target=claim, args=(host,)) for host in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(claims["a"]) == len(claims["b"]) == 3
    assert sorted(claims["a"] + claims["b"]) == names


# ---------------------------------------------------------------- readers


def test_the_reader_role_sees_the_view_and_never_a_refresh_token(pg_cluster: PgCluster, pg_dsn: str) -> None:
    """freshtoken_reader can SELECT freshtoken_tokens, and gets permission denied on the table and its refresh tokens."""
    with PgStore(pg_dsn) as store:
        with store.transaction("acct") as tx:
            tx.save(token_state("the-refresh-token", access="the-access-token"))
        store.grant_reader()
        store.grant_reader()  # idempotent
    pg_cluster.sql("DO $$ BEGIN CREATE ROLE app_reader LOGIN IN ROLE freshtoken_reader; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    dbname = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    with psycopg.connect(pg_cluster.dsn(dbname, user="app_reader"), autocommit=True) as conn:
        rows = conn.execute("SELECT * FROM freshtoken_tokens").fetchall()
        columns = [c.name for c in conn.execute("SELECT * FROM freshtoken_tokens").description or ()]
        assert columns == ["account", "access_token", "token_type", "expires_at", "scope"]
        assert [(r[0], r[1], r[2], r[4]) for r in rows] == [("acct", "the-access-token", "Bearer", "read")]
        for query in (
            "SELECT * FROM freshtoken_account",
            "SELECT doc->>'refresh_token' FROM freshtoken_account",
            "SELECT account FROM freshtoken_account",
            "SELECT * FROM freshtoken_attempt",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(query)


# ---------------------------------------------------------------- holders in processes of their own


def test_a_sigkilled_holder_frees_the_lock_at_once(pg_dsn: str) -> None:
    """A process killed with SIGKILL while holding an account's lock leaves none behind: the next host gets it long before any timeout."""
    with holder(pg_dsn, "acct", idle=300) as child:
        assert child.stdout is not None and child.stdout.readline() == "locked 0\n"
        child.kill()
        child.wait(30)
        with PgStore(pg_dsn, timeouts=PgTimeouts(lock=10, statement=10)) as store, store.transaction("acct") as tx:
            assert tx.version == 0
            tx.save(token_state("after-kill"))


def test_a_stalled_holder_loses_its_lock_and_cannot_save(pg_dsn: str) -> None:
    """A SIGSTOPped holder's session ends after the idle timeout, another host rotates; resumed, its lock is gone and its saves refused."""
    with holder(pg_dsn, "acct", idle=0.3) as child, PgStore(pg_dsn, host="b", timeouts=PgTimeouts(lock=20, statement=20)) as b:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline() == "locked 0\n"
        os.kill(child.pid, signal.SIGSTOP)
        with b.transaction("acct") as tx:  # waits until the server ends the frozen holder's session
            assert tx.version == 0
            tx.save(token_state("rotated-by-b"))
        os.kill(child.pid, signal.SIGCONT)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.read().split("\n") == ["lost LockLost", "refused SaveFailed", "fenced", ""]
        assert child.wait(30) == 0
        row = b.read("acct")
        assert row is not None and row.version == 1 and row.last_refresh_host == "b"
        assert stored_refresh(b, "acct") == "rotated-by-b"
