"""The one-shot commands: `refresh`, `get`, `status`, `check-config` in-process through cli.main and as real processes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from freshtoken import cli
from freshtoken.config import Account
from freshtoken.model import AccessToken, Secret
from freshtoken.outputs import write_all
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer

TWO_ACCOUNTS = """\
state_dir: {state}
token_dir: {tokens}
accounts:
  alpha:
    token_url: {token_url}
    client_id: {client_id}
    client_secret: {secret}
    refresh_token: {alpha}
  beta:
    token_url: {token_url}
    client_id: {client_id}
    client_secret: {secret}
    refresh_token: {beta}
"""


DIRS = "state_dir: {state}\ntoken_dir: {tokens}\n"
PUBLIC_ACCOUNT = "accounts:\n  demo:\n    token_url: http://127.0.0.1:1/t\n    client_id: x\n    client_auth: none\n"


class Run:
    """What one in-process `freshtoken ...` call printed and returned."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"Run(code={self.code}, out={self.out!r}, err={self.err!r})"


@pytest.fixture
def environ() -> dict[str, str]:
    return dict(os.environ)


@pytest.fixture
def freshtoken(environ: dict[str, str]) -> Callable[..., Run]:
    """cli.main in-process with its own stdout/stderr and the test's environment."""

    def run(*argv: str, env: Mapping[str, str] | None = None) -> Run:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(list(argv), environ=environ if env is None else env, stdout=out, stderr=err)
        return Run(code, out.getvalue(), err.getvalue())

    return run


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def put_token(directory: Path, value: str = "tok-123", *, expires_in: float = 3600, account: str = "demo") -> int:
    """Write a token dir's files as the daemon does; returns the integer expires_at."""
    expires_at = int(time.time() + expires_in)
    write_all(
        directory,
        Account(name=account, token_url="http://127.0.0.1/", client_id="x"),
        AccessToken(Secret(value), "Bearer", expires_at, "a b"),
    )
    return expires_at


@pytest.fixture
def two_accounts(write_config: Callable[..., Path], auth_server: AuthServer) -> Path:
    return write_config(
        TWO_ACCOUNTS,
        token_url=auth_server.token_url,
        client_id=DEMO_CLIENT_ID,
        secret=DEMO_CLIENT_SECRET,
        alpha=auth_server.issue_refresh_token(DEMO_CLIENT_ID),
        beta=auth_server.issue_refresh_token(DEMO_CLIENT_ID),
    )


# ------------------------------------------------------------------ refresh


def test_refresh_succeeds_with_exit_0_and_a_summary_line(freshtoken: Callable[..., Run], demo_config: Path, dirs: dict[str, Path]) -> None:
    """`refresh` exits 0, says when the new token expires, and writes the token dir."""
    run = freshtoken("-c", str(demo_config), "refresh")
    assert run.code == 0, run
    assert run.out.startswith("demo: refreshed; expires in 59m 5")
    assert run.err == ""
    assert (dirs["tokens"] / "demo.token").stat().st_size > 10


def test_refresh_invalid_grant_exits_1_with_the_login_hint(
    freshtoken: Callable[..., Run], demo_config: Path, auth_server: AuthServer
) -> None:
    """A revoked grant makes `refresh` exit 1 and say how to log in again."""
    auth_server.revoke_grant(_seed_of(demo_config))
    run = freshtoken("-c", str(demo_config), "refresh")
    assert run.code == 1, run
    assert run.err.startswith("demo: failed: refresh token refused (HTTP 400 invalid_grant")
    assert "run `freshtoken login demo`" in run.err


def _seed_of(config: Path) -> str:
    return next(line.split(":", 1)[1].strip() for line in config.read_text().splitlines() if "refresh_token:" in line)


def test_refresh_503_exits_75(freshtoken: Callable[..., Run], demo_config: Path, auth_server: AuthServer) -> None:
    """A 503 makes `refresh` exit 75 (temporary) and name the status."""
    auth_server.script(503)
    run = freshtoken("-c", str(demo_config), "refresh")
    assert run.code == 75, run
    assert run.err == "demo: failed: HTTP 503\n"


