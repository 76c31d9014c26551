"""Shared state in PostgreSQL (config `shared_state:`): account state and refresh tokens for several hosts.

One row per account holds `AccountState.to_json()` in a jsonb column, a version
that every save increments, and the few columns the work sharing and readers
need. A refresh is one database transaction that holds the row's lock across
the token request (see the walk-through above `PgStore.transaction`), so across
all hosts one refresh token is spent once; a version fence refuses any save
made without that lock. After a commit, NOTIFY freshtoken_state '<account>:<version>'
tells the other daemons to copy the new token into their own files.

Schema: versioned, applied by `PgStore.migrate()`. Recommendation: an explicit
`freshtoken db init` run by a role that owns the schema, and a daemon that only
checks `schema_version()` at start (exit 78 if the schema is missing or older),
so that the daemons' role needs no DDL rights. migrate() is idempotent and takes
an advisory lock, so running it at every start is safe too where the daemons'
role owns the tables.

psycopg 3 is an optional dependency (`freshtoken[postgres]`): importing this
module without it raises MissingExtra (exit 78), a one-line message.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freshtoken.errors import DatabaseUnavailable as DatabaseUnavailable  # the shared state's errors are errors.py's (re-exported)
from freshtoken.errors import FencedOff as FencedOff
from freshtoken.errors import FreshtokenError, StateUnusable, TemporaryError
from freshtoken.errors import LockLost as LockLost
from freshtoken.errors import MissingExtra as MissingExtra
from freshtoken.errors import SchemaMismatch as SchemaMismatch
from freshtoken.model import USER_SEPARATOR, AccountState, Secret
from freshtoken.statestore import SaveFailed
from freshtoken.store import DaemonLock, Store

try:
    import psycopg
    from psycopg import errors as pgerrors
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from psycopg.types.json import Jsonb
except ImportError:
    raise MissingExtra("shared_state needs PostgreSQL support: install freshtoken[postgres] (pip install 'freshtoken[postgres]')") from None

log = logging.getLogger(__name__)

CHANNEL = "freshtoken_state"  # NOTIFY payload: '<account>:<version>' and nothing else (every role can LISTEN)
READER_ROLE = "freshtoken_reader"
ATTEMPT_WAIT = 600.0  # seconds a live host's unsaved refresh is waited for before its token is tried anyway
PRESENCE_GRACE = 60.0  # after a database restart, seconds a sender has to take its presence lock again before it counts as gone
# Idle connections kept for reuse. The pool only grows to the most sessions used at once: a refresh holds
# one across its request and takes a second to record its attempt, so a daemon peaks near 2 x workers + 2.
# Closing the surplus (4 were kept) made 62 new sessions a second at 160 refreshes a second (bench/pgscale.py).
MAX_IDLE = 20
_MIGRATION_LOCK = 0x66726573  # pg_advisory_xact_lock key: two hosts migrating at once take turns

# Each entry moves the schema from version i to i+1. Never edit a released entry: append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE freshtoken_account (
        account           text PRIMARY KEY,
        version           bigint NOT NULL DEFAULT 0,       -- +1 on every save: the fence a stale writer fails
        doc               jsonb NOT NULL DEFAULT '{}',     -- AccountState.to_json(): holds the refresh token
        expires_at        timestamptz,                     -- of the access token in doc
        refresh_due_at    timestamptz,                     -- when some host should refresh it (NULL: not scheduled)
        claimed_by        text,                            -- work sharing: the host that claimed it, until claimed_until
        claimed_until     timestamptz,
        last_refresh_host text,
        updated_at        timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX freshtoken_account_due ON freshtoken_account (refresh_due_at) WHERE refresh_due_at IS NOT NULL;
    REVOKE ALL ON freshtoken_account FROM PUBLIC;
    -- What readers get; grant SELECT on this view only (column grants on the table add to table grants).
    CREATE VIEW freshtoken_tokens AS
        SELECT account,
               doc->>'access_token' AS access_token,
               coalesce(doc->>'token_type', 'Bearer') AS token_type,
               expires_at,
               doc->>'scope' AS scope
        FROM freshtoken_account
        WHERE doc->>'access_token' IS NOT NULL;
    REVOKE ALL ON freshtoken_tokens FROM PUBLIC;
    -- A refresh token about to be sent, committed (from a second session) before it is: if the sender's
    -- session then ends without a save, the next holder sees that the stored token may be spent.
    CREATE TABLE freshtoken_attempt (
        account    text PRIMARY KEY,
        version    bigint NOT NULL,                        -- the account version whose refresh token was sent
        host       text NOT NULL,
        presence   bigint NOT NULL,                        -- the sender's advisory lock, held while its process lives
        started_at timestamptz NOT NULL DEFAULT now()
    );
    REVOKE ALL ON freshtoken_attempt FROM PUBLIC;
    -- How an application stores a user's grant of a template (after its own login flow): the daemons
    -- refresh it from then on. Runs with the table owner's rights, so EXECUTE is all an application needs.
    CREATE FUNCTION freshtoken_put_grant(p_account text, p_refresh_token text) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    DECLARE v bigint;
    BEGIN
        IF p_account IS NULL OR p_account !~ '^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.@+-]{0,199}$' THEN
            RAISE EXCEPTION 'freshtoken_put_grant: % is not TEMPLATE/USER', p_account USING ERRCODE = '22023';
        END IF;
        IF coalesce(p_refresh_token, '') = '' THEN
            RAISE EXCEPTION 'freshtoken_put_grant: the refresh token is empty' USING ERRCODE = '22023';
        END IF;
        INSERT INTO freshtoken_account AS a (account, version, doc, refresh_due_at)
        VALUES (p_account, 1, jsonb_build_object('version', 1, 'refresh_token', p_refresh_token,
                                                 'refresh_token_obtained_at', extract(epoch from now())::float8), now())
        ON CONFLICT (account) DO UPDATE
            SET doc = excluded.doc, version = a.version + 1, expires_at = NULL, refresh_due_at = now(),
                claimed_by = NULL, claimed_until = NULL, updated_at = now()
        RETURNING a.version INTO v;
        DELETE FROM freshtoken_attempt WHERE account = p_account;
        PERFORM pg_notify('freshtoken_state', p_account || ':' || v);
        RETURN v;
    END $$;
    REVOKE ALL ON FUNCTION freshtoken_put_grant(text, text) FROM PUBLIC;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def _first_line(exc: BaseException, secret: str | None = None) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if secret:
        text = text.replace(secret, "<redacted>")
    return text[:300]


def parse_dsn(dsn: str) -> dict[str, Any]:
    """libpq's own parse of a URI or key=value string; its error text can quote the string, so it is not shown."""
    try:
        return conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise FreshtokenError("shared_state is not a valid libpq connection string or URI") from None


