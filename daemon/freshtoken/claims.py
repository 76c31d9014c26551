"""Template users' grants at application scale: claim the rows that fall due, refresh them, hold nothing else.

A template (config `templates:`) stands for any number of users whose grants are rows
in the shared state, named TEMPLATE/USER. No daemon schedules them one by one: the
Claimer asks PostgreSQL for due rows no other host has claimed (pgstore.claim_due,
FOR UPDATE SKIP LOCKED, a lease), and refreshes each in the same transaction as any
account (refresh.Refresher, under the row lock). The plan lives in the row
(`refresh_due_at`, from timing.grant_due_at at each save), so a daemon's memory does
not grow with the number of users, and N daemons share the work.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from freshtoken.errors import FreshtokenError, TemporaryError
from freshtoken.model import USER_SEPARATOR, Account, user_account
from freshtoken.refresh import Refresher, RefreshPolicy
from freshtoken.timing import STOP_GRACE

log = logging.getLogger(__name__)

LEASE = 60.0  # a claimed row is left to its host this long (a refresh takes less; a dead host's claims run out)
IDLE_POLL = 5.0  # the longest a claimer sleeps with nothing due: a grant stored by an application is found this soon


class Claimer:
    """Claims due grants of the config's templates and refreshes them on `workers` threads of its own."""

    def __init__(
        self,
        store: ClaimingStore,
        refresher: Refresher,
        templates: Callable[[], Mapping[str, Account]],
        *,
        workers: int,
        clock: Callable[[], float],
        stopping: threading.Event,
    ) -> None:
        self.store = store
        self.refresher = refresher
        self.templates = templates  # read at each claim: a reload takes effect at once
        self.workers = workers
        self.clock = clock
        self.stopping = stopping
        self.refreshed = 0  # counts, for the log and the benchmarks
        self.failed = 0
        self._counting = threading.Lock()
        self._wake = threading.Event()
        self._free = threading.Semaphore(workers)
        self._tasks: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"grant-{n + 1}", daemon=True)
            thread.start()
            self._threads.append(thread)
        thread = threading.Thread(target=self._claim_loop, name="claimer", daemon=True)
        thread.start()
        self._threads.append(thread)

    def poke(self) -> None:
        """Look for due grants now (a NOTIFY about a template user, a finished refresh)."""
        self._wake.set()

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Claim nothing more, start no claimed refresh, and give those in flight `grace` seconds to save their answer.

        The workers are daemon threads: without the wait, a refresh whose request has left dies with
        the process, its rotated refresh token unsaved, and the next host sends the spent one.
        """
        self.stopping.set()
        self._wake.set()
        for _ in range(self.workers):
            self._tasks.put(None)
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _claim_loop(self) -> None:
        while not self.stopping.is_set():
            self._wake.clear()
            wait = IDLE_POLL
            try:
                wait = self._claim_once()
            except FreshtokenError as exc:  # the database is down: the listener logs it once; try again later
                log.debug("claiming due grants: %s", exc)
            except Exception:  # never let the claimer die: templates' users would silently stop being refreshed
                log.exception("internal error claiming due grants")
            self._wake.wait(wait)

    def _claim_once(self) -> float:
        """Claim as many due grants as there are free workers; the seconds to wait before looking again."""
        names = list(self.templates())
        if not names:
            return IDLE_POLL
        free = 0
        while self._free.acquire(blocking=False):
            free += 1
        if free == 0:
            return IDLE_POLL  # a finishing refresh pokes
        now = self.clock()
        claimed: list[str] = []
        try:
            claimed = self.store.claim_due(free, now, lease=LEASE, templates=names)
        finally:
            for _ in range(free - len(claimed)):  # the workers not given a grant
                self._free.release()
        for account in claimed:
            self._tasks.put(account)
        if len(claimed) == free:
            return 0.0  # there may be more due: claim again as soon as a worker is free
        next_due = self.store.next_due(names, now)
        return IDLE_POLL if next_due is None else min(IDLE_POLL, max(0.0, next_due - now))

    def _work(self) -> None:
        while (name := self._tasks.get()) is not None:
            try:
                if not self.stopping.is_set():  # claimed but not started: its lease runs out and another host takes it
                    self._refresh(name)
            finally:
                self._free.release()
                self._wake.set()

    def _refresh(self, name: str) -> None:
        template_name, _, user = name.partition(USER_SEPARATOR)
        template = self.templates().get(template_name)
        if template is None:
            return  # removed from the config by a reload: its rows stay, unclaimed, until it comes back
        ok = False
        try:
            self.refresher.refresh(user_account(template, user), RefreshPolicy.SCHEDULED)
            ok = True
        except TemporaryError as exc:
            log.warning("%s: %s; retried by the next claim", name, exc)
        except FreshtokenError as exc:  # invalid_grant and the like: the saved state says so, and the row is not claimed again
            log.error("%s: %s", name, exc)
        except Exception:
            log.exception("%s: internal error refreshing", name)
        finally:
            with self._counting:  # `+=` from several workers at once could lose a count
                if ok:
                    self.refreshed += 1
                else:
                    self.failed += 1


class ClaimingStore(Protocol):
    """What the Claimer needs of a store (pgstore.PgStore has it)."""

    def claim_due(self, limit: int, now: float, *, lease: float = ..., templates: Sequence[str] | None = ...) -> list[str]: ...

    def next_due(self, templates: Sequence[str], now: float) -> float | None: ...
