"""The faulty-provider run behind tests/test_resilience.py and bench/flaky.py.

The daemon runs against an in-process AuthServer that answers a share of
token requests with a random fault: 500, 502 (HTML), 503 (text), 429 with
Retry-After, a hang (longer than the daemon's read timeout, then 504) or a
connection reset. None of the faults changes a grant, so a correct daemon
never loses one. A reader samples the token files the whole time and asks
the server whether the token it read works at that moment.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness import AccountSpec, DaemonProcess, Sampler, wait_for, write_config

from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, FAULT_KINDS, AuthServer


@dataclass
class FlakyReport:
    accounts: int
    token_lifetime: float
    fault_rate: float
    window: float = 0.0
    first_tokens_after: float | None = None  # seconds from start until every account had a token file
    samples: int = 0
    valid: int = 0
    missing: int = 0
    torn: list[str] = field(default_factory=list)
    token_requests: int = 0
    refreshes_ok: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    reuse_count: int = 0
    exit_code: int | None = None
    longest_invalid_run: float = 0.0  # longest stretch of consecutive invalid samples of one account, seconds

    @property
    def valid_share(self) -> float:
        return self.valid / self.samples if self.samples else 0.0

    @property
    def failures(self) -> int:
        return sum(self.faults.values())

    @property
    def minimum_needed(self) -> int:
        """Refreshes that no daemon could do without: one token per lifetime per account, plus the first."""
        return self.accounts * (1 + math.ceil(self.window / self.token_lifetime))

    @property
    def request_ratio(self) -> float:
        """Token requests per (minimum needed + failed attempts); 2 is the budget."""
        return self.token_requests / (self.minimum_needed + self.failures)

    def summary(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        return (
            f"{self.accounts} accounts, {self.token_lifetime:g}s tokens, fault rate {self.fault_rate:.0%}, "
            f"{self.window:.0f}s window: valid share {self.valid_share:.4f} ({self.valid}/{self.samples} samples, "
            f"{self.missing} missing, {len(self.torn)} torn), longest invalid run {self.longest_invalid_run:.2f}s; "
            f"token requests {self.token_requests} = {self.refreshes_ok} ok + {self.failures} faults ({faults}); "
            f"minimum needed {self.minimum_needed}; requests/(minimum+failures) {self.request_ratio:.2f}; "
            f"reuse {self.reuse_count}; exit {self.exit_code}"
        )


def flaky_run(
    workdir: Path,
    *,
    duration: float,
    accounts: int = 3,
    token_lifetime: float = 3.0,
    fault_rate: float = 0.3,
    fault_hang: float = 2.0,
    fault_kinds: tuple[str, ...] = FAULT_KINDS,
    settings: dict[str, object] | None = None,
    seed: int = 0,
    sample_interval: float = 0.01,
    env: dict[str, str] | None = None,
) -> FlakyReport:
    """Run the daemon for `duration` seconds after every account has its first token; return the figures."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    # min_refresh_interval 1 s: the default 10 s floor would hold 3-4 s tokens expired most of the time.
    settings = {"read_timeout": 1, "connect_timeout": 1, "backoff_max": 3, "min_refresh_interval": 1, **(settings or {})}
    report = FlakyReport(accounts=accounts, token_lifetime=token_lifetime, fault_rate=fault_rate)
    rng = random.Random(seed)  # noqa: S311 - seeded simulation, not secrets
    server = AuthServer(
        token_lifetime=token_lifetime,
        fault_rate=fault_rate,
        fault_kinds=fault_kinds,
        fault_hang=fault_hang,
        rng=random.Random(rng.random()),  # noqa: S311 - seeded simulation, not secrets
        request_log_size=1000,
    )
    names = [f"acct{i}" for i in range(accounts)]
    token_dir = workdir / "tokens"
    with server:
        specs = {n: AccountSpec(server.token_url, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, server.issue_refresh_token()) for n in names}
        config = write_config(
            workdir / "freshtoken.yaml", state_dir=workdir / "state", token_dir=token_dir, accounts=specs, settings=settings
        )
        with DaemonProcess(config, workdir / "daemon.log", env=env) as daemon:
            started = time.monotonic()
            if wait_for(lambda: all((token_dir / f"{n}.token").exists() for n in names), timeout=60, poll=0.005):
                report.first_tokens_after = time.monotonic() - started
            sampler = InvalidRunSampler(
                token_dir,
                names,
                server.is_valid_access_token,
                interval=sample_interval,
                rng=random.Random(rng.random()),  # noqa: S311 - seeded simulation, not secrets
            )
            window_start = time.monotonic()
            sampler.start()
            time.sleep(duration)
            stats = sampler.stop()
            report.window = time.monotonic() - window_start
            report.exit_code = daemon.stop()
        report.samples, report.valid, report.missing, report.torn = stats.samples, stats.valid, stats.missing, stats.torn
        report.longest_invalid_run = sampler.longest_invalid_run
        report.token_requests = server.token_requests
        report.refreshes_ok = server.refreshes_ok
        report.faults = dict(Counter(server.faults))
        report.reuse_count = server.reuse_count
    return report


class InvalidRunSampler(Sampler):
    """A Sampler that also measures, per account, the longest stretch between a failed and the next good sample."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._bad_since: dict[str, float] = {}
        self.longest_invalid_run = 0.0

    def sample_once(self) -> None:
        account = self.rng.choice(self.accounts)
        valid_before = self.stats.valid
        counted_before = self.stats.samples
        self._sample(account)
        if self.stats.samples == counted_before:
            return  # torn: recorded by the base class
        now = time.monotonic()
        if self.stats.valid > valid_before:
            since = self._bad_since.pop(account, None)
            if since is not None:
                self.longest_invalid_run = max(self.longest_invalid_run, now - since)
        else:
            self._bad_since.setdefault(account, now)

    def stop(self):  # type: ignore[no-untyped-def]
        stats = super().stop()
        now = time.monotonic()
        for since in self._bad_since.values():
            self.longest_invalid_run = max(self.longest_invalid_run, now - since)
        return stats