def test_refresh_bad_config_exits_78_naming_file_and_key(freshtoken: Callable[..., Run], write_config: Callable[..., Path]) -> None:
    """An unknown key makes `refresh` exit 78 with file:line: key: problem."""
    path = write_config(DIRS + PUBLIC_ACCOUNT + "    colour: red\n")
    run = freshtoken("-c", str(path), "refresh")
    assert run.code == 78, run
    assert run.err == f"freshtoken: {path}:8: accounts.demo.colour: unknown key\n"


@pytest.mark.parametrize(
    ("alpha", "beta", "code"),
    [
        (None, {"status": 503}, 75),
        ({"status": 400, "json": {"error": "invalid_grant"}}, None, 1),
        ({"status": 503}, {"status": 400, "json": {"error": "invalid_grant"}}, 1),
        ({"status": 400, "json": {"error": "invalid_grant"}}, {"status": 503}, 1),
        (None, None, 0),
    ],
    ids=["ok+503", "invalid_grant+ok", "503+invalid_grant", "invalid_grant+503", "ok+ok"],
)
def test_refresh_over_two_accounts_exits_with_the_worst_outcome(
    freshtoken: Callable[..., Run], two_accounts: Path, auth_server: AuthServer, alpha: dict | None, beta: dict | None, code: int
) -> None:
    """Over two accounts `refresh` tries both, prints one line each, and exits 1 over 75 over 0."""
    for script in (alpha, beta):
        if script is None:
            auth_server.script(delay=0.0)  # answered normally
        else:
            auth_server.script(**script)
    run = freshtoken("-c", str(two_accounts), "refresh")
    assert run.code == code, run
    lines = {line.split(":", 1)[0]: line for line in (run.out + run.err).splitlines()}
    assert set(lines) == {"alpha", "beta"}
    for name, script in (("alpha", alpha), ("beta", beta)):
        assert ("refreshed" if script is None else "failed") in lines[name]
    assert auth_server.token_requests == 2


def test_refresh_named_accounts_only(freshtoken: Callable[..., Run], two_accounts: Path, auth_server: AuthServer) -> None:
    """`refresh beta` refreshes beta alone."""
    run = freshtoken("-c", str(two_accounts), "refresh", "beta")
    assert (run.code, run.out.split(":")[0]) == (0, "beta")
    assert auth_server.token_requests == 1


def test_refresh_if_needed_skips_a_fresh_token_without_a_request(
    freshtoken: Callable[..., Run], demo_config: Path, auth_server: AuthServer
) -> None:
    """`refresh --if-needed` leaves a token that is outside its margin alone and sends nothing."""
    assert freshtoken("-c", str(demo_config), "refresh").code == 0
    run = freshtoken("-c", str(demo_config), "refresh", "--if-needed")
    assert run.code == 0, run
    assert run.out.startswith("demo: still valid, not refreshed; expires in 59m")
    assert auth_server.token_requests == 1


def test_refresh_if_needed_refreshes_when_there_is_no_token(
    freshtoken: Callable[..., Run], demo_config: Path, auth_server: AuthServer
) -> None:
    """`refresh --if-needed` with no token yet refreshes."""
    run = freshtoken("-c", str(demo_config), "refresh", "--if-needed")
    assert run.out.startswith("demo: refreshed")
    assert auth_server.token_requests == 1


def test_refresh_unknown_account_exits_2(freshtoken: Callable[..., Run], demo_config: Path, auth_server: AuthServer) -> None:
    """An account name the config does not have is a usage error (exit 2) listing the configured ones."""
    run = freshtoken("-c", str(demo_config), "refresh", "nope")
    assert run.code == 2
    assert run.err == f"freshtoken: unknown account 'nope' in {demo_config} (configured: demo)\n"
    assert auth_server.token_requests == 0


def test_bad_command_line_exits_2(freshtoken: Callable[..., Run]) -> None:
    """An unknown option is exit 2."""
    assert freshtoken("get").code == 2
    assert freshtoken("get", "demo", "--format", "xml").code == 2
    assert freshtoken("get", "demo", "--min-valid", "soon").code == 2


# ------------------------------------------------------------------ get


