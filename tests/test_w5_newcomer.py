"""The newcomer's second hour (issue 11, w5): install-systemd that the service can run, configs the service can read,
`get` and `status` for a reader of the system install, a user without a runtime dir, and the demo's summary."""

from __future__ import annotations

import grp
import io
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from freshtoken import cli, configedit, units
from freshtoken.config import Account
from freshtoken.model import AccessToken, AccountState, Secret
from freshtoken.outputs import write_all
from freshtoken.store import Store

NOBODY = 65534
# What the commands import lazily, imported now: a child running as nobody cannot read this Python's stdlib if it
# lives under /root (pyenv), as it does on the CI machine.
for _module in ("argparse", "textwrap", "shlex", "pwd", "queue", "freshtoken.status", "freshtoken.configedit", "freshtoken.getcmd"):
    __import__(_module)
cli.build_parser().format_help()
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user (CI runs as root)")


def run_as(uid: int | None, gids: list[int], job: Callable[[], Any]) -> Any:
    """Run `job` in a forked child as `uid` (primary group gids[0], all of gids as groups), and return what it returned.

    Root cannot see a permission problem; a fork keeps this process's Python (the venv may live where another user
    cannot reach it). An exception in the child is re-raised here as an AssertionError carrying its traceback.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 0
        try:
            os.close(read_end)
            if uid is not None:
                os.setgroups(gids)
                os.setgid(gids[0])
                os.setuid(uid)
            try:
                payload = pickle.dumps(("ok", job()))
            except BaseException:  # noqa: BLE001 (reported to the parent)
                payload = pickle.dumps(("error", traceback.format_exc()))
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
        except BaseException:  # noqa: BLE001
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0 and data, f"the child failed (status {status})"
    kind, value = pickle.loads(data)  # noqa: S301 (our own child's answer)
    if kind == "error":
        raise AssertionError(f"in the child:\n{value}")
    return value


def cli_main(*argv: str, environ: dict[str, str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), environ=environ, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A fresh directory every user can reach (pytest's tmp_path is inside a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="freshtoken-w5-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A directory outside the ones the system unit hides (/tmp, /home, /root, /run/user): under /dev/shm."""
    if not os.path.isdir("/dev/shm"):  # noqa: S108 (a place the unit does not hide)
        pytest.skip("no /dev/shm")
    path = Path(tempfile.mkdtemp(prefix="freshtoken-w5-", dir="/dev/shm"))  # noqa: S108
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def script(path: Path, first_lines: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(first_lines + "from freshtoken.cli import main\n")
    path.chmod(mode)
    return path


# ------------------------------------------------------------------ 1. install-systemd: a command the unit can run

REACHABLE_PACKAGE = Path("/usr/bin")  # stands in for the package dir: the real one's place depends on the machine


def test_unreachable_names_a_command_under_tmp(open_dir: Path) -> None:
    """A freshtoken command under /tmp (PrivateTmp=yes) is refused, naming the path and the unit option."""
    command = script(open_dir / "venv" / "bin" / "freshtoken", "#!/bin/sh\n")
    problem = units.unreachable(str(command), REACHABLE_PACKAGE)
    assert problem is not None and str(command) in problem and "under /tmp" in problem and "PrivateTmp=yes" in problem


@pytest.mark.parametrize(
    "head",
    [
        "#!/root/.pyenv/versions/3.11.7/bin/python3.11\n",
        '#!/bin/sh\n\'\'\'exec\' "/root/.pyenv/versions/3.11.7/bin/python3.11" "$0" "$@"\n',
    ],
)
def test_unreachable_names_a_python_under_root(shm_dir: Path, head: str) -> None:
    """A command outside the hidden dirs whose Python (#! line, or pip's long-path `'''exec'` form) is under /root is refused."""
    command = script(shm_dir / "bin" / "freshtoken", head)
    problem = units.unreachable(str(command), REACHABLE_PACKAGE)
    assert problem is not None and problem.startswith("its Python /root/") and "ProtectHome=yes" in problem


def test_unreachable_names_a_directory_other_users_cannot_search(shm_dir: Path) -> None:
    """A command in a 0700 directory cannot be run by the service user: the message names that directory and its mode."""
    command = script(shm_dir / "private" / "freshtoken", "#!/bin/sh\n")
    (shm_dir / "private").chmod(0o700)
    assert units.unreachable(str(command), REACHABLE_PACKAGE) == (
        f"the freshtoken command {command} cannot be run by the service user: {shm_dir / 'private'} is mode 0700,"
        " not searchable by other users"
    )


def test_unreachable_names_a_package_under_home(shm_dir: Path) -> None:
    """An editable install whose package lives in a checkout under /home is refused, whatever the command's place."""
    command = script(shm_dir / "bin" / "freshtoken", "#!/bin/sh\n")
    problem = units.unreachable(str(command), Path("/home/me/freshtoken/daemon/freshtoken"))
    assert problem is not None and problem.startswith("the freshtoken package /home/me/") and "under /home" in problem


def test_unreachable_accepts_a_command_every_user_can_run(shm_dir: Path) -> None:
    """A 0755 command in 0755 dirs outside /tmp, /home and /root, run by /bin/sh, is fine."""
    assert units.unreachable(str(script(shm_dir / "bin" / "freshtoken", "#!/bin/sh\n")), REACHABLE_PACKAGE) is None


def fake_install(open_dir: Path) -> str:
    """A venv-like bin/ under /tmp: a python beside a freshtoken script, as pip lays them out."""
    python = open_dir / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    script(python.parent / "freshtoken", f"#!{python}\n")
    return str(python)


@needs_root
def test_install_systemd_refuses_a_command_the_unit_cannot_run_and_writes_nothing(open_dir: Path) -> None:
    """Without --root, install-systemd of a venv under /tmp exits 1 with one line that says 203/EXEC and how to install
    reachably (/opt/freshtoken), and writes nothing (run as nobody, so that old code could not write /etc either)."""
    python = fake_install(open_dir)
    unit = Path("/etc/systemd/system/freshtoken.service")
    existed = unit.exists()

    def job() -> tuple[int, str, str]:
        sys.executable = python  # this child's own interpreter record: the install it reports is the fake one
        return cli_main("install-systemd", environ={"PATH": "/usr/bin:/bin"})

    code, out, err = run_as(NOBODY, [NOBODY], job)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith(f"freshtoken: the system unit could not run {open_dir}/venv/bin/freshtoken")
    assert "status=203/EXEC" in err and "under /tmp" in err
    assert "/usr/bin/python3 -m venv /opt/freshtoken && /opt/freshtoken/bin/pip install freshtoken" in err and "--force" in err
    assert unit.exists() == existed


def test_install_systemd_with_root_warns_about_an_unreachable_command(open_dir: Path, tmp_path: Path) -> None:
    """With --root (files for another system) an unreachable command is written, with a warning that says 203/EXEC."""
    python = fake_install(open_dir)

    def job() -> tuple[int, str, str]:
        sys.executable = python
        return cli_main("install-systemd", "--root", str(tmp_path / "image"), environ={"PATH": "/usr/bin:/bin"})

    code, out, err = run_as(None, [], job)
    assert (code, err) == (0, "")
    (warning,) = [line for line in out.splitlines() if line.startswith("warning:")]
    assert "status=203/EXEC" in warning and "under /tmp" in warning and "/opt/freshtoken" in warning
    unit = (tmp_path / "image/etc/systemd/system/freshtoken.service").read_text()
    assert f"ExecStart={open_dir}/venv/bin/freshtoken -c" in unit


def test_rendered_unit_keeps_no_comment_about_usr_local_bin() -> None:
    """The unit written for /opt/freshtoken/bin/freshtoken says nothing about /usr/local/bin, which it does not run."""
    rendered = units.render_units("/opt/freshtoken/bin/freshtoken")["freshtoken.service"]
    assert "/usr/local/bin" not in rendered
    assert "# ExecStart= names the freshtoken command of the install that wrote this file" in rendered


# ------------------------------------------------------------------ 2. install-systemd --root: the config's group


def test_install_systemd_with_root_says_to_give_the_config_its_group(tmp_path: Path) -> None:
    """Under --root the freshtoken group cannot be set, so the next steps say `chgrp freshtoken` after systemd-sysusers."""
    code, out, _ = cli_main("install-systemd", "--root", str(tmp_path), environ={"PATH": "/usr/bin:/bin"})
    assert code == 0
    steps = out.partition("next steps:")[2]
    assert "  1. create the freshtoken user and group, and give it the config" in steps
    assert "       systemd-sysusers\n       chgrp freshtoken /etc/freshtoken/config.yaml\n" in steps


def test_config_access_on_the_live_system_names_what_is_missing(tmp_path: Path) -> None:
    """A kept config that is not group freshtoken, or not group-readable, gets the commands that fix it; a right one none."""
    config = tmp_path / "config.yaml"
    config.write_text("accounts: {}\n")
    config.chmod(0o600)
    assert cli._config_access(config, live=True) == [
        "chgrp freshtoken /etc/freshtoken/config.yaml",
        "chmod g+r /etc/freshtoken/config.yaml",
    ]
    config.chmod(0o640)
    assert cli._config_access(config, live=True) == ["chgrp freshtoken /etc/freshtoken/config.yaml"]


# ------------------------------------------------------------------ 3. add, as root, creating the system config


def add_system(path: Path, group: str) -> configedit.AddResult:
    return configedit.add_account(
        path,
        "spotify",
        provider="spotify",
        options={"client_id": "abc", "client_secret": "${SECRET}"},
        environ={"RUNTIME_DIRECTORY": "/run/x"},
        system=True,
        group=group,
    )


@needs_root
def test_add_creates_the_system_config_readable_by_the_service_group(tmp_path: Path) -> None:
    """`add` creating the system config makes it root:GROUP 0640 in a new 0755 dir (not 0600 in 0700), and says so."""
    group = grp.getgrgid(1).gr_name  # an existing group other than root's
    path = tmp_path / "etc" / "freshtoken" / "config.yaml"
    result = add_system(path, group)
    info = path.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o640, 1)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755 and stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o755
    assert f"added account 'spotify' to a new {path} (mode 0640)" in result.message


