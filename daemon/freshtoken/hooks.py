"""`on_refresh` programs: no shell, no token, a clean environment and a time limit."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        log.error("hook for %s killed after %ss: %s", account, timeout, argv[0])
        return None
    if process.returncode:
        last = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
        log.warning("hook for %s exited %s: %s%s", account, process.returncode, argv[0], f" ({last[0][:200]})" if last else "")
    return process.returncode
