"""What readers see: the token dir's own files and the configured extra outputs."""

from __future__ import annotations

import logging
from pathlib import Path

from freshtoken.config import Account, Output
from freshtoken.errors import FreshtokenError
from freshtoken.formats import render
from freshtoken.fsutil import TOKEN_DIR_MODE, atomic_write, ensure_dir
from freshtoken.model import AccessToken

log = logging.getLogger(__name__)

TOKEN_FILE_MODE = 0o640


class OutputError(FreshtokenError):
    """One or more output files could not be written; the new token is safe in the state."""


def token_paths(token_dir: Path, account: str) -> tuple[Path, Path]:
    return token_dir / f"{account}.token", token_dir / f"{account}.json"


def all_outputs(token_dir: Path, account: Account) -> list[Output]:
    token_file, json_file = token_paths(token_dir, account.name)
    return [
        # JSON first: `get` reads only the .json, so it sees the new token as early as possible.
        Output(path=json_file, format="json", mode=TOKEN_FILE_MODE),
        Output(path=token_file, format="raw", mode=TOKEN_FILE_MODE),
        *account.outputs,
    ]


def write_all(token_dir: Path, account: Account, token: AccessToken) -> None:
    """Write every file for `account`; try them all, then raise one OutputError naming the failures."""
    failures = []
    try:
        ensure_dir(token_dir, TOKEN_DIR_MODE)
        dir_ok = True
    except OSError as exc:
        # Still write the extra outputs: they may live elsewhere and work.
        failures.append(f"{token_dir}: {exc.strerror or exc}")
        dir_ok = False
    for output in all_outputs(token_dir, account):
        if not dir_ok and output.path.parent == token_dir:
            continue
        data = render(output.format, token, account.name, output.name)
        try:
            atomic_write(output.path, data, output.mode, output.group)
        except (OSError, LookupError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            failures.append(f"{output.path}: {reason}")
    if failures:
        raise OutputError("could not write " + "; ".join(failures))