def redact(dsn: str) -> str:
    """The connection string without its password, fit for messages and logs."""
    params = parse_dsn(dsn)
    params.pop("password", None)
    if not params.get("port", "").strip(","):
        params.pop("port", None)  # a multi-host URI without ports parses as port=",": the default port, not worth showing
    return make_conninfo("", **params)


# ---------------------------------------------------------------- timeouts


@dataclass(frozen=True, slots=True)
class PgTimeouts:
    """Seconds, set on every connection (traps 3 and 4 in the field notes).

    - `lock`: how long a transaction waits for another host's refresh of the same account; longer than
      a token request, so a waiter normally finds the fresh token instead of an error.
    - `idle_in_transaction`: the server ends a session idle this long inside a transaction, and its row
      lock with it. A stalled or partitioned holder gives up the lock after this, not after TCP
      keepalive's 2 h. A token request must end well before it: see check_request_deadline().
    - `statement`: bounds one statement; at least `lock`, since a lock wait is part of a statement.
    - `margin`: kept between the end of a token request and the idle timeout (the commit, scheduling).
    """

    connect: float = 10.0
    lock: float = 45.0
    idle_in_transaction: float = 60.0
    statement: float = 50.0
    margin: float = 5.0

    def __post_init__(self) -> None:
        for name in ("connect", "lock", "idle_in_transaction", "statement", "margin"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} timeout must be a positive number of seconds, not {value!r}")
        if self.statement < self.lock:
            raise ValueError(f"statement timeout {self.statement:g}s is shorter than the lock timeout {self.lock:g}s")
        if self.idle_in_transaction <= self.margin:
            raise ValueError(f"idle_in_transaction timeout {self.idle_in_transaction:g}s must exceed the margin {self.margin:g}s")

    @property
    def request_budget(self) -> float:
        """The longest a token request may take after a liveness check and still end inside the lock's life."""
        return self.idle_in_transaction - self.margin

    def check_request_deadline(self, deadline: float) -> None:
        """The rule: a token request's total deadline is shorter than the idle-in-transaction timeout, minus the margin."""
        if not deadline < self.request_budget:
            raise ValueError(
                f"the token request deadline ({deadline:g}s) must be shorter than the database's "
                f"idle_in_transaction_session_timeout ({self.idle_in_transaction:g}s) minus {self.margin:g}s"
            )

    def options(self) -> str:
        ms = {
            "lock_timeout": self.lock,
            "idle_in_transaction_session_timeout": self.idle_in_transaction,
            "statement_timeout": self.statement,
        }
        return " ".join(f"-c {name}={max(1, round(value * 1000))}" for name, value in ms.items())


_SETTING = re.compile(r"-c\s*(lock_timeout|idle_in_transaction_session_timeout|statement_timeout)=(\d+(?:\.\d+)?)(ms|s|min)?")
_FIELD = {"lock_timeout": "lock", "idle_in_transaction_session_timeout": "idle_in_transaction", "statement_timeout": "statement"}


def timeouts_from_options(options: str) -> PgTimeouts:
    """PgTimeouts with what the DSN's `options` set (`-c idle_in_transaction_session_timeout=5s` ...), the defaults elsewhere.

    The user's settings are the knob, and freshtoken's request budget follows them: its own -c
    options, appended after the user's, then repeat the same values. Units as PostgreSQL reads them
    (a bare number is milliseconds).
    """
    found: dict[str, float] = {}
    for name, number, unit in _SETTING.findall(options):
        found[_FIELD[name]] = float(number) * {"": 0.001, "ms": 0.001, "s": 1.0, "min": 60.0}[unit]
    defaults = PgTimeouts()
    idle = found.get("idle_in_transaction", defaults.idle_in_transaction)
    lock = found.get("lock", min(defaults.lock, idle * 0.75))
    statement = found.get("statement", max(lock, min(defaults.statement, idle * 0.85)))
    try:
        return PgTimeouts(lock=lock, idle_in_transaction=idle, statement=statement, margin=min(defaults.margin, idle / 4))
    except ValueError as exc:
        raise FreshtokenError(f"shared_state options: {exc}") from None


def _readable(conn: psycopg.Connection[Any]) -> bool:
    """An idle pooled session with something to read has been ended by the server (a restart's FATAL, or EOF).

    Checked without a round trip, so that a database restart does not fail one refresh per pooled connection.
    """
    try:
        return bool(select.select([conn.fileno()], [], [], 0)[0])
    except (OSError, ValueError, psycopg.Error):
        return True


def _boottime() -> float:
    """A clock that keeps counting through SIGSTOP and through a suspended VM or laptop (CLOCK_MONOTONIC stops in suspend)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _ts(value: float | None) -> float | None:
    return None if value is None else float(value)


# ---------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class AccountRow:
    """One account's row as status shows it (epoch seconds)."""

    account: str
    version: int
    state: AccountState
    expires_at: float | None
    refresh_due_at: float | None
    last_refresh_host: str | None
    updated_at: float
    unusable: StateUnusable | None = None  # why the stored document could not be used (`state` is then empty)


