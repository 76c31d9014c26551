"""The state dir: one private JSON file per account, a lock per account, one daemon lock."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from freshtoken.errors import AlreadyRunning, FreshtokenError, TemporaryError
from freshtoken.fsutil import atomic_write, clean_stale_temps, ensure_dir, locked_file
from freshtoken.model import AccountState

log = logging.getLogger(__name__)

STATE_DIR_MODE = 0o700
STATE_FILE_MODE = 0o600
LOCK_TIMEOUT = 120.0  # longer than any one refresh can take (connect + read timeouts, a hook)
WAKE_SOCKET = "daemon.sock"  # a running daemon listens here for "rescan" (a login or logout just changed the state)


class Store:
    def __init__(self, state_dir: Path, *, lock_timeout: float = LOCK_TIMEOUT) -> None:
        self.dir = state_dir
        self.lock_timeout = lock_timeout
        self._ready = False

    def prepare(self) -> None:
        """Create the dir 0700 (tightening a wider one) and clear temp files from a crash."""
        if self._ready:
            return
        try:
            ensure_dir(self.dir, STATE_DIR_MODE)
            mode = self.dir.stat().st_mode & 0o777
            if mode & 0o077:
                log.warning("state dir %s had mode %04o; tightening to 0700", self.dir, mode)
                os.chmod(self.dir, STATE_DIR_MODE)
        except OSError as exc:
            raise FreshtokenError(f"cannot use state dir {self.dir}: {exc.strerror or exc}") from None
        clean_stale_temps(self.dir)
        self._ready = True

    def path(self, account: str) -> Path:
        return self.dir / f"{account}.json"

    @contextlib.contextmanager
    def locked(self, account: str) -> Iterator[None]:
        """Hold the account's exclusive lock. Re-read the state inside: it may have changed while we waited."""
        self.prepare()
        try:
            with locked_file(self.dir / f"{account}.lock", timeout=self.lock_timeout):
                yield
        except TimeoutError:
            raise TemporaryError(f"{account}: another freshtoken process has held the account lock for {self.lock_timeout:.0f}s") from None

    def load(self, account: str) -> AccountState:
        path = self.path(account)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return AccountState()
        except OSError as exc:
            raise FreshtokenError(f"cannot read state {path}: {exc.strerror}") from None
        try:
            return AccountState.from_json(json.loads(raw))
        except (ValueError, TypeError, KeyError):
            # Writes are atomic, so this is damage from outside (an editor, a disk).
            # Keep the evidence and start over from the config's seed.
            aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
            os.replace(path, aside)
            log.error("state %s was unreadable; moved it to %s and starting afresh", path, aside)
            return AccountState()

    def save(self, account: str, state: AccountState) -> None:
        self.prepare()
        data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode() + b"\n"
        try:
            atomic_write(self.path(account), data, STATE_FILE_MODE)
        except OSError as exc:
            raise FreshtokenError(f"cannot write state {self.path(account)}: {exc.strerror or exc}") from None

    def mtime(self, account: str) -> float | None:
        try:
            return self.path(account).stat().st_mtime
        except OSError:
            return None

    def wake_daemon(self, word: str = "rescan") -> bool:
        """Tell a daemon running on this state dir to re-read it now; False if none listens.

        A datagram to a socket in the (private) state dir, not a signal to the pid in
        daemon.pid: that pid may be stale and belong to another process by now.
        """
        path = self.dir / WAKE_SOCKET
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(word.encode(), str(path))
            return True
        except OSError:  # no daemon (ECONNREFUSED, ENOENT), or a path too long for AF_UNIX
            return False

    def open_wake_socket(self) -> socket.socket | None:
        """The daemon's end of wake_daemon(); call it only while holding the daemon lock."""
        path = self.dir / WAKE_SOCKET
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # left by a daemon that was killed; we hold the daemon lock now
            old_umask = os.umask(0o177)  # the socket file is created 0600 like the rest of the state dir
            try:
                sock.bind(str(path))
            finally:
                os.umask(old_umask)
        except OSError as exc:
            sock.close()
            log.warning("cannot listen on %s (%s); a new login is picked up at the next heartbeat", path, exc.strerror or exc)
            return None
        return sock

    def daemon_lock(self) -> DaemonLock:
        self.prepare()
        return DaemonLock(self.dir / "daemon.pid")


class DaemonLock:
    """An flock held for the daemon's whole life; the file holds its pid for the error message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            try:
                pid = self.path.read_text().strip() or "unknown"
            except OSError:
                pid = "unknown"
            raise AlreadyRunning(f"another freshtoken daemon (pid {pid}) is already using state dir {self.path.parent}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> DaemonLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
