"""The kill loop behind tests/test_crash.py and bench/crash.py.

The daemon runs against an in-process AuthServer that rotates refresh tokens
and revokes the whole grant when a consumed one comes back (RFC 9700
§4.14.2): one refresh token spent twice costs the user a new login. Short
access tokens keep the daemon refreshing several times a second, and the loop
SIGKILLs it at seeded random moments and restarts it at once.

After every kill each account is put in one of these classes, from the state
file, the token files and the server's own request log:

- `window`: the server rotated the refresh token but our state still holds
  the one it consumed. The kill landed between the server answering and the
  state's rename -- the one window no client can close (the answer is lost with
  the process). The grant is lost: the loop logs the account in again (a new
  grant, put in the config as a new seed, as a user would) and counts it.
- `after_save`: the state holds the new token but the token file still has
  the old one (killed between the state save and the outputs).
- `unexplained`: anything else that disagrees with the server. A bug.

Kills also leave temp files (`.freshtoken-tmp-*`) when they land inside an
atomic write. They are back-dated by an hour so that the next daemon must
treat them as stale and remove them; the report lists any that survive.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_plus

from harness import (
    AccountSpec,
    DaemonProcess,
    Sampler,
    TornFile,
    open_server_connections,
    read_state,
    read_token,
    temp_files,
    wait_for,
    write_config,
)

from freshtoken.testing import AuthServer
from freshtoken.fsutil import TEMP_MARK
from freshtoken.model import Secret

STALE_AGE = 3600.0


@dataclass
class CrashReport:
    kills: int = 0
    seconds: float = 0.0
    accounts: int = 0
    token_lifetime: float = 0.0
    kills_at_startup: int = 0  # drawn to land in the first 0.25 s: interpreter start, config, seeding
    kills_after_first_request: int = 0
    no_request_cycles: int = 0  # cycles whose daemon never reached the server before being killed
    window: list[tuple[int, str]] = field(default_factory=list)  # (kill number, account)
    after_save: int = 0
    kills_leaving_temps: int = 0
    unexplained: list[str] = field(default_factory=list)
    max_temp_files: int = 0
    max_state_temp_files: int = 0
    stale_temps_left: list[str] = field(default_factory=list)
    temps_left_at_end: int = 0
    torn: list[str] = field(default_factory=list)
    reader_samples: int = 0
    reader_valid_share: float = 0.0
    token_requests: int = 0
    refreshes_ok: int = 0
    reuse_count: int = 0
    relogins: int = 0
    needs_login_at_end: list[str] = field(default_factory=list)
    mismatched_at_end: list[str] = field(default_factory=list)
    final_exit_code: int | None = None
    early_exits: list[str] = field(default_factory=list)  # daemons that died before their SIGKILL

    def stale_temps_left_in(self, directory: str) -> list[str]:
        """Back-dated temp files still there at the end, in the `state` or `tokens` dir."""
        return [p for p in self.stale_temps_left if Path(p).parent.name == directory]

    @property
    def mid_refresh_kills(self) -> int:
        """Kills with visible evidence of landing inside a refresh: a lost answer, unwritten outputs, or a temp file."""
        return len(self.window) + self.after_save + self.kills_leaving_temps

    @property
    def grants_lost_outside_window(self) -> int:
        return len(self.unexplained) + len(self.needs_login_at_end) + len(self.mismatched_at_end)

    def summary(self) -> str:
        return (
            f"{self.kills} SIGKILLs in {self.seconds:.1f}s ({self.accounts} accounts, {self.token_lifetime:g}s tokens): "
            f"{self.token_requests} token requests ({self.refreshes_ok} refreshes), reuse {self.reuse_count}, "
            f"lost-response window hits {len(self.window)}, killed after state save before outputs {self.after_save}, "
            f"kills leaving temp files {self.kills_leaving_temps} (max {self.max_temp_files} at once; stale ones left: "
            f"{len(self.stale_temps_left_in('state'))} in state, {len(self.stale_temps_left_in('tokens'))} in tokens), "
            f"unexplained {len(self.unexplained)}, torn reads {len(self.torn)} of {self.reader_samples}, "
            f"needs login at end {len(self.needs_login_at_end)}, final exit {self.final_exit_code}"
        )


def _client_of(record_headers: dict[str, str], form: dict[str, str]) -> str | None:
    auth = record_headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        try:
            return unquote_plus(base64.b64decode(auth[6:]).decode().partition(":")[0])
        except ValueError:
            return None
    return form.get("client_id")


class CrashLoop:
    """One server, `accounts` accounts (one OAuth client each, so the request log tells them apart), one work dir."""

    def __init__(
        self,
        workdir: Path,
        *,
        accounts: int = 5,
        token_lifetime: float = 1.0,
        seed: int = 0,
        max_delay: float = 0.3,
        startup_share: float = 0.2,
        settings: dict[str, object] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.env = env
        self.state_dir = workdir / "state"
        self.token_dir = workdir / "tokens"
        self.config = workdir / "freshtoken.yaml"
        self.log = workdir / "daemon.log"
        self.rng = random.Random(seed)  # noqa: S311 - seeded simulation, not secrets
        self.max_delay = max_delay
        self.startup_share = startup_share
        self.settings = {"read_timeout": 2, "connect_timeout": 2, "backoff_max": 2, **(settings or {})}
        self.names = [f"acct{i}" for i in range(accounts)]
        self.clients = {name: (f"crash-client-{i}", f"crash-secret-{i}") for i, name in enumerate(self.names)}
        self.server = AuthServer(
            token_lifetime=token_lifetime,
            rotate_refresh_tokens=True,
            revoke_grant_on_reuse=True,
            clients=dict(self.clients.values()),
            request_log_size=None,
        )
        self.specs: dict[str, AccountSpec] = {}
        # A recent refresh token of each account's grant: the server forgets consumed ones after 64 rotations.
        self.anchor: dict[str, str] = {}
        self.report = CrashReport(accounts=accounts, token_lifetime=token_lifetime)
        self._backdated: set[Path] = set()

    # ------------------------------------------------------------ set-up

    def __enter__(self) -> CrashLoop:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._plant_stale_temps()
        self.server.start()
        for name in self.names:
            self._login(name)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def _plant_stale_temps(self) -> None:
        """Leftovers of a crash from before the loop, so that cleaning them is tested whatever the kills leave."""
        stale = time.time() - STALE_AGE
        for directory, mode, name in ((self.state_dir, 0o700, "acct0.json"), (self.token_dir, 0o750, "acct0.token")):
            directory.mkdir(mode=mode, parents=True, exist_ok=True)
            temp = directory / f"{TEMP_MARK}{name}.0badc0de"
            temp.write_text("half a toke")
            os.utime(temp, (stale, stale))
            self._backdated.add(temp)

    def _login(self, name: str) -> None:
        """What `freshtoken login` would do for the user: a new grant, here handed over as the config's seed."""
        client_id, secret = self.clients[name]
        self.specs[name] = AccountSpec(self.server.token_url, client_id, secret, self.server.issue_refresh_token(client_id))
        self.anchor[name] = self.specs[name].refresh_token
        write_config(self.config, state_dir=self.state_dir, token_dir=self.token_dir, accounts=self.specs, settings=self.settings)

    # ------------------------------------------------------------ the loop

    def run(self, kills: int, *, final_run: float = 2.0) -> CrashReport:
        report = self.report
        started = time.monotonic()
        sampler = Sampler(
            self.token_dir,
            self.names,
            self.server.is_valid_access_token,
            interval=0.002,
            rng=random.Random(self.rng.random()),  # noqa: S311 - seeded simulation, not secrets
            state_dir=self.state_dir,
        )
        sampler.start()
        try:
            for number in range(1, kills + 1):
                self._one_kill(number)
            # A last, undisturbed run must bring every account back and stop cleanly.
            with DaemonProcess(self.config, self.log, env=self.env) as daemon:
                requests_before = self.server.token_requests
                self.server.wait_until(lambda s: s.token_requests > requests_before, 10)
                time.sleep(final_run)
                report.final_exit_code = daemon.stop()
        finally:
            stats = sampler.stop()
        report.seconds = time.monotonic() - started
        report.torn += stats.torn
        report.reader_samples = stats.samples
        report.reader_valid_share = stats.valid_share
        self._final_checks()
        return report

    def _one_kill(self, number: int) -> None:
        report = self.report
        requests_before = self.server.token_requests
        daemon = DaemonProcess(self.config, self.log, env=self.env).start()
        try:
            if self.rng.random() < self.startup_share:
                report.kills_at_startup += 1
                time.sleep(self.rng.uniform(0.0, 0.25))
            else:
                report.kills_after_first_request += 1
                if not self.server.wait_until(lambda s: s.token_requests > requests_before, 10):
                    report.no_request_cycles += 1
                time.sleep(self.rng.uniform(0.0, self.max_delay))
        finally:
            if daemon.alive():
                daemon.kill()
            else:
                report.early_exits.append(f"cycle {number}: exit {daemon.proc.returncode}")  # type: ignore[union-attr]
        report.kills += 1
        self._settle()
        self._inspect(number)

    def _settle(self) -> None:
        """Let the server finish every request the dead process sent, before anything is judged.

        A request can be whole in a socket buffer (or a connection still in the
        listen backlog) when the process dies, and be read, and rotate the
        refresh token, only later: so wait until the server has closed every
        connection (it reads to the end first), then until each logged request
        has its answer.
        """
        wait_for(lambda: open_server_connections(self.server.port) == 0, timeout=5, poll=0.002)
        self.server.wait_until(lambda s: all(r.status is not None for r in s.requests[-20:]), 2)

    def _inspect(self, number: int) -> None:
        report = self.report
        temps = temp_files(self.state_dir, self.token_dir)
        report.max_temp_files = max(report.max_temp_files, len(temps))
        report.max_state_temp_files = max(report.max_state_temp_files, len(temp_files(self.state_dir)))
        fresh = [t for t in temps if t not in self._backdated]
        if fresh:
            report.kills_leaving_temps += 1
        stale = time.time() - STALE_AGE
        for temp in fresh:
            try:
                os.utime(temp, (stale, stale))
            except FileNotFoundError:
                continue
            self._backdated.add(temp)
        log = self.server.requests
        for name in self.names:
            kind = self._classify(name, log)
            if kind == "window":
                report.window.append((number, name))
                report.relogins += 1
                self._login(name)
            elif kind == "after_save":
                report.after_save += 1
            elif kind != "ok":
                report.unexplained.append(f"kill {number}: {name}: {kind}")
                report.relogins += 1
                self._login(name)  # keep the loop going on this account; the report already fails

    def _effective_refresh_token(self, name: str) -> str:
        """The refresh token the next daemon will present: the state's, unless the config holds a newer seed."""
        seed = self.specs[name].refresh_token
        try:
            state = read_state(self.state_dir, name)
        except TornFile as exc:
            self.report.torn.append(str(exc))
            return ""
        if state is None or state.get("seed") != Secret(seed).fingerprint():
            return seed
        return str(state.get("refresh_token") or "")

    def _classify(self, name: str, log: list) -> str:  # type: ignore[type-arg]
        presented = self._effective_refresh_token(name)
        live = self.server.current_refresh_token(self.anchor[name])
        if live is None:
            return "grant revoked"
        self.anchor[name] = live
        if presented != live:
            client_id = self.clients[name][0]
            mine = [r for r in log if r.path.endswith("/token") and _client_of(r.headers, r.form) == client_id]
            last = mine[-1] if mine else None
            if last is not None and last.form.get("refresh_token") == presented and last.status == 200:
                return "window"
            return "state holds a refresh token the server did not just rotate"
        try:
            state = read_state(self.state_dir, name)
            token = read_token(self.token_dir, name)
        except TornFile as exc:
            self.report.torn.append(str(exc))
            return "ok"
        if state and token and state.get("access_token") and state.get("access_token") != token:
            return "after_save"
        return "ok"

    def _final_checks(self) -> None:
        report = self.report
        report.token_requests = self.server.token_requests
        report.refreshes_ok = self.server.refreshes_ok
        report.reuse_count = self.server.reuse_count
        report.stale_temps_left = sorted(str(t) for t in self._backdated if t.exists())
        report.temps_left_at_end = len(temp_files(self.state_dir, self.token_dir))
        for name in self.names:
            state = read_state(self.state_dir, name) or {}
            if state.get("needs_login"):
                report.needs_login_at_end.append(name)
            live = self.server.current_refresh_token(self.anchor[name])
            if live is None or state.get("refresh_token") != live:
                report.mismatched_at_end.append(name)


def crash_run(workdir: Path, kills: int, **options: object) -> CrashReport:
    """Run the loop in `workdir` (emptied first) and return its report."""
    shutil.rmtree(workdir, ignore_errors=True)
    with CrashLoop(workdir, **options) as loop:  # type: ignore[arg-type]
        return loop.run(kills)
