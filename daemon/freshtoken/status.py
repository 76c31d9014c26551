"""`status` and `check-config`: what the state says and what the config would do. Never a secret."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from freshtoken.durations import format_duration, humanize
from freshtoken.errors import FreshtokenError, StateUnusable
from freshtoken.fsutil import ensure_dir, probe_writable, resolve_group
from freshtoken.model import Account, AccountState, Config, Grant, apply_seed
from freshtoken.outputs import all_outputs
from freshtoken.store import STATE_DIR_MODE, read_state_file
from freshtoken.timing import REFRESH_TOKEN_WARNING, expiring_soon, refresh_margin, token_state


class Unusable(ValueError):
    """A state file the current code cannot use; the message is safe to show (it names no value)."""


def describe(config: Config, now: float | None = None) -> list[dict[str, Any]]:
    """One row per account, from the state dir alone (no network, no lock, no writes).

    Whatever one account's state file holds, its row says so (state `error`) and the others go on.
    """
    import time

    now = time.time() if now is None else now
    rows = []
    for account in config.accounts.values():
        path = config.state_dir / f"{account.name}.json"
        try:
            rows.append(_describe_one(config, account, read_state(path), now))
        except Denied as exc:
            # A reader in the token dir's group (the system install): the state is the service's, the token file is ours.
            rows.append(_from_token_file(config, account, now) or _error_row(config, account, str(exc)))
        except Exception as exc:  # noqa: BLE001 (one odd state file must not hide the other accounts)
            reason = str(exc) if isinstance(exc, Unusable | FreshtokenError) else f"{path} cannot be used ({type(exc).__name__})"
            rows.append(_error_row(config, account, reason))
    return rows


class Denied(Unusable):
    """The state file exists, but this user may not read it."""


def _from_token_file(config: Config, account: Account, now: float) -> dict[str, Any] | None:
    """A row from the token dir's `<account>.json` (which the readers' group may read), or None when that cannot be read either.

    It knows the access token's expiry only; its state reads `fresh (from the token file)` in the table.
    """
    from freshtoken.getcmd import read_token
    from freshtoken.timing import DEFAULT_LIFETIME, effective_margin

    if "token_dir" in config.unresolved:
        return None
    path = config.token_dir / f"{account.name}.json"
    try:
        written = path.stat().st_mtime
        expires_at = read_token(str(path), account.name)[2]
    except (OSError, FreshtokenError):
        return None
    # The file is rewritten at each refresh: its age stands in for the token's lifetime, which sets the default margin.
    lifetime = expires_at - written if expires_at > written else DEFAULT_LIFETIME
    margin = effective_margin(config.margin_for(account), lifetime)
    row = _error_row(config, account, "")
    del row["error"]
    row.update(
        state=token_state(expires_at, margin, now=now),
        from_token_file=True,
        expires_at=int(expires_at),
        expires_in=int(expires_at - now),
    )
    return row


def read_state(path: Path) -> AccountState:
    """The stored state, read-only: a damaged file is reported (Unusable), never moved."""
    try:
        return read_state_file(path)
    except StateUnusable as exc:
        raise Unusable(str(exc)) from None
    except PermissionError:
        raise Denied(f"cannot read {path}: permission denied ({_owner_hint(path.parent)})") from None
    except OSError as exc:
        raise Unusable(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def _owner_hint(directory: Path) -> str:
    """A reader of the system install is not the daemon's user: say whose state it is and how to read the token."""
    import pwd

    try:
        owner = pwd.getpwuid(directory.stat().st_uid).pw_name
    except (OSError, KeyError):
        owner = "the daemon's user"
    return f"the state belongs to {owner}: `sudo -u {owner} freshtoken status`; `freshtoken get` reads the token itself"


