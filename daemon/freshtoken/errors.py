"""The exception tree: every error freshtoken reports to a user.

                               exit  outcome        retryable
    FreshtokenError              1   failed         no     the base: printed as one line, no traceback
    ├── UsageError               2   failed         no     a bad command line argparse could not see
    ├── ConfigError             78   failed         no     names the file, the key and the problem
    ├── TemporaryError          75   temporary      yes    network, timeout, 5xx, 429 (.retry_after)
    │   ├── StateWriteError     75   temporary      yes    the state dir cannot be written
    │   │   └── SaveFailed      75   temporary      yes    a save did not happen (.where, .reason)
    │   ├── MalformedAnswer     75   temporary      yes    a 2xx answer refused as it is (.refresh_token)
    │   ├── DatabaseUnavailable 75   database       yes    shared_state: PostgreSQL cannot be reached
    │   ├── LockLost            75   temporary      yes    shared_state: the session holding a row lock ended
    │   └── FencedOff           75   temporary      yes    shared_state: another host saved since this one read
    ├── RefreshFailed            1   failed         no     refused for a reason retrying will not fix
    │   ├── InvalidGrant         1   invalid_grant  no     only a new login helps: the daemon parks the account
    │   └── RotatedTokenNotSaved 1   temporary      yes    a rotated refresh token is held in memory only
    ├── OutputError              1   output         no     an output file could not be written
    ├── UnsafeToken              1   failed         no     a token that could inject a header or variable
    ├── StateUnusable            1   failed         no     a state file this version cannot use
    ├── TokenUnavailable         1   failed         no     `get`: no valid token
    ├── LoginFailed              1   failed         no     `login` denied, timed out or mismatched
    ├── AlreadyRunning           1   failed         no     another daemon holds the state dir
    ├── SchemaMismatch          78   failed         no     shared_state: run `freshtoken db init` (or upgrade)
    └── MissingExtra            78   failed         no     shared_state without psycopg: freshtoken[postgres]

Each class says, as class attributes, what the one-shot commands exit with
(`exit_code`, read by the CLI), how a run that ended in it is counted
(`outcome`, the label metrics count the run under) and whether it is worth a quick
retry (`retryable`, read by the daemon's planner, timing.plan_next). Nobody
else works out the kind of an error from its type.

Messages are single lines meant for users; none may contain a secret.
"""

from __future__ import annotations

TYPE_CHECKING = False  # importing typing would cost `freshtoken get` a few milliseconds
if TYPE_CHECKING:
    from typing import ClassVar


class FreshtokenError(Exception):
    """Base of every error freshtoken reports to a user (printed as one line, no traceback)."""

    exit_code: ClassVar[int] = 1
    outcome: ClassVar[str] = "failed"
    retryable: ClassVar[bool] = False
    retry_after: float | None = None  # seconds a server asked us to wait, where it said so


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
    outcome: ClassVar[str] = "temporary"
    retryable: ClassVar[bool] = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StateWriteError(TemporaryError):
    """The state dir cannot be written (full disk, permissions, I/O). The message names the path.

    Raised before any refresh token is spent whenever possible, so a retry later is safe.
    """


class SaveFailed(StateWriteError):
    """A save (or a reservation for one) that did not happen: `where` names the state, `reason` says why."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"cannot write state {where}: {reason}")
        self.where = where
        self.reason = reason


class MalformedAnswer(TemporaryError):
    """A 2xx answer freshtoken refuses to use as it is (too big, not JSON, absurd numbers).

    `refresh_token` carries a rotated refresh token the answer held, so that the
    caller can keep it even though the rest is refused (the old one is spent).
    """

    def __init__(self, message: str, refresh_token: object = None) -> None:
        super().__init__(message)
        self.refresh_token = refresh_token


class DatabaseUnavailable(TemporaryError):
    """The shared state's PostgreSQL cannot be reached, or the connection broke: serve the files, retry with backoff."""

    outcome: ClassVar[str] = "database"


class LockLost(TemporaryError):
    """The session holding an account's row lock has ended (idle timeout, network, restart): do not send, do not trust a save."""


class FencedOff(TemporaryError):
    """A save was refused because another host saved a newer version since this one was read."""


class RefreshFailed(FreshtokenError):
    """The server refused the request for a reason retrying will not fix."""


class InvalidGrant(RefreshFailed):
    """The refresh token is revoked or expired: only a new login helps."""

    outcome: ClassVar[str] = "invalid_grant"


class RotatedTokenNotSaved(RefreshFailed):
    """The server rotated the refresh token but the new one could not be saved: loud, exit 1.

    The daemon keeps the new state in memory and retries the save as soon as a
    network error; a one-shot command can only say so (the old refresh token is spent).
    """

    outcome: ClassVar[str] = "temporary"
    retryable: ClassVar[bool] = True


class OutputError(FreshtokenError):
    """One or more output files could not be written; the new token is safe in the state."""

    outcome: ClassVar[str] = "output"


class UnsafeToken(FreshtokenError):
    """A token with a control character or space could inject a header line or variable."""


class StateUnusable(FreshtokenError):
    """A stored state this version cannot use (bad JSON, absurd numbers, wrong types). One line, names the file."""


class TokenUnavailable(FreshtokenError):
    """`get`: the token file is missing, unreadable or too close to expiry."""


class LoginFailed(FreshtokenError):
    """`login` was denied, timed out, or the answer did not match the request."""


class AlreadyRunning(FreshtokenError):
    """Another daemon holds the state dir."""


class SchemaMismatch(FreshtokenError):
    """The database's freshtoken schema is missing, older or newer than this version's."""

    exit_code: ClassVar[int] = 78


class MissingExtra(FreshtokenError):
    """shared_state is set but psycopg is not installed."""

    exit_code: ClassVar[int] = 78