@pytest.mark.parametrize("fmt", ["raw", "json", "header", "env"])
def test_get_prints_each_format_exactly(freshtoken: Callable[..., Run], dirs: dict[str, Path], fmt: str) -> None:
    """`get --format F` prints exactly the bytes of that format."""
    expires_at = put_token(dirs["tokens"], "tok-123")
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at))
    expected = {
        "raw": "tok-123\n",
        "json": json.dumps(
            {
                "access_token": "tok-123",
                "token_type": "Bearer",
                "expires_at": expires_at,
                "expires_at_iso": iso,
                "scope": "a b",
                "account": "demo",
            },
            indent=2,
        )
        + "\n",
        "header": "Authorization: Bearer tok-123\n",
        "env": f"ACCESS_TOKEN=tok-123\nACCESS_TOKEN_EXPIRES_AT={expires_at}\n",
    }[fmt]
    run = freshtoken("get", "demo", "--format", fmt, "--token-dir", str(dirs["tokens"]))
    assert (run.code, run.out, run.err) == (0, expected, "")


def test_get_min_valid_fails_when_the_token_is_too_short_lived(freshtoken: Callable[..., Run], dirs: dict[str, Path]) -> None:
    """`get --min-valid 2h` on a token valid for about an hour exits 1 and prints no token."""
    put_token(dirs["tokens"], expires_in=3600)
    run = freshtoken("get", "demo", "--min-valid", "2h", "--token-dir", str(dirs["tokens"]))
    assert (run.code, run.out) == (1, "")
    assert run.err.startswith("freshtoken: the token for 'demo' is valid for 59m")
    assert run.err.endswith("only, less than --min-valid 2h 0m\n")
    assert freshtoken("get", "demo", "--min-valid", "30m", "--token-dir", str(dirs["tokens"])).code == 0
    assert freshtoken("get", "demo", "--min-valid", "600", "--token-dir", str(dirs["tokens"])).code == 0


def test_get_expired_token_exits_1(freshtoken: Callable[..., Run], dirs: dict[str, Path]) -> None:
    """An expired token is not printed: exit 1 with how long ago it expired."""
    put_token(dirs["tokens"], expires_in=-120)
    run = freshtoken("get", "demo", "--token-dir", str(dirs["tokens"]))
    assert (run.code, run.out) == (1, "")
    assert run.err.startswith("freshtoken: the token for 'demo' expired 2m")


def test_get_missing_token_exits_1(freshtoken: Callable[..., Run], dirs: dict[str, Path]) -> None:
    """No token file: exit 1, naming the file."""
    run = freshtoken("get", "demo", "--token-dir", str(dirs["tokens"]))
    assert (run.code, run.out) == (1, "")
    assert str(dirs["tokens"] / "demo.json") in run.err


def test_get_damaged_token_file_exits_1(freshtoken: Callable[..., Run], dirs: dict[str, Path]) -> None:
    """A token file that is not freshtoken's JSON is exit 1, not a traceback."""
    dirs["tokens"].mkdir()
    (dirs["tokens"] / "demo.json").write_text('{"access_token": "x"')
    run = freshtoken("get", "demo", "--token-dir", str(dirs["tokens"]))
    assert run.code == 1
    assert run.err == f"freshtoken: {dirs['tokens'] / 'demo.json'} is not a freshtoken token file\n"


def test_get_token_dir_lookup_order(freshtoken: Callable[..., Run], tmp_path: Path, write_config: Callable[..., Path]) -> None:
    """--token-dir, then $FRESHTOKEN_TOKEN_DIR, $RUNTIME_DIRECTORY, -c's token_dir, then $XDG_RUNTIME_DIR/freshtoken."""
    names = ["flag", "env", "runtime", "config", "xdg"]
    places = {name: tmp_path / name for name in names}
    places["xdg"] = tmp_path / "xdg" / "freshtoken"
    for name, place in places.items():
        put_token(place, f"from-{name}")
    config = write_config(
        "token_dir: {cfg}\nstate_dir: {state}\n" + PUBLIC_ACCOUNT,
        name="c.yaml",
        cfg=places["config"],
    )
    env = {
        "PATH": os.environ["PATH"],
        "FRESHTOKEN_TOKEN_DIR": str(places["env"]),
        "RUNTIME_DIRECTORY": f"{places['runtime']}:/elsewhere",
        "XDG_RUNTIME_DIR": str(tmp_path / "xdg"),
    }
    flag = ["--token-dir", str(places["flag"])]
    assert freshtoken("-c", str(config), "get", "demo", *flag, env=env).out == "from-flag\n"
    assert freshtoken("-c", str(config), "get", "demo", env=env).out == "from-env\n"
    del env["FRESHTOKEN_TOKEN_DIR"]
    assert freshtoken("-c", str(config), "get", "demo", env=env).out == "from-runtime\n"
    del env["RUNTIME_DIRECTORY"]
    assert freshtoken("-c", str(config), "get", "demo", env=env).out == "from-config\n"
    assert freshtoken("get", "demo", env=env).out == "from-xdg\n"


