"""`freshtoken run`: the refresh schedule. The only module that imports apscheduler.

The main thread is a control loop fed by a queue: signal handlers only put
words on it, refresh jobs report back through it, a thread blocked on the wake
socket reports logins done meanwhile, and a heartbeat (at most 30 s) wakes the
scheduler and pings the watchdog. APScheduler's pool runs the refreshes;
`plan_next` decides what comes next. Whatever one account's data does, the
error stays with that account: the daemon and the other accounts go on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from freshtoken import systemd
from freshtoken.config import Account, Config
from freshtoken.durations import humanize
from freshtoken.errors import ConfigError, FreshtokenError, InvalidGrant, RefreshFailed, RotatedTokenNotSaved, TemporaryError
from freshtoken.fsutil import clean_stale_temps
from freshtoken.hooks import run_hook
from freshtoken.model import AccountState
from freshtoken.oauth import Timeouts, TokenClient, make_session
from freshtoken.outputs import OutputError
from freshtoken.pacing import PacedTokenClient
from freshtoken.refresh import Refresher, lifetime
from freshtoken.store import WAKE_SOCKET, Store
from freshtoken.timing import backoff, effective_margin, refresh_at

log = logging.getLogger(__name__)

HEARTBEAT = 30.0  # APScheduler sleeps on CLOCK_MONOTONIC, which stops in suspend: wake it at least this often
CLOCK_JUMP = 10.0  # wall clock moved this much more (or less) than the monotonic clock: a jump
WARN_RT_BEFORE = 14 * 86400
STOP_GRACE = 2.0  # seconds an in-flight refresh may take to finish after SIGTERM (a stop must not wait out a read timeout)
PERMANENT_BASE = 30.0  # first retry after a permanent refusal: a user has to fix something; do not hammer the provider
MIN_RETRY = 1.0  # the shortest cap on a retry while the current token still lives
HEARTBEAT_FILE = "daemon.heartbeat"  # status.HEARTBEAT_FILE: touched at start and at every heartbeat
MAX_PLAN = 366 * 86400.0  # no plan lies further ahead: an absurd stored expiry must not overflow the scheduler's datetime


# ---------------------------------------------------------------- pure policy


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do after one run: refresh again at `at`, or park the account (at None)."""

    at: float | None
    attempts: int
    reason: str


def plan_next(
    outcome: BaseException | AccountState,
    *,
    attempts: int,
    margin_config: float | None,
    now: float,
    rng: random.Random,
    backoff_cap: float,
    token_expires_at: float | None = None,
    min_interval: float = 0.0,
) -> Plan:
    """The next step for an account after a run that ended in `outcome` (a state, or the error).

    `token_expires_at` is when the token the readers have now dies: a retry after a
    temporary failure never waits past half of what it has left, so that two or
    three tries still fit before it expires (a server's Retry-After stays a floor).
    `min_interval` is the floor between two refreshes: however short-lived the
    tokens a server hands out, freshtoken never becomes its load generator.
    """
    if isinstance(outcome, AccountState):
        access = outcome.access
        if access is None:  # cannot happen after a success; be safe and retry
            return Plan(now + backoff(1, rng=rng, cap=backoff_cap), 1, "no token")
        margin = effective_margin(margin_config, lifetime(outcome))
        last = now if outcome.last_refresh is None else min(outcome.last_refresh, now)
        return Plan(max(refresh_at(access.expires_at, margin, now=now, rng=rng), last + min_interval), 0, "scheduled")
    if isinstance(outcome, InvalidGrant):
        return Plan(None, attempts, "needs login")
    # A new refresh token that could not be saved is held in memory by the Refresher, which
    # retries the save on the next run: as urgent as a network error, not a user's mistake.
    if isinstance(outcome, TemporaryError | RotatedTokenNotSaved):
        n = attempts + 1
        cap = backoff_cap
        if token_expires_at is not None and token_expires_at > now:
            cap = min(cap, max(MIN_RETRY, (token_expires_at - now) / 2))
        retry_after = outcome.retry_after if isinstance(outcome, TemporaryError) else None
        return Plan(now + backoff(n, rng=rng, cap=cap, retry_after=retry_after), n, "retry")
    # Permanent refusals (invalid_client, a broken output) may be fixed by the user at any
    # moment: keep trying, but slowly.
    n = attempts + 1
    return Plan(now + backoff(n, rng=rng, cap=backoff_cap, base=PERMANENT_BASE), n, "retry")


