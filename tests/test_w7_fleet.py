"""CI short forms of the several-hosts benchmarks (bench/pgfleet.py, bench/pgstall_daemon.py): real daemons on one PostgreSQL.

Each runs its own private cluster (fsync off: tests/pgcluster.py's throwaway settings), so
that restarting it cannot disturb the session's shared one. The figures' definitions are in
the benchmarks' docstrings; here only the goals are asserted, never a wall-clock figure.
"""

# ruff: noqa: F811  (pytest fixtures imported from pgcluster are parameters here)

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install '.[postgres]')")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from pgfleet import FleetOptions, run_fleet, summary  # noqa: E402
from pgstall_daemon import run_stall  # noqa: E402

import pgcluster  # noqa: E402
from freshtoken.errors import TemporaryError  # noqa: E402
from freshtoken.model import AccountState, Secret  # noqa: E402
from freshtoken.pgstore import PgStore  # noqa: E402
from freshtoken.statestore import SaveFailed  # noqa: E402
from pgcluster import pg_cluster, pg_dsn  # noqa: E402, F401  (fixtures)

# Extra token requests allowed over 1.05 x the minimum, per account: one. A redundant refresh
# happens when a host's run, woken by another host's NOTIFY, takes the row lock so late (a
# database restart, a loaded machine) that the token it finds is already inside the skip
# threshold (timing.skip_threshold); it spends the new refresh token once, correctly, but it is
# a request the schedule did not need.
EXTRA_PER_ACCOUNT = 1


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[pgcluster.PgCluster]:
    """A cluster of this module's own, since the fleet test restarts it."""
    cluster = pgcluster.start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.slow
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_three_daemons_killed_and_a_database_restart_spend_no_refresh_token_twice(tmp_path: Path, own_cluster: pgcluster.PgCluster) -> None:
    """3 daemons x 10 accounts x 10 s tokens for 45 s, 4 SIGKILLs + restarts and a PostgreSQL restart: no reuse, every sample valid.

    Kills land outside the lost-response window (pgfleet's outside-window mode: the victim is
    stopped and looked at first); samples start once every host's start-up pass has written
    valid tokens, and go on through every kill and the restart.
    """
    options = FleetOptions(hosts=3, accounts=10, lifetime=10, duration=45, kill_every=10, pg_restart_at=25, sample_interval=0.02)
    report = run_fleet(tmp_path, options, own_cluster)
    print(summary(report))
    assert len(report.kills) == 4 and report.pg_restart
    assert not [k for k in report.kills if k.forced]
    assert (report.reuse, report.revoked_accounts, report.stale_rows) == (0, 0, 0)
    for host, samples in report.samples.items():
        assert samples["samples"] > 0 and samples["valid"] == samples["samples"] and samples["torn"] == 0, (host, samples)
    assert report.requests <= 1.05 * report.minimum + EXTRA_PER_ACCOUNT * options.accounts, summary(report)
    assert all(codes[-1] == 0 for codes in report.daemon_exits.values()), report.daemon_exits  # SIGTERM at the end: a clean stop


def test_an_error_saved_under_a_live_hosts_unsaved_attempt_leaves_the_attempt(pg_dsn: str) -> None:
    """A host that meets a live host's unsaved attempt cannot save its error over it: the next holder still finds the attempt and waits."""
    with PgStore(pg_dsn, host="a") as a, PgStore(pg_dsn, host="b") as b:
        with b.transaction("team") as tx:
            tx.save(AccountState(refresh_token=Secret("r1")))
        with a.transaction("team") as stalled:
            stalled.before_send()  # a's attempt is committed; a's lock then goes, its process (presence) lives on
        with b.transaction("team") as tx:
            with pytest.raises(TemporaryError, match="waiting for it"):
                tx.before_send()
            with pytest.raises(SaveFailed, match="a's refresh of this version is not saved yet"):
                tx.save(tx.state.with_error("waiting for a", time.time()))
        with b.transaction("team") as tx:
            assert tx.attempt is not None and tx.attempt.host == "a" and tx.version == 1
            with pytest.raises(TemporaryError, match="waiting for it"):
                tx.before_send()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_daemon_frozen_past_its_lock_while_another_takes_over_spends_nothing_twice(tmp_path: Path) -> None:
    """A real daemon SIGSTOPped past its lock's life, before its send and inside its request: the other daemon never resends its token."""
    trials = {t.point: t for t in run_stall(tmp_path, trials=1, idle=4.0, delay=2.0, durable=False)}
    before, inside = trials["before-send"], trials["in-request"]
    # Frozen holding the lock before the send: B takes over once the server ends A's session, refreshes, and A sends nothing.
    assert (before.double_spends, before.outcome, before.grant_lost, before.a_requests_after_cont) == (0, "settled", False, 0), before
    assert before.b_requests_while_frozen == 1, before
    # Frozen inside the request: B meets A's attempt and waits rather than send the token A may have spent.
    assert inside.hit, inside
    assert (inside.double_spends, inside.b_requests_while_frozen) == (0, 0), inside
