"""Durations as the config writes them: an integer of seconds, or 30s / 5m / 1h / 1d."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = 36500 * 86400  # 100 years: beyond it, epoch arithmetic (now + d, float(d)) can overflow
_PATTERN = re.compile(r"\s*(\d+)\s*([smhd]?)\s*", re.ASCII)  # ASCII: \d would take "１２" too


def parse_duration(value: object) -> int:
    """Seconds in `value`; raises ValueError with a user-facing reason otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m, 1h or 1d, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return _at_most_max(value)
    if isinstance(value, str):
        match = _PATTERN.fullmatch(value)
        if match:
            return _at_most_max(int(match.group(1)) * _UNITS[match.group(2) or "s"])
        raise ValueError(f"{value!r} is not a duration (use seconds or 30s, 5m, 1h, 1d)")
    raise ValueError(f"expected a duration such as 30s, 5m, 1h or 1d, got {type(value).__name__}")


def _at_most_max(seconds: int) -> int:
    if seconds > MAX_DURATION:
        raise ValueError("a duration cannot be longer than 100 years (36500d)")
    return seconds


def format_duration(seconds: float) -> str:
    """Shortest exact form of `seconds` (whole seconds) in the largest unit that divides it."""
    whole = int(seconds)
    if whole < 0:
        return "-" + format_duration(-whole)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def humanize(seconds: float) -> str:
    """Approximate, for people: 59m 12s, 3h 5m, 179d."""
    whole = int(seconds)
    sign = "-" if whole < 0 else ""
    whole = abs(whole)
    if whole < 60:
        return f"{sign}{whole}s"
    if whole < 3600:
        return f"{sign}{whole // 60}m {whole % 60}s"
    if whole < 86400:
        return f"{sign}{whole // 3600}h {whole % 3600 // 60}m"
    return f"{sign}{whole // 86400}d {whole % 86400 // 3600}h"
