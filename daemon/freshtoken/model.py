"""Value types shared by every layer: secrets that cannot leak through repr, tokens, account state,
and the validated config (accounts, outputs, their enums). Stdlib only: no adapter (yaml, requests) is loaded.

The config's types are built by `schema.parse`; `config` reads the file and hands the document over.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from freshtoken.errors import ConfigError


class Secret:
    """A string that shows as <redacted> in str(), repr() and f-strings; `.reveal()` gives it back."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def fingerprint(self) -> str:
        """A short, non-reversible id: lets the state remember which seed it came from."""
        return hashlib.sha256(self._value.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "<redacted>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def secret_or_none(value: str | None) -> Secret | None:
    return Secret(value) if value else None


@dataclass(frozen=True, slots=True)
class AccessToken:
    """What the readers get: the access token and when it stops working."""

    access_token: Secret
    token_type: str
    expires_at: float
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class TokenResponse:
    """A successful answer from a token endpoint, already validated."""

    access: AccessToken
    refresh_token: Secret | None  # None: the server kept the old one (no rotation)
    refresh_token_expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class AccountState:
    """Everything the state dir keeps for one account.

    `seed` is the fingerprint of the config's `refresh_token` the state was last
    seeded from, so that a changed one in the config wins over the state.
    """

    refresh_token: Secret | None = None
    refresh_token_obtained_at: float | None = None
    refresh_token_expires_at: float | None = None
    seed: str | None = None
    access: AccessToken | None = None
    last_refresh: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    needs_login: bool = False

    def with_error(self, message: str, now: float, *, needs_login: bool = False) -> AccountState:
        return replace(self, last_error=message, last_error_at=now, needs_login=needs_login or self.needs_login)

    def to_json(self) -> dict[str, Any]:
        access = self.access
        return {
            "version": 1,
            "refresh_token": self.refresh_token.reveal() if self.refresh_token else None,
            "refresh_token_obtained_at": self.refresh_token_obtained_at,
            "refresh_token_expires_at": self.refresh_token_expires_at,
            "seed": self.seed,
            "access_token": access.access_token.reveal() if access else None,
            "token_type": access.token_type if access else None,
            "expires_at": access.expires_at if access else None,
            "scope": access.scope if access else None,
            "last_refresh": self.last_refresh,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "needs_login": self.needs_login,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AccountState:
        """Inverse of to_json; raises ValueError/TypeError on a document this code cannot use.

        Every number is range-checked: a state written by hand, by a newer
        version or by an old bug must not turn into a year-55897 expiry later.
        Keys it does not know are ignored (older versions could write an `extra` object).
        """
        if not isinstance(data, dict):
            raise ValueError("state is not a JSON object")
        version = data.get("version", 1)
        if version != 1:
            raise ValueError(f"state version {version!r} is not 1 (written by another freshtoken version?)")
        access = None
        if data.get("access_token"):
            expires_at = _opt_time(data, "expires_at")
            if expires_at is None:
                raise ValueError("access_token without expires_at")
            access = AccessToken(
                access_token=Secret(_opt_str(data, "access_token") or ""),
                token_type=_opt_str(data, "token_type") or "Bearer",
                expires_at=expires_at,
                scope=_opt_str(data, "scope"),
            )
        needs_login = data.get("needs_login", False)
        if not isinstance(needs_login, bool):
            raise TypeError(f"needs_login is {type(needs_login).__name__}, not true/false")
        return cls(
            refresh_token=secret_or_none(_opt_str(data, "refresh_token")),
            refresh_token_obtained_at=_opt_time(data, "refresh_token_obtained_at"),
            refresh_token_expires_at=_opt_time(data, "refresh_token_expires_at"),
            seed=_opt_str(data, "seed"),
            access=access,
            last_refresh=_opt_time(data, "last_refresh"),
            last_error=_opt_str(data, "last_error"),
            last_error_at=_opt_time(data, "last_error_at"),
            needs_login=needs_login,
        )


MAX_TIME = 1e11  # epoch seconds in the year 5138: anything later is damage, not a date


def _opt_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{key} is {type(value).__name__}, not a string")
    return value


def _opt_time(data: dict[str, Any], key: str) -> float | None:
    """An epoch time in seconds, or None; a bool, a string, NaN, infinity or an absurd year is refused."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key} is {type(value).__name__}, not a number")
    if not 0 <= value <= MAX_TIME:  # also false for NaN; compared before float() so a 400-digit int cannot overflow
        shown = f"{value:.6g}" if isinstance(value, float) or abs(value) < 10**30 else "(a huge number)"
        raise ValueError(f"{key} {shown} is out of range")
    return float(value)


# ---------------------------------------------------------------- the config's types


class Grant(StrEnum):
    REFRESH_TOKEN = "refresh_token"
    CLIENT_CREDENTIALS = "client_credentials"


class ClientAuth(StrEnum):
    """How the client authenticates at the token endpoint (RFC 6749 §2.3.1): header, form body, or not at all."""

    BASIC = "basic"
    POST = "post"
    NONE = "none"


class OutputFormat(StrEnum):
    """An output file's format; `formats.FORMATS` holds the same names for `get`, which must not import enum."""

    RAW = "raw"
    JSON = "json"
    HEADER = "header"
    ENV = "env"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to connect, to wait for each read, and for the whole request (connect to last byte).

    `total=None` means connect + read: a server trickling a byte before every
    read timeout could otherwise hold a worker for hours.
    """

    connect: float = 10.0
    read: float = 30.0
    total: float | None = None

    @property
    def deadline(self) -> float:
        return self.total if self.total is not None else self.connect + self.read


@dataclass(frozen=True, slots=True)
class Output:
    path: Path
    format: OutputFormat = OutputFormat.RAW
    mode: int = 0o640
    group: str | int | None = None
    name: str = "ACCESS_TOKEN"  # variable name for the env format


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    token_url: str
    client_id: str
    provider: str | None = None
    authorize_url: str | None = None
    grant: Grant = Grant.REFRESH_TOKEN
    client_auth: ClientAuth = ClientAuth.BASIC
    client_secret: Secret | None = None
    client_secret_file: str | None = None  # resolved into client_secret by config.load()
    refresh_token: Secret | None = None
    scopes: tuple[str, ...] = ()
    redirect_uri: str = "http://127.0.0.1:8888/callback"
    pkce: bool = True
    show_dialog: bool = False
    refresh_margin: int | None = None
    outputs: tuple[Output, ...] = ()
    on_refresh: tuple[str, ...] = ()
    refresh_token_lifetime: int | None = None
    authorize_params: tuple[tuple[str, str], ...] = ()  # extra authorization-request parameters, in order
    device_authorization_url: str | None = None
    device_login: bool = False  # `login` uses the device flow (RFC 8628) unless told --no-device
    revocation_url: str | None = None  # RFC 7009, for `logout`
    # False: no file at all, not even the token dir's own (`outputs: []` with shared_state: readers use the database).
    local_files: bool = True

    def secrets(self) -> list[str]:
        """Every secret this account holds, for redaction checks."""
        return [s.reveal() for s in (self.client_secret, self.refresh_token) if s]


@dataclass(frozen=True, slots=True)
class Config:
    file: str
    state_dir: Path
    token_dir: Path
    accounts: dict[str, Account]
    refresh_margin: int | None = None
    metrics_listen: tuple[str, int] | None = None
    workers: int = 4
    backoff_max: int = 300
    hook_timeout: int = 30
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    # The shortest time between two refreshes of one account, whatever expires_in the server sends:
    # a server answering expires_in 1 (or 0.01) must not turn freshtoken into a load generator.
    min_refresh_interval: float = 10.0
    # PostgreSQL instead of state_dir for states and refresh tokens (a libpq URI or key=value string; may hold a password).
    shared_state: Secret | None = None
    # Accounts whose per-user grants are rows in the shared state, named TEMPLATE/USER (see user_account).
    templates: dict[str, Account] = field(default_factory=dict)
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # Keys whose ${VAR} was left as written (a lenient load for `status`): their values are not the real ones.
    unresolved: frozenset[str] = field(default=frozenset(), compare=False)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def timeouts(self) -> Timeouts:
        """The token endpoint's timeouts, for every TokenClient made from this config."""
        return Timeouts(self.connect_timeout, self.read_timeout)

    def error(self, key: str, problem: str) -> ConfigError:
        """A ConfigError about `key`, pointing at its line (or its nearest parent's) in the file."""
        return ConfigError(self.file, key, problem, line_of(self.lines, key))

    def margin_for(self, account: Account) -> int | None:
        return account.refresh_margin if account.refresh_margin is not None else self.refresh_margin


USER_SEPARATOR = "/"  # TEMPLATE/USER: no account name holds one, so a grant's row never clashes with an account's


def user_account(template: Account, user: str) -> Account:
    """The account one user's grant of `template` is refreshed as: the template's client, no seed, no files, no hook."""
    return replace(
        template, name=f"{template.name}{USER_SEPARATOR}{user}", refresh_token=None, outputs=(), on_refresh=(), local_files=False
    )


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
        refresh_token_expires_at=lifetime_end(account, now),
        needs_login=False,
        last_error=None,
        last_error_at=None,
    )


def lifetime_end(account: Account, now: float) -> float | None:
    return now + account.refresh_token_lifetime if account.refresh_token_lifetime else None


_PARENT_KEY = re.compile(r"(\.[^.\[]*|\[\d+\])$")  # accounts.a.outputs[0] -> accounts.a.outputs -> accounts.a


def line_of(lines: Mapping[str, int], key: str) -> int | None:
    """The key's own line, else its nearest parent's (a missing key is missing from its account)."""
    while key:
        if key in lines:
            return lines[key]
        parent = _PARENT_KEY.sub("", key)
        if parent == key:
            break
        key = parent
    return None