def test_get_explicit_token_dir_is_decisive(freshtoken: Callable[..., Run], tmp_path: Path) -> None:
    """A named token dir without the account fails (exit 1) rather than falling back to another dir's token."""
    put_token(tmp_path / "xdg" / "freshtoken", "from-xdg")
    (tmp_path / "empty").mkdir()
    env = {"FRESHTOKEN_TOKEN_DIR": str(tmp_path / "empty"), "XDG_RUNTIME_DIR": str(tmp_path / "xdg")}
    run = freshtoken("get", "demo", env=env)
    assert (run.code, run.out) == (1, "")
    assert str(tmp_path / "empty" / "demo.json") in run.err


def test_get_token_dir_flag_is_taken_literally(freshtoken: Callable[..., Run], tmp_path: Path) -> None:
    """--token-dir and $FRESHTOKEN_TOKEN_DIR are one path even with a colon in it; only $RUNTIME_DIRECTORY is a list."""
    odd = tmp_path / "a:b"
    put_token(odd, "from-odd")
    assert freshtoken("get", "demo", "--token-dir", str(odd), env={}).out == "from-odd\n"
    assert freshtoken("get", "demo", env={"FRESHTOKEN_TOKEN_DIR": str(odd)}).out == "from-odd\n"


def test_get_without_c_never_reads_the_config(freshtoken: Callable[..., Run], tmp_path: Path, dirs: dict[str, Path]) -> None:
    """A broken $FRESHTOKEN_CONFIG does not matter to `get` without -c."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("accounts: [\n")
    put_token(dirs["tokens"], "tok-123")
    env = {"FRESHTOKEN_CONFIG": str(broken), "FRESHTOKEN_TOKEN_DIR": str(dirs["tokens"])}
    assert freshtoken("get", "demo", env=env).out == "tok-123\n"
    run = subprocess.run(
        [sys.executable, "-m", "freshtoken", "get", "demo"], env=subprocess_env(**env), capture_output=True, text=True, timeout=30
    )
    assert (run.returncode, run.stdout, run.stderr) == (0, "tok-123\n", "")


@pytest.mark.parametrize("size", [40, 2_000_000], ids=["small", "large-epipe"])
def test_get_into_a_closed_pipe_exits_0_silently(tmp_path: Path, dirs: dict[str, Path], size: int) -> None:
    """`freshtoken get demo | head -c 5`: freshtoken exits 0 with an empty stderr, even when the pipe breaks mid-write."""
    put_token(dirs["tokens"], "t" * size)
    script = f'"{sys.executable}" -m freshtoken get demo 2>"{tmp_path}/err" | head -c 5; echo " status=${{PIPESTATUS[0]}}"'
    run = subprocess.run(
        ["/bin/bash", "-c", script],
        env=subprocess_env(FRESHTOKEN_TOKEN_DIR=str(dirs["tokens"])),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.stdout == "ttttt status=0\n"
    assert (tmp_path / "err").read_text() == ""


def test_get_imports_nothing_heavy(dirs: dict[str, Path]) -> None:
    """`get` runs without importing requests, urllib3, yaml or apscheduler."""
    put_token(dirs["tokens"], "tok-123")
    code = (
        "import sys\n"
        "from freshtoken.cli import main\n"
        f"rc = main(['get', 'demo', '--token-dir', {str(dirs['tokens'])!r}])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('requests', 'urllib3', 'yaml', 'apscheduler', 'freshtoken.config'))\n"
        "print(rc, heavy, file=sys.stderr)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert (run.stdout, run.stderr) == ("tok-123\n", "0 []\n")


def test_get_imports_only_what_python_itself_loads(dirs: dict[str, Path]) -> None:
    """Beyond freshtoken's own modules, `get` of a raw token imports only _json and __future__ (start-up cost)."""
    import freshtoken

    put_token(dirs["tokens"], "tok-123")
    code = (
        "import os, sys\n"  # site imports os in every normal start
        "before = set(sys.modules)\n"
        "from freshtoken.cli import main\n"
        f"rc = main(['get', 'demo', '--token-dir', {str(dirs['tokens'])!r}])\n"
        "print(rc, sorted(m for m in set(sys.modules) - before if not m.startswith('freshtoken')), file=sys.stderr)\n"
    )
    source_root = str(Path(freshtoken.__file__).parents[1])
    # -S: no site-packages .pth files, whose imports would hide ours.
    run = subprocess.run([sys.executable, "-S", "-c", code], env={"PYTHONPATH": source_root}, capture_output=True, text=True, timeout=30)
    assert (run.stdout, run.stderr) == ("tok-123\n", "0 ['__future__', '_json']\n")


