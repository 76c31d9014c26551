"""Provider presets: plain data that fills in an account's defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Preset:
    token_url: str
    authorize_url: str | None
    client_auth: str
    refresh_token_lifetime: int | None  # seconds, when the provider documents one
    revoke_url: str | None = None


PRESETS: dict[str, Preset] = {
    # Spotify refresh tokens expire 6 months after the login since 2026; refreshing
    # does not extend them (Spotify developer blog, 2026-06-18).
    "spotify": Preset(
        token_url="https://accounts.spotify.com/api/token",
        authorize_url="https://accounts.spotify.com/authorize",
        client_auth="basic",
        refresh_token_lifetime=180 * 86400,
    ),
}
