"""Files that are never half-written: atomic replace, private directories, advisory locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

TEMP_MARK = ".freshtoken-tmp-"
TEMP_SUFFIX_LEN = 8  # hex digits after the last dot: `.freshtoken-tmp-<file name>.<8 hex>`
RESERVE = 64 * 1024  # a state file is ~1 KiB; room for long JWTs and extras
TOKEN_DIR_MODE = 0o750

Owner = tuple[int, int]  # (uid, gid) to give new files; -1 leaves one alone


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


def open_dir(path: Path) -> int:
    """An fd of the directory `path` itself: never of what a symlink there points to (ELOOP then)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def owner_as_root(directory: os.stat_result) -> Owner | None:
    """What root should give the files it creates in a directory: the directory's owner and group.

    A one-shot command run as root (`sudo freshtoken refresh`) must not leave
    root-owned files behind that the daemon's own user can then no longer
    open; anybody else creates files as themselves anyway.
    """
    if os.geteuid() != 0:
        return None
    return directory.st_uid, directory.st_gid


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


def is_temp_name(name: str) -> bool:
    """True only for names PendingWrite and probe_writable make: `.freshtoken-tmp-<name>.<8 hex>`.

    The sweep deletes what matches, so nothing an account owns (`x.json`,
    `x.lock`, `x.json.damaged-<time>`) may ever match, whatever the account is called.
    """
    if not name.startswith(TEMP_MARK):
        return False
    stem, dot, suffix = name[len(TEMP_MARK) :].rpartition(".")
    return bool(stem and dot) and len(suffix) == TEMP_SUFFIX_LEN and all(c in "0123456789abcdef" for c in suffix)


def _temp_path(path: Path) -> Path:
    return path.parent / f"{TEMP_MARK}{path.name}.{secrets.token_hex(TEMP_SUFFIX_LEN // 2)}"


class PendingWrite:
    """A temp file beside `path`, created with its final mode, owner and group, to replace `path` later.

    `reserve` bytes of disk are allocated up front: the state is written only
    after the server has answered, and by then the old refresh token is spent,
    so "the disk is full" must be found out before the request, not after.
    With `keep_old` the file being replaced gets a second (temp) name until the
    commit is done: freeing the old inode is what makes a rename over a file
    slow (0.3 ms median and several ms at times on ext4, against 0.02 ms), and
    commit(durable_first=False) is raced against process kills.
    """

    def __init__(
        self,
        path: Path,
        mode: int,
        *,
        group: str | int | None = None,
        owner: Owner | None = None,
        reserve: int = 0,
        keep_old: bool = False,
    ) -> None:
        gid = resolve_group(group)
        uid, default_gid = owner or (-1, -1)
        gid = gid if gid != -1 else default_gid
        self.path = path
        self.reserved = reserve
        self.temp = _temp_path(path)
        self.old_link: Path | None = None
        self.fd: int | None = os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            if uid != -1 or gid != -1:
                os.fchown(self.fd, uid, gid)
            os.fchmod(self.fd, mode)  # after fchown: changing the group may clear setgid bits
            if reserve:
                os.posix_fallocate(self.fd, 0, reserve)
        except BaseException:
            self.discard()
            raise
        if keep_old:
            link = _temp_path(path)
            with contextlib.suppress(OSError):  # no old file yet, or no hard links here: only slower
                os.link(path, link, follow_symlinks=False)
                self.old_link = link

    def commit(self, data: bytes, *, durable_first: bool = True) -> None:
        """Write `data`, rename the temp file over `path`, and make both durable.

        `durable_first=True` fsyncs the data before the rename, so that after a
        power loss `path` holds the whole old or the whole new content. With
        False the rename comes first and the fsyncs right after: for a caller
        whose old content is worthless already (see Refresher._save_answer).
        """
        fd = self.fd
        if fd is None:
            raise ValueError("PendingWrite already used")
        # Racing a kill (durable_first=False), the rest of the reservation is filled with spaces and
        # cut off only after the rename: an ftruncate costs 0.1-0.25 ms inside the window, writing the
        # spaces a few microseconds. The file is valid JSON (data, then whitespace) at every moment, so a
        # reader never sees the zeroed tail of a reservation.
        pad = max(0, self.reserved - len(data)) if not durable_first and data.lstrip()[:1] in (b"{", b"[") else 0
        try:
            view = memoryview(data + b" " * pad if pad else data)
            offset = 0
            while offset < len(view):
                offset += os.pwrite(fd, view[offset:], offset)
            if not pad:
                os.ftruncate(fd, len(data))
            if durable_first:
                os.fsync(fd)
            os.replace(self.temp, self.path)
        except BaseException:
            self.discard()
            raise
        self.fd = None
        try:
            if pad:
                os.ftruncate(fd, len(data))
            if not durable_first:
                os.fsync(fd)
            fsync_dir(self.path.parent)  # makes the rename itself durable; without it a crash can bring back the old name
        finally:
            os.close(fd)
            self._drop_old_link()

    def discard(self) -> None:
        """Remove the temp file (and give back its reservation); harmless after commit."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            with contextlib.suppress(OSError):
                os.unlink(self.temp)
        self._drop_old_link()

    def _drop_old_link(self) -> None:
        if self.old_link is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.old_link)
            self.old_link = None

    def __enter__(self) -> PendingWrite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def atomic_write(path: Path, data: bytes, mode: int, group: str | int | None = None, *, owner: Owner | None = None) -> None:
    """Replace `path` with `data` so that a reader sees the whole old or the whole new file.

    The temp file lives in the same directory (rename is only atomic within one
    file system) and gets its final mode and group before the first byte is
    written: there is never a moment in which the token is readable by more
    people than the final file allows. The directory fsync makes the rename
    itself durable; without it a crash can bring back the old name.
    """
    PendingWrite(path, mode, group=group, owner=owner).commit(data)


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
        if is_temp_name(entry.name):
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode) and now - info.st_mtime >= older_than:
                    os.unlink(entry.path)
                    removed += 1
    return removed


def probe_writable(directory: Path) -> None:
    """Raise OSError unless a file can be created and removed in `directory` (a start-up check)."""
    temp = _temp_path(directory / "probe")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    os.unlink(temp)


@contextlib.contextmanager
def locked_file(
    path: Path,
    *,
    timeout: float | None = None,
    poll: float = 0.05,
    owner: Owner | None = None,
    on_busy: Callable[[], object] | None = None,
) -> Iterator[int]:
    """Hold an exclusive flock on `path` (created 0600, never deleted) while in the block.

    The lock file is never removed, so everybody always locks the same inode;
    certbot's lock.py shows the race that deleting it would open (a process
    locks a file another has just unlinked, a third creates a new one, and two
    "exclusive" holders run at once). `timeout=None` waits for ever.
    `on_busy` is called once if the lock is held by someone else, before waiting.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_busy is not None:
                on_busy()
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