# ------------------------------------------------------------------ status


def _table(out: str) -> list[str]:
    """The lines of `status`'s table, below its config / state dir / token dir header."""
    header, blank, table = out.partition("\n\n")
    assert blank and header.startswith("config "), out
    return table.splitlines()


def _secrets(auth_server: AuthServer, state_dir: Path, config: Path) -> list[str]:
    state = json.loads((state_dir / "demo.json").read_text())
    found = [DEMO_CLIENT_SECRET, _seed_of(config)]
    found += [state[key] for key in ("refresh_token", "access_token") if state.get(key)]
    return found


def test_status_table_shows_expiry_and_no_secret(
    freshtoken: Callable[..., Run], write_config: Callable[..., Path], auth_server: AuthServer, dirs: dict[str, Path]
) -> None:
    """`status` shows the state, the access-token expiry and the refresh-token expiry, and no secret."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    path = write_config(
        DIRS + "accounts:\n  demo:\n    token_url: {url}\n    client_id: {cid}\n    client_secret: {secret}\n"
        "    refresh_token: {seed}\n    refresh_token_lifetime: 180d\n",
        url=auth_server.token_url,
        cid=DEMO_CLIENT_ID,
        secret=DEMO_CLIENT_SECRET,
        seed=seed,
    )
    assert freshtoken("-c", str(path), "refresh").code == 0
    run = freshtoken("-c", str(path), "status")
    assert run.code == 0, run
    header, row = _table(run.out)
    assert header.split() == ["ACCOUNT", "STATE", "EXPIRES", "IN", "LAST", "REFRESH", "REFRESH", "TOKEN", "LAST", "ERROR"]
    assert row.startswith("demo")
    assert " fresh " in row
    assert " 59m 5" in row
    assert "expires in 179d 23h" in row
    for secret in _secrets(auth_server, dirs["state"], path):
        assert secret not in run.out + run.err


def test_status_json_has_figures_and_no_secret(
    freshtoken: Callable[..., Run], demo_config: Path, auth_server: AuthServer, dirs: dict[str, Path]
) -> None:
    """`status --json` gives per-account figures (expiry, refresh-token fields) and no secret."""
    assert freshtoken("-c", str(demo_config), "refresh").code == 0
    run = freshtoken("-c", str(demo_config), "status", "--json")
    (row,) = json.loads(run.out)
    assert row["account"] == "demo"
    assert row["state"] == "fresh"
    assert 3500 < row["expires_in"] <= 3600
    assert row["last_error"] is None and row["login_command"] is None
    assert "refresh_token_expires_at" in row and "refresh_token_obtained_at" in row
    for secret in _secrets(auth_server, dirs["state"], demo_config):
        assert secret not in run.out


def test_status_after_invalid_grant_says_how_to_log_in(freshtoken: Callable[..., Run], demo_config: Path, auth_server: AuthServer) -> None:
    """After invalid_grant, `status` shows needs-login, the error and the login command (table and JSON)."""
    auth_server.revoke_grant(_seed_of(demo_config))
    assert freshtoken("-c", str(demo_config), "refresh").code == 1
    table = freshtoken("-c", str(demo_config), "status").out
    assert "needs-login" in table
    assert _table(table)[-1] == "demo: run `freshtoken login demo`"
    (row,) = json.loads(freshtoken("-c", str(demo_config), "status", "--json").out)
    assert (row["state"], row["login_command"]) == ("needs-login", "freshtoken login demo")
    assert "invalid_grant" in row["last_error"]
    assert _seed_of(demo_config) not in table + json.dumps(row)


def test_status_before_any_refresh(freshtoken: Callable[..., Run], demo_config: Path) -> None:
    """With no state yet, `status` says missing / never, and exits 0."""
    run = freshtoken("-c", str(demo_config), "status")
    assert run.code == 0
    row = _table(run.out)[1].split()
    assert row[:5] == ["demo", "missing", "-", "never", "expiry"]


# ------------------------------------------------------------------ check-config


def test_check_config_prints_the_plan(
    freshtoken: Callable[..., Run], demo_config: Path, dirs: dict[str, Path], auth_server: AuthServer
) -> None:
    """`check-config` exits 0 and lists dirs, the grant, the margin and every file it writes; no secret."""
    run = freshtoken("-c", str(demo_config), "check-config")
    assert run.code == 0, run
    lines = run.out.splitlines()
    assert lines[:3] == [f"config {demo_config}: OK", f"state dir  {dirs['state']}", f"token dir  {dirs['tokens']}"]
    assert f"  refresh_token grant at {auth_server.token_url} (client {DEMO_CLIENT_ID}, auth basic)" in lines
    assert f"  writes {dirs['tokens'] / 'demo.json'} (json, 0640)" in lines
    assert f"  writes {dirs['tokens'] / 'demo.token'} (raw, 0640)" in lines
    assert DEMO_CLIENT_SECRET not in run.out and _seed_of(demo_config) not in run.out
    assert auth_server.token_requests == 0


def test_check_config_unwritable_output_exits_78_naming_the_key(
    freshtoken: Callable[..., Run], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """An output whose directory is a regular file makes `check-config` exit 78 naming the output's key."""
    (tmp_path / "blocker").write_text("")
    path = write_config(DIRS + PUBLIC_ACCOUNT + "    outputs:\n      - path: {tmp}/blocker/token\n")
    run = freshtoken("-c", str(path), "check-config")
    assert run.code == 78, run
    assert run.err.startswith(f"freshtoken: {path}:9: accounts.demo.outputs[0].path: {tmp_path}/blocker is not writable: Not a directory")


