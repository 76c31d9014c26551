"""The state dir: one private JSON file per account, a lock per account, one daemon lock.

The file implementation of statestore.StateStore: a state is written only in
`with store.transaction(name) as tx`, which holds the account's flock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from freshtoken.errors import AlreadyRunning, FreshtokenError, StateUnusable, StateWriteError, TemporaryError
from freshtoken.fsutil import (
    RESERVE,
    TOKEN_DIR_MODE,
    Owner,
    PendingWrite,
    clean_stale_temps,
    ensure_dir,
    locked_file,
    open_dir,
    owner_as_root,
)
from freshtoken.model import AccountState
from freshtoken.statestore import SaveFailed

log = logging.getLogger(__name__)

STATE_DIR_MODE = 0o700
STATE_FILE_MODE = 0o600
MAX_STATE_BYTES = 1 << 20  # a state file is ~1 KiB; a bigger one is not ours
LOCK_TIMEOUT = 120.0  # longer than any one refresh can take (connect + read timeouts, a hook)
WAKE_SOCKET = "daemon.sock"  # a running daemon listens here for "rescan" (a login or logout just changed the state)
TOKEN_DIR_LOCK = ".freshtoken-daemon.lock"  # a leading dot: no account's file can be called so


def read_state_file(path: Path) -> AccountState:
    """One state file, read only: an empty state if there is none, StateUnusable if it is damaged.

    OSError (permission denied, say) is left to the caller, who knows whom to blame.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return AccountState()
    try:
        if len(raw) > MAX_STATE_BYTES:
            raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
        return AccountState.from_json(json.loads(raw))
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise StateUnusable(f"state {path} is unusable ({reason})") from None


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class Store:
    def __init__(self, state_dir: Path, *, lock_timeout: float = LOCK_TIMEOUT, on_lock_busy: Callable[[str], object] | None = None) -> None:
        """`on_lock_busy(account)` is called when an account lock is found held, before waiting for it (a test seam)."""
        self.dir = state_dir
        self.lock_timeout = lock_timeout
        self.on_lock_busy = on_lock_busy
        self.owner: Owner | None = None  # root keeps the state dir's owner on every file it creates here
        self._ready = False
        self._held = threading.local()  # the accounts whose transaction this thread is in

    def prepare(self) -> None:
        """Create the dir 0700 (tightening a wider one), check its owner, clear temp files from a crash.

        The dir is opened without following a symlink and tightened through
        that fd: a chmod by name would follow a link planted in its place.
        """
        if self._ready:
            return
        try:
            ensure_dir(self.dir, STATE_DIR_MODE)
            if stat.S_ISLNK(os.lstat(self.dir).st_mode):
                raise FreshtokenError(f"state dir {self.dir} is a symbolic link; set state_dir to the real directory")
            self._check_owner(os.lstat(self.dir).st_uid)  # before open: a 0700 dir of another user cannot be opened
            fd = open_dir(self.dir)
        except OSError as exc:
            raise FreshtokenError(f"cannot use state dir {self.dir}: {_reason(exc)}") from None
        try:
            info = os.fstat(fd)
            self._check_owner(info.st_uid)  # the dir we opened, should it have been swapped since
            mode = info.st_mode & 0o777
            if mode & 0o077:
                log.warning("state dir %s had mode %04o; tightening to 0700", self.dir, mode)
                os.fchmod(fd, STATE_DIR_MODE)
            self.owner = owner_as_root(info)
        except OSError as exc:
            raise FreshtokenError(f"cannot use state dir {self.dir}: {_reason(exc)}") from None
        finally:
            os.close(fd)
        clean_stale_temps(self.dir)
        self._ready = True

    def _check_owner(self, uid: int) -> None:
        """Refuse another user's state dir; root may use any, and keeps its owner on what it creates."""
        euid = os.geteuid()
        if uid != euid and euid != 0:
            owner = _user(uid)
            raise FreshtokenError(
                f"state dir {self.dir} belongs to {owner} (uid {uid}), not to uid {euid}; "
                f"run freshtoken as its owner: `sudo -u {owner} freshtoken ...`"
            )

    def path(self, account: str) -> Path:
        return self.dir / f"{account}.json"

    @contextlib.contextmanager
    def transaction(self, account: str) -> Iterator[FileTransaction]:
        """Hold the account's exclusive lock and yield its state, read under it (see statestore.StateTransaction)."""
        with self._locked(account):
            tx = FileTransaction(self, account)
            try:
                yield tx
            finally:
                tx.discard()

    @contextlib.contextmanager
    def _locked(self, account: str) -> Iterator[None]:
        self.prepare()
        path = self.dir / f"{account}.lock"
        # A second flock on another fd blocks even in the same process: a nested transaction
        # (store.delete() inside one, say) would wait lock_timeout on itself. Say so at once.
        held: set[str] = self._held.__dict__.setdefault("accounts", set())
        if account in held:
            raise RuntimeError(f"{account}: this thread already holds the account's transaction; use its tx.save() or tx.delete()")
        busy = self.on_lock_busy
        on_busy = None if busy is None else functools.partial(busy, account)
        with contextlib.ExitStack() as stack:
            try:  # only around taking the lock: errors of the block itself pass through unchanged
                stack.enter_context(locked_file(path, timeout=self.lock_timeout, owner=self.owner, on_busy=on_busy))
            except TimeoutError:
                raise TemporaryError(
                    f"{account}: another freshtoken process has held the account lock for {self.lock_timeout:.0f}s"
                ) from None
            except OSError as exc:
                raise StateWriteError(f"cannot open lock {path}: {_reason(exc)}") from None
            held.add(account)
            try:
                yield
            finally:
                held.discard(account)

    def load(self, account: str) -> AccountState:
        """The stored state, read only: never changes anything on disk (`status` and `get` use it).

        Raises StateUnusable for a file this code cannot use, FreshtokenError if it cannot be read.
        """
        path = self.path(account)
        try:
            return read_state_file(path)
        except OSError as exc:
            raise FreshtokenError(f"cannot read state {path}: {_reason(exc)}") from None

    def delete(self, account: str) -> bool:
        """Remove the account's state file in a transaction of its own; False if there was none.

        The lock file stays: another process may be waiting on it. Raises StateWriteError.
        """
        with self.transaction(account) as tx:
            return tx.delete()

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
            if self.owner is not None:
                os.chown(path, *self.owner, follow_symlinks=False)
        except OSError as exc:
            sock.close()
            log.warning("cannot listen on %s (%s); a new login is picked up at the next heartbeat", path, exc.strerror or exc)
            return None
        return sock

    def close(self) -> None:
        """Nothing stays open between transactions here (statestore.StateStore.close)."""

    def check(self) -> None:
        """Nothing to check before a daemon starts: prepare() does it at first use."""

    def watch(self, changed: Callable[[str | None, int], None], stopping: threading.Event) -> bool:
        """No other writer to hear of: the daemon holds the state dir's lock (statestore.StateStore.watch)."""
        return False

    def daemon_lock(self, token_dir: Path | None = None) -> DaemonLock:
        """The lock a daemon holds for its whole life: on the state dir, and on `token_dir` too if given.

        Two daemons with different state dirs but one token dir would refresh the
        same accounts from two copies of the state, spending each refresh token twice.
        """
        self.prepare()
        return DaemonLock(self.dir / "daemon.pid", owner=self.owner, token_dir=token_dir)


