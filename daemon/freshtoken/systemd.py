"""systemd integration: sd_notify, the watchdog interval, journal-aware log handlers (plain or JSON lines).

Stdlib only; functions take the environment as a parameter, do nothing outside systemd.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timezone
from typing import TextIO

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "JournalFormatter",
    "make_log_handler",
    "notify",
    "reloading",
    "stderr_is_journal",
    "syslog_priority",
    "watchdog_interval",
]

HUMAN_FORMAT = "%(asctime)s %(levelname)s %(message)s"
LOG_FORMATS = ("plain", "json")


def _payload(message: str | Mapping[str, object]) -> bytes:
    if isinstance(message, str):
        return message.encode()
    # One field per line: a newline inside a value would forge another field.
    return "\n".join(f"{key}={' '.join(str(value).splitlines())}" for key, value in message.items()).encode()


def notify(message: str | Mapping[str, object], *, environ: Mapping[str, str] = os.environ) -> bool:
    """Send one sd_notify datagram: ``"READY=1"`` or ``{"READY": 1, "STATUS": "ok"}``.

    ``$NOTIFY_SOCKET`` is a path or, with a leading ``@``, a Linux abstract socket.
    Returns True when the datagram was sent; False when the variable is unset or
    sending failed (never raises for socket errors: a lost status is not fatal).
    """
    address = environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(_payload(message), address)
    except OSError:
        return False
    return True


def reloading(environ: Mapping[str, str] = os.environ, *, status: str | None = None) -> bool:
    """Say a reload began (RELOADING=1 with MONOTONIC_USEC); send READY=1 when done."""
    fields: dict[str, object] = {
        "RELOADING": 1,
        "MONOTONIC_USEC": time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000,
    }
    if status is not None:
        fields["STATUS"] = status
    return notify(fields, environ=environ)


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half ``$WATCHDOG_USEC``); None if not ours."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
        owner = environ.get("WATCHDOG_PID")
        if owner is not None and int(owner) != os.getpid():
            return None
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


def stderr_is_journal(environ: Mapping[str, str] = os.environ, fd: int = 2) -> bool:
    """True when ``fd`` is the very stream ``$JOURNAL_STREAM`` (``dev:ino``) names.

    Being set is not enough: a child of a journald-logged service inherits the
    variable even when its stderr goes elsewhere.
    """
    dev, sep, ino = environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


def syslog_priority(levelno: int) -> int:
    """Syslog priority of a level: DEBUG 7, INFO 6, WARNING 4, ERROR 3, CRITICAL 2."""
    for threshold, priority in (
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
    ):
        if levelno >= threshold:
            return priority
    return 7


class JournalFormatter(logging.Formatter):
    """Prefixes every line with ``<N>`` (journald reads it per line); no timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        lines = super().format(record).splitlines() or [""]
        return "\n".join(prefix + line for line in lines)


# The canonical lines: `refreshed account=NAME expires_in=3599s rotated=no`, an optional event word then key=value pairs.
_CANONICAL = re.compile(r"(?:([a-z_]+) )?(account=.*)", re.DOTALL)
_PAIR = re.compile(r"(\w+)=(.*?)(?= \w+=|$)", re.DOTALL)  # a value runs to the next ` key=` (a scope may hold blanks)
_SECONDS = re.compile(r"-?\d+s?")
# `NAME: what happened` and `hook for NAME ...`: the account a free-text line is about, when NAME is one.
_ABOUT = re.compile(r"(?:hook for )?([^\s:]+)[: ]")
_RESERVED = frozenset({"time", "level", "logger", "message"})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message, and the account when there is one.

    Only the formatted message goes out, never the record's args: the messages are written to be
    secret-free, the args are not. A canonical `event account=... key=value` line also gives its
    pairs as fields (integers for counts and `...s` durations, true/false for yes/no).
    `accounts()` names the configured accounts, so that `NAME: ...` lines get their account too.
    """

    def __init__(self, accounts: Callable[[], Collection[str]] = frozenset, *, journal: bool = False) -> None:
        super().__init__()
        self.accounts = accounts
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        for key, value in self.fields(record, message).items():
            entry.setdefault(key, value)
        if record.exc_info:  # what the plain format shows too (-vv only: internal errors log their traceback at DEBUG)
            entry["traceback"] = self.formatException(record.exc_info)
        line = json.dumps(entry)  # escapes newlines and control characters: one record, one line
        # In the journal the <N> prefix sets the priority; journald strips it, MESSAGE stays pure JSON.
        return f"<{syslog_priority(record.levelno)}>{line}" if self.journal else line

    def fields(self, record: logging.LogRecord, message: str) -> dict[str, object]:
        canonical = _CANONICAL.fullmatch(message)
        if canonical:
            fields: dict[str, object] = {"event": canonical[1]} if canonical[1] else {}
            for key, value in _PAIR.findall(canonical[2]):
                if key not in _RESERVED:
                    fields[key] = value if key == "account" else _value(value)
            return fields
        account = getattr(record, "account", None)
        if isinstance(account, str):
            return {"account": account}
        about = _ABOUT.match(message)
        if about and about[1] in self.accounts():
            return {"account": about[1]}
        return {}


def _value(text: str) -> object:
    if _SECONDS.fullmatch(text) and len(text) < 20:
        return int(text.rstrip("s"))
    return {"yes": True, "no": False}.get(text, text)


def make_log_handler(
    environ: Mapping[str, str] = os.environ,
    stream: TextIO | None = None,
    *,
    log_format: str = "plain",
    accounts: Callable[[], Collection[str]] = frozenset,
) -> logging.Handler:
    """A log handler on ``stream`` (default: the current ``sys.stderr``).

    ``plain``: journal style (priority prefix, no timestamp) when the stream is the journal,
    otherwise timestamp, level and message. ``json``: JsonFormatter lines (priority-prefixed in the journal).
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    stream = sys.stderr if stream is None else stream
    try:
        journal = stderr_is_journal(environ, stream.fileno())
    except (OSError, ValueError):  # io.UnsupportedOperation: no fd behind the stream
        journal = False
    handler = logging.StreamHandler(stream)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(accounts, journal=journal))
    else:
        handler.setFormatter(JournalFormatter() if journal else logging.Formatter(HUMAN_FORMAT))
    return handler
