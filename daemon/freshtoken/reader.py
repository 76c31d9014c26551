"""`freshtoken get`: read a token from the token dir. Stdlib only; never needs the config.

This is what cron jobs run every minute, so it imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

from freshtoken.durations import humanize
from freshtoken.errors import TokenUnavailable
from freshtoken.formats import render
from freshtoken.model import AccessToken, Secret

SYSTEM_TOKEN_DIR = "/run/freshtoken"


def candidate_dirs(environ: Mapping[str, str], explicit: str | None, config_token_dir: str | None) -> list[tuple[Path, bool]]:
    """(dir, decisive) in the SPEC's order; a decisive dir is used even if the account is missing there."""
    for value in (explicit, environ.get("FRESHTOKEN_TOKEN_DIR"), environ.get("RUNTIME_DIRECTORY"), config_token_dir):
        if value:
            return [(Path(value.split(":")[0]), True)]
    dirs = []
    if environ.get("XDG_RUNTIME_DIR"):
        dirs.append((Path(environ["XDG_RUNTIME_DIR"]) / "freshtoken", False))
    dirs.append((Path(SYSTEM_TOKEN_DIR), False))
    return dirs


def find_token_file(account: str, dirs: list[tuple[Path, bool]]) -> Path:
    for directory, decisive in dirs:
        path = directory / f"{account}.json"
        if decisive or path.exists():
            return path
    looked = " and ".join(str(d) for d, _ in dirs)
    raise TokenUnavailable(f"no token for {account!r} in {looked} (is the daemon running, and is the account named so?)")


def read_token(path: Path, account: str) -> AccessToken:
    try:
        data = json.loads(path.read_bytes())
        return AccessToken(
            access_token=Secret(str(data["access_token"])),
            token_type=str(data.get("token_type") or "Bearer"),
            expires_at=float(data["expires_at"]),
            scope=data.get("scope"),
        )
    except FileNotFoundError:
        raise TokenUnavailable(f"no token for {account!r}: {path} does not exist (is the daemon running?)") from None
    except PermissionError:
        raise TokenUnavailable(f"cannot read {path}: permission denied (join the token dir's group, e.g. `usermod -aG freshtoken $USER`)") from None
    except OSError as exc:
        raise TokenUnavailable(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise TokenUnavailable(f"{path} is not a freshtoken token file") from None


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
    token = read_token(path, account)
    left = token.expires_at - now
    if left <= 0:
        raise TokenUnavailable(f"the token for {account!r} expired {humanize(-left)} ago; check `freshtoken status`")
    if left < min_valid:
        raise TokenUnavailable(f"the token for {account!r} is valid for {humanize(left)} only, less than --min-valid {humanize(min_valid)}")
    return render(fmt, token, account)