class FileTransaction:
    """One account's state file under the account lock: statestore.StateTransaction for the state dir.

    A state file this code cannot use reads as an empty state (starting afresh
    from the config's seed); it is moved to `<name>.damaged-<time>` only when the
    transaction first writes (reserve or save), and deleted by delete(): a
    transaction that only reads changes nothing on disk.
    """

    def __init__(self, store: Store, account: str) -> None:
        self.account = account
        self.path = store.path(account)
        self._owner = store.owner
        self._pending: PendingWrite | None = None
        self.unusable: StateUnusable | None = None  # why the file on disk could not be used, until it is set aside
        try:
            self.state = store.load(account)
        except StateUnusable as exc:
            self.unusable = exc
            self.state = AccountState()

    def _set_aside(self) -> None:
        # Writes are atomic, so an unusable file is damage from outside (an editor, a disk, another
        # version): keep the evidence, out of the way of the state that replaces it.
        if self.unusable is None:
            return
        aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            pass
        except OSError as move:
            raise StateWriteError(f"{self.unusable}; cannot move it aside: {aside}: {_reason(move)}") from None
        else:
            log.error("%s; moved it to %s and starting afresh", self.unusable, aside)
        self.unusable = None

    def reserve(self) -> None:
        """Create the next state's temp file now, its disk space allocated; SaveFailed if it cannot be (send nothing then)."""
        self._set_aside()
        if self._pending is None:
            try:
                self._pending = PendingWrite(self.path, STATE_FILE_MODE, owner=self._owner, reserve=RESERVE, keep_old=True)
            except OSError as exc:
                raise SaveFailed(str(self.path), _reason(exc)) from None

    def before_send(self) -> None:
        """No bound: the account's flock lasts as long as this process (see statestore.StateTransaction)."""

    def save(self, state: AccountState, *, rotated: bool = False) -> None:
        """Replace the state file (through the reservation, if any); SaveFailed if it could not be.

        Not rotated: fsync, then rename, so a power loss leaves the whole old
        file or the whole new one (the old refresh token still works). Rotated:
        rename, then fsync (PendingWrite.commit(durable_first=False)): the old
        file's refresh token is spent, and the new one is in place one step
        after the answer was parsed instead of after a disk flush. Either way
        save() returns only once both the file and the directory are fsynced.
        """
        self._set_aside()
        data = json.dumps(state.to_json(), sort_keys=True).encode() + b"\n"  # no indent: the C encoder, 5x faster
        writer, self._pending = self._pending, None
        try:
            writer = writer or PendingWrite(self.path, STATE_FILE_MODE, owner=self._owner)
            writer.commit(data, durable_first=not rotated)
        except OSError as exc:
            raise SaveFailed(str(self.path), _reason(exc)) from None
        self.state = state

    def delete(self) -> bool:
        """Remove the state file, an unusable one too; False if there was none. Raises StateWriteError."""
        self.discard()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StateWriteError(f"cannot delete state {self.path}: {_reason(exc)}") from None
        finally:
            self.state, self.unusable = AccountState(), None
        with contextlib.suppress(OSError):  # the entry's removal made durable; the unlink itself has happened
            fd = open_dir(self.path.parent)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return True

    def discard(self) -> None:
        """Give back an unused reservation (at the end of the block)."""
        if self._pending is not None:
            self._pending.discard()
            self._pending = None