@dataclass(frozen=True, slots=True)
class Attempt:
    """A refresh token sent (or about to be) by `host` at `started_at` (epoch) whose outcome was never saved.

    `age`: seconds since, by the database's clock; `sender_gone`: the sending process no longer holds its presence lock;
    `mine`: this process sent it, and its request has ended without an answer worth keeping (a rotated token held in
    memory is saved first, by refresh.Refresher, before anything else happens in the transaction).
    """

    host: str
    version: int
    started_at: float
    age: float = 0.0
    sender_gone: bool = False
    mine: bool = False


_ROW = """account, version, doc, extract(epoch from expires_at)::float8, extract(epoch from refresh_due_at)::float8,
          last_refresh_host, extract(epoch from updated_at)::float8"""

_UPDATE = """
    UPDATE freshtoken_account
       SET doc = %(doc)s, version = version + 1,
           expires_at = to_timestamp(%(expires_at)s::float8),
           refresh_due_at = to_timestamp(%(due_at)s::float8),
           last_refresh_host = CASE WHEN %(refreshed)s THEN %(host)s ELSE last_refresh_host END,
           claimed_by = NULL, claimed_until = NULL, updated_at = now()
     WHERE account = %(account)s AND version = %(version)s
    RETURNING version
"""


def _state(account: str, doc: Any, where: str) -> AccountState:
    """The row's document as a state; StateUnusable for one this code cannot use (damage, another version)."""
    try:
        return AccountState.from_json(doc)
    except (ValueError, TypeError) as exc:
        raise StateUnusable(f"{account}: the state stored in PostgreSQL ({where}) is unusable: {_first_line(exc)}") from None


# ---------------------------------------------------------------- the store


