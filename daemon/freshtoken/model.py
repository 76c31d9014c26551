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
        """Inverse of to_json; raises ValueError/TypeError/KeyError on a damaged document."""
        if not isinstance(data, dict):
            raise ValueError("state is not a JSON object")
        access = None
        if data.get("access_token"):
            access = AccessToken(
                access_token=Secret(str(data["access_token"])),
                token_type=str(data.get("token_type") or "Bearer"),
                expires_at=float(data["expires_at"]),
                scope=data.get("scope"),
            )
        return cls(
            refresh_token=secret_or_none(data.get("refresh_token")),
            refresh_token_obtained_at=_opt_float(data.get("refresh_token_obtained_at")),
            refresh_token_expires_at=_opt_float(data.get("refresh_token_expires_at")),
            seed=data.get("seed"),
            access=access,
            last_refresh=_opt_float(data.get("last_refresh")),
            last_error=data.get("last_error"),
            last_error_at=_opt_float(data.get("last_error_at")),
            needs_login=bool(data.get("needs_login", False)),
            extra=dict(data.get("extra") or {}),
        )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
