"""What readers see: the token dir's own files and the configured extra outputs."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from freshtoken.errors import OutputError as OutputError  # re-exported: callers catch outputs.OutputError
from freshtoken.formats import render
from freshtoken.fsutil import TOKEN_DIR_MODE, Owner, atomic_write, ensure_dir, owner_as_root
from freshtoken.model import AccessToken, Account, Output, OutputFormat

log = logging.getLogger(__name__)

TOKEN_FILE_MODE = 0o640

_warned: set[Path] = set()  # token dirs already warned about: once per process is enough
_warned_lock = threading.Lock()


def token_paths(token_dir: Path, account: str) -> tuple[Path, Path]:
    return token_dir / f"{account}.token", token_dir / f"{account}.json"


def all_outputs(token_dir: Path, account: Account) -> list[Output]:
    token_file, json_file = token_paths(token_dir, account.name)
    return [
        # JSON first: `get` reads only the .json, so it sees the new token as early as possible.
        Output(path=json_file, format=OutputFormat.JSON, mode=TOKEN_FILE_MODE),
        Output(path=token_file, format=OutputFormat.RAW, mode=TOKEN_FILE_MODE),
        *account.outputs,
    ]


def write_all(token_dir: Path, account: Account, token: AccessToken) -> None:
    """Write every file for `account` (none without local_files); try them all, then raise one OutputError naming the failures."""
    if not account.local_files:
        return
    failures = []
    try:
        ensure_dir(token_dir, TOKEN_DIR_MODE)
        warn_if_open(token_dir)
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
            atomic_write(output.path, data, output.mode, output.group, owner=_owner(output.path.parent))
        except (OSError, LookupError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            failures.append(f"{output.path}: {reason}")
    if failures:
        raise OutputError("could not write " + "; ".join(failures))


def remove_all(token_dir: Path, account: Account) -> tuple[list[Path], list[str]]:
    """Delete every file written for `account` (`logout`): the paths removed, and "path: reason" for each that could not be."""
    removed, failures = [], []
    for output in all_outputs(token_dir, account):
        try:
            os.unlink(output.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            failures.append(f"{output.path}: {exc.strerror or exc}")
            continue
        removed.append(output.path)
    return removed, failures


def warn_if_open(token_dir: Path) -> None:
    """Log once if every user may list or write the token dir (e.g. 0755 or 1777; 0750 is the default).

    The files are 0640, but a world-writable dir lets anyone plant files, and a
    world-readable one shows every account's name: this is a setup to fix.
    """
    mode = os.stat(token_dir).st_mode & 0o7777
    if not mode & 0o006:
        return
    with _warned_lock:
        if token_dir in _warned:
            return
        _warned.add(token_dir)
    what = "write to" if mode & 0o002 else "list"
    log.warning("token dir %s has mode %04o: every user can %s it; make it 0750 (chmod 0750 %s)", token_dir, mode, what, token_dir)


def _owner(directory: Path) -> Owner | None:
    """As root (a one-shot `sudo freshtoken refresh`), the new file keeps the directory's owner, so the daemon can still replace it."""
    if os.geteuid() != 0:
        return None
    try:
        return owner_as_root(os.stat(directory))
    except OSError:
        return None  # the write fails anyway and names the path