class PgStore:
    """Account state in PostgreSQL. Thread-safe: each transaction has a connection of its own."""

    def __init__(
        self,
        dsn: str | Secret,
        *,
        state_dir: Path | None = None,
        host: str | None = None,
        timeouts: PgTimeouts | None = None,
        max_idle: int = MAX_IDLE,
        due: Callable[[str, AccountState], float | None] | None = None,
        attempt_wait: float = ATTEMPT_WAIT,
    ) -> None:
        """`state_dir` keeps the local things (the one-daemon-per-host lock, the wake socket); `due(account, state)`
        says when some host should next refresh a state being saved (default: when its access token expires)."""
        params = parse_dsn(dsn.reveal() if isinstance(dsn, Secret) else dsn)
        self._password = params.get("password")  # only to scrub it from messages, should libpq ever echo it
        self.timeouts = timeouts or timeouts_from_options(params.get("options", ""))
        params.setdefault("connect_timeout", str(max(2, round(self.timeouts.connect))))  # libpq's minimum is 2
        params.setdefault("application_name", "freshtoken")
        # Appended to the user's own options, if any: per-session settings, no extra round trip.
        options = f"{params.get('options', '')} {self.timeouts.options()}"
        if "synchronous_commit" not in options:
            # A commit must survive a database crash: it holds the only live copy of a rotated refresh token
            # (and the attempt record). A server running with synchronous_commit=off would lose the last ones.
            options += " -c synchronous_commit=on"
        params["options"] = options.strip()
        self._params = params
        self.where = redact(dsn.reveal() if isinstance(dsn, Secret) else dsn)
        self.host = host or socket.gethostname()
        self.local = Store(state_dir) if state_dir is not None else None
        self.due = due
        self.attempt_wait = attempt_wait
        self._idle: list[psycopg.Connection[Any]] = []
        self._max_idle = max_idle
        self._mutex = threading.Lock()
        # This process's presence: an advisory lock held on a connection of its own while the process lives, named
        # in each attempt it records. Another host that can take it knows the sender is gone (see _sender_gone).
        self.presence = secrets.randbits(62) + 1
        self._presence_conn: psycopg.Connection[Any] | None = None
        self.saved_versions: dict[str, int] = {}  # the last version this process saved, per config account: its own NOTIFYs

    def __repr__(self) -> str:
        return f"PgStore({self.where!r})"

    # ------------------------------------------------ connections

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        """A new connection with the timeouts set; DatabaseUnavailable if there is none to be had."""
        try:
            return psycopg.connect(**self._params, autocommit=autocommit)
        except psycopg.Error as exc:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL ({self.where}): {_first_line(exc, self._password)}") from None

    def _take(self) -> psycopg.Connection[Any]:
        with self._mutex:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and not _readable(conn):
                    return conn
                conn.close()
        return self.connect()

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.close()
            return
        with self._mutex:
            if len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._mutex:
            idle, self._idle = self._idle, []
            presence, self._presence_conn = self._presence_conn, None
        for conn in [*idle, *([presence] if presence else [])]:
            conn.close()

    def _ensure_presence(self) -> None:
        """Hold this process's presence lock (again, after a database restart) before recording an attempt."""
        with self._mutex:
            conn = self._presence_conn
            if conn is not None and not conn.closed:
                try:
                    conn.execute("SELECT 1")
                    return
                except psycopg.Error:
                    conn.close()
            conn = self._presence_conn = self.connect(autocommit=True)
            try:
                conn.execute("SELECT pg_advisory_lock(%s)", (self.presence,))
            except psycopg.Error as exc:
                conn.close()
                raise self._down(exc) from None

    def __enter__(self) -> PgStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _session(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for one short transaction, committed at the end; errors become DatabaseUnavailable."""
        conn = self._take()
        try:
            with conn.transaction():
                yield conn
        except (pgerrors.QueryCanceled, psycopg.OperationalError) as exc:
            raise self._down(exc) from None
        except (pgerrors.UndefinedTable, pgerrors.UndefinedFunction):
            raise self.no_schema() from None
        finally:
            self._give_back(conn)

    def _down(self, exc: BaseException, account: str = "") -> DatabaseUnavailable:
        """The one-line DatabaseUnavailable for a psycopg error (the password scrubbed, should libpq ever echo it)."""
        about = f"{account}: " if account else ""
        return DatabaseUnavailable(f"{about}PostgreSQL ({self.where}): {_first_line(exc, self._password)}")

    def no_schema(self) -> SchemaMismatch:
        """What a command meets on a database where `freshtoken db init` has not run (exit 78, not a traceback)."""
        return SchemaMismatch(f"PostgreSQL ({self.where}) has no freshtoken schema: run `freshtoken db init`")

    # ------------------------------------------------ schema

    def schema_version(self) -> int:
        """The applied schema version; 0 for a database freshtoken has never used."""
        with self._session() as conn:
            if conn.execute("SELECT to_regclass('freshtoken_schema')").fetchone() == (None,):
                return 0
            row = conn.execute("SELECT coalesce(max(version), 0) FROM freshtoken_schema").fetchone()
        return int(row[0]) if row else 0

    def check_schema(self) -> None:
        """What a daemon runs at start: SchemaMismatch (exit 78) unless the schema is this version's."""
        found = self.schema_version()
        has = f"PostgreSQL ({self.where}) has freshtoken schema version {found}"
        if found < SCHEMA_VERSION:
            raise SchemaMismatch(f"{has}, this freshtoken needs {SCHEMA_VERSION}: run `freshtoken db init`")
        if found > SCHEMA_VERSION:
            raise SchemaMismatch(f"{has}, newer than this freshtoken's {SCHEMA_VERSION}: upgrade freshtoken")

    def migrate(self) -> int:
        """Apply the migrations the database lacks, in one transaction; returns how many (0: it was up to date)."""
        with self._session() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS freshtoken_schema (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            row = conn.execute("SELECT coalesce(max(version), 0) FROM freshtoken_schema").fetchone()
            found = int(row[0]) if row else 0
            if found > SCHEMA_VERSION:
                raise SchemaMismatch(
                    f"PostgreSQL ({self.where}) has freshtoken schema version {found}, newer than this freshtoken's {SCHEMA_VERSION}"
                )
            for version in range(found + 1, SCHEMA_VERSION + 1):
                conn.execute(MIGRATIONS[version - 1].encode())  # bytes: a static script, several statements, no parameters
                conn.execute("INSERT INTO freshtoken_schema (version) VALUES (%s)", (version,))
                log.info("PostgreSQL (%s): freshtoken schema migrated to version %d", self.where, version)
        return SCHEMA_VERSION - found

    def grant_reader(self, role: str = READER_ROLE, *, create: bool = True) -> None:
        """Let `role` read freshtoken_tokens and nothing else of ours (create it NOLOGIN first if asked; needs CREATEROLE).

        Applications log in as a role that is a member of it: `CREATE ROLE app LOGIN IN ROLE freshtoken_reader`.
        """
        ident = sql.Identifier(role)
        with self._session() as conn:
            if create and conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident))
            current = conn.execute("SELECT current_schema()").fetchone()
            schema = sql.Identifier(str(current[0] if current else "public"))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, ident))
            conn.execute(sql.SQL("REVOKE ALL ON freshtoken_account, freshtoken_attempt, freshtoken_schema FROM {}").format(ident))
            conn.execute(sql.SQL("GRANT SELECT ON freshtoken_tokens TO {}").format(ident))

    # ------------------------------------------------ reads (no lock)

    def read(self, account: str) -> AccountRow | None:
        """The account's row as it is now, without waiting for a lock (status, and the NOTIFY handler)."""
        with self._session() as conn:
            row = conn.execute(f"SELECT {_ROW} FROM freshtoken_account WHERE account = %s", (account,)).fetchone()  # noqa: S608  # _ROW is a constant
        return None if row is None else _account_row(row, self.where)

    def load(self, account: str) -> AccountState:
        """The stored state, read only (StateUnusable for a document this code cannot use; an empty state if there is none)."""
        with self._session() as conn:
            row = conn.execute("SELECT doc FROM freshtoken_account WHERE account = %s", (account,)).fetchone()
        return AccountState() if row is None else _state(account, row[0], self.where)

    def mtime(self, account: str) -> float | None:
        """The row's version: it changes with every save (the daemon's change scan; None: no row or no database)."""
        try:
            with self._session() as conn:
                row = conn.execute("SELECT version FROM freshtoken_account WHERE account = %s", (account,)).fetchone()
        except DatabaseUnavailable:
            return None
        return None if row is None else float(row[0])

    def template_summary(self, template: str, now: float) -> dict[str, int]:
        """How many users' grants `template` has: in all, with a valid access token, waiting for a login."""
        with self._session() as conn:
            row = conn.execute(
                """SELECT count(*), count(*) FILTER (WHERE expires_at > to_timestamp(%(now)s::float8)),
                          count(*) FILTER (WHERE refresh_due_at IS NULL)
                     FROM freshtoken_account WHERE starts_with(account, %(prefix)s)""",
                {"now": float(now), "prefix": template + USER_SEPARATOR},
            ).fetchone()
        assert row is not None  # noqa: S101  # an aggregate always returns a row
        return {"users": int(row[0]), "valid": int(row[1]), "needs_login": int(row[2])}

    def delete(self, account: str) -> bool:
        """Delete the account's row under its lock (`logout`); False if there was none."""
        with self.transaction(account) as tx:
            return tx.delete()

    # ------------------------------------------------ local things: one daemon per host, the wake socket

    def _local(self) -> Store:
        if self.local is None:
            raise RuntimeError("PgStore was made without a state_dir: it has no daemon lock or wake socket")
        return self.local

    def daemon_lock(self, token_dir: Path | None = None) -> DaemonLock:
        """One daemon per host's state dir (and token dir); other hosts' daemons run beside it, on the same rows."""
        return self._local().daemon_lock(token_dir)

    def wake_daemon(self, word: str = "rescan") -> bool:
        """Tell this host's daemon at once; the others hear the save's NOTIFY."""
        return self.local.wake_daemon(word) if self.local is not None else False

    def open_wake_socket(self) -> socket.socket | None:
        return self._local().open_wake_socket()

    def check(self) -> None:
        """At a daemon's start: SchemaMismatch unless the schema is this version's (DatabaseUnavailable if down)."""
        self.check_schema()

    def watch(self, changed: Callable[[str | None, int], None], stopping: threading.Event) -> bool:
        """Call `changed(account, version)` for each save another process committed, from a thread of its own, until `stopping`.

        After a (re)connect, `changed(None, 0)`: notifications sent meanwhile are lost, so re-read everything.
        The database being down is logged once; the thread reconnects with backoff (1 s doubling to 10 s),
        and takes this process's presence lock again at once (see _attempt).
        """

        def listen() -> None:
            delay, down = 1.0, False
            while not stopping.is_set():
                try:
                    with self.listen() as listener:
                        self._ensure_presence()  # at once after a restart: other hosts wait PRESENCE_GRACE for it
                        if down:
                            log.warning("PostgreSQL (%s) is reachable again", self.where)
                        delay, down = 1.0, False
                        changed(None, 0)
                        while not stopping.is_set():
                            for account, version in listener.notifications(timeout=1.0):
                                if self.saved_versions.get(account) != version:
                                    changed(account, version)
                except DatabaseUnavailable as exc:
                    if not down:
                        log.warning("%s; serving the tokens in the files, retrying", exc)
                    down = True
                stopping.wait(delay)
                delay = min(delay * 2, 10.0)

        threading.Thread(target=listen, name="pg-listen", daemon=True).start()
        return True

    # ------------------------------------------------ the refresh transaction
    #
    # Why a stalled holder cannot spend a refresh token another host has rotated. Hosts A and B;
    # I = idle_in_transaction_session_timeout (60 s), D = the token request's total deadline (40 s),
    # with D < I - margin (PgTimeouts.check_request_deadline). The refresh, per account (refresh.Refresher,
    # oauth.TokenClient._post):
    #     with store.transaction(name) as tx:        # BEGIN; SELECT ... FOR NO KEY UPDATE; re-read
    #         if not due(tx.state): return           # another host refreshed while we waited: write files only
    #         budget = tx.before_send()              # the attempt rule (below); commit an attempt record on
    #                                                # another session; SELECT 1 here; budget = tx.remaining()
    #         answer = post(..., deadline=min(D, budget))   # nothing is sent if the budget is spent
    #         tx.save(new_state)                     # UPDATE ... WHERE version = v; drop the attempt; COMMIT
    #
    #   t0   A: BEGIN; SELECT ... FOR NO KEY UPDATE on the row; reads refresh token R1 at version v.
    #   t0+  A stalls (SIGSTOP, a VM pause, swap) with its session idle in the transaction, lock held.
    #        B: transaction() on the same account blocks in its SELECT ... FOR NO KEY UPDATE.
    #   t0+I The server ends A's session (idle_in_transaction_session_timeout); the row lock goes with it.
    #        B's SELECT returns the row: R1, version v. B sends R1, gets R2, saves version v+1, COMMIT.
    #        R1 is now spent, once.
    #   t1   A resumes and, before sending R1, calls tx.before_send(): its `SELECT 1` on the locked session
    #        fails, LockLost, and A never sends R1. Had the check succeeded, the session (so the lock) was
    #        alive at that statement and the server ends it only after I idle seconds counted from it, and
    #        A's request is bounded by D < I: answered or abandoned, it is over while A still holds the
    #        lock and B still waits. B cannot have rotated R1 before A's request ends.
    #        A freeze between the check and the send shows in tx.remaining() (a boot-time clock, which
    #        counts through SIGSTOP and suspend): A sees its budget spent and does not send.
    #   save A's tx.save() on the dead session fails (LockLost), and on a new session the version fence
    #        refuses it: UPDATE ... WHERE version = v matches no row once B wrote v+1 (FencedOff). A never
    #        overwrites R2 with an older token.
    #
    # A freeze after A's request left (the IdP rotated R1 into R2' and A froze with the answer unread, for
    # longer than I) is the field notes' trap 4: B would send R1, already spent. The attempt record that
    # before_send() committed (on another session, so it survives A's) tells B: tx.attempt is set, and
    # B's before_send() refuses to send R1 (TemporaryError: retried later) while A's process lives, which
    # B knows from A's presence lock (an advisory lock A holds on a session of its own; a SIGSTOPped
    # process keeps its sessions). When A resumes, its save on the dead session fails; A keeps R2' in
    # memory (refresh.Unsaved) and its next transaction saves it, since the row is still at v with R1:
    # that save clears the attempt, and B, retrying, finds R2'. If A died instead (killed: its sessions
    # and its presence lock went with it), R2' is lost whatever B does; B sends R1 once: if A's request
    # never left, R1 works, and if it did, the grant was already lost. That resend is the one double
    # spend a SIGKILL can cause, inside the few milliseconds between the request leaving and the commit.
    # A database restart frees every presence lock, a living A's too: an attempt older than the restart
    # is judged only PRESENCE_GRACE after it, time for A to take its lock again (the daemon's listener
    # does at once); a live A that stays silent for ATTEMPT_WAIT is no longer waited for.
    #
    # What no lock can close, and bench/pgstall.py measures: the few instructions between the
    # tx.remaining() check and the request's bytes leaving this host. A freeze that starts there and lasts
    # longer than I, with B refreshing meanwhile, sends R1 twice. Only a server that fences could close it.

    @contextlib.contextmanager
    def transaction(self, account: str) -> Iterator[PgTransaction]:
        """Take the account's row lock (creating the row if missing) and yield its state re-read under the lock.

        The lock is held until tx.save() commits, or until the block ends (rolled back if nothing was
        saved, or on an exception). TemporaryError if another host holds the lock longer than the lock
        timeout; DatabaseUnavailable if the database cannot be reached.
        """
        conn = self._take()
        try:
            row = self._lock_row(conn, account)
            tx = PgTransaction(self, conn, account, int(row[0]), row[1])
            tx.attempt = self._attempt(conn, account, tx.version)
            yield tx
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()  # a no-op after save()'s commit; releases the lock otherwise
            self._give_back(conn)

    def _lock_row(self, conn: psycopg.Connection[Any], account: str) -> tuple[Any, ...]:
        select = "SELECT version, doc FROM freshtoken_account WHERE account = %s FOR NO KEY UPDATE"
        try:
            row = conn.execute(select, (account,)).fetchone()
            if row is None:  # a concurrent insert makes ours wait, then do nothing; the SELECT then waits for its lock
                conn.execute("INSERT INTO freshtoken_account (account) VALUES (%s) ON CONFLICT (account) DO NOTHING", (account,))
                row = conn.execute(select, (account,)).fetchone()
        except (pgerrors.UndefinedTable, pgerrors.UndefinedFunction):
            raise self.no_schema() from None
        except pgerrors.LockNotAvailable:
            raise TemporaryError(f"{account}: another host has held the account's lock in PostgreSQL for {self.timeouts.lock:g}s") from None
        except pgerrors.QueryCanceled as exc:
            raise TemporaryError(f"{account}: PostgreSQL ({self.where}): {_first_line(exc)}") from None
        except psycopg.OperationalError as exc:
            raise self._down(exc, account) from None
        assert row is not None  # noqa: S101  # inserted just above, and rows are never deleted under a lock
        return tuple(row)

    def _attempt(self, conn: psycopg.Connection[Any], account: str, version: int) -> Attempt | None:
        """The unsaved attempt on this version, if any, and whether its sender's process is known to be gone.

        A sender holds its presence lock (an advisory lock on a session of its own) while its process
        lives; a lock we can take means the process died (its sessions ended with it). Unless the
        database itself restarted since the attempt: that ends every session, a living sender's too,
        so its lock is free until it reconnects. Such an attempt is judged only PRESENCE_GRACE after
        the restart, time for a living sender to take its lock again (the daemon does so at once).
        """
        try:
            row = conn.execute(
                """SELECT host, extract(epoch from started_at)::float8, extract(epoch from now() - started_at)::float8, presence,
                          started_at < pg_postmaster_start_time(), extract(epoch from now() - pg_postmaster_start_time())::float8
                     FROM freshtoken_attempt WHERE account = %s AND version = %s""",
                (account, version),
            ).fetchone()
            if row is None:
                return None
            host, started_at, age, presence, before_restart, up_for = row
            gone = False
            if presence != self.presence and not (before_restart and up_for < PRESENCE_GRACE):
                # Taken only if no session holds it; released at this transaction's end.
                taken = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (presence,)).fetchone()
                gone = bool(taken and taken[0])
        except psycopg.OperationalError as exc:
            raise self._down(exc, account) from None
        return Attempt(str(host), version, float(started_at), age=float(age), sender_gone=gone, mine=presence == self.presence)

    def record_attempt(self, account: str, version: int) -> None:
        """Commit, on a session of its own, that this process is about to send the refresh token of `version`."""
        self._ensure_presence()
        with self._session() as conn:
            conn.execute(
                """INSERT INTO freshtoken_attempt (account, version, host, presence) VALUES (%s, %s, %s, %s)
                   ON CONFLICT (account) DO UPDATE
                   SET version = excluded.version, host = excluded.host, presence = excluded.presence, started_at = now()""",
                (account, version, self.host, self.presence),
            )

    def clear_attempt(self, account: str, version: int) -> None:
        """Withdraw this host's attempt on `version`: for a sender that knows its request never left."""
        with self._session() as conn:
            conn.execute("DELETE FROM freshtoken_attempt WHERE account = %s AND version = %s AND host = %s", (account, version, self.host))

    def save_if_version(self, account: str, version: int, state: AccountState, *, refreshed: bool = True) -> int:
        """Save `state` only if the row is still at `version`; returns the new version, FencedOff if not.

        A save outside the row lock, made safe by the version fence alone (tests use it to play a host
        whose lock is gone); the refresh path recovers through a new transaction instead (refresh.Unsaved).
        """
        with self._session() as conn:
            return self._update(conn, account, version, state, refreshed)

    def _update(self, conn: psycopg.Connection[Any], account: str, version: int, state: AccountState, refreshed: bool) -> int:
        due_at = self.due(account, state) if self.due is not None else None
        new_version = _fenced_update(conn, self.host, account, version, state, due_at, refreshed)
        if USER_SEPARATOR not in account:  # a template user's NOTIFY only pokes the claimer: 100,000 users would be 12 MiB here
            self.saved_versions[account] = new_version
        return new_version

    # ------------------------------------------------ work sharing

    def claim_due(self, limit: int, now: float, *, lease: float = 60.0, templates: Sequence[str] | None = None) -> list[str]:
        """Claim up to `limit` accounts due at `now` that no other host has claimed; returns their names.

        A claim is a lease (claimed_by, claimed_until), committed at once, so N daemons share M
        accounts without each waking for all of them. Rows under a refresh lock are skipped, not
        waited for (SKIP LOCKED). The claim only spreads the work: each claimed account is then
        refreshed in transaction(), which re-reads it under the row lock, the real guard.
        `templates`: claim only users' grants of these templates (TEMPLATE/USER rows).
        """
        with self._session() as conn:
            rows = conn.execute(
                """
                UPDATE freshtoken_account SET claimed_by = %(host)s, claimed_until = to_timestamp(%(until)s::float8)
                 WHERE account IN (
                     SELECT account FROM freshtoken_account
                      WHERE refresh_due_at <= to_timestamp(%(now)s::float8)
                        AND (claimed_until IS NULL OR claimed_until <= to_timestamp(%(now)s::float8))
                        AND (%(all)s OR split_part(account, '/', 1) = ANY(%(templates)s) AND strpos(account, '/') > 0)
                      ORDER BY refresh_due_at
                      LIMIT %(limit)s
                        FOR NO KEY UPDATE SKIP LOCKED)
                RETURNING account
                """,
                {
                    "host": self.host,
                    "now": float(now),
                    "until": float(now + lease),
                    "limit": limit,
                    "all": templates is None,
                    "templates": list(templates or ()),
                },
            ).fetchall()
        return sorted(str(r[0]) for r in rows)

    def next_due(self, templates: Sequence[str], now: float) -> float | None:
        """When the next grant of these templates falls due after `now` (epoch; None: none is scheduled).

        Grants due already but claimed or locked by another host are left out: their host's commit
        pokes the claimer (NOTIFY), and a dead host's lease is looked at again within claims.IDLE_POLL.
        A min() over greatest(due, claimed_until) read every row (120 ms at 100,000 grants, per claim
        that found less than it asked for); this one is the first entry of the due index after `now`.
        """
        with self._session() as conn:
            row = conn.execute(
                """SELECT extract(epoch from refresh_due_at)::float8 FROM freshtoken_account
                    WHERE refresh_due_at > to_timestamp(%s::float8) AND strpos(account, '/') > 0 AND split_part(account, '/', 1) = ANY(%s)
                    ORDER BY refresh_due_at LIMIT 1""",
                (float(now), list(templates)),
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    # ------------------------------------------------ notifications

    def listen(self) -> Listener:
        """A dedicated autocommit connection LISTENing on freshtoken_state (a pooled one would hear nothing).

        Nothing is replayed after a reconnect: after DatabaseUnavailable, listen again, then re-read.
        """
        conn = self.connect(autocommit=True)
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        except psycopg.Error as exc:
            conn.close()
            raise DatabaseUnavailable(f"cannot LISTEN on PostgreSQL ({self.where}): {_first_line(exc, self._password)}") from None
        return Listener(conn, self.where)


def _account_row(row: Any, where: str) -> AccountRow:
    account = str(row[0])
    unusable = None
    try:
        state = _state(account, row[2], where)
    except StateUnusable as exc:  # a row is still a row: status shows why
        state, unusable = AccountState(), exc
    return AccountRow(account, int(row[1]), state, row[3], row[4], row[5], float(row[6]), unusable)


def _fenced_update(
    conn: psycopg.Connection[Any], host: str, account: str, version: int, state: AccountState, due_at: float | None, refreshed: bool
) -> int:
    """UPDATE ... WHERE version = <read version>, then NOTIFY (sent by the server at COMMIT, and only if it commits)."""
    expires_at = state.access.expires_at if state.access else None
    params = {
        "doc": Jsonb(state.to_json()),
        "expires_at": _ts(expires_at),
        "due_at": _ts(due_at if due_at is not None else expires_at),
        "refreshed": refreshed,
        "host": host,
        "account": account,
        "version": version,
    }
    row = conn.execute(_UPDATE, params).fetchone()
    if row is None:
        now = conn.execute("SELECT version, last_refresh_host FROM freshtoken_account WHERE account = %s", (account,)).fetchone()
        newer = f"version {now[0]} by {now[1] or 'another host'}" if now else "no row at all"
        raise FencedOff(f"{account}: the stored state changed since version {version} was read ({newer}); this save is refused")
    new_version = int(row[0])
    conn.execute("DELETE FROM freshtoken_attempt WHERE account = %s", (account,))  # resolved, in the same commit
    if USER_SEPARATOR not in account:  # a template user's grant has no files on any host: nobody to tell, at 100,000 users
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{account}:{new_version}"))
    return new_version


class PgTransaction:
    """One account under its row lock: statestore.StateTransaction for PostgreSQL.

    `state` and `version` are as read under the lock. The first save() commits (the lock goes with
    it); a later one runs in a transaction of its own, fenced on the version the first one wrote.
    """

    def __init__(self, store: PgStore, conn: psycopg.Connection[Any], account: str, version: int, doc: Any) -> None:
        self.account = account
        self.version = version
        self.unusable: StateUnusable | None = None
        try:
            self.state = _state(account, doc, store.where)
        except StateUnusable as exc:  # as the file store does: start afresh from the config's seed; the row is replaced by the next save
            self.unusable, self.state = exc, AccountState()
        self.checked_at: float | None = None  # CLOCK_BOOTTIME of the last successful ensure_alive()
        # Set when a previous holder sent (or was about to send) this version's refresh token and its session
        # ended before it saved the outcome: the token may be spent at the server (see before_send()).
        self.attempt: Attempt | None = None
        self._store = store
        self._conn = conn
        self._phase = "locked"  # then "saved" (committed: lock released) or "lost" (the session ended under us)

    @property
    def where(self) -> str:
        return f"{self.account} in PostgreSQL ({self._store.where})"

    def _lost(self, exc: BaseException | None = None) -> LockLost:
        self._phase = "lost"
        reason = f" ({_first_line(exc, self._store._password)})" if exc else ""
        return LockLost(f"{self.account}: the PostgreSQL session holding the account's lock has ended{reason}; nothing is saved")

    def reserve(self) -> None:
        """Nothing to reserve: a save is an UPDATE of a row that exists (its lock is what before_send() checks)."""

    def ensure_alive(self) -> float:
        """`SELECT 1` on the locked session, right before sending a refresh token; LockLost if the lock is gone.

        Returns the seconds the token request may take from now and still end while the lock is held.
        """
        if self._phase == "saved":
            raise LockLost(f"{self.account}: the lock was released by the save; take it again before sending")
        if self._phase == "lost":
            raise self._lost()
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise self._lost(exc) from None
        self.checked_at = _boottime()
        return self._store.timeouts.request_budget

    def before_send(self) -> float:
        """Right before the refresh token is sent: the attempt rule, record the attempt, ensure_alive(); returns the budget.

        An earlier sender's attempt on this very version means its request may have rotated the
        token and its answer was never saved. If that sender's process still lives (stalled, or
        slow), wait for it: its own next transaction saves the rotated token it holds, which ends
        the attempt. If it is gone (killed: its presence lock is free), its answer is lost either
        way, and the stored token is the only one there is: send it. After attempt_wait a live
        but silent sender is no longer waited for.

        The attempt is committed on another session first, so that if this one ends after the token
        left, the next holder knows. If the check fails, the attempt is withdrawn (nothing was sent)
        and LockLost raised. The returned budget is what is left of the lock's life since the check.
        """
        attempt = self.attempt
        if attempt is not None and not attempt.mine and not attempt.sender_gone and attempt.age < self._store.attempt_wait:
            raise TemporaryError(
                f"{self.account}: {attempt.host} sent this refresh token {attempt.age:.0f}s ago and has not saved the answer;"
                " waiting for it (it may be stalled) rather than spend the token twice"
            )
        if attempt is not None and attempt.mine:
            # This process sent it and got no answer to keep (a frozen request past its deadline, say): only the
            # stored token is left, whether the server spent it or not. Nobody else can hold a newer one.
            log.info("%s: an earlier refresh from this process got no answer; trying the stored refresh token again", self.account)
        elif attempt is not None:
            why = "its process is gone" if attempt.sender_gone else f"nothing heard for {attempt.age:.0f}s"
            log.warning(
                "%s: %s's refresh was never saved (%s); the stored refresh token may be spent: trying it", self.account, attempt.host, why
            )
        self._store.record_attempt(self.account, self.version)
        try:
            self.ensure_alive()
        except LockLost:
            with contextlib.suppress(FreshtokenError):
                self._store.clear_attempt(self.account, self.version)
            raise
        return self.remaining()

    def remaining(self) -> float:
        """Seconds left of the request budget since the last ensure_alive() (0 if none)."""
        if self.checked_at is None or self._phase != "locked":
            return 0.0
        return max(0.0, self._store.timeouts.request_budget - (_boottime() - self.checked_at))

    def save(self, state: AccountState, *, rotated: bool = False) -> None:
        """Persist `state` fenced on the version read, COMMIT at once (releasing the lock), NOTIFY the other hosts.

        Committed before the caller does anything else, so a rotated refresh token is durable first
        (`rotated` changes nothing here: the commit is the only step). SaveFailed if the locked session
        has ended (refresh.Unsaved then keeps a rotated token for the next transaction, which saves it if
        the row has not moved on), if another host saved since, or if the database fails.
        """
        if self._phase == "lost":
            raise SaveFailed(self.where, "the session holding the lock has ended")
        attempt = self.attempt
        if (
            attempt is not None
            and not attempt.mine
            and not attempt.sender_gone
            and attempt.age < self._store.attempt_wait
            and state.refresh_token == self.state.refresh_token
        ):
            # A live host's refresh of this version is unsaved (before_send() refused to send). Saving anything but a new
            # refresh token (an error, for status) would bump the version and drop its attempt record: the next holder
            # would then send the token that host may have spent, and that host's recovery save would be fenced off.
            raise SaveFailed(self.where, f"{attempt.host}'s refresh of this version is not saved yet; the row is left as it is")
        refreshed = state.last_refresh != self.state.last_refresh
        conn, locked = self._conn, self._phase == "locked"
        try:  # the first save ends the locked transaction; a later one runs in a transaction of its own
            new_version = self._store._update(conn, self.account, self.version, state, refreshed)
            conn.commit()
        except FencedOff as exc:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            self._phase = "saved" if self._phase == "locked" else self._phase
            raise SaveFailed(self.where, str(exc)) from None
        except psycopg.Error as exc:
            if locked and (conn.closed or isinstance(exc, psycopg.OperationalError)):
                raise SaveFailed(self.where, str(self._lost(exc))) from None
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            raise SaveFailed(self.where, _first_line(exc, self._store._password)) from None
        self._phase = "saved"
        self.version, self.state, self.unusable, self.attempt = new_version, state, None, None

    def delete(self) -> bool:
        """Delete the row (`logout`): the other hosts hear of it and find no grant; False if it held nothing."""
        if self._phase == "deleted":
            return False
        if self._phase != "locked":
            raise SaveFailed(self.where, "the lock is no longer held")
        had = self.state != AccountState() or self.unusable is not None
        try:
            self._conn.execute("DELETE FROM freshtoken_account WHERE account = %s", (self.account,))
            self._conn.execute("DELETE FROM freshtoken_attempt WHERE account = %s", (self.account,))
            self._conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{self.account}:0"))
            self._conn.commit()
        except psycopg.Error as exc:
            raise SaveFailed(self.where, _first_line(exc, self._store._password)) from None
        self._phase = "deleted"
        self.state, self.unusable = AccountState(), None
        return had


class Listener:
    """The daemon's ear: (account, version) pairs NOTIFY sent after each commit."""

    def __init__(self, conn: psycopg.Connection[Any], where: str) -> None:
        self._conn = conn
        self._where = where

    def fileno(self) -> int:
        """Readable when a notification may have arrived (for a selector in the daemon's loop)."""
        return self._conn.fileno()

    def notifications(self, timeout: float, *, stop_after: int | None = None) -> Iterator[tuple[str, int]]:
        """Yield what arrives within `timeout` seconds (or until `stop_after` arrived); DatabaseUnavailable if the session ends."""
        try:
            for note in self._conn.notifies(timeout=timeout, stop_after=stop_after):
                account, _, version = note.payload.rpartition(":")
                if account and version.isdigit():
                    yield account, int(version)
        except psycopg.Error as exc:
            raise DatabaseUnavailable(f"lost the LISTEN session to PostgreSQL ({self._where}): {_first_line(exc)}") from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
