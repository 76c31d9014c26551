"""The bytes of each output format. Pure and stdlib-only: `get` uses it too and must start fast."""

from __future__ import annotations

from freshtoken.errors import UnsafeToken

TYPE_CHECKING = False  # typing itself costs `get` milliseconds
if TYPE_CHECKING:
    from freshtoken.model import AccessToken

FORMATS = ("raw", "json", "header", "env")


def check_token(value: str) -> None:
    # Printable ASCII without spaces: RFC 6750's b64token is narrower still, and
    # anything wider could smuggle a second header or env line into a file.
    if not value or any(not 0x21 <= ord(ch) <= 0x7E for ch in value):
        raise UnsafeToken("the access token has spaces, control or non-ASCII characters; refusing to write it")


def _document(value: str, token_type: str, expires_at: float, scope: str | None, account: str) -> dict[str, object]:
    from datetime import UTC, datetime  # here, not at the top: `get` of a raw token does not need it

    expires = _epoch(expires_at)
    return {
        "access_token": value,
        "token_type": token_type,
        "expires_at": expires,
        "expires_at_iso": datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "scope": scope,
        "account": account,
    }


def _epoch(expires_at: float) -> int:
    """Whole epoch seconds; 0 (long expired) for an expiry no calendar holds (NaN, infinite, past year 9999).

    oauth range-checks what servers say, but a state written by an older
    version may hold anything: no output must crash on it or call it valid.
    """
    if not 0 <= expires_at < 253402300800:  # 9999-12-31T23:59:59Z + 1 s; NaN fails the comparison too
        return 0
    return int(expires_at)


def render(fmt: str, token: AccessToken, account: str, name: str = "ACCESS_TOKEN") -> bytes:
    """The bytes of one output file, or UnsafeToken."""
    return render_values(fmt, token.access_token.reveal(), token.token_type, token.expires_at, token.scope, account, name)


def render_values(
    fmt: str, value: str, token_type: str, expires_at: float, scope: str | None, account: str, name: str = "ACCESS_TOKEN"
) -> bytes:
    """render() from plain values: `get` uses it so as not to import model (dataclasses costs it ~15 ms)."""
    check_token(value)
    if fmt == "raw":
        return f"{value}\n".encode()
    if fmt == "json":
        import json  # json imports re: only `--format json` pays for it

        return (json.dumps(_document(value, token_type, expires_at, scope, account), indent=2) + "\n").encode()
    if fmt == "header":
        check_token(token_type)
        return f"Authorization: {token_type} {value}\n".encode()
    if fmt == "env":
        return f"{name}={value}\n{name}_EXPIRES_AT={_epoch(expires_at)}\n".encode()
    raise ValueError(f"unknown output format {fmt!r}")