class DaemonLock:
    """flocks held for the daemon's whole life; the files hold its pid for the error message."""

    def __init__(self, path: Path, *, owner: Owner | None = None, token_dir: Path | None = None) -> None:
        self.path = path
        self.owner = owner
        self.token_dir = token_dir
        self.fd: int | None = None
        self.token_fd: int | None = None

    def acquire(self) -> None:
        fd = self._lock(self.path, self.owner)
        if fd is None:
            pid = self._holder(self.path)
            raise AlreadyRunning(f"another freshtoken daemon (pid {pid}) is already using state dir {self.path.parent}")
        self._write(fd, f"{os.getpid()}\n")
        self.fd = fd
        if self.token_dir is not None:
            try:
                self.token_fd = self._lock_token_dir(self.token_dir)
            except BaseException:
                self.release()
                raise

    def _lock_token_dir(self, token_dir: Path) -> int:
        path = token_dir / TOKEN_DIR_LOCK
        try:
            ensure_dir(token_dir, TOKEN_DIR_MODE)
            owner = owner_as_root(os.stat(token_dir))
        except OSError as exc:
            raise FreshtokenError(f"cannot use token dir {token_dir}: {_reason(exc)}") from None
        fd = self._lock(path, owner)
        if fd is None:
            holder = self._holder(path).split("\n")
            where = f", state dir {holder[1]}" if len(holder) > 1 and holder[1] else ""
            raise AlreadyRunning(f"another freshtoken daemon (pid {holder[0]}{where}) is already writing token dir {token_dir}")
        self._write(fd, f"{os.getpid()}\n{self.path.parent}\n")
        return fd

    @staticmethod
    def _lock(path: Path, owner: Owner | None) -> int | None:
        """An fd holding an exclusive flock on `path`, or None if another process holds it."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise FreshtokenError(f"cannot open lock {path}: {_reason(exc)}") from None
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise FreshtokenError(f"cannot lock {path}: {_reason(exc)}") from None
        return fd

    @staticmethod
    def _holder(path: Path) -> str:
        try:
            return path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    @staticmethod
    def _write(fd: int, text: str) -> None:
        with contextlib.suppress(OSError):  # only for the message of a second daemon: a full disk must not stop this one
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode(), 0)

    def release(self) -> None:
        for attr in ("token_fd", "fd"):
            fd = getattr(self, attr)
            if fd is not None:
                os.close(fd)
                setattr(self, attr, None)

    def __enter__(self) -> DaemonLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
