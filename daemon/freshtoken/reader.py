"""`freshtoken get`: read a token from the token dir. Stdlib only; never needs the config.

This is what cron jobs run every minute, so it imports nothing heavy: no
pathlib, dataclasses, typing or json (each would cost more than the work).
"""

from __future__ import annotations

import os
import time

from freshtoken.errors import TokenUnavailable
from freshtoken.formats import render_values

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

SYSTEM_TOKEN_DIR = "/run/freshtoken"


def candidate_dirs(environ: Mapping[str, str], explicit: str | None, config_token_dir: str | None) -> list[tuple[str, bool]]:
    """(dir, decisive) in the SPEC's order; a decisive dir is used even if the account is missing there."""
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]  # systemd: a colon-separated list; ours is first
    for value in (explicit, environ.get("FRESHTOKEN_TOKEN_DIR"), runtime, config_token_dir):
        if value:
            return [(value, True)]
    dirs = []
    if environ.get("XDG_RUNTIME_DIR"):
        dirs.append((os.path.join(environ["XDG_RUNTIME_DIR"], "freshtoken"), False))
    dirs.append((SYSTEM_TOKEN_DIR, False))
    return dirs


def find_token_file(account: str, dirs: list[tuple[str, bool]]) -> str:
    for directory, decisive in dirs:
        path = os.path.join(directory, f"{account}.json")
        if decisive or os.path.exists(path):
            return path
    looked = " and ".join(d for d, _ in dirs)
    raise TokenUnavailable(f"no token for {account!r} in {looked} (is the daemon running, and is the account named so?)")


def read_token(path: str, account: str) -> tuple[str, str, float, str | None]:
    """(access token, token type, expires_at, scope) from a token dir's .json file."""
    try:
        with open(path, "rb") as handle:
            data = _loads(handle.read())
        scope = data.get("scope")
        expires_at = float(data["expires_at"])  # type: ignore[arg-type]
        if not -1e15 < expires_at < 1e15:  # also false for NaN
            raise ValueError("expires_at out of range")
        return (
            str(data["access_token"]),
            str(data.get("token_type") or "Bearer"),
            expires_at,
            scope if isinstance(scope, str) else None,
        )
    except FileNotFoundError:
        raise TokenUnavailable(f"no token for {account!r}: {path} does not exist (is the daemon running?)") from None
    except PermissionError:
        hint = "join the token dir's group, e.g. `usermod -aG freshtoken $USER`"
        raise TokenUnavailable(f"cannot read {path}: permission denied ({hint})") from None
    except OSError as exc:
        raise TokenUnavailable(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, OverflowError):
        raise TokenUnavailable(f"{path} is not a freshtoken token file") from None


class _Strict:
    """What json.loads hands the C scanner; `parse_constant` refuses NaN and Infinity."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        raise ValueError(f"{name} is not a number")


def _loads(data: bytes) -> dict[str, object]:
    """json.loads for our own small file, through the C scanner json uses.

    `import json` pulls in `re`, which costs `get` more than everything else it
    does; `_json` is the C half of json and imports nothing.
    """
    text = data.decode("utf-8").strip(" \t\n\r")
    try:
        from _json import make_scanner
    except ImportError:  # another Python implementation
        import json

        value = json.loads(text)
    else:
        try:
            value, end = make_scanner(_Strict())(text, 0)  # type: ignore[arg-type]  # duck-typed JSONDecoder
        except StopIteration:
            raise ValueError("not JSON") from None
        if end != len(text):
            raise ValueError("trailing data")
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def get(
    account: str,
    *,
    fmt: str = "raw",
    min_valid: float = 0.0,
    token_dir: str | None = None,
    config_token_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
    now: float | None = None,
) -> bytes:
    """The bytes to print for `account`, or TokenUnavailable (exit 1)."""
    environ = os.environ if environ is None else environ
    now = time.time() if now is None else now
    path = find_token_file(account, candidate_dirs(environ, token_dir, config_token_dir))
    value, token_type, expires_at, scope = read_token(path, account)
    left = expires_at - now
    if left <= 0 or left < min_valid:
        from freshtoken.durations import humanize  # only on failure: it compiles a regex at import

        if left <= 0:
            raise TokenUnavailable(f"the token for {account!r} expired {humanize(-left)} ago; check `freshtoken status`")
        raise TokenUnavailable(f"the token for {account!r} is valid for {humanize(left)} only, less than --min-valid {humanize(min_valid)}")
    return render_values(fmt, value, token_type, expires_at, scope, account)
