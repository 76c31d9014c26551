"""Test doubles that are not mocks: a clock tests move by hand."""

from __future__ import annotations


class FakeClock:
    """Epoch seconds that only move when a test says so. Callable, like time.time."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
