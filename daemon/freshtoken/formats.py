"""The bytes of each output format. Pure and stdlib-only: `get` uses it too and must start fast."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from freshtoken.errors import FreshtokenError
from freshtoken.model import AccessToken

FORMATS = ("raw", "json", "header", "env")


class UnsafeToken(FreshtokenError):
    """A token with a control character or space could inject a header line or variable."""


def check_token(value: str) -> None:
    # Printable ASCII without spaces: RFC 6750's b64token is narrower still, and
    # anything wider could smuggle a second header or env line into a file.
    if not value or any(not 0x21 <= ord(ch) <= 0x7E for ch in value):
        raise UnsafeToken("the access token has spaces, control or non-ASCII characters; refusing to write it")


def as_json(token: AccessToken, account: str) -> dict[str, object]:
    expires = int(token.expires_at)
    return {
        "access_token": token.access_token.reveal(),
        "token_type": token.token_type,
        "expires_at": expires,
        "expires_at_iso": datetime.fromtimestamp(expires, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "scope": token.scope,
        "account": account,
    }


def render(fmt: str, token: AccessToken, account: str, name: str = "ACCESS_TOKEN") -> bytes:
    """The bytes of one output file, or UnsafeToken."""
    value = token.access_token.reveal()
    check_token(value)
    if fmt == "raw":
        return f"{value}\n".encode()
    if fmt == "json":
        return (json.dumps(as_json(token, account), indent=2) + "\n").encode()
    if fmt == "header":
        check_token(token.token_type)
        return f"Authorization: {token.token_type} {value}\n".encode()
    if fmt == "env":
        return f"{name}={value}\n{name}_EXPIRES_AT={int(token.expires_at)}\n".encode()
    raise ValueError(f"unknown output format {fmt!r}")
