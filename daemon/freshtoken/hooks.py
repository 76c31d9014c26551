"""`on_refresh` programs: no shell, no token, a clean environment and a time limit."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STDERR_TAIL = 8192  # bytes of a failed hook's stderr read back for its last line
_OPAQUE = re.compile(r"[A-Za-z0-9_\-.~+=]{32,}")  # a bearer token, a JWT part, a base64 secret


def hook_environment(account: str, token_file: Path, expires_at: float) -> dict[str, str]:
    """All a hook gets: where the token is, never the token (nor anything of ours)."""
    return {
        "PATH": SAFE_PATH,
        "FRESHTOKEN_ACCOUNT": account,
        "FRESHTOKEN_TOKEN_FILE": str(token_file),
        "FRESHTOKEN_EXPIRES_AT": str(int(expires_at)),
    }


def run_hook(argv: Sequence[str], account: str, token_file: Path, expires_at: float, timeout: float) -> int | None:
    """Run one hook to completion; returns its exit status, or None if it could not start or was killed.

    The hook is judged by its own exit: a child it leaves running in the background (`cmd &`)
    keeps whatever it inherited, so stderr goes to an unnamed temp file, not a pipe whose
    end-of-file would wait for every such child.
    """
    try:
        stderr: IO[bytes] = tempfile.TemporaryFile(prefix="freshtoken-hook-")
    except OSError as exc:  # no writable temp dir: run the hook anyway, without its stderr
        log.warning("hook for %s: no temp file for its stderr (%s); running it without", account, exc.strerror or exc)
        stderr = open(os.devnull, "w+b")  # noqa: SIM115 - closed by the with below
    with stderr:
        try:
            process = subprocess.Popen(
                list(argv),
                env=hook_environment(account, token_file, expires_at),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd="/",
                start_new_session=True,  # its own process group, so a timeout kills its children too
                close_fds=True,
            )
        except OSError as exc:
            log.error("hook for %s could not start: %s: %s", account, argv[0], exc.strerror or exc)
            return None
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # it may have ended just now
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            log.error("hook for %s killed after %ss: %s", account, timeout, argv[0])
            return None
        if process.returncode:
            last = _last_line(_tail(stderr), token_file)
            log.warning("hook for %s exited %s: %s%s", account, process.returncode, argv[0], f" ({last})" if last else "")
    return process.returncode


def _tail(file: IO[bytes], size: int = STDERR_TAIL) -> bytes:
    """The end of what the hook wrote to stderr (it may have written a lot; only the last line is logged)."""
    end = file.seek(0, os.SEEK_END)
    file.seek(max(0, end - size))
    return file.read(size)


def _last_line(err: bytes, token_file: Path) -> str:
    """The hook's last stderr line, fit for our log: the hook can read the token (and `set -x` or curl
    would print it), so the token, and any long token-like word, is masked; control characters too."""
    lines = err.decode(errors="replace").strip().splitlines()
    if not lines:
        return ""
    line = lines[-1]
    with contextlib.suppress(OSError, UnicodeDecodeError):
        token = token_file.read_text().strip()
        if token:
            line = line.replace(token, "<redacted>")
    line = _OPAQUE.sub("<redacted>", line)
    line = "".join(ch if ch.isprintable() else " " for ch in line)
    return line[:200] + ("…" if len(line) > 200 else "")
