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
implementation; pgstore.PgStore (several hosts, one row lock per account) is
meant to be the second. What it still lacks to satisfy this protocol:
PgTransaction.unusable (record a StateUnusable instead of only logging),
reserve() (its before_send(), refusing while tx.attempt is set), save(state, *,
rotated) returning None and raising SaveFailed on LockLost/DatabaseUnavailable
(FencedOff needs its own policy), delete(); PgStore.delete, mtime (the row's
updated_at), load raising StateUnusable, and daemon_lock/wake_daemon/
open_wake_socket handed to a local Store(state_dir). The token request should
also be bounded by tx.remaining().
"""

from __future__ import annotations

import socket
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from freshtoken.errors import StateUnusable, StateWriteError
from freshtoken.model import AccountState


class SaveFailed(StateWriteError):
    """A save (or a reservation for one) that did not happen: `where` names the state, `reason` says why."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"cannot write state {where}: {reason}")
        self.where = where
        self.reason = reason


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