def test_add_without_the_service_group_says_how_to_give_it(tmp_path: Path) -> None:
    """Without the group, the new system config is 0640 and a note says to chgrp it once the group exists."""
    path = tmp_path / "freshtoken" / "config.yaml"
    result = add_system(path, "no-such-group-w5")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert f"run `chgrp no-such-group-w5 {path}`" in result.message


def test_a_failed_add_leaves_no_directory_behind(tmp_path: Path) -> None:
    """An add whose result would not load exits 78 and removes the directories it created for the new file."""
    config = tmp_path / "new" / "freshtoken" / "config.yaml"
    code, _, err = cli_main(
        "-c", str(config), "add", "x", "--provider", "spotify", "--client-id", "c", "--set", "refresh_margin=soon", environ={}
    )
    assert code == 78 and "account not added" in err
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------ 4. get: a token dir the user may not search


@needs_root
def test_get_reports_permission_denied_for_a_token_dir_it_cannot_search(open_dir: Path) -> None:
    """A user outside the token dir's group is told `permission denied` and which group to join, not `no token`."""
    token_dir = open_dir / "runtime" / "freshtoken"
    account = Account(name="spotify", token_url="http://127.0.0.1:1/token", client_id="c")
    write_all(token_dir, account, AccessToken(Secret("tok"), "Bearer", time.time() + 3600))
    token_dir.chmod(0o750)
    os.chown(token_dir, 0, 1)
    group = grp.getgrgid(1).gr_name
    code, out, err = run_as(NOBODY, [NOBODY], lambda: cli_main("get", "spotify", environ={"XDG_RUNTIME_DIR": str(open_dir / "runtime")}))
    assert (code, out) == (1, "")
    hint = f"join the token dir's group, e.g. `usermod -aG {group} $USER`, then log in again"
    assert err == f"freshtoken: cannot read {token_dir}: permission denied ({hint})\n"


