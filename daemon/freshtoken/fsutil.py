"""Files that are never half-written: atomic replace, private directories, advisory locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

TEMP_MARK = ".freshtoken-tmp-"


def ensure_dir(path: Path, mode: int) -> None:
    """Create `path` (and parents) with `mode`; an existing directory keeps its mode."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", str(path)) from None
        return
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, mode)
    os.chmod(path, mode)  # mkdir's mode is filtered by the umask; chmod is not


def resolve_group(group: str | int | None) -> int:
    """A gid from a group name or number; -1 (leave alone) for None."""
    if group is None:
        return -1
    if isinstance(group, str) and group.isascii() and group.isdigit():
        group = int(group)
    if isinstance(group, int):
        # fchown takes -1 as "leave alone" and raises OverflowError outside gid_t: both would be surprises.
        if not 0 <= group < 2**32 - 1:
            raise LookupError(f"{group} is not a group id")
        return group
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise LookupError(f"no such group {group!r}") from None


def atomic_write(path: Path, data: bytes, mode: int, group: str | int | None = None) -> None:
    """Replace `path` with `data` so that a reader sees the whole old or the whole new file.

    The temp file lives in the same directory (rename is only atomic within one
    file system) and gets its final mode and group before the first byte is
    written: there is never a moment in which the token is readable by more
    people than the final file allows. The directory fsync makes the rename
    itself durable; without it a crash can bring back the old name.
    """
    gid = resolve_group(group)
    directory = path.parent
    temp = directory / f"{TEMP_MARK}{path.name}.{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        if gid != -1:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)  # after fchown: changing the group may clear setgid bits
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    os.close(fd)
    try:
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_stale_temps(directory: Path, older_than: float = 60.0, now: float | None = None) -> int:
    """Remove temp files a crash left behind; returns how many. Young ones may be another writer's."""
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        if entry.name.startswith(TEMP_MARK):
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime >= older_than:
                    os.unlink(entry.path)
                    removed += 1
    return removed


def probe_writable(directory: Path) -> None:
    """Raise OSError unless a file can be created and removed in `directory` (a start-up check)."""
    temp = directory / f"{TEMP_MARK}probe.{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    os.unlink(temp)


@contextlib.contextmanager
def locked_file(path: Path, *, timeout: float | None = None, poll: float = 0.05) -> Iterator[int]:
    """Hold an exclusive flock on `path` (created 0600, never deleted) while in the block.

    The lock file is never removed, so everybody always locks the same inode;
    certbot's lock.py shows the race that deleting it would open (a process
    locks a file another has just unlinked, a third creates a new one, and two
    "exclusive" holders run at once). `timeout=None` waits for ever.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"{path} is locked by another process") from None
                time.sleep(poll)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock
