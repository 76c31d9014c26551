"""One refresh as one transaction: lock, re-read, POST, save the state, write the outputs, run the hook.

Shared by the daemon, `refresh` and `login`, so all three obey the same
order: a rotated refresh token is on disk before anything else can fail.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
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
from freshtoken.fsutil import PendingWrite
from freshtoken.hooks import run_hook
from freshtoken.model import AccessToken, Account, AccountState, Config, Grant, Secret, TokenResponse
from freshtoken.oauth import TokenClient
from freshtoken.store import Store
from freshtoken.timing import refresh_margin, skip_threshold

log = logging.getLogger(__name__)

HookRunner = Callable[[Account, Path, float], None]
Threshold = Callable[[Account, AccountState], float]


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


class Refresher:
    def __init__(
        self,
        config: Config,
        store: Store,
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
        # the daemon, so these outlive a full disk; see _save_answer and _load_locked.
        self.unsaved: dict[str, Unsaved] = {}

    # ------------------------------------------------------------ thresholds for `skip_if_valid_for` (timing's policy)

    def margin(self, account: Account, state: AccountState) -> float:
        """How long before expiry the account's token is refreshed (`refresh --if-needed` skips a token valid longer)."""
        return refresh_margin(self.config.margin_for(account), state)

    def scheduled_threshold(self, account: Account, state: AccountState) -> float:
        """How much validity left makes a scheduled run a no-op: someone else refreshed already."""
        return skip_threshold(self.margin(account, state))

    # ------------------------------------------------------------ the transaction

    def refresh(self, account: Account, *, skip_if_valid_for: float | Threshold | None = None) -> Result:
        """Refresh `account` now, unless its token (re-read under the lock) is valid for longer than given.

        `skip_if_valid_for` may be a function of the account and that re-read state
        (such as `margin` or `scheduled_threshold`), so that callers never read the
        state a second time, outside the lock, only to work out the threshold.

        Raises TemporaryError (StateWriteError and MalformedAnswer among them),
        InvalidGrant, RefreshFailed (RotatedTokenNotSaved among them) or
        OutputError; the state records the error, and the last good token stays
        in the files.
        """
        name = account.name
        with self.store.locked(name):
            # Re-read under the lock: another process may have refreshed (and
            # rotated the refresh token) while we waited. Using what we read
            # before taking the lock would spend a dead refresh token and, on
            # servers that follow RFC 9700, get the whole grant revoked.
            state = self._load_locked(account)
            now = self.clock()
            threshold = skip_if_valid_for(account, state) if callable(skip_if_valid_for) else skip_if_valid_for
            if threshold is not None and state.access and state.access.expires_at - now > threshold:
                outputs.write_all(self.config.token_dir, account, state.access)
                return Result(name, state, refreshed=False)
            self._check_grantable(account, state, now)
            # The answer may rotate the refresh token, and from then on the new state must reach
            # the disk: so the state's temp file is created, and its space allocated, before the
            # request. A full disk or a read-only state dir fails here, with nothing sent.
            with self.store.reserve(name) as pending:
                try:
                    response = self._grant(account, state)
                except MalformedAnswer as exc:
                    # Refused as a whole, but a rotated refresh token in it is the grant's only live copy now.
                    kept = replace(state, refresh_token=_secret(exc.refresh_token) or state.refresh_token)
                    self._save_answer(account, state, kept.with_error(str(exc), now), pending, None)
                    raise
                except InvalidGrant as exc:
                    self._record(name, state.with_error(str(exc), now, needs_login=True), pending)
                    raise InvalidGrant(f"refresh token refused ({exc}); {login_hint(name)}") from None
                except (TemporaryError, RefreshFailed) as exc:
                    self._record(name, state.with_error(str(exc), now), pending)
                    raise
                new_state = merge(state, response, self.clock())
                try:
                    check_token(response.access.access_token.reveal())
                except UnsafeToken as exc:
                    # Keep a rotated refresh token even from an answer we refuse to publish.
                    kept = replace(new_state, access=state.access, last_refresh=state.last_refresh)
                    self._save_answer(account, state, kept.with_error(str(exc), now), pending, None)
                    raise RefreshFailed(str(exc)) from None
                # Saved before anything else (outputs, hook, even the log line): see _save_answer.
                self._save_answer(account, state, new_state, pending, response.access)
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
                self._record(name, new_state.with_error(str(exc), now), None)  # `status` shows it
                raise
        self.hook_runner(account, outputs.token_paths(self.config.token_dir, name)[0], response.access.expires_at)
        return Result(name, new_state, refreshed=True, rotated=rotated)

    def _save_answer(
        self, account: Account, old: AccountState, new: AccountState, pending: PendingWrite, publish: AccessToken | None
    ) -> None:
        """Save the state a token answer produced; if that fails, keep a rotated refresh token in memory.

        Order against kills and power loss. Once the server has rotated the
        refresh token, the one in the old state file is spent: losing the old
        file costs nothing more. So the new file is renamed into place first
        and fsynced (file, then directory) right after. A SIGKILL after the
        rename loses nothing (the page cache survives the process), and the
        rename comes one step after the answer is parsed instead of after a
        disk flush. A power loss before the fsyncs end may leave an empty or
        old file instead of the new one -- but fsync-then-rename loses the same
        new token then, and nothing that relies on it (outputs, hook, exit
        status) happens before both fsyncs are done. Without rotation the old
        file still holds the live refresh token, so it is replaced only once
        the new one is on disk (fsync, then rename).
        """
        rotated = new.refresh_token != old.refresh_token
        if not rotated and publish is None:  # only an error to record: the refresh token on disk still works
            self._record(account.name, new, pending)
            return
        try:
            self.store.commit(account.name, new, pending=pending, durable_first=not rotated)
        except OSError as exc:
            path, reason = self.store.path(account.name), exc.strerror or str(exc)
            if publish is not None:
                with contextlib.suppress(OutputError):  # the token is good; readers should have it
                    outputs.write_all(self.config.token_dir, account, publish)
            if not rotated:
                raise StateWriteError(f"cannot write state {path}: {reason}") from None
            # This object lives as long as the daemon: the next refresh saves this state first,
            # and never sends the spent refresh token still on disk.
            self.unsaved[account.name] = Unsaved(spent=old.refresh_token, state=new)
            log.error("%s: refresh token rotated but could not be saved: %s: %s; keeping it in memory", account.name, path, reason)
            raise RotatedTokenNotSaved(f"refresh token rotated but could not be saved: {path}: {reason}") from None

    def _record(self, name: str, state: AccountState, pending: PendingWrite | None) -> None:
        """Save an error into the state; failing to is logged, not raised (the error being recorded matters more)."""
        try:
            self.store.save(name, state, pending=pending)
        except StateWriteError as exc:
            log.warning("%s: could not record the error: %s", name, exc)

    def _check_grantable(self, account: Account, state: AccountState, now: float) -> None:
        """InvalidGrant, without a request, for an account that needs a login first."""
        if account.grant == Grant.CLIENT_CREDENTIALS:
            return
        if state.needs_login:
            raise InvalidGrant(f"needs a new login ({state.last_error or 'refresh token refused'}); {login_hint(account.name)}")
        if state.refresh_token is None:
            message = f"no refresh token yet; {login_hint(account.name)}"
            self._record(account.name, state.with_error(message, now), None)
            raise InvalidGrant(message)

    def _grant(self, account: Account, state: AccountState) -> TokenResponse:
        if account.grant == Grant.CLIENT_CREDENTIALS or state.refresh_token is None:  # None: client_credentials only
            return self.client.client_credentials(account)
        return self.client.refresh(account, state.refresh_token)

    def write_current(self, account: Account) -> AccountState | None:
        """Write out the state's token if it is still valid; returns the state, or None if it is not."""
        with self.store.locked(account.name):
            state = self._load_locked(account)
            if state.access is None or state.access.expires_at <= self.clock():
                return None
            outputs.write_all(self.config.token_dir, account, state.access)
            return state

    def adopt(self, account: Account, response: TokenResponse) -> AccountState:
        """Store the result of a login (code exchange) as the account's new grant, then write outputs."""
        if response.refresh_token is None and account.grant == Grant.REFRESH_TOKEN:
            raise RefreshFailed("the server gave no refresh token (check scopes such as offline_access)")
        with self.store.locked(account.name):
            old = self.store.load_for_update(account.name)
            self.unsaved.pop(account.name, None)  # a new grant: whatever older one was held is moot
            now = self.clock()
            state = AccountState(
                refresh_token=response.refresh_token,
                refresh_token_obtained_at=now,
                refresh_token_expires_at=response.refresh_token_expires_at or _lifetime_end(account, now),
                # The config's seed (if any) is now older than this login: remember it, so it does not win.
                seed=account.refresh_token.fingerprint() if account.refresh_token else old.seed,
                access=response.access,
                last_refresh=now,
            )
            self.store.save(account.name, state)
            outputs.write_all(self.config.token_dir, account, response.access)
        return state

    def load(self, account: Account) -> AccountState:
        """The stored state with the config's seed applied; a read only, safe without the lock."""
        return apply_seed(account, self.store.load(account.name), self.clock())

    def _load_locked(self, account: Account) -> AccountState:
        """As load(), and saves the seeded state. Only under the account lock: saving a state read
        outside it could overwrite a refresh token another process has just rotated.

        A rotated refresh token held in memory (its save failed) is saved first;
        if it still cannot be, StateWriteError: the spent one on disk is never sent.
        """
        held = self.unsaved.get(account.name)
        if held is not None:
            self._save_held(account.name, held)
        state = self.store.load_for_update(account.name)
        seeded = apply_seed(account, state, self.clock())
        if seeded is not state:
            self.store.save(account.name, seeded)
        return seeded

    def _save_held(self, name: str, held: Unsaved) -> None:
        try:
            disk: AccountState | None = self.store.load(name)
        except FreshtokenError:
            disk = None  # unreadable or damaged: what we hold is newer
        if disk is not None and disk.refresh_token is not None and disk.refresh_token != held.spent:
            # Not the token we spent: a login (or a new seed) replaced the grant since. That one is newer.
            log.warning("%s: the state on disk changed since a rotated refresh token could not be saved; using the disk's", name)
            del self.unsaved[name]
            return
        try:
            self.store.commit(name, held.state)
        except OSError as exc:
            raise StateWriteError(
                f"a rotated refresh token is still unsaved and the state cannot be written: {self.store.path(name)}: "
                f"{exc.strerror or exc}; not sending the spent one"
            ) from None
        del self.unsaved[name]
        log.info("%s: saved the rotated refresh token that an earlier save had failed to", name)

    def flush_unsaved(self) -> list[str]:
        """Try once more to save every rotated refresh token held in memory (for a daemon that stops); the accounts left."""
        for name, held in list(self.unsaved.items()):
            try:
                with self.store.locked(name):
                    self._save_held(name, held)
            except FreshtokenError as exc:
                log.error("%s: %s", name, exc)
        return sorted(self.unsaved)

    def _run_hook_inline(self, account: Account, token_file: Path, expires_at: float) -> None:
        if account.on_refresh:
            run_hook(account.on_refresh, account.name, token_file, expires_at, self.config.hook_timeout)


# ---------------------------------------------------------------- pure state transitions


def apply_seed(account: Account, state: AccountState, now: float) -> AccountState:
    """A refresh_token in the config that differs from the one the state was seeded from wins."""
    seed = account.refresh_token
    if account.grant != Grant.REFRESH_TOKEN or seed is None or state.seed == seed.fingerprint():
        return state
    if state.refresh_token == seed:
        return replace(state, seed=seed.fingerprint())
    return replace(
        state,
        refresh_token=seed,
        seed=seed.fingerprint(),
        # Counted from when freshtoken first saw it: the real login may be older.
        refresh_token_obtained_at=now,
        refresh_token_expires_at=_lifetime_end(account, now),
        needs_login=False,
        last_error=None,
        last_error_at=None,
    )


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


def _lifetime_end(account: Account, now: float) -> float | None:
    return now + account.refresh_token_lifetime if account.refresh_token_lifetime else None