def _describe_one(config: Config, account: Account, state: AccountState, now: float) -> dict[str, Any]:
    if not (f"accounts.{account.name}.refresh_token" in config.unresolved and state.refresh_token is not None):
        # A ${VAR} seed left unexpanded (status runs without the secrets) says nothing about the stored
        # token: comparing its text with the state's seed would wrongly see a new seed and restart its clock.
        state = apply_seed(account, state, now)
    access = state.access
    margin = refresh_margin(config.margin_for(account), state)
    condition = token_state(access.expires_at if access else None, margin, now=now)
    needs_login = state.needs_login or (account.grant == Grant.REFRESH_TOKEN and state.refresh_token is None)
    if needs_login:
        condition = "needs-login"
    rt_left = state.refresh_token_expires_at - now if state.refresh_token_expires_at else None
    return {
        "account": account.name,
        "state": condition,
        "expires_at": int(access.expires_at) if access else None,
        "expires_in": int(access.expires_at - now) if access else None,
        "last_refresh": state.last_refresh,
        "refresh_token_obtained_at": state.refresh_token_obtained_at,
        "refresh_token_expires_at": state.refresh_token_expires_at,
        "refresh_token_expires_in": int(rt_left) if rt_left is not None else None,
        "refresh_token_expiring_soon": expiring_soon(state.refresh_token_expires_at, now=now),
        "last_error": state.last_error,
        "last_error_at": state.last_error_at,
        "has_refresh_token": state.refresh_token is not None,
        "login_command": f"freshtoken login {account.name}" if needs_login else None,
        "state_file": str(config.state_dir / f"{account.name}.json"),
        "token_file": _token_file(config, account),
    }


def _token_file(config: Config, account: Account) -> str | None:
    return None if "token_dir" in config.unresolved else str(config.token_dir / f"{account.name}.json")


def _error_row(config: Config, account: Account, reason: str) -> dict[str, Any]:
    return {
        "account": account.name,
        "state": "error",
        "error": reason,
        "expires_at": None,
        "expires_in": None,
        "last_refresh": None,
        "refresh_token_obtained_at": None,
        "refresh_token_expires_at": None,
        "refresh_token_expires_in": None,
        "refresh_token_expiring_soon": False,
        "last_error": None,
        "last_error_at": None,
        "has_refresh_token": None,
        "login_command": None,
        "state_file": str(config.state_dir / f"{account.name}.json"),
        "token_file": _token_file(config, account),
    }


def render_header(config: Config, daemon: dict[str, Any] | None = None, now: float | None = None) -> str:
    """Which files `status` read (a reader of the system install must see that it looks at the service's dirs), and the daemon."""
    token_dir = "- (not set: see the warning)" if "token_dir" in config.unresolved else str(config.token_dir)
    text = f"config     {config.file}\nstate dir  {config.state_dir}\ntoken dir  {token_dir}\n"
    if daemon is not None:
        text += f"daemon     {describe_daemon(daemon, now)}\n"
    return text


# ---------------------------------------------------------------- is a daemon running?

PID_FILE = "daemon.pid"  # store.DaemonLock: flock'ed by the running daemon, which wrote its pid there
HEARTBEAT_FILE = "daemon.heartbeat"  # the daemon touches it at start and at every heartbeat: its mtime is the last one


def daemon_status(state_dir: Path) -> dict[str, Any]:
    """Whether a daemon holds this state dir's lock: its pid, start time and last heartbeat (epoch seconds).

    Looks only: the lock is found in /proc/locks (taking it, even for a moment, could make a starting
    daemon fail), no signal is sent, nothing is written. `running` is None when it cannot be told.
    """
    pid_file = state_dir / PID_FILE
    found: dict[str, Any] = {"running": False, "pid": None, "since": None, "last_heartbeat": None, "pid_file": str(pid_file)}
    try:
        with open(pid_file, "rb") as handle:
            info = os.fstat(handle.fileno())
            text = handle.read(32).decode("ascii", "replace").strip()
    except FileNotFoundError:
        return found  # no daemon ever ran here
    except OSError as exc:
        return {**found, "running": None, "error": f"cannot read {pid_file}: {exc.strerror or type(exc).__name__}"}
    written = int(text) if text.isdigit() else None
    try:
        holders = _flock_holders(info.st_dev, info.st_ino, written)
    except OSError as exc:
        return {**found, "running": None, "error": f"cannot read /proc/locks: {exc.strerror or type(exc).__name__}"}
    if not holders:
        return found  # a pid file left behind: its daemon has stopped
    # The pid the daemon wrote, if it holds the lock; else the holder /proc/locks names (the file may be mid-write).
    pid = written if written in holders else holders[0]
    found.update(running=True, pid=pid, since=_process_start(pid))
    try:
        beat = (state_dir / HEARTBEAT_FILE).stat().st_mtime
    except OSError:
        beat = None
    # A heartbeat file older than this daemon was left by an earlier one.
    found["last_heartbeat"] = beat if beat is not None and (found["since"] is None or beat >= found["since"] - 1) else None
    return found


def _flock_holders(dev: int, ino: int, written: int | None) -> list[int]:
    """Pids that hold a lock on the file (dev, ino), from /proc/locks.

    Lines read `1: FLOCK  ADVISORY  WRITE 4242 fe:00:2146395 0 EOF` (`->` marks a waiter). On a stacked
    file system (overlayfs) the lock may sit on the lower inode's device: then the inode number and the
    pid the daemon wrote must both agree.
    """
    with open("/proc/locks") as handle:
        lines = handle.read().splitlines()
    ours = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    holders = []
    for line in lines:
        words = line.split()
        if len(words) < 6 or words[1] == "->" or not words[4].lstrip("-").isdigit():
            continue
        pid, where = int(words[4]), words[5]
        if where == ours or (where.rsplit(":", 1)[-1] == str(ino) and pid == written):
            holders.append(pid)
    return holders


def _process_start(pid: int) -> float | None:
    """When process `pid` started (epoch seconds), from /proc/<pid>/stat and the boot time; None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()  # after the command name, which may hold blanks
        with open("/proc/stat") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks since boot
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def describe_daemon(daemon: dict[str, Any], now: float | None = None) -> str:
    """The header's daemon line: `running, pid 4242, since ..., last heartbeat ... (12s ago)`, `not running`, or why unknown."""
    import time

    now = time.time() if now is None else now
    if daemon["running"] is None:
        return f"unknown ({daemon.get('error', 'cannot tell')})"
    if not daemon["running"]:
        return "not running"
    parts = [f"running, pid {daemon['pid']}"]
    if daemon["since"] is not None:
        parts.append(f"since {_when(daemon['since'])}")
    beat = daemon["last_heartbeat"]
    parts.append(f"last heartbeat {_when(beat)} ({humanize(max(0.0, now - beat))} ago)" if beat is not None else "no heartbeat yet")
    return ", ".join(parts)


