"""The crash-window bench in short: `freshtoken refresh` SIGKILLed right after the answer, through the loopback relay.

The figures (old ordering against new, 60 trials each) are bench/crashwindow.py's;
this only proves the machinery in CI: every trial ends lost or saved, never with a
refresh token spent twice or a state that disagrees with the server otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from crashwindow import Tally, WindowRun, delays_for  # noqa: E402
from harness import clean_env  # noqa: E402

pytestmark = pytest.mark.slow


def test_kills_after_the_answer_leave_the_state_lost_or_saved_and_never_reuse_a_token(tmp_path: Path) -> None:
    """Kills 0 to 2 ms after the answer: each trial's state holds either the spent or the rotated token, and no token is reused."""
    with WindowRun(tmp_path / "runs") as run:
        tally = run.run(Tally("new", "installed"), delays_for(3, 2.0), clean_env(tmp_path))
        reuse = run.server.reuse_count
    outcomes = [t.outcome for t in tally.trials]
    assert len(outcomes) == 3
    assert set(outcomes) <= {"lost", "saved", "finished"}, outcomes
    assert all(t.killed_after_ms is not None or t.outcome == "finished" for t in tally.trials)
    assert reuse == 0
