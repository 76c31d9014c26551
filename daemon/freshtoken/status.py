"""`status` and `check-config`: what the state says and what the config would do. Never a secret."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from freshtoken.config import Config
from freshtoken.durations import format_duration, humanize
from freshtoken.fsutil import ensure_dir, probe_writable, resolve_group
from freshtoken.outputs import all_outputs
from freshtoken.refresh import apply_seed, lifetime
from freshtoken.store import STATE_DIR_MODE, Store
from freshtoken.timing import effective_margin, token_state

WARN_BEFORE_RT_EXPIRY = 14 * 86400


def describe(config: Config, now: float | None = None) -> list[dict[str, Any]]:
    """One row per account, from the state dir alone (no network, no lock, no writes)."""
    import time

    now = time.time() if now is None else now
    store = Store(config.state_dir)
    rows = []
    for account in config.accounts.values():
        state = apply_seed(account, store.load(account.name), now)
        access = state.access
        margin = effective_margin(config.margin_for(account), lifetime(state))
        condition = token_state(access.expires_at if access else None, margin, now=now)
        needs_login = state.needs_login or (account.grant == "refresh_token" and state.refresh_token is None)
        if needs_login:
            condition = "needs-login"
        rt_left = state.refresh_token_expires_at - now if state.refresh_token_expires_at else None
        rows.append(
            {
                "account": account.name,
                "state": condition,
                "expires_at": int(access.expires_at) if access else None,
                "expires_in": int(access.expires_at - now) if access else None,
                "last_refresh": state.last_refresh,
                "refresh_token_obtained_at": state.refresh_token_obtained_at,
                "refresh_token_expires_at": state.refresh_token_expires_at,
                "refresh_token_expires_in": int(rt_left) if rt_left is not None else None,
                "refresh_token_expiring_soon": rt_left is not None and rt_left < WARN_BEFORE_RT_EXPIRY,
                "last_error": state.last_error,
                "last_error_at": state.last_error_at,
                "has_refresh_token": state.refresh_token is not None,
                "login_command": f"freshtoken login {account.name}" if needs_login else None,
            }
        )
    return rows


def render_table(rows: list[dict[str, Any]]) -> str:
    header = ("ACCOUNT", "STATE", "EXPIRES IN", "LAST REFRESH", "REFRESH TOKEN", "LAST ERROR")
    lines = [header]
    for row in rows:
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
                _when(row["last_refresh"]),
                rt_text,
                _shorten(row["last_error"] or "-", 80),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)
    hints = [f"{row['account']}: run `{row['login_command']}`" for row in rows if row["login_command"]]
    return "\n".join([text, *hints])


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(epoch: float | None) -> str:
    if not epoch:
        return "never"
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def check_config(config: Config) -> str:
    """Probe every directory freshtoken will write to; return the plan, or raise ConfigError."""
    _probe(config, "state_dir", config.state_dir, create_mode=STATE_DIR_MODE)
    _probe(config, "token_dir", config.token_dir, create_mode=0o750)
    for account in config.accounts.values():
        for index, output in enumerate(account.outputs):
            _probe(config, f"accounts.{account.name}.outputs[{index}].path", output.path.parent, create_mode=None)
            _check_group(config, f"accounts.{account.name}.outputs[{index}].group", output.group)
    lines = [f"config {config.file}: OK", f"state dir  {config.state_dir}", f"token dir  {config.token_dir}"]
    if config.metrics_listen:
        lines.append(f"metrics    http://{config.metrics_listen[0]}:{config.metrics_listen[1]}/metrics")
    for account in config.accounts.values():
        margin = config.margin_for(account)
        lines.append("")
        lines.append(f"account {account.name}")
        lines.append(f"  {account.grant} grant at {account.token_url} (client {account.client_id}, auth {account.client_auth})")
        lines.append(
            "  refresh "
            + (f"{format_duration(margin)} before expiry" if margin is not None else "10 % of the lifetime (30s to half) before expiry")
        )
        if account.refresh_token_lifetime:
            lines.append(f"  refresh token lives {format_duration(account.refresh_token_lifetime)}; warns 14d before")
        for output in all_outputs(config.token_dir, account):
            group = f" group {output.group}" if output.group is not None else ""
            lines.append(f"  writes {output.path} ({output.format}, {oct(output.mode)[2:].zfill(4)}{group})")
        if account.on_refresh:
            lines.append(f"  then runs {' '.join(account.on_refresh)}")
    return "\n".join(lines)


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