def render_table(rows: list[dict[str, Any]]) -> str:
    header = ("ACCOUNT", "STATE", "EXPIRES IN", "LAST REFRESH", "REFRESH TOKEN", "LAST ERROR")
    lines = [header]
    for row in rows:
        if row["state"] == "error":
            lines.append((row["account"], "error", "?", "?", "?", _printable(row["error"])))
            continue
        if row.get("from_token_file"):
            expires = humanize(row["expires_in"]) if row["expires_in"] > 0 else "-"
            lines.append((row["account"], f"{row['state']} (from the token file)", expires, "?", "?", "-"))
            continue
        rt = row["refresh_token_expires_in"]
        if not row["has_refresh_token"]:
            rt_text = "none"
        else:
            rt_text = "expiry unknown" if rt is None else (f"expires in {humanize(rt)}" if rt > 0 else "expired")
        if row["refresh_token_expiring_soon"]:
            rt_text += " (log in again soon)"
        lines.append(
            (
                row["account"],
                row["state"],
                humanize(row["expires_in"]) if row["expires_in"] is not None else "-",
                _when(row["last_refresh"]) + (f" by {row['last_refresh_host']}" if row.get("last_refresh_host") else ""),
                rt_text,
                _shorten(_printable(row["last_error"] or "-"), 80),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)
    hints = [f"{row['account']}: run `{row['login_command']}`" for row in rows if row["login_command"]]
    if any(row.get("from_token_file") for row in rows):
        hints.append("(the state dir is the service's and not readable here: the rows marked so show the token file's expiry only)")
    return "\n".join([text, *hints])


def _printable(text: str) -> str:
    """State files are text from outside: no escape sequence or newline reaches the terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(epoch: float | None) -> str:
    if not epoch:
        return "never"
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def validate(config: Config) -> None:
    """What the daemon needs beyond a well-formed file: writable dirs, existing groups, the metrics library.

    `check-config` and `run` both call this, so `run` refuses (exit 78) exactly what `check-config` refuses.
    Creates the state and token dirs as the daemon would; raises ConfigError naming the key.
    """
    _probe(config, "state_dir", config.state_dir, create_mode=STATE_DIR_MODE)
    _probe(config, "token_dir", config.token_dir, create_mode=0o750)
    for account in config.accounts.values():
        for index, output in enumerate(account.outputs):
            _probe(config, f"accounts.{account.name}.outputs[{index}].path", output.path.parent, create_mode=None)
            _check_group(config, f"accounts.{account.name}.outputs[{index}].group", output.group)
    if config.metrics_listen:
        try:
            import freshtoken.metrics  # noqa: F401 (the import is the check: prometheus_client installed and working)
        except ImportError:
            raise config.error(
                "metrics_listen",
                "needs prometheus_client, which is not installed (or cannot be imported): pip install 'freshtoken[metrics]'",
            ) from None


def check_config(config: Config) -> str:
    """validate() the config; return the plan, or raise ConfigError."""
    validate(config)
    lines = [f"config {config.file}: OK", f"state dir  {config.state_dir}", f"token dir  {config.token_dir}"]
    if config.metrics_listen:
        lines.append(f"metrics    http://{config.metrics_listen[0]}:{config.metrics_listen[1]}/metrics")
    if config.shared_state:
        from freshtoken.pgstore import redact  # MissingExtra (exit 78) without psycopg, as `run` would say

        where = redact(config.shared_state.reveal())
        lines.append(f"shared state  PostgreSQL {where} (not contacted by check-config; the state dir keeps the daemon lock only)")
        for name, template in config.templates.items():
            lines.append(f"template {name}: users' grants are rows {name}/USER, refreshed at {public_url(template.token_url)}")
    for account in config.accounts.values():
        margin = config.margin_for(account)
        lines.append("")
        lines.append(f"account {account.name}")
        lines.append(f"  {account.grant} grant at {public_url(account.token_url)} (client {account.client_id}, auth {account.client_auth})")
        if account.grant == Grant.REFRESH_TOKEN and account.authorize_url:
            lines.append(f"  login at {public_url(account.authorize_url)} (redirect {public_url(account.redirect_uri)})")
        lines.append(
            "  refresh "
            + (f"{format_duration(margin)} before expiry" if margin is not None else "10 % of the lifetime (30s to half) before expiry")
        )
        if account.refresh_token_lifetime:
            lives, warns = format_duration(account.refresh_token_lifetime), format_duration(REFRESH_TOKEN_WARNING)
            lines.append(f"  refresh token lives {lives}; warns {warns} before")
        for output in all_outputs(config.token_dir, account):
            group = f" group {output.group}" if output.group is not None else ""
            lines.append(f"  writes {output.path} ({output.format}, {oct(output.mode)[2:].zfill(4)}{group})")
        if account.on_refresh:
            lines.append(f"  then runs {' '.join(account.on_refresh)}")
    return "\n".join(lines)


def public_url(url: str) -> str:
    """`url` without its `user:password@` part: check-config's output is meant to be pasted into tickets."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    # The authority ends at the first / ? or #, and its userinfo at its last @ (as urllib3 splits it).
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return f"{scheme}://{rest[:end].rpartition('@')[2]}{rest[end:]}"


def _probe(config: Config, key: str, directory: Path, create_mode: int | None) -> None:
    try:
        if create_mode is not None:
            ensure_dir(directory, create_mode)
        probe_writable(directory)
    except FileNotFoundError:
        raise config.error(key, f"directory {directory} does not exist") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise config.error(key, f"{directory} is not writable: {reason} (running as uid {os.geteuid()})") from None


def _check_group(config: Config, key: str, group: str | int | None) -> None:
    """The group must exist, and (unless root) we must be in it, or every write would fail later."""
    if group is None:
        return
    try:
        gid = resolve_group(group)
    except LookupError as exc:
        raise config.error(key, str(exc)) from None
    if os.geteuid() != 0 and gid != os.getegid() and gid not in os.getgroups():
        raise config.error(key, f"uid {os.geteuid()} is not in group {group!r}, so it cannot give files that group")
