"""The Prometheus endpoint: a real daemon's snapshot, real HTTP scrapes, parsed with prometheus_client's own parser."""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

import test_daemon
from fakes import FakeClock
from freshtoken.config import load
from freshtoken.daemon import Daemon
from freshtoken.metrics import MetricsServer, serve
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer
from test_daemon import run_until

own_signals = test_daemon.own_signals  # a fixture: Daemon.run installs signal handlers

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def make_daemon(write_config: Callable[..., Path], auth_server: AuthServer, clock: FakeClock) -> Iterator[Callable[..., Daemon]]:
    """Build a real Daemon for account `demo` (seeded from auth_server) with metrics_listen on a free port."""
    made: list[Daemon] = []

    def make(extra: str = "") -> Daemon:
        path = write_config(
            """\
            state_dir: {state}
            token_dir: {tokens}
            metrics_listen: 127.0.0.1:{port}
            accounts:
              demo:
                token_url: {token_url}
                client_id: {client_id}
                client_secret: {secret}
                refresh_token: {seed}
                {extra}
            """,
            port=free_port(),
            token_url=auth_server.token_url,
            client_id=DEMO_CLIENT_ID,
            secret=DEMO_CLIENT_SECRET,
            seed=auth_server.issue_refresh_token(DEMO_CLIENT_ID, scope="demo"),
            extra=extra,
        )
        daemon = Daemon(load(path, environ={}), clock=clock, rng=random.Random(0), environ={})  # noqa: S311 (reproducible jitter)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        if daemon.metrics is not None:
            daemon.metrics.shutdown()
        daemon.client.session.close()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    """A daemon whose metrics endpoint is up (scheduler not started: tests run it with startup() and step())."""
    daemon = make_daemon()
    assert daemon.config.metrics_listen is not None
    daemon.metrics = serve(daemon, daemon.config.metrics_listen, poll_interval=0.05)
    return daemon


def url(daemon: Daemon, path: str) -> str:
    assert daemon.config.metrics_listen is not None
    host, port = daemon.config.metrics_listen
    return f"http://{host}:{port}{path}"


def scrape(daemon: Daemon) -> tuple[str, Samples]:
    reply = requests.get(url(daemon, "/metrics"), timeout=5)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"] == CONTENT_TYPE_LATEST
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return reply.text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_scrape_after_a_refresh_reports_expiry_counts_and_schedule(daemon: Daemon) -> None:
    """After one successful run the scrape shows a 3600 s token, one success, no failures and the next refresh planned."""
    daemon.startup()
    daemon.step()
    _, samples = scrape(daemon)
    assert value(samples, "freshtoken_up") == 1
    assert value(samples, "freshtoken_accounts") == 1
    assert value(samples, "freshtoken_access_token_expires_in_seconds", account="demo") == 3600
    assert value(samples, "freshtoken_refreshes_total", account="demo", outcome="success") == 1
    for outcome in ("current", "temporary", "failed", "output", "invalid_grant"):
        assert value(samples, "freshtoken_refreshes_total", account="demo", outcome=outcome) == 0
    assert value(samples, "freshtoken_consecutive_failures", account="demo") == 0
    assert value(samples, "freshtoken_needs_login", account="demo") == 0
    # Default margin 10 % of 3600 s = 360 s, jitter up to 10 % of that, earlier only.
    next_in = value(samples, "freshtoken_next_refresh_in_seconds", account="demo")
    assert next_in is not None and 3600 - 396 <= next_in <= 3600 - 360
    assert value(samples, "freshtoken_refresh_token_expires_in_seconds", account="demo") is None
    assert value(samples, "freshtoken_refresh_token_expiring_soon", account="demo") == 0


def test_figures_are_computed_at_scrape_time_from_the_clock(daemon: Daemon, clock: FakeClock) -> None:
    """Moving the injected clock 100 s moves every 'in seconds' figure by 100 s without another run."""
    daemon.startup()
    daemon.step()
    _, before = scrape(daemon)
    clock.advance(100)
    _, after = scrape(daemon)
    for name in ("freshtoken_access_token_expires_in_seconds", "freshtoken_next_refresh_in_seconds"):
        assert value(before, name, account="demo") - value(after, name, account="demo") == 100  # type: ignore[operator]


def test_before_the_first_run_only_counters_and_flags_are_shown(daemon: Daemon) -> None:
    """An account that has not run yet has zero counters and no expiry or schedule samples."""
    _, samples = scrape(daemon)
    assert value(samples, "freshtoken_accounts") == 1
    assert value(samples, "freshtoken_refreshes_total", account="demo", outcome="success") == 0
    assert value(samples, "freshtoken_needs_login", account="demo") == 0
    assert value(samples, "freshtoken_access_token_expires_in_seconds", account="demo") is None
    assert value(samples, "freshtoken_next_refresh_in_seconds", account="demo") is None


