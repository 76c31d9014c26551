"""`on_refresh` hooks are judged by their own exit, not by children they leave running."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from fakes import poll
from freshtoken.hooks import run_hook

WAIT = 20.0


def _token_file(tmp_path: Path, token: str = "tok-" + "z" * 40) -> Path:
    path = tmp_path / "demo.token"
    path.write_text(token + "\n")
    return path


def _background_pid(pidfile: Path) -> int:
    assert poll(lambda: pidfile.exists() and pidfile.read_text().strip(), WAIT), "the hook never wrote its child's pid"
    return int(pidfile.read_text())


def _gone(pid: int) -> bool:
    """True once `pid` has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_a_hook_that_leaves_a_background_child_is_judged_by_its_own_exit(tmp_path):
    """`sh -c 'sleep 100 &'` exits 0 at once: run_hook returns 0 (not "killed") while the child still runs."""
    pidfile = tmp_path / "child.pid"
    argv = ["/bin/sh", "-c", f'sleep 100 & echo $! > "{pidfile}"; exit 0']

    result = run_hook(argv, "demo", _token_file(tmp_path), time.time() + 60, timeout=5)

    child = _background_pid(pidfile)
    try:
        assert result == 0
        assert not _gone(child)  # left alone: a hook may start a service on purpose
    finally:
        _kill(child)


def test_a_failing_hook_with_a_background_child_reports_its_status_and_redacted_last_line(tmp_path, caplog):
    """A hook that fails while its child holds stderr open is reported at once with its exit status and last stderr line, token masked."""
    token = "tok-" + "q" * 40
    pidfile = tmp_path / "child.pid"
    argv = ["/bin/sh", "-c", f'sleep 100 & echo $! > "{pidfile}"; echo "first line" >&2; echo "bad token: {token}" >&2; exit 3']

    with caplog.at_level(logging.WARNING, logger="freshtoken.hooks"):
        result = run_hook(argv, "demo", _token_file(tmp_path, token), time.time() + 60, timeout=5)
    _kill(_background_pid(pidfile))

    assert result == 3
    (record,) = [r for r in caplog.records if "exited 3" in r.getMessage()]
    assert record.getMessage().endswith("(bad token: <redacted>)")
    assert token not in caplog.text


def test_the_time_limit_still_kills_the_hook_and_its_children(tmp_path, caplog):
    """A hook that outlives its timeout is killed with its whole process group, the background child included."""
    pidfile = tmp_path / "child.pid"
    argv = ["/bin/sh", "-c", f'sleep 100 & echo $! > "{pidfile}"; sleep 100']

    with caplog.at_level(logging.ERROR, logger="freshtoken.hooks"):
        result = run_hook(argv, "demo", _token_file(tmp_path), time.time() + 60, timeout=0.3)
    child = _background_pid(pidfile)

    try:
        assert result is None
        assert any("killed after 0.3s" in r.getMessage() for r in caplog.records)
        assert poll(lambda: _gone(child), WAIT), "the hook's background child survived the kill"
    finally:
        _kill(child)