# ------------------------------------------------------------------ 5. a user with no runtime dir


@needs_root
def test_a_user_without_a_runtime_dir_is_told_what_to_set_and_status_still_works(open_dir: Path) -> None:
    """Without $XDG_RUNTIME_DIR and /run/user/UID: add exits 78 saying `token_dir: <home>/.cache/freshtoken` and leaves
    no ~/.config/freshtoken; status on such a config exits 0 and shows `-` for the token dir."""
    if os.path.exists(f"/run/user/{NOBODY}"):
        pytest.skip(f"/run/user/{NOBODY} exists here")
    home = open_dir / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    config = open_dir / "config.yaml"
    config.write_text("accounts:\n  spotify:\n    provider: spotify\n    client_id: abc\n    client_secret: ${SECRET}\n")
    config.chmod(0o644)
    environ = {"HOME": str(home), "PATH": "/usr/bin:/bin"}

    def job() -> tuple[tuple[int, str, str], tuple[int, str, str], list[str]]:
        added = cli_main("add", "spotify", "--provider", "spotify", "--client-id", "abc", "--client-secret-env", "S", environ=environ)
        shown = cli_main("-c", str(config), "status", environ=environ)
        return added, shown, os.listdir(home)

    (code, _, err), (status_code, out, status_err), left = run_as(NOBODY, [NOBODY], job)
    assert code == 78
    assert f"set it in the config, e.g. `token_dir: {home}/.cache/freshtoken`" in err
    assert left == []
    assert status_code == 0, status_err
    assert "token dir  - (not set" in out and "spotify" in out
    assert "warning:" in status_err and "token_dir: not set" in status_err


