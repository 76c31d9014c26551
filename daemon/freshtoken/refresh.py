"""One refresh as one store transaction: lock, re-read, POST, save the state, write the outputs, run the hook.

Shared by the daemon, `refresh` and `login`, so all three obey the same
order: a rotated refresh token is stored before anything else can fail.
Every write of a state goes through a transaction (statestore.StateStore);
the config's seed is applied here (apply_seed), not in the store.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from freshtoken import outputs
from freshtoken.errors import (
    FreshtokenError,
    InvalidGrant,
    MalformedAnswer,
    OutputError,
    RefreshFailed,
    RotatedTokenNotSaved,
    StateWriteError,
    TemporaryError,
    UnsafeToken,
)
from freshtoken.formats import check_token
from freshtoken.hooks import run_hook
from freshtoken.model import AccessToken, Account, AccountState, Config, Grant, Secret, TokenResponse, lifetime_end
from freshtoken.model import apply_seed as apply_seed  # a rule of the domain, here since before model held it
from freshtoken.oauth import TokenClient
from freshtoken.statestore import SaveFailed, StateStore, StateTransaction
from freshtoken.timing import refresh_margin, skip_threshold

log = logging.getLogger(__name__)

HookRunner = Callable[[Account, Path, float], None]


def login_hint(account: str) -> str:
    return f"run `freshtoken login {account}` (or set a new refresh_token in the config)"


@dataclass(frozen=True, slots=True)
class Unsaved:
    """A state holding a rotated refresh token that could not be saved, and the refresh token it replaced."""

    spent: Secret | None
    state: AccountState


@dataclass(frozen=True, slots=True)
class Result:
    account: str
    state: AccountState
    refreshed: bool  # False: the token was still good and was only written out
    rotated: bool = False


class RefreshPolicy(enum.Enum):
    """When refresh() sends a request, judged on the state re-read under the account's lock."""

    ALWAYS = "always"  # `refresh`, a forced run: whatever the stored token has left
    IF_NEEDED = "if_needed"  # `refresh --if-needed`: only a token inside its refresh margin (timing.refresh_margin)
    SCHEDULED = "scheduled"  # a scheduled run: not if someone else refreshed since it was planned (timing.skip_threshold)