def test_check_config_unwritable_token_dir_exits_78(
    freshtoken: Callable[..., Run], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """A token_dir under a regular file is exit 78 naming token_dir."""
    (tmp_path / "blocker").write_text("")
    path = write_config("state_dir: {state}\ntoken_dir: {tmp}/blocker/tokens\n" + PUBLIC_ACCOUNT)
    run = freshtoken("-c", str(path), "check-config")
    assert run.code == 78
    assert f": token_dir: {tmp_path}/blocker/tokens is not writable" in run.err


# ------------------------------------------------------------------ real processes


def test_refresh_as_a_real_process_exit_codes(demo_config: Path, auth_server: AuthServer) -> None:
    """The installed entry point (`python -m freshtoken`) returns 0, then 75 on a 503, with one-line errors."""
    command = [sys.executable, "-m", "freshtoken", "-c", str(demo_config), "refresh"]
    ok = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert (ok.returncode, ok.stderr) == (0, "")
    auth_server.script(503)
    failed = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert (failed.returncode, failed.stderr) == (75, "demo: failed: HTTP 503\n")


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "demo"],
        ["get", "demo", "--format", "json"],
        ["get", "--format=env", "demo"],
        ["get", "demo", "--min-valid", "300", "--token-dir", "/x"],
        ["get", "demo", "--min-valid=5m", "--token-dir=/a:b"],
        ["get", "demo", "--format", "raw", "--format", "header"],
        ["get", "demo", "--min-valid", "99999999999"],
        ["get", "demo", "--min-valid", "soon"],
        ["get", "demo", "--format", "xml"],
        ["get", "demo", "--form", "json"],
        ["get", "demo", "extra"],
        ["get", "--token-dir", "-x", "demo"],
        ["get", "-h"],
        ["get", "demo", "--"],
        ["-c", "cfg", "get", "demo"],
        ["get", "demo", "-c", "cfg"],
        ["--config=cfg", "get", "demo"],
        ["--config", "cfg", "get", "-c", "other", "demo"],
        ["get", "--config", "cfg", "--format=json", "demo"],
        ["-c", "get", "demo"],
        ["-c", "--format", "get", "demo"],
        ["get", "demo", "-c=cfg"],
        ["get"],
    ],
)
def test_get_fast_path_reads_argv_as_argparse_does(argv: list[str]) -> None:
    """The argparse-free reading of a `get` command line gives argparse's namespace, or steps aside."""
    quick = cli._plain_get(argv)
    try:
        parsed = vars(cli.build_parser().parse_args(argv))
    except SystemExit:
        parsed = None
    if quick is None:
        return  # argparse handles it (and reports errors)
    assert parsed is not None
    assert {k: getattr(quick, k) for k in parsed} == parsed


