"""`on_refresh` programs: no shell, no token, a clean environment and a time limit."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
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
    """Run one hook to completion; returns its exit status, or None if it could not start or was killed."""
    try:
        process = subprocess.Popen(
            list(argv),
            env=hook_environment(account, token_file, expires_at),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd="/",
            start_new_session=True,  # its own process group, so a timeout kills its children too
            close_fds=True,
        )
    except OSError as exc:
        log.error("hook for %s could not start: %s: %s", account, argv[0], exc.strerror or exc)
        return None
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # it may have ended just now
            os.killpg(process.pid, signal.SIGKILL)
        # wait(), not communicate(): a grandchild that left the group could hold stderr open for ever.
        process.wait()
        if process.stderr:
            process.stderr.close()
        log.error("hook for %s killed after %ss: %s", account, timeout, argv[0])
        return None
    if process.returncode:
        last = _last_line(err or b"", token_file)
        log.warning("hook for %s exited %s: %s%s", account, process.returncode, argv[0], f" ({last})" if last else "")
    return process.returncode


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
