"""The seam between the refresh logic and where account state lives: the StateStore protocol.

    with store.transaction(name) as tx:   # the account's lock; tx.state re-read under it
        ...decide on tx.state...
        tx.reserve()                      # before a request that may rotate the refresh token
        ...send...
        tx.save(new_state, rotated=True)  # durable before anything else happens

Only a transaction writes: a store has no bare save, so nothing can read a
state, let another process rotate its refresh token, and then write the stale
copy back. `load` is a read for `status`, `get` and the daemon's change scan.

What is stored is the state as it is: the config's seed (refresh.apply_seed)
is a rule of the domain, applied by the Refresher to tx.state, and saved with
the next save of the transaction. A store never sees the config.

store.Store (one file per account in the state dir) is the first
implementation; pgstore.PgStore (several hosts, one row lock per account,
`shared_state:` in the config) the second. open_store() picks one, importing
the PostgreSQL one (and psycopg) only when the config asks for it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from freshtoken.errors import SaveFailed as SaveFailed  # errors.py's; re-exported for the stores
from freshtoken.errors import StateUnusable
from freshtoken.model import AccountState

if TYPE_CHECKING:
    from freshtoken.model import Config


class StateTransaction(Protocol):
    """One account's state under its exclusive lock, for as long as the `with` block lasts.

    Nothing reaches the store unless save() or delete() is called: a block that
    only reads (or raises) leaves the stored state exactly as it found it.
    """

    account: str
    state: AccountState  # as read under the lock (empty if there is none or it was unusable); save() replaces it
    unusable: StateUnusable | None  # why a stored state could not be used (kept aside by save(), removed by delete())

    def reserve(self) -> None:
        """Make sure the next save() can happen, before a request that may rotate the refresh token.

        Raises StateWriteError (nothing must be sent then): a full disk or a
        read-only state dir is found out while the old refresh token still works.
        """

    def before_send(self) -> float | None:
        """Called right before a token request leaves: the seconds it may take at most (None: no bound of the store's).

        Raises TemporaryError if the request must not be sent now (a shared store's lock has been lost,
        or another host's request with this refresh token may still be answered).
        """

    def save(self, state: AccountState, *, rotated: bool = False) -> None:
        """Store `state` durably before returning; raises SaveFailed if it is not stored.

        `rotated`: the server has just rotated the refresh token, so the one
        stored is spent and worth nothing; the store may then make the new state
        visible before it is durable, which is what shortens the crash window.
        """

    def delete(self) -> bool:
        """Remove the account's stored state (an unusable one too); False if there was none. Raises StateWriteError."""


class DaemonLockLike(Protocol):
    """Held for a daemon's whole life: only one daemon per state (and per token dir)."""

    def __enter__(self) -> object: ...

    def __exit__(self, *exc: object) -> None: ...


class StateStore(Protocol):
    """Where the accounts' states live, and how the daemon that serves them is found."""

    def transaction(self, account: str) -> AbstractContextManager[StateTransaction]:
        """Take the account's lock (TemporaryError after waiting too long) and yield its transaction."""

    def load(self, account: str) -> AccountState:
        """The stored state, read only and without the lock: never changes anything.

        StateUnusable for a state this code cannot use, FreshtokenError if it cannot be read.
        """

    def delete(self, account: str) -> bool:
        """delete() in a transaction of its own (`logout`); False if there was none."""

    def mtime(self, account: str) -> float | None:
        """A stamp that changes whenever the account's state is saved (None: none stored): the daemon's change scan."""

    def daemon_lock(self, token_dir: Path | None = None) -> DaemonLockLike:
        """The lock a daemon holds for its whole life (AlreadyRunning if another daemon has it)."""

    def wake_daemon(self, word: str = "rescan") -> bool:
        """Tell the running daemon to re-read the states now; False if none listens."""

    def open_wake_socket(self) -> socket.socket | None:
        """The daemon's end of wake_daemon(), opened while holding the daemon lock (None: heartbeats only)."""

    def close(self) -> None:
        """Let go of what the store holds open (a shared store's connections); it may be used again after."""

    def check(self) -> None:
        """What a daemon checks at start (a shared store: its schema; SchemaMismatch, exit 78, or TemporaryError)."""

    def watch(self, changed: Callable[[str | None, int], None], stopping: threading.Event) -> bool:
        """Call `changed(account, version)` when another process saves an account (None: re-read all), until `stopping`.

        False if this store has no such notifications (the state dir: the daemon is its only writer,
        and `login` wakes it through wake_daemon()).
        """


def open_store(config: Config, *, due: Callable[[str, AccountState], float | None] | None = None) -> StateStore:
    """The config's store: PostgreSQL with `shared_state:` (MissingExtra, exit 78, without psycopg), else the state dir.

    `due(account, state)` tells a shared store when some host should next refresh a state it saves
    (templates' grants are claimed by it; default timing.grant_due for this config); the file store
    has no use for it.
    """
    if config.shared_state:
        from freshtoken.pgstore import MAX_IDLE, PgStore
        from freshtoken.timing import grant_due

        # A refresh holds one session across its request and takes a second for its attempt record.
        idle = max(MAX_IDLE, 2 * config.workers + 2)
        return PgStore(
            config.shared_state, state_dir=config.state_dir, max_idle=idle, due=due or (lambda name, state: grant_due(config, name, state))
        )
    from freshtoken.store import Store

    return Store(config.state_dir)
