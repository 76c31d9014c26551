"""Test doubles that are not mocks: a clock tests move by hand, and a bounded wait for a condition."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def poll(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> bool:
    """True as soon as `predicate()` holds, False once `timeout` seconds passed: waits on a condition, never a guess."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class FakeClock:
    """Epoch seconds that only move when a test says so. Callable, like time.time."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