def test_get_fast_path_takes_the_usual_command_lines() -> None:
    """Plain `get` command lines (any option order, `--opt=value`) skip argparse; unusual ones go to it."""
    usual = [
        ["get", "demo"],
        ["get", "--format=env", "demo"],
        ["get", "demo", "--min-valid", "5m", "--token-dir", "/x"],
        ["-c", "cfg", "get", "demo"],
        ["get", "demo", "--config=cfg"],
    ]
    unusual = [["-v", "get", "demo"], ["get", "-h"], ["get", "demo", "--form", "json"], ["get", "demo", "x"], ["get", "-ccfg", "demo"]]
    assert all(cli._plain_get(argv) is not None for argv in usual)
    assert all(cli._plain_get(argv) is None for argv in unusual)


def test_options_work_after_the_command_too(freshtoken: Callable[..., Run], demo_config: Path) -> None:
    """`freshtoken status -c FILE` means the same as `freshtoken -c FILE status`."""
    before = freshtoken("-c", str(demo_config), "status")
    after = freshtoken("status", "-c", str(demo_config))
    assert 0 == before.code == after.code
    assert before.out == after.out
    assert "demo" in after.out


def test_no_command_prints_the_command_list_and_exits_2(freshtoken: Callable[..., Run]) -> None:
    """A bare `freshtoken` lists the commands instead of only complaining that one is required."""
    run = freshtoken()
    assert 2 == run.code
    for command in ("run", "login", "refresh", "get", "status", "check-config", "demo"):
        assert command in run.err


def test_status_without_any_refresh_token_says_needs_login(freshtoken: Callable[..., Run], write_config: Callable[..., Path]) -> None:
    """An account that never logged in shows needs-login, refresh token 'none', and the login command."""
    path = write_config(DIRS + PUBLIC_ACCOUNT)
    run = freshtoken("-c", str(path), "status")
    assert 0 == run.code
    row = _table(run.out)[1].split()
    assert ["demo", "needs-login", "-", "never", "none", "-"] == row
    assert "demo: run `freshtoken login demo`" in run.out


def test_status_needs_no_secret_variable(freshtoken: Callable[..., Run], write_config: Callable[..., Path]) -> None:
    """status works although the client secret's ${VAR} is not set (it never sends a request)."""
    path = write_config(
        DIRS + "accounts:\n  demo:\n    token_url: http://127.0.0.1:1/t\n    client_id: x\n    client_secret: ${{NOPE_NOT_SET}}\n"
    )
    assert 0 == freshtoken("-c", str(path), "status").code
    assert 78 == freshtoken("-c", str(path), "refresh").code


def test_check_config_refuses_an_unknown_output_group(
    freshtoken: Callable[..., Run], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """check-config names the output's group key when the group does not exist, instead of passing and failing later."""
    path = write_config(DIRS + PUBLIC_ACCOUNT + "    outputs:\n      - path: {tmp}/out.token\n        group: no-such-group-freshtoken\n")
    run = freshtoken("-c", str(path), "check-config")
    assert 78 == run.code
    assert f"{path}:10: accounts.demo.outputs[0].group: no such group 'no-such-group-freshtoken'" in run.err


def test_spotify_localhost_redirect_warns(freshtoken: Callable[..., Run], write_config: Callable[..., Path]) -> None:
    """check-config warns that Spotify refuses a localhost redirect URI."""
    path = write_config(
        DIRS + "accounts:\n  sp:\n    provider: spotify\n    client_id: x\n    client_secret: y\n"
        "    redirect_uri: http://localhost:8888/callback\n"
    )
    run = freshtoken("-c", str(path), "check-config")
    assert 0 == run.code
    assert "accounts.sp.redirect_uri: Spotify refuses localhost" in run.err