# ---------------------------------------------------------------- per-account bookkeeping


@dataclass
class Slot:
    """The daemon's view of one account. `job` is the id of the only job allowed to run it."""

    account: Account
    job: str | None = None
    planned_at: float | None = None
    attempts: int = 0
    consecutive_failures: int = 0
    needs_login: bool = False
    force: bool = False
    state_mtime: float | None = None
    last_error: str | None = None
    last_outcome: str = "pending"
    expires_at: float | None = None
    refresh_token_expires_at: float | None = None
    rt_warned_at: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    run_lock: threading.Lock = field(default_factory=threading.Lock)


class Daemon:
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
        self.events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.store = Store(config.state_dir)
        self.client = client or PacedTokenClient(
            make_session(pool_size=config.workers), Timeouts(config.connect_timeout, config.read_timeout), clock
        )
        self.refresher = Refresher(config, self.store, self.client, clock=clock, hook_runner=self._run_hook_detached)
        self.slots: dict[str, Slot] = {name: Slot(account) for name, account in config.accounts.items()}
        self.heartbeat = min(heartbeat, systemd.watchdog_interval(environ) or heartbeat)
        self.scheduler = BackgroundScheduler(
            timezone=timezone.utc,
            executors={"default": ThreadPoolExecutor(config.workers)},
            # misfire_grace_time=None: APScheduler's default of 1 s silently drops a late refresh.
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )
        self._sched_lock = threading.Lock()
        self._seq = 0
        self._startup_pending: set[str] = set()
        self._ready = False
        self._stopping = threading.Event()
        self.metrics: Any = None
        self._wake: socket.socket | None = None
        self._wake_thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        """True once the start-up pass has written every token it could (when READY=1 is sent)."""
        return self._ready

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # ------------------------------------------------------------ scheduling

    def schedule(self, name: str, at: float, *, force: bool = False) -> None:
        """Make the account's only job run at `at` (epoch seconds); replaces any pending job."""
        now = self.clock()
        # A plan from an absurd stored expiry (1e300, inf, NaN) must not overflow datetime below.
        at = min(at, now + MAX_PLAN) if math.isfinite(at) else now
        with self._sched_lock:
            slot = self.slots.get(name)
            if slot is None:
                return
            if slot.job:
                with contextlib.suppress(JobLookupError):
                    self.scheduler.remove_job(slot.job)
            self._seq += 1
            # A fresh id per run: APScheduler refuses to start a job whose id is still running,
            # and a date job re-added from inside its own run would be dropped (max_instances).
            job_id = f"{name}#{self._seq}"
            slot.job, slot.planned_at = job_id, at
            slot.force = slot.force or force
            # APScheduler reads the real wall clock; hand it the same distance from now that
            # `at` has on our clock (identical in production, where our clock is time.time).
            run_date = datetime.fromtimestamp(time.time() + (at - now), timezone.utc)
            self.scheduler.add_job(self.run_account, "date", run_date=run_date, id=job_id, args=[name, job_id])

    def park(self, name: str) -> None:
        with self._sched_lock:
            slot = self.slots.get(name)
            if slot and slot.job:
                with contextlib.suppress(JobLookupError):
                    self.scheduler.remove_job(slot.job)
                slot.job, slot.planned_at = None, None

    def run_account(self, name: str, job_id: str | None = None) -> Plan | None:
        """One run for one account (called by the scheduler's pool, or directly by tests)."""
        slot = self.slots.get(name)
        if slot is None:
            return None
        with slot.run_lock:  # never two runs of one account at once
            with self._sched_lock:
                if job_id is not None and slot.job != job_id:
                    return None  # superseded by a newer schedule
                force, slot.force = slot.force, False
            account = slot.account
            outcome: BaseException | AccountState
            try:
                threshold = None if force else self.refresher.scheduled_threshold
                with self._token_expiry(slot.expires_at):
                    result = self.refresher.refresh(account, skip_if_valid_for=threshold)
                outcome = result.state
                self._count(slot, "success" if result.refreshed else "current")
            except FreshtokenError as exc:
                outcome = exc
            except Exception as exc:  # a bug, or stored data the code cannot use, must not kill this account's schedule
                outcome = RefreshFailed(internal_error(name, "refreshing", exc))
            try:
                plan = self._after_run(slot, outcome)
            except Exception as exc:
                log.error("%s: %s; retry in %s", name, internal_error(name, "planning the next run", exc), humanize(PERMANENT_BASE))
                plan = Plan(self.clock() + PERMANENT_BASE, slot.attempts, "retry")
            with self._sched_lock:
                superseded = job_id is not None and slot.job != job_id
            # A newer schedule (a reload, a new login, SIGUSR1) wins over this run's plan,
            # a parking one included: it would drop the job that picks up the new login.
            if not superseded:
                if plan.at is not None:
                    self.schedule(name, plan.at)
                else:
                    self.park(name)
        self.events.put(("ran", name))
        return plan

    def _after_run(self, slot: Slot, outcome: BaseException | AccountState) -> Plan:
        name = slot.account.name
        now = self.clock()
        plan = plan_next(
            outcome,
            attempts=slot.attempts,
            margin_config=self.config.margin_for(slot.account),
            now=now,
            rng=self.rng,
            backoff_cap=self.config.backoff_max,
            token_expires_at=slot.expires_at,
            min_interval=self.config.min_refresh_interval,
        )
        slot.attempts = plan.attempts
        slot.state_mtime = self.store.mtime(name)
        if isinstance(outcome, AccountState):
            slot.consecutive_failures = 0
            slot.needs_login = False
            slot.last_error = None
            slot.last_outcome = "ok"
            slot.expires_at = outcome.access.expires_at if outcome.access else None
            slot.refresh_token_expires_at = outcome.refresh_token_expires_at
            log.debug("account=%s next_refresh_in=%.0fs", name, plan.at - now if plan.at else -1)
            return plan
        slot.consecutive_failures += 1
        message = str(outcome)
        if isinstance(outcome, InvalidGrant):
            self._count(slot, "invalid_grant")
            if not slot.needs_login:
                log.error("%s: %s", name, message)  # said once; the account is parked until a new login
            slot.needs_login = True
            slot.last_outcome = "needs-login"
        else:
            temporary = isinstance(outcome, TemporaryError | RotatedTokenNotSaved)
            kind = "temporary" if temporary else "output" if isinstance(outcome, OutputError) else "failed"
            self._count(slot, kind)
            level = logging.WARNING if isinstance(outcome, TemporaryError) and slot.attempts < 3 else logging.ERROR
            if message != slot.last_error or slot.attempts in (1, 3) or slot.attempts % 10 == 0:
                log.log(level, "%s: %s; retry %d in %s", name, message, slot.attempts, humanize((plan.at or now) - now))
            slot.last_outcome = "retrying"
        slot.last_error = message
        return plan

    def _token_expiry(self, expires_at: float | None) -> contextlib.AbstractContextManager[None]:
        # Another account's 429 pauses this one at most half of what its token has left.
        if isinstance(self.client, PacedTokenClient):
            return self.client.token_expiry(expires_at)
        return contextlib.nullcontext()

    def _count(self, slot: Slot, outcome: str) -> None:
        slot.outcomes[outcome] = slot.outcomes.get(outcome, 0) + 1

    def _run_hook_detached(self, account: Account, token_file: Path, expires_at: float) -> None:
        # Hooks may be slow; never let them hold a worker that other accounts need.
        if account.on_refresh:
            threading.Thread(
                target=run_hook,
                args=(account.on_refresh, account.name, token_file, expires_at, self.config.hook_timeout),
                name=f"hook-{account.name}",
                daemon=True,
            ).start()

    # ------------------------------------------------------------ start-up

    def start_account(self, name: str) -> None:
        """Write a still-valid token at once and schedule its refresh; otherwise refresh at once.

        Never raises: a stored state this code cannot use is reported, and refreshed at once.
        """
        slot = self.slots[name]
        now = self.clock()
        force = False
        try:
            state = self.refresher.write_current(slot.account)
            if state is not None:
                margin = effective_margin(self.config.margin_for(slot.account), lifetime(state))
                at = refresh_at(state.access.expires_at, margin, now=now, rng=self.rng)  # type: ignore[union-attr]
                slot.expires_at = state.access.expires_at if state.access else None
                slot.refresh_token_expires_at = state.refresh_token_expires_at
                slot.state_mtime = self.store.mtime(name)
                self.schedule(name, at)
                slot.last_outcome = "ok"
                return
        except FreshtokenError as exc:
            log.warning("%s: could not write the stored token: %s", name, exc)
        except Exception as exc:
            # Its stored token is unusable (an absurd expiry, say): a forced refresh replaces it.
            log.error("%s: cannot use the stored state (%s); refreshing now", name, internal_error(name, "reading the stored state", exc))
            force = True
        self._startup_pending.add(name)
        self.schedule(name, now, force=force)

    # ------------------------------------------------------------ main loop

    def run(self) -> int:
        with self.store.daemon_lock(self.config.token_dir):
            # A kill mid-write leaves temp files beside the outputs too (the store sweeps the state dir).
            for directory in {self.config.token_dir, *(o.path.parent for a in self.config.accounts.values() for o in a.outputs)}:
                clean_stale_temps(directory)
            self._install_signals()
            self.scheduler.start()
            try:
                self._open_wake_socket()
                self._start_metrics()
                for name in list(self.slots):
                    self.start_account(name)
                self._check_ready()
                self.touch_heartbeat()
                self._loop()
            finally:
                systemd.notify({"STOPPING": 1, "STATUS": "stopping"}, environ=self.environ)
                self._shutdown()
        log.info("stopped")
        return 0

    def _loop(self) -> None:
        last_wall, last_mono = self.clock(), self.monotonic()
        next_beat = last_mono + self.heartbeat
        while True:
            timeout = max(0.0, next_beat - self.monotonic())
            try:
                event, arg = self.events.get(timeout=timeout)
            except queue.Empty:
                event, arg = "beat", None
            if event == "stop":
                log.info("%s, stopping", arg)
                return
            try:
                self._handle(event, arg)
                if self.monotonic() >= next_beat or event == "beat":
                    wall, mono = self.clock(), self.monotonic()
                    self._check_clock(wall - last_wall - (mono - last_mono))
                    last_wall, last_mono = wall, mono
                    next_beat = mono + self.heartbeat
                    self.beat()
            except Exception as exc:  # the last line of defence: whatever slipped through, the loop goes on
                log.error("%s", internal_error("daemon", f"handling {event!r}", exc))

    def _handle(self, event: str, arg: Any) -> None:
        if event == "reload":
            self.reload()
        elif event == "rescan":
            self.rescan()
        elif event == "refresh-all":
            log.info("SIGUSR1: refreshing every account now")
            now = self.clock()
            for name, slot in self.slots.items():
                slot.needs_login = False  # a manual request gets one more try
                self.schedule(name, now, force=True)
        elif event == "ran":
            self._startup_pending.discard(arg)
            self._check_ready()

    def beat(self) -> None:
        """The heartbeat: wake the scheduler, ping the watchdog, pick up new logins, warn of dying refresh tokens."""
        self.touch_heartbeat()
        now = self.clock()
        # APScheduler sleeps on the monotonic clock, so after a suspend it oversleeps a job
        # whose wall-clock time has passed: wake it then. Only then: every wake-up of an idle
        # thread costs milliseconds of CPU on a VM, and the daemon should cost nothing idle.
        if any(slot.planned_at is not None and slot.planned_at <= now for slot in self.slots.values()):
            self.scheduler.wakeup()
        # A login normally wakes us through the socket; this catches one whose wake-up got lost.
        self.rescan(parked_only=True)
        for name, slot in list(self.slots.items()):
            try:
                self._warn_refresh_token(slot, now)
            except Exception as exc:
                log.error("%s: %s", name, internal_error(name, "in the heartbeat", exc))
        if systemd.watchdog_interval(self.environ):
            systemd.notify("WATCHDOG=1", environ=self.environ)
        systemd.notify({"STATUS": self.summary()}, environ=self.environ)

    def touch_heartbeat(self) -> None:
        """Set the mtime of <state_dir>/daemon.heartbeat (0600, empty) to now: `status` shows it as the last heartbeat."""
        try:
            fd = os.open(self.store.dir / HEARTBEAT_FILE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                os.utime(fd)
            finally:
                os.close(fd)
        except OSError as exc:  # only `status` loses a figure; the beat goes on
            log.debug("cannot touch %s: %s", HEARTBEAT_FILE, exc.strerror or exc)

    def rescan(self, *, parked_only: bool = False) -> None:
        """Re-read each account whose state file changed on disk (a login by another process) and plan it anew.

        A changed account runs at once: a new login's token is still valid, so that run only
        writes it out and plans its refresh; a changed state that needs a login parks it again.
        """
        now = self.clock()
        for name, slot in list(self.slots.items()):
            if parked_only and not slot.needs_login:
                continue
            try:
                mtime = self.store.mtime(name)
                if mtime == slot.state_mtime:
                    continue
                slot.state_mtime = mtime
                try:
                    state = self.store.load(name)
                except FreshtokenError as exc:  # the heartbeat must go on whatever the disk says
                    log.warning("%s: %s", name, exc)
                    continue
                if state.needs_login:
                    continue  # a parked account stays parked; a running one finds out on its next run
                if slot.needs_login:
                    log.info("%s: new login found; resuming", name)
                slot.needs_login = False
                slot.attempts = 0
                self.schedule(name, now)
            except Exception as exc:
                log.error("%s: %s", name, internal_error(name, "re-reading the state", exc))

    def _warn_refresh_token(self, slot: Slot, now: float) -> None:
        expires = slot.refresh_token_expires_at
        if expires is None or slot.needs_login or now - slot.rt_warned_at < 86400:
            return
        left = expires - now
        if left < WARN_RT_BEFORE:
            slot.rt_warned_at = now
            log.warning(
                "%s: the refresh token expires in %s; run `freshtoken login %s` before then",
                slot.account.name,
                humanize(max(left, 0)),
                slot.account.name,
            )

    def _check_clock(self, drift: float) -> None:
        """Compare how far the wall clock and the monotonic clock moved since the last beat."""
        if abs(drift) < CLOCK_JUMP:
            return
        if drift > 0:
            log.warning("wall clock jumped %s forward (or the system was suspended); running due refreshes", humanize(drift))
            # Re-add each job at its planned wall time: whatever is now due runs at once, even on a
            # scheduler that has not seen the jump itself (wakeup() in beat() covers the rest).
            for name, slot in list(self.slots.items()):
                if slot.planned_at is not None:
                    self.schedule(name, slot.planned_at)
            return
        # Backward: every planned time now lies `drift` further away than it really is,
        # and stored expiry times look later than they are. Keep each account's refresh
        # at the same real moment, and force it, since the expiry check would be fooled.
        log.warning("wall clock jumped %s backward; keeping the refresh schedule in real time", humanize(-drift))
        for name, slot in list(self.slots.items()):
            if slot.planned_at is not None:
                self.schedule(name, slot.planned_at + drift, force=True)

    def _check_ready(self) -> None:
        if self._ready or self._startup_pending:
            return
        self._ready = True
        log.info("ready: %s", self.summary())
        systemd.notify({"READY": 1, "STATUS": self.summary()}, environ=self.environ)

    def summary(self) -> str:
        text = f"{len(self.slots)} account(s)"
        try:
            counts: dict[str, int] = {}
            for slot in self.slots.values():
                counts[slot.last_outcome] = counts.get(slot.last_outcome, 0) + 1
            text += ": " + ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
            planned = [s.planned_at for s in self.slots.values() if s.planned_at is not None]
            if planned:
                text += f"; next refresh in {humanize(max(0.0, min(planned) - self.clock()))}"
        except Exception as exc:  # READY=1 and the watchdog's STATUS must not depend on one account's figures
            log.error("%s", internal_error("daemon", "summing up the accounts", exc))
        return text

    # ------------------------------------------------------------ reload

    def reload(self) -> None:
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
            new = _with_state_dir(new, self.config.state_dir)
        old = self.config
        self.config = new
        self.refresher.config = new
        self.client.timeouts = Timeouts(new.connect_timeout, new.read_timeout)
        for name in [n for n in self.slots if n not in new.accounts]:
            self.park(name)
            del self.slots[name]
            self._startup_pending.discard(name)  # its first run will never report: do not hold READY for it
            log.info("%s: removed from the config; no longer refreshed", name)
        now = self.clock()
        for name, account in new.accounts.items():
            slot = self.slots.get(name)
            if slot is None:
                self.slots[name] = Slot(account)
                log.info("%s: added", name)
                self.start_account(name)
            elif account != slot.account or new.token_dir != old.token_dir:
                slot.account = account
                slot.needs_login = False
                slot.attempts = 0
                log.info("%s: changed; applying", name)
                self.schedule(name, now)
        for warning in new.warnings:
            log.warning("%s", warning)
        log.info("reloaded %s", new.file)
        systemd.notify({**self._ready_field(), "STATUS": self.summary()}, environ=self.environ)
        self._check_ready()

    def _ready_field(self) -> dict[str, int]:
        # READY=1 ends a reload, but must not come before the start-up pass is done.
        return {"READY": 1} if self._ready else {}

    # ------------------------------------------------------------ signals, metrics, shutdown

    def _install_signals(self) -> None:
        # Handlers only enqueue: SimpleQueue.put is reentrant (bpo-14976); the work happens in _loop.
        signal.signal(signal.SIGTERM, lambda *_: self.events.put(("stop", "received SIGTERM")))
        signal.signal(signal.SIGINT, lambda *_: self.events.put(("stop", "received SIGINT")))
        signal.signal(signal.SIGHUP, lambda *_: self.events.put(("reload", None)))
        signal.signal(signal.SIGUSR1, lambda *_: self.events.put(("refresh-all", None)))

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
            self.events.put(("rescan", None))

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
            os.unlink(self.store.dir / WAKE_SOCKET)  # we still hold the daemon lock: it is ours

    def _start_metrics(self) -> None:
        if not self.config.metrics_listen:
            return
        try:
            from freshtoken.metrics import serve
        except ImportError:
            log.error("metrics_listen is set but prometheus_client is not installed (pip install 'freshtoken[metrics]')")
            return
        self.metrics = serve(self, self.config.metrics_listen)

    def _shutdown(self) -> None:
        self._stopping.set()
        self.scheduler.shutdown(wait=False)
        deadline = time.monotonic() + STOP_GRACE
        for slot in list(self.slots.values()):
            # A refresh holding this lock is mid-request; give it a moment to save what it got.
            if slot.run_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                slot.run_lock.release()
            else:
                log.warning("%s: abandoning the in-flight refresh", slot.account.name)
        # A rotated refresh token held in memory because its save failed dies with the process: try once more.
        for name in self.refresher.flush_unsaved():
            log.error("%s: stopping with a rotated refresh token that could not be saved; `freshtoken login %s` will be needed", name, name)
        if self.metrics is not None:
            with contextlib.suppress(Exception):
                self.metrics.shutdown()
        self._close_wake_socket()


def internal_error(name: str, doing: str, exc: BaseException) -> str:
    """One line for an unexpected exception `doing` something for `name`; the traceback goes to DEBUG only.

    Only the type is named: the message of an arbitrary exception may quote a secret.
    """
    log.debug("%s: internal error %s", name, doing, exc_info=exc)
    return f"internal error {doing}: {type(exc).__name__}"


def _with_state_dir(config: Config, state_dir: Path) -> Config:
    from dataclasses import replace

    return replace(config, state_dir=state_dir)


def run(config: Config, *, config_loader: Callable[[], Config] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    for warning in config.warnings:
        log.warning("%s", warning)
    daemon = Daemon(config, config_loader=config_loader, environ=environ)
    code = daemon.run()
    # Pool threads stuck in a read past STOP_GRACE would hold up interpreter exit
    # (concurrent.futures joins its workers); our state is saved, so leave now.
    logging.shutdown()
    os._exit(code)
