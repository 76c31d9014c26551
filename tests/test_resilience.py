"""Resilience: the real daemon against a provider that fails 30 % of token requests keeps tokens valid.

Faults are drawn from 500, 502 (HTML), 503 (text), 429 with Retry-After, a
hang longer than the read timeout (then 504) and a connection reset; none of
them changes a grant. Time is compressed: 4 s tokens give a 2 s margin, so
backoff_max is 1 s and the read timeout 1 s, which fits about two retries
into the margin, as the defaults (5 min backoff cap, 10 % margin) fit about
eight into the 6 min margin of a 1 h token. The long run is bench/flaky.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from flakykit import FlakyReport, flaky_run  # noqa: E402
from harness import clean_env  # noqa: E402

pytestmark = pytest.mark.slow

# Measured on the 2-core CI machine: 0.985-1.000 over six seeds (bench/RESULTS.md).
# With 3 s tokens and backoff_max 3 s only one retry fits into the margin: 0.81-0.91 measured.
MIN_VALID_SHARE = 0.95


@pytest.fixture(scope="module")
def flaky(tmp_path_factory: pytest.TempPathFactory) -> FlakyReport:
    """One 16 s run: 3 accounts, 4 s tokens, 30 % faults (2 s hangs), read_timeout 1 s, backoff_max 1 s."""
    workdir = tmp_path_factory.mktemp("flaky")
    report = flaky_run(
        workdir / "run",
        duration=16,
        accounts=3,
        token_lifetime=4,
        fault_rate=0.3,
        fault_hang=2,
        settings={"read_timeout": 1, "connect_timeout": 1, "backoff_max": 1},
        seed=7,
        env=clean_env(workdir),
    )
    print(report.summary())
    return report


def test_tokens_stay_valid_through_thirty_percent_faults(flaky: FlakyReport) -> None:
    """At least 95 % of reader samples hold a token the server accepts at that moment, and none is torn."""
    assert flaky.first_tokens_after is not None and flaky.first_tokens_after < 10
    assert flaky.samples > 1000
    assert flaky.torn == []
    assert flaky.missing == 0
    assert flaky.valid_share >= MIN_VALID_SHARE, flaky.summary()


def test_faults_cost_no_grant_and_stop_cleanly(flaky: FlakyReport) -> None:
    """Retries after 5xx, 429, hangs and resets never spend a refresh token twice; SIGTERM still exits 0."""
    assert flaky.failures > 0
    assert flaky.reuse_count == 0
    assert flaky.exit_code == 0


def test_retries_do_not_storm_the_provider(flaky: FlakyReport) -> None:
    """Token requests stay within twice the minimum needed plus the failed attempts."""
    assert flaky.token_requests <= 2 * (flaky.minimum_needed + flaky.failures), flaky.summary()
