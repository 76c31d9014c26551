"""`freshtoken install-systemd`: the units, sysusers snippet and config of this install, and what to do next."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from freshtoken import cli

ANALYZE = shutil.which("systemd-analyze")
THIS_FRESHTOKEN = str(Path(sys.executable).parent.absolute() / "freshtoken")  # the script pip put beside this venv's python


def fake_tools(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH whose systemctl and systemd-sysusers only record that they ran (into the returned file)."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool in ("systemctl", "systemd-sysusers"):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n')
        script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHTOKEN_")}
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    return env, calls


def test_install_systemd_with_root_writes_this_installs_unit_and_runs_no_systemd_tool(tmp_path: Path) -> None:
    """`install-systemd --root DIR` (a real process) writes the unit naming this install's freshtoken, the sysusers
    snippet and a config, prints `wrote PATH` lines and the next steps, and calls neither systemctl nor systemd-sysusers."""
    env, calls = fake_tools(tmp_path)
    root = tmp_path / "image"
    result = subprocess.run(
        [THIS_FRESHTOKEN, "install-systemd", "--root", str(root)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert (result.returncode, result.stderr) == (0, "")
    unit = root / "etc/systemd/system/freshtoken.service"
    sysusers = root / "etc/sysusers.d/freshtoken.conf"
    config = root / "etc/freshtoken/config.yaml"
    lines = result.stdout.splitlines()
    assert lines[:3] == [f"wrote {unit}", f"wrote {sysusers}", f"wrote {config}"]
    assert f"\nExecStart={THIS_FRESHTOKEN} -c /etc/freshtoken/config.yaml run\n" in unit.read_text()
    assert "client_secret_file: spotify-client-secret" in config.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    steps = result.stdout.partition("next steps:")[2]
    assert f"edit {config}" in steps
    assert f"install -m 0600 /dev/null {config.parent}/spotify-client-secret" in steps
    assert f"{THIS_FRESHTOKEN} -c /etc/freshtoken/config.yaml login spotify --manual" in steps
    assert "systemctl daemon-reload && systemctl enable --now freshtoken" in steps
    assert not calls.exists(), calls.read_text()


def test_install_systemd_again_keeps_the_edited_config(tmp_path: Path) -> None:
    """A second run replaces the unit but says `kept` for the config and leaves the admin's edits alone."""
    out = io.StringIO()
    assert cli.main(["install-systemd", "--root", str(tmp_path)], environ={}, stdout=out, stderr=io.StringIO()) == 0
    config = tmp_path / "etc/freshtoken/config.yaml"
    config.write_text("# edited\n")
    out = io.StringIO()
    assert cli.main(["install-systemd", "--root", str(tmp_path)], environ={}, stdout=out, stderr=io.StringIO()) == 0
    assert f"kept  {config}" in out.getvalue().splitlines()
    assert config.read_text() == "# edited\n"


def test_install_systemd_user_writes_the_user_unit_under_the_given_home(tmp_path: Path) -> None:
    """`install-systemd --user --root HOME` writes the user unit and a 0600 config there, and says `systemctl --user`."""
    out = io.StringIO()
    code = cli.main(["install-systemd", "--user", "--root", str(tmp_path)], environ={}, stdout=out, stderr=io.StringIO())
    assert code == 0
    unit = tmp_path / ".config/systemd/user/freshtoken.service"
    config = tmp_path / ".config/freshtoken/config.yaml"
    assert out.getvalue().splitlines()[:2] == [f"wrote {unit}", f"wrote {config}"]
    assert f"\nExecStart={THIS_FRESHTOKEN} -c %h/.config/freshtoken/config.yaml run\n" in unit.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "systemctl --user daemon-reload && systemctl --user enable --now freshtoken" in out.getvalue()
    assert f"{THIS_FRESHTOKEN} -c {config} login spotify" in out.getvalue()


def test_install_systemd_where_it_cannot_write_says_so_in_one_line(tmp_path: Path) -> None:
    """A --root that is a file (or a system dir without root) ends with exit 1 and one line naming the path, no traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = io.StringIO()
    code = cli.main(["install-systemd", "--root", str(blocker)], environ={}, stdout=io.StringIO(), stderr=err)
    assert code == 1
    assert err.getvalue().startswith("freshtoken: ") and str(blocker) in err.getvalue()
    assert err.getvalue().count("\n") == 1


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")
def test_installed_system_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """The unit install-systemd wrote (ExecStart= this venv's freshtoken) passes `systemd-analyze verify` without a word."""
    assert cli.main(["install-systemd", "--root", str(tmp_path)], environ={}, stdout=io.StringIO(), stderr=io.StringIO()) == 0
    unit = tmp_path / "etc/systemd/system/freshtoken.service"
    assert ANALYZE is not None
    result = subprocess.run([ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