def test_invalid_grant_sets_needs_login_and_counts_the_failure(daemon: Daemon, auth_server: AuthServer, clock: FakeClock) -> None:
    """A refused refresh token shows needs_login 1, one consecutive failure, one invalid_grant and no planned refresh."""
    daemon.startup()
    daemon.step()
    clock.advance(3300)  # inside the margin: the next run really refreshes
    auth_server.script(400, json={"error": "invalid_grant", "error_description": "Refresh token revoked"})
    daemon.step()
    _, samples = scrape(daemon)
    assert value(samples, "freshtoken_needs_login", account="demo") == 1
    assert value(samples, "freshtoken_consecutive_failures", account="demo") == 1
    assert value(samples, "freshtoken_refreshes_total", account="demo", outcome="invalid_grant") == 1
    assert value(samples, "freshtoken_refreshes_total", account="demo", outcome="success") == 1
    assert value(samples, "freshtoken_access_token_expires_in_seconds", account="demo") == 300  # last good token
    assert value(samples, "freshtoken_next_refresh_in_seconds", account="demo") is None  # parked until a login


def test_scrape_contains_no_secret_and_only_account_labels(daemon: Daemon, auth_server: AuthServer) -> None:
    """Neither the client secret nor any refresh or access token appears in the body; labels are account/outcome only."""
    seed = daemon.config.accounts["demo"].refresh_token
    assert seed is not None
    daemon.startup()
    daemon.step()
    state = daemon.store.load("demo")
    assert state.refresh_token is not None and state.access is not None
    secrets = {
        DEMO_CLIENT_SECRET,
        seed.reveal(),
        state.refresh_token.reveal(),
        state.access.access_token.reveal(),
        (daemon.config.token_dir / "demo.token").read_text().strip(),
    }
    assert state.refresh_token.reveal() != seed.reveal()  # rotated: both the spent and the live one are checked
    body, samples = scrape(daemon)
    assert all(len(s) >= 8 and s not in body for s in secrets)
    keys = {key for (name, labels) in samples if name.startswith("freshtoken_") for key, _ in labels}
    assert keys == {"account", "outcome"}


@pytest.mark.parametrize(("lifetime", "expires_in", "soon"), [("10d", 864000, 1), ("180d", 15552000, 0)])
def test_refresh_token_expiry_and_expiring_soon(make_daemon: Callable[..., Daemon], lifetime: str, expires_in: int, soon: int) -> None:
    """A known refresh-token lifetime is reported in seconds, and flagged when under 14 days."""
    daemon = make_daemon(f"refresh_token_lifetime: {lifetime}")
    assert daemon.config.metrics_listen is not None
    daemon.metrics = serve(daemon, daemon.config.metrics_listen, poll_interval=0.05)
    daemon.startup()
    daemon.step()
    _, samples = scrape(daemon)
    assert value(samples, "freshtoken_refresh_token_expires_in_seconds", account="demo") == expires_in
    assert value(samples, "freshtoken_refresh_token_expiring_soon", account="demo") == soon


def test_healthz_is_503_until_ready_then_200_then_503_while_stopping(daemon: Daemon) -> None:
    """/healthz answers 503 "starting" before the start-up pass, 200 "ok" after it, 503 "stopping" at shutdown."""
    reply = requests.get(url(daemon, "/healthz"), timeout=5)
    assert (reply.status_code, reply.text) == (503, "starting\n")
    daemon.startup()
    daemon.step()  # the first run: the start-up pass is over
    assert daemon.ready
    reply = requests.get(url(daemon, "/healthz"), timeout=5)
    assert (reply.status_code, reply.text) == (200, "ok\n")
    assert requests.head(url(daemon, "/healthz"), timeout=5).status_code == 200
    daemon.request_stop("test")
    assert not daemon.step()
    reply = requests.get(url(daemon, "/healthz"), timeout=5)
    assert (reply.status_code, reply.text) == (503, "stopping\n")


@pytest.mark.parametrize("path", ["/", "/metrics/extra", "/favicon.ico"])
def test_unknown_path_is_404(daemon: Daemon, path: str) -> None:
    """Anything but /metrics and /healthz is a 404."""
    assert requests.get(url(daemon, path), timeout=5).status_code == 404


def test_port_in_use_is_logged_and_leaves_metrics_off(daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    """Binding a port that is already taken logs an error and returns an object whose shutdown does nothing."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="freshtoken.metrics"):
            server = serve(daemon, ("127.0.0.1", port))
    assert server.address is None
    server.shutdown()
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.records[0].getMessage()


def test_shutdown_frees_the_port_and_may_be_repeated(daemon: Daemon) -> None:
    """After shutdown the port refuses connections and can be bound again; a second shutdown is harmless."""
    assert daemon.config.metrics_listen is not None
    server: MetricsServer = daemon.metrics
    assert server.address == daemon.config.metrics_listen
    server.shutdown()
    server.shutdown()
    with pytest.raises(requests.ConnectionError):
        requests.get(url(daemon, "/metrics"), timeout=5)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(daemon.config.metrics_listen)


def test_daemon_starts_the_endpoint_from_metrics_listen(make_daemon: Callable[..., Daemon], own_signals: None) -> None:
    """run() serves /metrics on the configured address while it runs, and no longer once it has stopped."""
    daemon = make_daemon()
    up: list[float | None] = []

    def scraped() -> bool:
        if daemon.ready:
            up.append(value(scrape(daemon)[1], "freshtoken_up"))
        return bool(up)

    assert (0, True) == run_until(daemon, scraped)
    assert isinstance(daemon.metrics, MetricsServer)
    assert [1] == up
    with pytest.raises(requests.ConnectionError):
        requests.get(url(daemon, "/metrics"), timeout=5)
