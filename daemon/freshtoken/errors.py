"""The exception tree. Each class carries the exit code a one-shot command ends with.

Messages are single lines meant for users; none may contain a secret.
"""

from __future__ import annotations

TYPE_CHECKING = False  # importing typing would cost `freshtoken get` a few milliseconds
if TYPE_CHECKING:
    from typing import ClassVar


class FreshtokenError(Exception):
    """Base of every error freshtoken reports to a user (printed as one line, no traceback)."""

    exit_code: ClassVar[int] = 1


class UsageError(FreshtokenError):
    """A bad command line that argparse could not see, such as an unknown account name."""

    exit_code: ClassVar[int] = 2


class ConfigError(FreshtokenError):
    """The config file is wrong: names the file, the key and the problem."""

    exit_code: ClassVar[int] = 78

    def __init__(self, file: str, key: str, problem: str, line: int | None = None) -> None:
        self.file, self.key, self.problem, self.line = file, key, problem, line
        where = f"{file}:{line}" if line else file
        super().__init__(": ".join(part for part in (where, key, problem) if part))


class TemporaryError(FreshtokenError):
    """Network trouble, timeout, 5xx, 429: worth retrying later."""

    exit_code: ClassVar[int] = 75

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StateWriteError(TemporaryError):
    """The state dir cannot be written (full disk, permissions, I/O). The message names the path.

    Raised before any refresh token is spent whenever possible, so a retry later is safe.
    """


class MalformedAnswer(TemporaryError):
    """A 2xx answer freshtoken refuses to use as it is (too big, not JSON, absurd numbers).

    `refresh_token` carries a rotated refresh token the answer held, so that the
    caller can keep it even though the rest is refused (the old one is spent).
    """

    def __init__(self, message: str, refresh_token: object = None) -> None:
        super().__init__(message)
        self.refresh_token = refresh_token


class RefreshFailed(FreshtokenError):
    """The server refused the request for a reason retrying will not fix."""


class InvalidGrant(RefreshFailed):
    """The refresh token is revoked or expired: only a new login helps."""


class RotatedTokenNotSaved(RefreshFailed):
    """The server rotated the refresh token but the new one could not be saved: loud, exit 1.

    The daemon keeps the new state in memory and retries the save; a one-shot
    command can only say so (the old refresh token is spent).
    """


class TokenUnavailable(FreshtokenError):
    """`get`: the token file is missing, unreadable or too close to expiry."""


class LoginFailed(FreshtokenError):
    """`login` was denied, timed out, or the answer did not match the request."""


class AlreadyRunning(FreshtokenError):
    """Another daemon holds the state dir."""