class Refresher:
    def __init__(
        self,
        config: Config,
        store: StateStore,
        client: TokenClient,
        *,
        clock: Callable[[], float] = time.time,
        hook_runner: HookRunner | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.client = client
        self.clock = clock
        self.hook_runner = hook_runner or self._run_hook_inline
        # Rotated refresh tokens whose save failed, by account. The Refresher lives as long as
        # the daemon, so these outlive a full disk; see _save_answer and _transaction.
        self.unsaved: dict[str, Unsaved] = {}

    def _skip_above(self, policy: RefreshPolicy, account: Account, state: AccountState) -> float | None:
        """Validity left above which `policy` sends nothing and only writes the token out (None: always send)."""
        if policy is RefreshPolicy.ALWAYS:
            return None
        margin = refresh_margin(self.config.margin_for(account), state)
        return margin if policy is RefreshPolicy.IF_NEEDED else skip_threshold(margin)

    # ------------------------------------------------------------ the transaction

    @contextlib.contextmanager
    def _transaction(self, account: Account) -> Iterator[tuple[StateTransaction, AccountState]]:
        """The account's store transaction and its state with the config's seed applied.

        The seeded state is saved with the transaction's next save (the answer,
        or the error), never on its own before the request: a shared store's
        save may end its lock (PostgreSQL commits), and a kill before the answer
        is saved costs the same either way (the next run sends the seed again).

        A rotated refresh token held in memory (its save failed) is saved
        first; if it still cannot be, StateWriteError: the spent one stored is never sent.
        """
        with self.store.transaction(account.name) as tx:
            held = self.unsaved.get(account.name)
            if held is not None:
                self._save_held(tx, held)
            yield tx, apply_seed(account, tx.state, self.clock())

    def refresh(self, account: Account, policy: RefreshPolicy = RefreshPolicy.ALWAYS) -> Result:
        """Refresh `account` now, or (by `policy`) only write out its token if the state re-read under the lock says so.

        Raises TemporaryError (StateWriteError and MalformedAnswer among them),
        InvalidGrant, RefreshFailed (RotatedTokenNotSaved among them) or
        OutputError; the state records the error, and the last good token stays
        in the files.
        """
        name = account.name
        # The state is read under the lock: another process may have refreshed (and rotated the
        # refresh token) while we waited. Using what we read before taking the lock would spend
        # a dead refresh token and, on servers that follow RFC 9700, get the whole grant revoked.
        with self._transaction(account) as (tx, state):
            now = self.clock()
            threshold = self._skip_above(policy, account, state)
            if threshold is not None and state.access and state.access.expires_at - now > threshold:
                if state is not tx.state:
                    tx.save(state)  # a new seed: remember it as seen
                outputs.write_all(self.config.token_dir, account, state.access)
                return Result(name, state, refreshed=False)
            self._check_grantable(tx, account, state, now)
            # The answer may rotate the refresh token, and from then on the new state must be
            # stored: so the store makes room for it before the request. A full disk or a
            # read-only state dir fails here, with nothing sent.
            tx.reserve()
            try:
                response = self._grant(account, state, tx)
            except MalformedAnswer as exc:
                # Refused as a whole, but a rotated refresh token in it is the grant's only live copy now.
                kept = replace(state, refresh_token=_secret(exc.refresh_token) or state.refresh_token)
                self._save_answer(tx, account, state, kept.with_error(str(exc), now), None)
                raise
            except InvalidGrant as exc:
                self._record(tx, state.with_error(str(exc), now, needs_login=True))
                raise InvalidGrant(f"refresh token refused ({exc}); {login_hint(name)}") from None
            except (TemporaryError, RefreshFailed) as exc:
                self._record(tx, state.with_error(str(exc), now))
                raise
            new_state = merge(state, response, self.clock())
            try:
                check_token(response.access.access_token.reveal())
            except UnsafeToken as exc:
                # Keep a rotated refresh token even from an answer we refuse to publish.
                kept = replace(new_state, access=state.access, last_refresh=state.last_refresh)
                self._save_answer(tx, account, state, kept.with_error(str(exc), now), None)
                raise RefreshFailed(str(exc)) from None
            # Saved before anything else (outputs, hook, even the log line): see _save_answer.
            self._save_answer(tx, account, state, new_state, response.access)
            rotated = new_state.refresh_token != state.refresh_token
            log.info(
                "refreshed account=%s expires_in=%ds rotated=%s",
                name,
                response.access.expires_at - self.clock(),
                "yes" if rotated else "no",
            )
            try:
                outputs.write_all(self.config.token_dir, account, response.access)
            except OutputError as exc:
                self._record(tx, new_state.with_error(str(exc), now))  # `status` shows it
                raise
        self.hook_runner(account, outputs.token_paths(self.config.token_dir, name)[0], response.access.expires_at)
        return Result(name, new_state, refreshed=True, rotated=rotated)

    def _save_answer(
        self, tx: StateTransaction, account: Account, old: AccountState, new: AccountState, publish: AccessToken | None
    ) -> None:
        """Save the state a token answer produced; if that fails, keep a rotated refresh token in memory.

        Order against kills and power loss. Once the server has rotated the
        refresh token, the one in the old state is spent: losing it costs
        nothing more. So a rotated state is saved with `rotated=True`, which
        lets the store put it in place first and make it durable right after
        (the file store renames, then fsyncs file and directory). A SIGKILL
        after the rename loses nothing (the page cache survives the process),
        and the rename comes one step after the answer is parsed instead of
        after a disk flush. A power loss before the fsyncs end may leave an
        empty or old file instead of the new one -- but fsync-then-rename
        loses the same new token then, and nothing that relies on it (outputs,
        hook, exit status) happens before save() returns. Without rotation the
        old state still holds the live refresh token, so it is replaced only
        once the new one is durable.
        """
        rotated = new.refresh_token != old.refresh_token
        if not rotated and publish is None:  # only an error to record: the refresh token stored still works
            self._record(tx, new)
            return
        try:
            tx.save(new, rotated=rotated)
        except SaveFailed as exc:
            if publish is not None:
                with contextlib.suppress(OutputError):  # the token is good; readers should have it
                    outputs.write_all(self.config.token_dir, account, publish)
            if not rotated:
                raise
            # This object lives as long as the daemon: the next transaction saves this state first,
            # and never sends the spent refresh token still stored.
            self.unsaved[account.name] = Unsaved(spent=old.refresh_token, state=new)
            log.error("%s: refresh token rotated but could not be saved: %s: %s; keeping it in memory", account.name, exc.where, exc.reason)
            raise RotatedTokenNotSaved(f"refresh token rotated but could not be saved: {exc.where}: {exc.reason}") from None

    def _record(self, tx: StateTransaction, state: AccountState) -> None:
        """Save an error into the state; failing to is logged, not raised (the error being recorded matters more)."""
        try:
            tx.save(state)
        except StateWriteError as exc:
            log.warning("%s: could not record the error: %s", tx.account, exc)

    def _check_grantable(self, tx: StateTransaction, account: Account, state: AccountState, now: float) -> None:
        """InvalidGrant, without a request, for an account that needs a login first."""
        if account.grant == Grant.CLIENT_CREDENTIALS:
            return
        if state.needs_login:
            raise InvalidGrant(f"needs a new login ({state.last_error or 'refresh token refused'}); {login_hint(account.name)}")
        if state.refresh_token is None:
            message = f"no refresh token yet; {login_hint(account.name)}"
            self._record(tx, state.with_error(message, now))
            raise InvalidGrant(message)

    def _grant(self, account: Account, state: AccountState, tx: StateTransaction) -> TokenResponse:
        # tx.before_send: a shared store checks its lock is alive right before the request and bounds it by the lock's life.
        if account.grant == Grant.CLIENT_CREDENTIALS or state.refresh_token is None:  # None: client_credentials only
            return self.client.client_credentials(account, before_send=tx.before_send)
        return self.client.refresh(account, state.refresh_token, before_send=tx.before_send)

    def write_current(self, account: Account) -> AccountState | None:
        """Write out the state's token if it is still valid; returns the state, or None if it is not."""
        with self._transaction(account) as (tx, state):
            if state is not tx.state:
                tx.save(state)  # a new seed: remember it as seen
            if state.access is None or state.access.expires_at <= self.clock():
                return None
            outputs.write_all(self.config.token_dir, account, state.access)
            return state

    def adopt(self, account: Account, response: TokenResponse) -> AccountState:
        """Store the result of a login (code exchange) as the account's new grant, then write outputs."""
        if response.refresh_token is None and account.grant == Grant.REFRESH_TOKEN:
            raise RefreshFailed("the server gave no refresh token (check scopes such as offline_access)")
        with self.store.transaction(account.name) as tx:
            self.unsaved.pop(account.name, None)  # a new grant: whatever older one was held is moot
            now = self.clock()
            state = AccountState(
                refresh_token=response.refresh_token,
                refresh_token_obtained_at=now,
                refresh_token_expires_at=response.refresh_token_expires_at or lifetime_end(account, now),
                # The config's seed (if any) is now older than this login: remember it, so it does not win.
                seed=account.refresh_token.fingerprint() if account.refresh_token else tx.state.seed,
                access=response.access,
                last_refresh=now,
            )
            tx.save(state)
            outputs.write_all(self.config.token_dir, account, response.access)
        return state

    def load(self, account: Account) -> AccountState:
        """The stored state with the config's seed applied; a read only, safe without the lock."""
        return apply_seed(account, self.store.load(account.name), self.clock())

    def _save_held(self, tx: StateTransaction, held: Unsaved) -> None:
        name = tx.account
        stored = tx.state.refresh_token
        if stored is not None and stored != held.spent:
            # Not the token we spent: a login (or a new seed) replaced the grant since. That one is newer.
            log.warning("%s: the stored state changed since a rotated refresh token could not be saved; using the stored one", name)
            del self.unsaved[name]
            return
        try:
            tx.save(held.state)
        except SaveFailed as exc:
            raise StateWriteError(
                f"a rotated refresh token is still unsaved and the state cannot be written: {exc.where}: {exc.reason}; "
                "not sending the spent one"
            ) from None
        del self.unsaved[name]
        log.info("%s: saved the rotated refresh token that an earlier save had failed to", name)

    def flush_unsaved(self) -> list[str]:
        """Try once more to save every rotated refresh token held in memory (for a daemon that stops); the accounts left."""
        for name, held in list(self.unsaved.items()):
            try:
                with self.store.transaction(name) as tx:
                    self._save_held(tx, held)
            except FreshtokenError as exc:
                log.error("%s: %s", name, exc)
        return sorted(self.unsaved)

    def _run_hook_inline(self, account: Account, token_file: Path, expires_at: float) -> None:
        if account.on_refresh:
            run_hook(account.on_refresh, account.name, token_file, expires_at, self.config.hook_timeout)


# ---------------------------------------------------------------- pure state transitions


def merge(state: AccountState, response: TokenResponse, now: float) -> AccountState:
    """The state after a successful grant: a rotated refresh token replaces the old one."""
    refresh_token = response.refresh_token or state.refresh_token
    return replace(
        state,
        refresh_token=refresh_token,
        refresh_token_expires_at=response.refresh_token_expires_at or state.refresh_token_expires_at,
        access=response.access,
        last_refresh=now,
        last_error=None,
        last_error_at=None,
        needs_login=False,
    )


def _secret(value: object) -> Secret | None:
    """The refresh token a MalformedAnswer carries (a Secret, or a plain string), else None."""
    if isinstance(value, Secret):
        return value or None
    return Secret(value) if isinstance(value, str) and value else None
