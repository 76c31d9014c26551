"""The optional Prometheus endpoint (`metrics_listen`): GET /metrics and /healthz.

The only module that imports prometheus_client (the `freshtoken[metrics]` extra).
Figures are read from the daemon's snapshot at scrape time; the only label is the
account name (plus the outcome of a refresh), so no secret can become a label.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from freshtoken.timing import REFRESH_TOKEN_WARNING, expiring_soon

if TYPE_CHECKING:
    from freshtoken.daemon import Daemon

log = logging.getLogger(__name__)

OUTCOMES = ("success", "current", "temporary", "database", "failed", "output", "invalid_grant")


class DaemonCollector(Collector):
    """Turns `daemon.snapshot()` into metric families each time it is scraped."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        daemon = self.daemon
        now = daemon.clock()
        views = sorted(daemon.snapshot().items())

        up = GaugeMetricFamily("freshtoken_up", "1 while the freshtoken daemon is running.")
        up.add_metric([], 1)
        accounts = GaugeMetricFamily("freshtoken_accounts", "Number of configured accounts.")
        accounts.add_metric([], len(views))
        access = GaugeMetricFamily(
            "freshtoken_access_token_expires_in_seconds",
            "Seconds until the current access token expires (negative once expired).",
            labels=["account"],
        )
        refresh = GaugeMetricFamily(
            "freshtoken_refresh_token_expires_in_seconds",
            "Seconds until the refresh token expires, where known (log in again before then).",
            labels=["account"],
        )
        soon = GaugeMetricFamily(
            "freshtoken_refresh_token_expiring_soon",
            f"1 when the refresh token expires within {REFRESH_TOKEN_WARNING / 86400:.0f} days, else 0"
            " (also 0 when its expiry is unknown).",
            labels=["account"],
        )
        refreshes = CounterMetricFamily(
            "freshtoken_refreshes",
            "Refresh runs by outcome: success, current (token still valid, nothing sent), temporary,"
            " database (shared state down), failed, output, invalid_grant.",
            labels=["account", "outcome"],
        )
        failures = GaugeMetricFamily("freshtoken_consecutive_failures", "Failed runs since the last success.", labels=["account"])
        needs_login = GaugeMetricFamily(
            "freshtoken_needs_login",
            "1 when the refresh token was refused (invalid_grant): run `freshtoken login ACCOUNT`.",
            labels=["account"],
        )
        next_refresh = GaugeMetricFamily(
            "freshtoken_next_refresh_in_seconds",
            "Seconds until the next planned refresh (absent while the account waits for a login).",
            labels=["account"],
        )
        for name, view in views:
            label = [name]
            if view.expires_at is not None:
                access.add_metric(label, view.expires_at - now)
            if view.refresh_token_expires_at is not None:
                refresh.add_metric(label, view.refresh_token_expires_at - now)
            soon.add_metric(label, 1 if expiring_soon(view.refresh_token_expires_at, now=now) else 0)
            for outcome in sorted(set(OUTCOMES) | set(view.runs)):
                refreshes.add_metric([name, outcome], view.runs.get(outcome, 0))
            failures.add_metric(label, view.consecutive_failures)
            needs_login.add_metric(label, 1 if view.needs_login else 0)
            if view.planned_at is not None:
                next_refresh.add_metric(label, view.planned_at - now)
        yield from (up, accounts, access, refresh, soon, refreshes, failures, needs_login, next_refresh)


def make_registry(daemon: Daemon) -> CollectorRegistry:
    """A registry of its own (not the global one): the daemon's figures plus the standard process_* ones."""
    registry = CollectorRegistry()
    registry.register(DaemonCollector(daemon))
    ProcessCollector(registry=registry)
    return registry


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck scraper must not hold up the daemon's exit
    freshtoken: Daemon
    registry: CollectorRegistry


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # seconds a client may take to send its request
    server_version = "freshtoken-metrics"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def _answer(self, *, head: bool) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            try:
                body = generate_latest(self.server.registry)
            except Exception:  # a bug in a collector must not take the endpoint down for good
                log.exception("metrics: collecting failed")
                self._send(500, "text/plain; charset=utf-8", b"collecting metrics failed\n", head)
                return
            self._send(200, CONTENT_TYPE_LATEST, body, head)
        elif path == "/healthz":
            status, text = health(self.server.freshtoken)
            self._send(status, "text/plain; charset=utf-8", text.encode(), head)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found; try /metrics or /healthz\n", head)

    def _send(self, status: int, content_type: str, body: bytes, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        log.debug("metrics: %s %s", self.address_string(), format % args)


def health(daemon: Daemon) -> tuple[int, str]:
    """The /healthz answer: 200 "ok" once the start-up pass is done, 503 before and while stopping.

    An account that needs a login or keeps failing does not make the daemon unhealthy:
    restarting it would not help. Alert on freshtoken_needs_login and friends instead.
    """
    if daemon.stopping:
        return 503, "stopping\n"
    if not daemon.ready:
        return 503, "starting\n"
    return 200, "ok\n"


class MetricsServer:
    """The running endpoint; `address` is the (host, port) it is bound to, None when it could not bind."""

    def __init__(self, server: _Server | None = None, thread: threading.Thread | None = None) -> None:
        self._server = server
        self._thread = thread
        self._lock = threading.Lock()
        self.address: tuple[str, int] | None = server.server_address[:2] if server else None  # type: ignore[assignment]

    def shutdown(self) -> None:
        """Stop serving and close the socket; safe to call more than once."""
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def serve(daemon: Daemon, address: tuple[str, int], *, poll_interval: float = 0.5) -> MetricsServer:
    """Serve /metrics and /healthz for `daemon` on `address` from a daemon thread.

    A port already in use (or any other bind failure) is logged and leaves the
    metrics off; it never stops the daemon, whose real job is the tokens.
    """
    host, port = address
    server_class = _Server6 if ":" in host else _Server
    try:
        server = server_class((host, port), _Handler)
    except OSError as exc:
        log.error("metrics: cannot listen on %s: %s; metrics are off", _show(host, port), exc.strerror or exc)
        return MetricsServer()
    server.freshtoken = daemon
    server.registry = make_registry(daemon)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": poll_interval}, name="freshtoken-metrics", daemon=True)
    thread.start()
    bound = server.server_address
    log.info("metrics on http://%s/metrics", _show(host, int(bound[1])))
    return MetricsServer(server, thread)


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
