"""One refresh as one transaction: lock, re-read, POST, save the state, write the outputs, run the hook.

Shared by the daemon, `refresh` and `login`, so all three obey the same
order: a rotated refresh token is on disk before anything else can fail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from freshtoken import outputs
from freshtoken.config import Account, Config
from freshtoken.errors import InvalidGrant, RefreshFailed, TemporaryError
from freshtoken.formats import UnsafeToken, check_token
from freshtoken.hooks import run_hook
from freshtoken.model import AccountState, TokenResponse
from freshtoken.oauth import TokenClient
from freshtoken.store import Store
from freshtoken.timing import JITTER_SHARE, effective_margin

log = logging.getLogger(__name__)

DEFAULT_LIFETIME = 3600.0
HookRunner = Callable[[Account, Path, float], None]
Threshold = Callable[[Account, AccountState], float]


def login_hint(account: str) -> str:
    return f"run `freshtoken login {account}` (or set a new refresh_token in the config)"


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

    # ------------------------------------------------------------ policy helpers

    def margin(self, account: Account, state: AccountState) -> float:
        return effective_margin(self.config.margin_for(account), lifetime(state))

    def scheduled_threshold(self, account: Account, state: AccountState) -> float:
        """How much validity left makes a scheduled run a no-op: someone else refreshed already."""
        return self.margin(account, state) * (1 + JITTER_SHARE) + 1.0

    # ------------------------------------------------------------ the transaction

    def refresh(self, account: Account, *, skip_if_valid_for: float | Threshold | None = None) -> Result:
        """Refresh `account` now, unless its token (re-read under the lock) is valid for longer than given.

        `skip_if_valid_for` may be a function of the account and that re-read state
        (such as `margin` or `scheduled_threshold`), so that callers never read the
        state a second time, outside the lock, only to work out the threshold.

        Raises TemporaryError, InvalidGrant, RefreshFailed or OutputError; the
        state records the error, and the last good token stays in the files.
        """
        with self.store.locked(account.name):
            # Re-read under the lock: another process may have refreshed (and
            # rotated the refresh token) while we waited. Using what we read
            # before taking the lock would spend a dead refresh token and, on
            # servers that follow RFC 9700, get the whole grant revoked.
            state = self._load_locked(account)
            now = self.clock()
            threshold = skip_if_valid_for(account, state) if callable(skip_if_valid_for) else skip_if_valid_for
            if threshold is not None and state.access and state.access.expires_at - now > threshold:
                outputs.write_all(self.config.token_dir, account, state.access)
                return Result(account.name, state, refreshed=False)
            response = self._grant(account, state, now)
            new_state = merge(state, response, self.clock())
            try:
                check_token(response.access.access_token.reveal())
            except UnsafeToken as exc:
                # Keep a rotated refresh token even from an answer we refuse to publish.
                kept = replace(new_state, access=state.access, last_refresh=state.last_refresh)
                self.store.save(account.name, kept.with_error(str(exc), now))
                raise RefreshFailed(str(exc)) from None
            self.store.save(account.name, new_state)  # before outputs: the token is safe even if they fail
            rotated = response.refresh_token is not None and response.refresh_token != state.refresh_token
            log.info(
                "refreshed account=%s expires_in=%ds rotated=%s",
                account.name,
                response.access.expires_at - self.clock(),
                "yes" if rotated else "no",
            )
            try:
                outputs.write_all(self.config.token_dir, account, response.access)
            except outputs.OutputError as exc:
                self.store.save(account.name, new_state.with_error(str(exc), now))  # `status` shows it
                raise
        self.hook_runner(account, outputs.token_paths(self.config.token_dir, account.name)[0], response.access.expires_at)
        return Result(account.name, new_state, refreshed=True, rotated=rotated)

    def _grant(self, account: Account, state: AccountState, now: float) -> TokenResponse:
        if account.grant != "client_credentials":
            if state.needs_login:
                raise InvalidGrant(f"needs a new login ({state.last_error or 'refresh token refused'}); {login_hint(account.name)}")
            if state.refresh_token is None:
                message = f"no refresh token yet; {login_hint(account.name)}"
                self.store.save(account.name, state.with_error(message, now))
                raise InvalidGrant(message)
        try:
            if account.grant == "client_credentials" or state.refresh_token is None:  # None: client_credentials only
                return self.client.client_credentials(account)
            return self.client.refresh(account, state.refresh_token)
        except InvalidGrant as exc:
            self.store.save(account.name, state.with_error(str(exc), now, needs_login=True))
            raise InvalidGrant(f"refresh token refused ({exc}); {login_hint(account.name)}") from None
        except (TemporaryError, RefreshFailed) as exc:
            self.store.save(account.name, state.with_error(str(exc), now))
            raise

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
        if response.refresh_token is None and account.grant == "refresh_token":
            raise RefreshFailed("the server gave no refresh token (check scopes such as offline_access)")
        with self.store.locked(account.name):
            old = self.store.load(account.name)
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
        outside it could overwrite a refresh token another process has just rotated."""
        state = self.store.load(account.name)
        seeded = apply_seed(account, state, self.clock())
        if seeded is not state:
            self.store.save(account.name, seeded)
        return seeded

    def _run_hook_inline(self, account: Account, token_file: Path, expires_at: float) -> None:
        if account.on_refresh:
            run_hook(account.on_refresh, account.name, token_file, expires_at, self.config.hook_timeout)


# ---------------------------------------------------------------- pure state transitions


def apply_seed(account: Account, state: AccountState, now: float) -> AccountState:
    """A refresh_token in the config that differs from the one the state was seeded from wins."""
    seed = account.refresh_token
    if account.grant != "refresh_token" or seed is None or state.seed == seed.fingerprint():
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


def lifetime(state: AccountState) -> float:
    if state.access and state.last_refresh and state.access.expires_at > state.last_refresh:
        return state.access.expires_at - state.last_refresh
    return DEFAULT_LIFETIME


def _lifetime_end(account: Account, now: float) -> float | None:
    return now + account.refresh_token_lifetime if account.refresh_token_lifetime else None
