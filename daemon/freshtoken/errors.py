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


class RefreshFailed(FreshtokenError):
    """The server refused the request for a reason retrying will not fix."""


class InvalidGrant(RefreshFailed):
    """The refresh token is revoked or expired: only a new login helps."""


class TokenUnavailable(FreshtokenError):
    """`get`: the token file is missing, unreadable or too close to expiry."""


class LoginFailed(FreshtokenError):
    """`login` was denied, timed out, or the answer did not match the request."""


class AlreadyRunning(FreshtokenError):
    """Another daemon holds the state dir."""