# ------------------------------------------------------------------ 9. status for a reader in the token dir's group


@needs_root
def test_status_for_a_group_reader_shows_the_token_files_expiry_and_exits_0(open_dir: Path) -> None:
    """With the state dir the service's (0700) and the token dir readable by the group, status shows `fresh (from the
    token file)` with the expiry, exits 0, and writes nothing."""
    state_dir, token_dir = open_dir / "state", open_dir / "tokens"
    config = open_dir / "config.yaml"
    account = "  spotify:\n    provider: spotify\n    client_id: abc\n    client_secret: ${SECRET}\n"
    config.write_text(f"state_dir: {state_dir}\ntoken_dir: {token_dir}\naccounts:\n{account}")
    config.chmod(0o644)
    now = time.time()
    access = AccessToken(Secret("tok"), "Bearer", now + 3000)
    with Store(state_dir).transaction("spotify") as tx:
        tx.save(AccountState(refresh_token=Secret("rt"), access=access, last_refresh=now - 600))
    write_all(token_dir, Account(name="spotify", token_url="http://127.0.0.1:1/token", client_id="abc"), access)
    state_dir.chmod(0o700)
    token_dir.chmod(0o750)
    os.chown(token_dir, 0, 1)
    for path in token_dir.iterdir():
        os.chown(path, 0, 1)
    before = sorted(str(p) for p in open_dir.rglob("*"))

    code, out, err = run_as(NOBODY, [1], lambda: cli_main("-c", str(config), "status", environ={"PATH": "/usr/bin:/bin"}))
    rows = run_as(NOBODY, [1], lambda: cli_main("-c", str(config), "status", "--json", environ={}))

    assert (code, err) == (0, "")
    (row,) = [line for line in out.splitlines() if line.startswith("spotify")]
    assert row.split("  ")[1] == "fresh (from the token file)" and "49m" in row
    (data,) = json.loads(rows[1])
    assert (rows[0], data["state"], data["from_token_file"], data["expires_at"]) == (0, "fresh", True, int(now + 3000))
    assert sorted(str(p) for p in open_dir.rglob("*")) == before


# ------------------------------------------------------------------ 6. the demo: what it counts, and the command it shows


def test_this_command_is_the_running_script_or_the_one_beside_this_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A freshtoken script in argv[0] is named by its absolute path; under `python -m freshtoken`, the script beside Python."""
    mine = script(tmp_path / "bin" / "freshtoken", "#!/bin/sh\n")
    monkeypatch.chdir(tmp_path)
    assert units.this_command("bin/freshtoken") == str(mine)
    assert units.this_command("/x/freshtoken/__main__.py") == units.default_exec_start()


def test_shown_command_is_the_full_path_unless_path_finds_this_one(tmp_path: Path) -> None:
    """`freshtoken` when PATH's freshtoken is this one; this one's full path when PATH has another or none."""
    mine = script(tmp_path / "mine" / "freshtoken", "#!/bin/sh\n")
    other = script(tmp_path / "other" / "freshtoken", "#!/bin/sh\n")
    assert units.shown_command(str(mine), path=str(mine.parent)) == "freshtoken"
    assert units.shown_command(str(mine), path=str(other.parent)) == str(mine)
    assert units.shown_command(str(mine), path=str(tmp_path)) == str(mine)


@pytest.mark.slow
def test_demo_counts_every_token_file_it_lists_and_names_its_command_by_full_path(tmp_path: Path) -> None:
    """The demo's summary counts the 5 files its tokens line lists, and its try: lines start with an existing absolute path."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    demo = subprocess.run(
        [sys.executable, "-m", "freshtoken", "demo", "--duration", "2"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert demo.returncode == 0, demo.stderr
    (summary,) = [line for line in demo.stdout.splitlines() if "token files valid at the end" in line]
    assert summary.endswith("; 5 of 5 token files valid at the end")
    lines = demo.stdout.splitlines()
    at = next(index for index, line in enumerate(lines) if line.startswith("  try:"))
    commands = [lines[at].split()[1], lines[at + 1].split()[0]]
    for command in commands:
        assert os.path.isabs(command) and os.path.basename(command) == "freshtoken" and os.access(command, os.X_OK)
    assert lines[at + 1].split()[1:3] == ["-c", lines[2].split()[1]] and lines[at + 1].endswith(" status")
