"""`freshtoken run`: the refresh schedule. The only module that imports apscheduler.

One thread owns the schedule: the main loop (`run()`, or `step()` in-process).
It takes words from a queue -- signal handlers and the `request_*` methods
only put them there, and a thread blocked on the wake socket puts "rescan"
when `login` changed a state -- and it is the only writer of each account's
scheduling state. APScheduler's background thread only keeps time; when an
account's date job falls due, a pool thread runs the refresh transaction
(refresh.py) and puts a report (the job, the new state or the error) on the
same queue. The loop then asks `timing.plan_next` what comes next, books the
outcome and adds the account's next job. Readers on other threads (metrics,
READY's status line) see `snapshot()`: one frozen AccountView per account,
replaced whole by the loop, never changed in place.

Each account has at most one job at a time, pending or running, so it never
runs twice at once. A newer plan (a reload, a new login, SIGUSR1, a clock
jump) replaces a pending job at once; if the job is already running, the new
plan waits for its report and wins over the plan that run would have made.
A heartbeat (at most 30 s) notices wall-clock jumps, wakes the scheduler,
pings the watchdog and re-reads parked accounts. Whatever one account's data
does, the error stays with that account: the daemon and the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from apscheduler.executors.pool import BasePoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.background import BackgroundScheduler

from freshtoken import systemd
from freshtoken.claims import Claimer, ClaimingStore
from freshtoken.durations import humanize
from freshtoken.errors import ConfigError, FreshtokenError, RefreshFailed, TemporaryError
from freshtoken.fsutil import clean_stale_temps
from freshtoken.hooks import run_hook
from freshtoken.model import USER_SEPARATOR, Account, AccountState, Config
from freshtoken.oauth import TokenClient, make_session
from freshtoken.pacing import PacedTokenClient
from freshtoken.refresh import Refresher, RefreshPolicy
from freshtoken.statestore import open_store
from freshtoken.status import HEARTBEAT_FILE
from freshtoken.store import WAKE_SOCKET
from freshtoken.timing import PERMANENT_BASE, REFRESH_TOKEN_WARN_EVERY, STOP_GRACE, Plan, bounded, expiring_soon, grant_due, plan_next

log = logging.getLogger(__name__)

HEARTBEAT = 30.0  # APScheduler sleeps on CLOCK_MONOTONIC, which stops in suspend: wake it at least this often
CLOCK_JUMP = 10.0  # wall clock moved this much more (or less) than the monotonic clock: a jump


# ---------------------------------------------------------------- what crosses threads: all frozen


@dataclass(frozen=True, slots=True)
class AccountView:
    """One account as the loop last published it (metrics, READY's status line and tests read these).

    `status` is "pending" (no run yet), "ok", "retrying" or "needs-login"; `runs` counts runs by
    outcome (success, current, and the `outcome` of each error class); `planned_at` is None while
    the account waits for a login.
    """

    name: str
    status: str = "pending"
    planned_at: float | None = None
    attempts: int = 0
    consecutive_failures: int = 0
    needs_login: bool = False
    last_error: str | None = None
    expires_at: float | None = None
    refresh_token_expires_at: float | None = None
    runs: Mapping[str, int] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class _Job:
    """One run of one account, with all it needs: a pool thread reads nothing the loop writes."""

    id: str
    account: Account
    force: bool  # refresh even if the token still looks valid (SIGUSR1, a backward clock jump, an unusable stored token)
    expires_at: float | None  # the readers' current token: another account's 429 must not make it expire


@dataclass(frozen=True, slots=True)
class _Report:
    """What a run tells the loop: its job, the new state or the error, and the state file's mtime after it."""

    job: _Job
    outcome: AccountState | FreshtokenError
    refreshed: bool  # False: an error, or the token was still valid and only written out
    state_mtime: float | None


@dataclass(frozen=True, slots=True)
class _Later:
    """A plan made while the account's job was running: applied when its report comes, over that run's plan."""

    at: float
    force: bool


# ---------------------------------------------------------------- the loop's own bookkeeping (its thread only)


@dataclass
class _Track:
    account: Account
    view: AccountView
    job: _Job | None = None  # the account's only job, pending in the scheduler or running
    later: _Later | None = None
    state_mtime: float | None = None
    rt_warned_at: float = 0.0


class Daemon:
    """The refresh daemon for one config; see the module's docstring. Injected: clocks, randomness, environment, HTTP client."""

    def __init__(
        self,
        config: Config,
        *,
        config_loader: Callable[[], Config] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        environ: Mapping[str, str] = os.environ,
        client: TokenClient | None = None,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        self.config = config
        self.config_loader = config_loader
        self.clock = clock
        self.monotonic = monotonic
        self.rng = rng or random.Random()
        self.environ = environ
        self.store = open_store(config, due=self._due)
        self.client = client or PacedTokenClient(make_session(pool_size=config.workers), config.timeouts, clock)
        self.refresher = Refresher(config, self.store, self.client, clock=clock, hook_runner=self._run_hook_detached)
        self.heartbeat = min(heartbeat, systemd.watchdog_interval(environ) or heartbeat)
        self.scheduler = BackgroundScheduler(
            timezone=timezone.utc,
            executors={"default": _DaemonThreadExecutor(config.workers)},
            # misfire_grace_time=None: APScheduler's default of 1 s silently drops a late refresh.
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )
        self.metrics: Any = None
        self._events: queue.SimpleQueue[tuple[str, str] | _Report] = queue.SimpleQueue()
        self._tracks: dict[str, _Track] = {}
        self._leaving: dict[str, _Track] = {}  # removed by a reload while their job ran: kept until it reports
        self._views: dict[str, AccountView] = {}
        for name, account in config.accounts.items():
            self._add_track(_Track(account, AccountView(name)))
        self._seq = 0
        self._startup_pending: set[str] = set()
        self._ready = False
        self._stopping = threading.Event()
        self._clocks = (clock(), monotonic())  # wall and monotonic at the last beat: their drift is a clock jump
        self._wake: socket.socket | None = None
        self._wake_thread: threading.Thread | None = None
        self.claimer: Claimer | None = None
        self._database_down = False  # the shared state's outage has been logged (once for all accounts)

    # ------------------------------------------------------------ what other threads may call

    @property
    def ready(self) -> bool:
        """True once the start-up pass has written every token it could (when READY=1 is sent)."""
        return self._ready

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def snapshot(self) -> dict[str, AccountView]:
        """Each account's view as the loop last published it.

        The loop replaces a view whole, by one dict assignment; the copy is made without
        running Python code (str keys), so under the GIL it never sees a dict mid-change.
        """
        return dict(self._views)

    def request_stop(self, reason: str) -> None:
        """Stop after the current event (what SIGTERM and SIGINT do). Like every request_*, it only enqueues: signal-safe."""
        self._events.put(("stop", reason))

    def request_reload(self) -> None:
        """Re-read the config (SIGHUP); a config that does not load leaves everything as it was."""
        self._events.put(("reload", ""))

    def request_rescan(self) -> None:
        """Re-read each state file that changed on disk (what a `login` wakes us for)."""
        self._events.put(("rescan", ""))

    def request_changed(self, account: str | None, version: int = 0) -> None:
        """Another host saved `account` (version `version`; None: notifications may have been missed, re-read all)."""
        self._events.put(("changed", "" if account is None else f"{version}:{account}"))

    def request_refresh_all(self) -> None:
        """Refresh every account now, a parked one included, even if its token looks valid (SIGUSR1)."""
        self._events.put(("refresh-all", ""))

    # ------------------------------------------------------------ the loop

    def run(self) -> int:
        """The daemon, on this (the main) thread, until a stop is requested; returns the exit code."""
        with self.store.daemon_lock(self.config.token_dir):
            # A kill mid-write leaves temp files beside the outputs too (the store sweeps the state dir).
            for directory in {self.config.token_dir, *(o.path.parent for a in self.config.accounts.values() for o in a.outputs)}:
                clean_stale_temps(directory)
            self._install_signals()
            self.scheduler.start()
            try:
                self._open_wake_socket()
                self._start_shared_state()
                self._start_metrics()
                self.startup()
                self.touch_heartbeat()
                self._serve()
            finally:
                systemd.notify({"STOPPING": 1, "STATUS": "stopping"}, environ=self.environ)
                self.close()
        log.info("stopped")
        return 0

    def startup(self) -> None:
        """The start-up pass: write each still-valid stored token at once and plan its refresh; run the others now.

        READY=1 is sent once every account's first run has reported (at once if none had to run).
        """
        for track in list(self._tracks.values()):
            self._start_account(track)
        self._check_ready()

    def _serve(self) -> None:
        next_beat = self.monotonic() + self.heartbeat
        while True:
            try:
                event: tuple[str, str] | _Report | None = self._events.get(timeout=max(0.0, next_beat - self.monotonic()))
            except queue.Empty:
                event = None
            if event is not None and not self._handle(event):
                return
            if event is None or self.monotonic() >= next_beat:
                next_beat = self.monotonic() + self.heartbeat
                try:
                    self.beat()
                except Exception as exc:  # the last line of defence: whatever slipped through, the loop goes on
                    log.error("%s", internal_error("daemon", "in the heartbeat", exc))

    def step(self) -> bool:
        """One turn of the loop that never waits, for in-process use (tests, tools); False once a stop was requested.

        Handles every request and report queued, then runs each account whose job is due by
        the daemon's clock, here on this thread, once each, and applies what it reports. Meant
        for a daemon whose scheduler is paused or not started; with a running one, whichever
        takes a due job first runs it, and it runs once. Call it (and beat()) from one thread only.
        """
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            if not self._handle(event):
                return False
        now = self.clock()
        for track in [t for t in self._tracks.values() if t.job and t.view.planned_at is not None and t.view.planned_at <= now]:
            job = track.job
            if job is not None and self._take_job(job):
                self._handle(self._run(job))
        return True

    def _handle(self, event: tuple[str, str] | _Report) -> bool:
        """Apply one event; False for a stop. Nothing raised here ends the loop."""
        try:
            if isinstance(event, _Report):
                self._apply(event)
                return True
            word, reason = event
            if word == "stop":
                log.info("%s, stopping", reason)
                self._stopping.set()
                return False
            if word == "reload":
                self._reload()
            elif word == "rescan":
                self._rescan()
            elif word == "changed":
                self._changed(reason)
            elif word == "refresh-all":
                self._refresh_all()
        except Exception as exc:  # the last line of defence: whatever slipped through, the loop goes on
            what = event[0] if isinstance(event, tuple) else f"the report of {event.job.account.name}"
            log.error("%s", internal_error("daemon", f"handling {what!r}", exc))
        return True

    # ------------------------------------------------------------ scheduling (the loop's thread only)

    def _add_track(self, track: _Track) -> None:
        self._tracks[track.view.name] = track
        self._views[track.view.name] = track.view

    def _publish(self, track: _Track, **changes: Any) -> None:
        """Replace the account's view (the only way it changes): readers see the old one or the new one."""
        track.view = replace(track.view, **changes)
        if self._tracks.get(track.view.name) is track:
            self._views[track.view.name] = track.view

    def _schedule(self, track: _Track, at: float, *, force: bool = False) -> None:
        """Plan the account's next run at `at` (epoch seconds), replacing its pending job; see the module's docstring."""
        now = self.clock()
        at = bounded(at, now=now)
        self._publish(track, planned_at=at)
        pending = track.job
        if pending is not None:
            if not self._take_job(pending):  # running (or done, its report not yet applied): wait for it
                earlier = track.later
                track.later = _Later(at, force or (earlier is not None and earlier.force))
                return
            force = force or pending.force
        self._seq += 1
        # A fresh id per run: APScheduler refuses to start a job whose id is still running.
        job = _Job(f"{track.view.name}#{self._seq}", track.account, force, track.view.expires_at)
        track.job = job
        # APScheduler reads the real wall clock; hand it the same distance from now that
        # `at` has on our clock (identical in production, where our clock is time.time).
        run_date = datetime.fromtimestamp(time.time() + (at - now), timezone.utc)
        self.scheduler.add_job(self._run_in_pool, "date", run_date=run_date, id=job.id, args=[job])

    def _take_job(self, job: _Job) -> bool:
        """Take a pending job out of the scheduler; False if it has started (APScheduler removes a
        date job from its store as it hands it to the pool, under the lock remove_job takes)."""
        try:
            self.scheduler.remove_job(job.id)
        except JobLookupError:
            return False
        return True

    # ------------------------------------------------------------ a run (a pool thread, or step()'s)

    def _run_in_pool(self, job: _Job) -> None:
        self._events.put(self._run(job))

    def _run(self, job: _Job) -> _Report:
        """One refresh transaction for one account; never raises."""
        name = job.account.name
        outcome: AccountState | FreshtokenError
        refreshed = False
        try:
            policy = RefreshPolicy.ALWAYS if job.force else RefreshPolicy.SCHEDULED
            with self._token_expiry(job.expires_at):
                result = self.refresher.refresh(job.account, policy)
            outcome, refreshed = result.state, result.refreshed
        except FreshtokenError as exc:
            outcome = exc
        except Exception as exc:  # a bug, or stored data the code cannot use, must not kill this account's schedule
            outcome = RefreshFailed(internal_error(name, "refreshing", exc))
        return _Report(job, outcome, refreshed, self.store.mtime(name))

    def _token_expiry(self, expires_at: float | None) -> contextlib.AbstractContextManager[None]:
        # Another account's 429 pauses this one at most half of what its token has left.
        if isinstance(self.client, PacedTokenClient):
            return self.client.token_expiry(expires_at)
        return contextlib.nullcontext()

    def _run_hook_detached(self, account: Account, token_file: Path, expires_at: float) -> None:
        # Hooks may be slow; never let them hold a worker that other accounts need.
        if account.on_refresh:
            threading.Thread(
                target=run_hook,
                args=(account.on_refresh, account.name, token_file, expires_at, self.config.hook_timeout),
                name=f"hook-{account.name}",
                daemon=True,
            ).start()

    # ------------------------------------------------------------ after a run (the loop's thread)

    def _apply(self, report: _Report) -> None:
        name = report.job.account.name
        track = self._tracks.get(name)
        if track is None or track.job is None or track.job.id != report.job.id:
            leaving = self._leaving.get(name)
            if leaving is not None and leaving.job is not None and leaving.job.id == report.job.id:
                del self._leaving[name]  # removed from the config while it ran; what it got is saved
            return
        track.job = None
        track.state_mtime = report.state_mtime
        before = track.view
        try:
            plan = self._book(track, report)
        except Exception as exc:
            log.error("%s: %s; retry in %s", name, internal_error(name, "planning the next run", exc), humanize(PERMANENT_BASE))
            plan = Plan(self.clock() + PERMANENT_BASE, before.attempts, "retry")
        later, track.later = track.later, None
        if later is not None:
            # A newer plan (a reload, a new login, SIGUSR1) wins over this run's, a parking one
            # included: it would drop the run that picks up the new login.
            self._publish(track, attempts=before.attempts, needs_login=before.needs_login)
            self._schedule(track, later.at, force=later.force)
        elif plan.at is None:
            self._publish(track, planned_at=None)
        else:
            self._schedule(track, plan.at)
        self._startup_pending.discard(name)
        self._check_ready()

    def _book(self, track: _Track, report: _Report) -> Plan:
        """Plan the next run (timing.plan_next), count the outcome, log it and publish the account's new view."""
        view, outcome, name = track.view, report.outcome, track.view.name
        now = self.clock()
        plan = self._plan(track, outcome, now)
        if not isinstance(outcome, FreshtokenError):
            if self._database_down:
                log.debug("the shared state is reachable again")  # the listener says so at WARNING
                self._database_down = False
            runs = _counted(view.runs, "success" if report.refreshed else "current")
            expires_at = outcome.access.expires_at if outcome.access else None
            self._publish(
                track,
                status="ok",
                attempts=plan.attempts,
                consecutive_failures=0,
                needs_login=False,
                last_error=None,
                expires_at=expires_at,
                refresh_token_expires_at=outcome.refresh_token_expires_at,
                runs=runs,
            )
            log.debug("account=%s next_refresh_in=%.0fs", name, plan.at - now if plan.at else -1)
            return plan
        message = str(outcome)
        runs = _counted(view.runs, outcome.outcome)
        changes: dict[str, Any] = {"attempts": plan.attempts, "consecutive_failures": view.consecutive_failures + 1, "last_error": message}
        if plan.at is None:  # parked until a new login
            if not view.needs_login:
                log.error("%s: %s", name, message)  # said once; the account is parked until a new login
            self._publish(track, status="needs-login", needs_login=True, runs=runs, **changes)
            return plan
        # Trouble that exits 75 (EX_TEMPFAIL: network, 5xx, a full disk) is expected now and then: a
        # warning for the first tries. Anything else, a spent refresh token held only in memory included, is an error.
        expected = outcome.exit_code == TemporaryError.exit_code
        level = logging.WARNING if expected and plan.attempts < 3 else logging.ERROR
        if outcome.outcome == "database":
            # The shared state is down for every account at once: said once (here or by the listener), not per account.
            level = logging.DEBUG if self._database_down else logging.WARNING
            self._database_down = True
            log.log(level, "%s; the files keep the last good tokens; retry %d in %s", message, plan.attempts, humanize(plan.at - now))
        elif message != view.last_error or plan.attempts in (1, 3) or plan.attempts % 10 == 0:
            log.log(level, "%s: %s; retry %d in %s", name, message, plan.attempts, humanize(plan.at - now))
        self._publish(track, status="retrying", runs=runs, **changes)
        return plan

    def _plan(self, track: _Track, outcome: AccountState | FreshtokenError, now: float, *, min_interval: float | None = None) -> Plan:
        return plan_next(
            outcome,
            attempts=track.view.attempts,
            margin_config=self.config.margin_for(track.account),
            now=now,
            rng=self.rng,
            backoff_cap=self.config.backoff_max,
            token_expires_at=track.view.expires_at,
            min_interval=self.config.min_refresh_interval if min_interval is None else min_interval,
        )

    # ------------------------------------------------------------ start-up, requests, heartbeat (the loop's thread)

    def _start_account(self, track: _Track) -> None:
        """Write a still-valid token at once and schedule its refresh; otherwise refresh at once.

        Never raises: a stored state this code cannot use is reported, and refreshed at once.
        """
        name = track.view.name
        now = self.clock()
        force = False
        try:
            state = self.refresher.write_current(track.account)
            if state is not None and state.access is not None:
                # No floor here: a restart finds no refresh of ours to space out, and a short token must not wait.
                plan = self._plan(track, state, now, min_interval=0.0)
                track.state_mtime = self.store.mtime(name)
                expiries = {"expires_at": state.access.expires_at, "refresh_token_expires_at": state.refresh_token_expires_at}
                self._publish(track, status="ok", **expiries)
                self._schedule(track, plan.at if plan.at is not None else now)
                return
        except FreshtokenError as exc:
            log.warning("%s: could not write the stored token: %s", name, exc)
        except Exception as exc:
            # Its stored token is unusable (an absurd expiry, say): a forced refresh replaces it.
            log.error("%s: cannot use the stored state (%s); refreshing now", name, internal_error(name, "reading the stored state", exc))
            force = True
        self._startup_pending.add(name)
        self._schedule(track, now, force=force)

    def _refresh_all(self) -> None:
        log.info("SIGUSR1: refreshing every account now")
        now = self.clock()
        for track in list(self._tracks.values()):
            self._publish(track, needs_login=False)  # a manual request gets one more try
            self._schedule(track, now, force=True)

    def beat(self) -> None:
        """The heartbeat: notice clock jumps, wake the scheduler, ping the watchdog, pick up new logins, warn of dying refresh tokens.

        run() calls it at least every `heartbeat` seconds; in-process users call it between step()s.
        """
        wall, mono = self.clock(), self.monotonic()
        (last_wall, last_mono), self._clocks = self._clocks, (wall, mono)
        self._check_clock(wall - last_wall - (mono - last_mono))
        self.touch_heartbeat()
        now = self.clock()
        # APScheduler sleeps on the monotonic clock, so after a suspend it oversleeps a job
        # whose wall-clock time has passed: wake it then. Only then: every wake-up of an idle
        # thread costs milliseconds of CPU on a VM, and the daemon should cost nothing idle.
        if any(view.planned_at is not None and view.planned_at <= now for view in self._views.values()):
            self.scheduler.wakeup()
        # A login normally wakes us through the socket; this catches one whose wake-up got lost.
        self._rescan(parked_only=True)
        for name, track in list(self._tracks.items()):
            try:
                self._warn_refresh_token(track, now)
            except Exception as exc:
                log.error("%s: %s", name, internal_error(name, "in the heartbeat", exc))
        if systemd.watchdog_interval(self.environ):
            systemd.notify("WATCHDOG=1", environ=self.environ)
        systemd.notify({"STATUS": self.summary()}, environ=self.environ)

    def touch_heartbeat(self) -> None:
        """Set the mtime of <state_dir>/daemon.heartbeat (0600, empty) to now: `status` shows it as the last heartbeat."""
        try:
            fd = os.open(self.config.state_dir / HEARTBEAT_FILE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                os.utime(fd)
            finally:
                os.close(fd)
        except OSError as exc:  # only `status` loses a figure; the beat goes on
            log.debug("cannot touch %s: %s", HEARTBEAT_FILE, exc.strerror or exc)

    def _rescan(self, *, parked_only: bool = False, by_host: bool = False) -> None:
        """Re-read each account whose state file changed on disk (a login by another process) and plan it anew.

        A changed account runs at once: a new login's token is still valid, so that run only
        writes it out and plans its refresh; a changed state that needs a login parks it again.
        """
        now = self.clock()
        for name, track in list(self._tracks.items()):
            if parked_only and not track.view.needs_login:
                continue
            try:
                self._reread(track, self.store.mtime(name), now, by_host=by_host)
            except Exception as exc:
                log.error("%s: %s", name, internal_error(name, "re-reading the state", exc))

    def _reread(self, track: _Track, mtime: float | None, now: float, *, by_host: bool) -> None:
        """If the stored state's stamp is not the one the loop knows, pick the new state up: see _rescan."""
        name = track.view.name
        if mtime == track.state_mtime:
            return
        track.state_mtime = mtime
        try:
            state = self.store.load(name)
        except FreshtokenError as exc:  # the heartbeat must go on whatever the disk says
            log.warning("%s: %s", name, exc)
            return
        if state.needs_login:
            return  # a parked account stays parked; a running one finds out on its next run
        if track.view.needs_login:
            log.info("%s: new login found; resuming", name)
        elif by_host:
            log.debug("%s: saved by another host; writing its token out", name)
        else:  # a login over a working account: its new tokens replace the old ones now, not at the next refresh
            log.info("%s: new login picked up", name)
        self._publish(track, needs_login=False, attempts=0)
        self._schedule(track, now)

    def _changed(self, what: str) -> None:
        """A NOTIFY from the shared state: another host saved an account; write its new token into our files at once."""
        if not what:
            self._rescan(by_host=True)  # (re)connected: what was said meanwhile is lost
            return
        version, _, name = what.partition(":")
        track = self._tracks.get(name)
        if track is not None:
            self._reread(track, float(version), self.clock(), by_host=True)
        elif USER_SEPARATOR in name and self.claimer is not None:
            self.claimer.poke()  # a user's new grant: it is due at once

    def _warn_refresh_token(self, track: _Track, now: float) -> None:
        view = track.view
        expires = view.refresh_token_expires_at
        if expires is None or view.needs_login or now - track.rt_warned_at < REFRESH_TOKEN_WARN_EVERY:
            return
        if expiring_soon(expires, now=now):
            track.rt_warned_at = now
            left = humanize(max(expires - now, 0))
            log.warning("%s: the refresh token expires in %s; run `freshtoken login %s` before then", view.name, left, view.name)

    def _check_clock(self, drift: float) -> None:
        """React to the wall clock moving `drift` seconds more than the monotonic one since the last beat."""
        if abs(drift) < CLOCK_JUMP:
            return
        if drift > 0:
            log.warning("wall clock jumped %s forward (or the system was suspended); running due refreshes", humanize(drift))
            # Re-add each job at its planned wall time: whatever is now due runs at once, even on a
            # scheduler that has not seen the jump itself (wakeup() in beat() covers the rest).
            for track in list(self._tracks.values()):
                if track.view.planned_at is not None:
                    self._schedule(track, track.view.planned_at)
            return
        # Backward: every planned time now lies `drift` further away than it really is,
        # and stored expiry times look later than they are. Keep each account's refresh
        # at the same real moment, and force it, since the expiry check would be fooled.
        log.warning("wall clock jumped %s backward; keeping the refresh schedule in real time", humanize(-drift))
        for track in list(self._tracks.values()):
            if track.view.planned_at is not None:
                self._schedule(track, track.view.planned_at + drift, force=True)

    def _check_ready(self) -> None:
        if self._ready or self._startup_pending:
            return
        self._ready = True
        log.info("ready: %s", self.summary())
        systemd.notify({"READY": 1, "STATUS": self.summary()}, environ=self.environ)

    def summary(self) -> str:
        """`2 account(s): 1 ok, 1 retrying; next refresh in 5m 2s`: READY's and the watchdog's status line."""
        views = list(self._views.values())
        text = f"{len(views)} account(s)"
        try:
            counts: dict[str, int] = {}
            for view in views:
                counts[view.status] = counts.get(view.status, 0) + 1
            text += ": " + ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
            planned = [view.planned_at for view in views if view.planned_at is not None]
            if planned:
                text += f"; next refresh in {humanize(max(0.0, min(planned) - self.clock()))}"
        except Exception as exc:  # READY=1 and the watchdog's STATUS must not depend on one account's figures
            log.error("%s", internal_error("daemon", "summing up the accounts", exc))
        return text

    # ------------------------------------------------------------ reload (the loop's thread)

    def _reload(self) -> None:
        systemd.reloading(self.environ, status="reloading config")
        try:
            if self.config_loader is None:
                raise ConfigError(self.config.file, "", "no loader")
            new = self.config_loader()
        except ConfigError as exc:
            log.error("reload failed, keeping the old config: %s", exc)
            systemd.notify({**self._ready_field(), "STATUS": f"reload failed: {exc}"}, environ=self.environ)
            return
        if new.state_dir != self.config.state_dir:
            log.warning("state_dir changed in the config; this takes a restart, keeping %s", self.config.state_dir)
            new = replace(new, state_dir=self.config.state_dir)
        old = self.config
        self.config = new
        self.refresher.config = new
        self.client.timeouts = new.timeouts
        for name in [n for n in self._tracks if n not in new.accounts]:
            gone = self._tracks.pop(name)
            del self._views[name]
            if gone.job is not None and not self._take_job(gone.job):
                self._leaving[name] = gone  # running: its report still comes, and a re-added account waits for it
            self._startup_pending.discard(name)  # its first run will never report: do not hold READY for it
            log.info("%s: removed from the config; no longer refreshed", name)
        now = self.clock()
        for name, account in new.accounts.items():
            track = self._tracks.get(name)
            if track is None:
                log.info("%s: added", name)
                back = self._leaving.pop(name, None)
                if back is None:
                    track = _Track(account, AccountView(name))
                    self._add_track(track)
                    self._start_account(track)
                else:  # its old run is still going: this account's first run waits for that one's report
                    back.account, back.later = account, None
                    back.view = AccountView(name)
                    self._add_track(back)
                    self._schedule(back, now)
            elif account != track.account or new.token_dir != old.token_dir:
                track.account = account
                self._publish(track, needs_login=False, attempts=0)
                log.info("%s: changed; applying", name)
                self._schedule(track, now)
        for warning in new.warnings:
            log.warning("%s", warning)
        log.info("reloaded %s", new.file)
        systemd.notify({**self._ready_field(), "STATUS": self.summary()}, environ=self.environ)
        self._check_ready()

    def _ready_field(self) -> dict[str, int]:
        # READY=1 ends a reload, but must not come before the start-up pass is done.
        return {"READY": 1} if self._ready else {}

    # ------------------------------------------------------------ signals, wake socket, metrics, stop

    def _install_signals(self) -> None:
        # Handlers only enqueue: SimpleQueue.put is reentrant (bpo-14976); the loop does the work.
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop("received SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: self.request_stop("received SIGINT"))
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        signal.signal(signal.SIGUSR1, lambda *_: self.request_refresh_all())

    def _open_wake_socket(self) -> None:
        """Listen for `login` telling us it changed a state; the thread blocks in recv, so idle costs nothing."""
        self._wake = self.store.open_wake_socket()
        if self._wake is None:
            return  # said by the store; the heartbeat still notices logins
        self._wake_thread = threading.Thread(target=self._read_wake_socket, args=(self._wake,), name="wake", daemon=True)
        self._wake_thread.start()

    def _read_wake_socket(self, sock: socket.socket) -> None:
        while True:
            try:
                sock.recv(64)  # whatever the word: re-reading changed states is always safe
            except OSError:
                return
            if self._stopping.is_set():
                return
            self.request_rescan()

    def _close_wake_socket(self) -> None:
        sock, self._wake = self._wake, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recv (close alone would not)
        if self._wake_thread is not None:
            self._wake_thread.join(timeout=STOP_GRACE)
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.config.state_dir / WAKE_SOCKET)  # we still hold the daemon lock: it is ours

    def _start_shared_state(self) -> None:
        """With shared_state: hear the other hosts' saves (NOTIFY), and claim the templates' users' grants that fall due."""
        try:
            self.store.check()  # SchemaMismatch: exit 78, `freshtoken db init`
        except TemporaryError as exc:  # down: the files keep serving the last good tokens; every run retries
            log.warning("%s; serving the tokens in the files until it is back", exc)
        if not self.store.watch(self.request_changed, self._stopping):
            return  # one host's state dir: nobody else saves
        if self.config.templates:
            claiming = cast(ClaimingStore, self.store)  # templates need shared_state (schema.py): a PgStore
            self.claimer = Claimer(
                claiming,
                self.refresher,
                lambda: self.config.templates,
                workers=self.config.workers,
                clock=self.clock,
                stopping=self._stopping,
            )
            self.claimer.start()

    def _due(self, name: str, state: AccountState) -> float | None:
        """When some host should next refresh `name` (what a shared store keeps in the row, for claims), by the config of now."""
        return grant_due(self.config, name, state)

    def _start_metrics(self) -> None:
        if not self.config.metrics_listen:
            return
        try:
            from freshtoken.metrics import serve
        except ImportError:
            log.error("metrics_listen is set but prometheus_client is not installed (pip install 'freshtoken[metrics]')")
            return
        self.metrics = serve(self, self.config.metrics_listen)

    def close(self) -> None:
        """Stop (run() ends with this): no run starts any more, running ones get STOP_GRACE to save what they got,
        rotated refresh tokens held in memory get one more save, and the metrics endpoint and the wake socket close."""
        self._stopping.set()
        with contextlib.suppress(SchedulerNotRunningError):
            self.scheduler.pause()
        pending = {job.id for job in self.scheduler.get_jobs()}
        running = {t.job.id: name for name, t in [*self._tracks.items(), *self._leaving.items()] if t.job and t.job.id not in pending}
        deadline = time.monotonic() + STOP_GRACE
        while running and (left := deadline - time.monotonic()) > 0:
            try:
                event = self._events.get(timeout=left)
            except queue.Empty:
                break
            if isinstance(event, _Report):
                running.pop(event.job.id, None)
        for name in sorted(running.values()):
            log.warning("%s: abandoning the in-flight refresh", name)
        with contextlib.suppress(SchedulerNotRunningError):
            self.scheduler.shutdown(wait=False)
        if self.claimer is not None:
            self.claimer.stop()
        # A rotated refresh token held in memory because its save failed dies with the process: try once more.
        for name in self.refresher.flush_unsaved():
            log.error("%s: stopping with a rotated refresh token that could not be saved; `freshtoken login %s` will be needed", name, name)
        if self.metrics is not None:
            with contextlib.suppress(Exception):
                self.metrics.shutdown()
        self._close_wake_socket()
        self.store.close()


def _counted(runs: Mapping[str, int], outcome: str) -> dict[str, int]:
    counts = dict(runs)
    counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def internal_error(name: str, doing: str, exc: BaseException) -> str:
    """One line for an unexpected exception `doing` something for `name`; the traceback goes to DEBUG only.

    Only the type is named: the message of an arbitrary exception may quote a secret.
    """
    log.debug("%s: internal error %s", name, doing, exc_info=exc)
    return f"internal error {doing}: {type(exc).__name__}"


# ---------------------------------------------------------------- the pool


class _DaemonThreadPool:
    """What APScheduler's pool executor uses of concurrent.futures.ThreadPoolExecutor, on daemon threads.

    concurrent.futures joins its workers when the interpreter exits, so a refresh stuck in a
    read (up to read_timeout) past STOP_GRACE would hold up the exit of a stopped daemon.
    Daemon threads are dropped at exit instead, and that loses nothing: close() has given
    them STOP_GRACE, and the transaction saves a rotated refresh token before anything else.
    Threads start on demand, up to `workers`, as ThreadPoolExecutor's do.
    """

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._tasks: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._tasks.put((future, fn, args))
        if not self._idle.acquire(timeout=0):
            with self._lock:
                if len(self._threads) < self._workers:
                    thread = threading.Thread(target=self._work, name=f"refresh-{len(self._threads) + 1}", daemon=True)
                    self._threads.append(thread)
                    thread.start()
        return future

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._tasks.put(None)
        if wait:
            for thread in threads:
                thread.join()

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            future, fn, args = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to APScheduler, which logs a job's error
                    future.set_exception(exc)
            self._idle.release()


class _DaemonThreadExecutor(BasePoolExecutor):  # type: ignore[misc]
    def __init__(self, workers: int) -> None:
        super().__init__(_DaemonThreadPool(workers))


def run(config: Config, *, config_loader: Callable[[], Config] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    """`freshtoken run`: the daemon until SIGTERM; returns its exit code."""
    for warning in config.warnings:
        log.warning("%s", warning)
    return Daemon(config, config_loader=config_loader, environ=environ).run()
