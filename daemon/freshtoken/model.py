"""Value types shared by every layer: secrets that cannot leak through repr, tokens, account state."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any


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
    obtained_at: float = 0.0


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
    extra: dict[str, Any] = field(default_factory=dict)

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
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AccountState:
        """Inverse of to_json; raises ValueError/TypeError on a document this code cannot use.

        Every number is range-checked: a state written by hand, by a newer
        version or by an old bug must not turn into a year-55897 expiry later.
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
        extra = data.get("extra") or {}
        if not isinstance(extra, dict):
            raise TypeError("extra is not an object")
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
            extra=extra,
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
