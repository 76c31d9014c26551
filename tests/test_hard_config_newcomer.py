"""A newcomer's first hour (issue 11): status without the secrets, help text, default dirs, a fast `get -c`."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshtoken import cli, config, dirs, getcmd
from freshtoken.errors import ConfigError
from freshtoken.model import AccessToken, AccountState, Secret
from freshtoken.status import describe, render_table

DAY = 86400


def main(*argv: str, environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), environ=dict(os.environ) if environ is None else environ, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def tree(root: Path) -> dict[str, tuple[int, int, bytes]]:
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        found[str(path)] = (info.st_mode, info.st_mtime_ns, path.read_bytes() if path.is_file() else b"")
    return found


# ---------------------------------------------------------------- 1. status with and without the secret variables

SEEDED = (
    "state_dir: {state}\ntoken_dir: {tokens}\naccounts:\n  dev:\n    token_url: http://127.0.0.1:1/t\n    client_id: x\n"
    "    client_secret: ${{DEV_SECRET}}\n    refresh_token: ${{DEV_RT}}\n    refresh_token_lifetime: 180d\n"
)


def _seeded_state(directory: Path, seed: str, now: float) -> None:
    """The state of a login seeded from `seed` 175 days ago (5 days before its refresh token dies), refreshed 10 min ago."""
    directory.mkdir(mode=0o700, exist_ok=True)
    state = AccountState(
        refresh_token=Secret(seed),
        seed=Secret(seed).fingerprint(),
        refresh_token_obtained_at=now - 175 * DAY,
        refresh_token_expires_at=now + 5 * DAY - 1800,
        access=AccessToken(Secret("at-value"), "Bearer", now + 3000),
        last_refresh=now - 600,
    )
    (directory / "dev.json").write_text(json.dumps(state.to_json()))


def test_status_shows_the_same_with_and_without_the_secret_variables(
    write_config: Callable[..., Path], dirs: dict[str, Path], tmp_path: Path
) -> None:
    """status gives the same rows whether ${DEV_RT} and ${DEV_SECRET} are set or not, and writes nothing either way."""
    now = time.time()
    _seeded_state(dirs["state"], "rt-from-env", now)
    path = write_config(SEEDED)
    with_vars = {**os.environ, "DEV_RT": "rt-from-env", "DEV_SECRET": "s3cret"}
    without = {k: v for k, v in os.environ.items() if k not in ("DEV_RT", "DEV_SECRET")}
    tables = [render_table(describe(config.load(path, env, secrets=False), now)) for env in (with_vars, without)]
    assert tables[0] == tables[1]
    assert "expires in 4d 23h (log in again soon)" in tables[0]
    before = tree(tmp_path)
    for env in (with_vars, without):
        code, out, _ = main("-c", str(path), "status", environ=env)
        assert code == 0 and "expires in 4d 23h (log in again soon)" in out
        (row,) = json.loads(main("-c", str(path), "status", "--json", environ=env)[1])
        assert row["refresh_token_obtained_at"] == pytest.approx(now - 175 * DAY)
    assert tree(tmp_path) == before


def test_status_before_the_first_refresh_is_the_same_without_the_variables(write_config: Callable[..., Path]) -> None:
    """With no state yet, the config's ${VAR} seed makes the same row whether or not the variable is set."""
    path = write_config(SEEDED)
    now = time.time()
    with_vars = {**os.environ, "DEV_RT": "rt-from-env"}
    tables = [render_table(describe(config.load(path, env, secrets=False), now)) for env in (with_vars, dict(os.environ))]
    assert tables[0] == tables[1]
    assert "expires in 180d 0h" in tables[0]


# ---------------------------------------------------------------- 7. help


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_option_of_every_command_has_a_help_line() -> None:
    """Every argument of the top-level parser and of each subcommand (positionals included) has help text."""
    parser = cli.build_parser()
    for name, sub in {"freshtoken": parser, **_subparsers(parser)}.items():
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)


def test_get_help_mentions_every_option_where_it_looks_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """`get --help` names every option, where get looks for the token, and get's own exit codes (78 for -c, 75 only for --user)."""
    assert main("get", "--help")[0] == 0
    text = capsys.readouterr().out
    for option in ("ACCOUNT", "--format", "--min-valid", "--token-dir", "--config", "--verbose"):
        assert option in text
    assert "$XDG_RUNTIME_DIR/freshtoken" in text and "/run/freshtoken" in text
    for code in ("0 ", "1 ", "2 ", "78 "):
        assert f"\n  {code}" in text
    assert "\n  75   --user: PostgreSQL cannot be reached" in text  # get only reads a file, unless --user reads the database


def test_top_level_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """`freshtoken --help` ends with the exit codes."""
    assert main("--help")[0] == 0
    assert "exit codes:" in capsys.readouterr().out


# ---------------------------------------------------------------- 4. default dirs


def test_default_token_dir_uses_run_user_without_xdg_runtime_dir(tmp_path: Path) -> None:
    """Without $XDG_RUNTIME_DIR (cron, su, sudo -u), a user's default token dir is /run/user/$UID/freshtoken when that exists."""
    (tmp_path / "1000").mkdir()
    assert dirs.default_token_dir({}, None, euid=1000, base=str(tmp_path)) == str(tmp_path / "1000" / "freshtoken")
    assert dirs.default_token_dir({}, None, euid=1001, base=str(tmp_path)) is None
    assert dirs.default_token_dir({}, None, euid=0, base=str(tmp_path)) == "/run/freshtoken"
    assert dirs.default_token_dir({"XDG_RUNTIME_DIR": "/x"}, None, euid=1000, base=str(tmp_path)) == "/x/freshtoken"
    assert dirs.default_token_dir({"RUNTIME_DIRECTORY": "/r:/s"}, None, euid=1000, base=str(tmp_path)) == "/r"


def test_the_system_config_means_the_services_dirs() -> None:
    """/etc/freshtoken/config.yaml without state_dir/token_dir means the service's /var/lib and /run dirs, whoever reads it."""
    document = {"accounts": {"a": {"token_url": "http://127.0.0.1:1/t", "client_id": "x", "client_auth": "none"}}}
    environ = {"HOME": "/home/u", "XDG_RUNTIME_DIR": "/run/user/1000", "XDG_STATE_HOME": "/home/u/.local/state"}
    system = config.parse(document, "/etc/freshtoken/config.yaml", environ)
    assert (system.state_dir, system.token_dir) == (Path("/var/lib/freshtoken"), Path("/run/freshtoken"))
    mine = config.parse(document, "/home/u/.config/freshtoken/config.yaml", environ)
    assert (mine.state_dir, mine.token_dir) == (Path("/home/u/.local/state/freshtoken"), Path("/run/user/1000/freshtoken"))
    under_systemd = config.parse(document, "/etc/freshtoken/config.yaml", {**environ, "STATE_DIRECTORY": "/s", "RUNTIME_DIRECTORY": "/r"})
    assert (under_systemd.state_dir, under_systemd.token_dir) == (Path("/s"), Path("/r"))


def test_status_says_which_dirs_it_reads(write_config: Callable[..., Path], dirs: dict[str, Path]) -> None:
    """The status table starts with the config file, the state dir and the token dir it describes."""
    path = write_config(
        "state_dir: {state}\ntoken_dir: {tokens}\naccounts:\n  a:\n"
        "    token_url: http://127.0.0.1:1/t\n    client_id: x\n    client_auth: none\n"
    )
    code, out, _ = main("-c", str(path), "status")
    assert code == 0
    assert out.startswith(f"config     {path}\nstate dir  {dirs['state']}\ntoken dir  {dirs['tokens']}\ndaemon     not running\n\nACCOUNT")
    (row,) = json.loads(main("-c", str(path), "status", "--json")[1])
    assert (row["state_file"], row["token_file"]) == (str(dirs["state"] / "a.json"), str(dirs["tokens"] / "a.json"))


# ---------------------------------------------------------------- 11. a fast `get -c`

PLAIN = """\
# freshtoken config
state_dir: /srv/state   # private
token_dir: {token_dir}
refresh_margin: 5m
accounts:
  spotify:
    provider: spotify
    client_id: "abc"     # it's quoted
    client_secret: ${{SECRET}}
    outputs:
      - path: /srv/out.token
        mode: "0640"
"""


@pytest.mark.parametrize(
    ("token_dir", "expected"),
    [
        ("/run/tok", "/run/tok"),
        ('"/run/quoted dir"', "/run/quoted dir"),
        ("'/run/single'", "/run/single"),
        ("${TOKENS}/x", "/from-env/x"),
        ("/run/tok  # a comment", "/run/tok"),
        ("", "XDG"),
        ("~", "XDG"),
    ],
)
def test_get_config_scanner_reads_plain_configs_like_the_parser(token_dir: str, expected: str, tmp_path: Path) -> None:
    """For a plain config the line scanner finds the token dir the full parser finds (default included)."""
    path = tmp_path / "c.yaml"
    path.write_text(PLAIN.format(token_dir=token_dir))
    environ = {"TOKENS": "/from-env", "SECRET": "s", "XDG_RUNTIME_DIR": str(tmp_path / "xdg"), "HOME": str(tmp_path)}
    fast = getcmd.token_dir_from_config(str(path), environ)
    assert fast == (str(tmp_path / "xdg" / "freshtoken") if expected == "XDG" else expected)
    assert fast == str(config.load(path, environ, secrets=False).token_dir)


UNSURE = {
    "flow document": "{token_dir: /a, accounts: {a: {}}}\n",
    "anchor": "state_dir: &d /a\ntoken_dir: *d\naccounts:\n  a: {}\n",
    "block scalar": "token_dir: |\n  /a\naccounts:\n  a: {}\n",
    "continued plain scalar": "token_dir: /a\n  /b\naccounts:\n  a: {}\n",
    "nested value": "token_dir:\n  x: 1\naccounts:\n  a: {}\n",
    "open quote across lines": 'accounts:\n  a:\n    client_id: "abc\ntoken_dir: /evil"\n',
    "escaped quote keeps it open": 'accounts:\n  a:\n    client_id: "abc\\"\ntoken_dir: /evil"\n',
    "duplicate key": "token_dir: /a\ntoken_dir: /b\naccounts:\n  a: {}\n",
    "unknown key": "tokn_dir: /a\naccounts:\n  a: {}\n",
    "second document": "accounts:\n  a: {}\n---\ntoken_dir: /b\n",
    "tab": "token_dir:\t/a\naccounts:\n  a: {}\n",
    "lone CR": "token_dir: /a\r/b\naccounts:\n  a: {}\n",
    "relative": "token_dir: rel\naccounts:\n  a: {}\n",
    "missing variable": "token_dir: ${NOPE}/x\naccounts:\n  a: {}\n",
    "escape in quotes": 'token_dir: "/a\\tb"\naccounts:\n  a: {}\n',
    "flow accounts": "token_dir: /a\naccounts: [\n",
    "no accounts": "token_dir: /a\n",
    "merge key": "<<: {token_dir: /x}\naccounts:\n  a: {}\n",
    "directive": "%YAML 1.1\n---\ntoken_dir: /a\naccounts:\n  a: {}\n",
    "tag": "token_dir: !!str /a\naccounts:\n  a: {}\n",
    "colon inside": "token_dir: /a: b\naccounts:\n  a: {}\n",
    "not utf-8": "token_dir: /\udcff\n",
}


@pytest.mark.parametrize("text", list(UNSURE.values()), ids=list(UNSURE))
def test_get_config_scanner_steps_aside_when_unsure(text: str, tmp_path: Path) -> None:
    """Whatever the scanner does not fully understand it leaves to the full parser (None)."""
    path = tmp_path / "c.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    assert getcmd.token_dir_from_config(str(path), {"XDG_RUNTIME_DIR": "/x"}) is None


dump_values = st.sampled_from(["/run/a", "/srv/t d", "/x:y", "/#x", "/a'b", '/a"b', "/é", "relative", "", None, 5, True, "~", "/a: b"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    token_dir=dump_values,
    others=st.dictionaries(st.sampled_from(["state_dir", "refresh_margin", "workers", "metrics_listen"]), dump_values, max_size=3),
    style=st.sampled_from([None, '"', "'"]),
    flow=st.sampled_from([False, None, True]),
)
def test_get_config_scanner_agrees_with_the_parser_or_steps_aside(
    token_dir: Any, others: dict[str, Any], style: str | None, flow: bool | None, tmp_path: Path
) -> None:
    """For YAML written in any style, the scanner's token dir is None or the one config.load gives."""
    document = {
        **others,
        "token_dir": token_dir,
        "accounts": {"a": {"token_url": "http://127.0.0.1:1/t", "client_id": "x", "client_auth": "none"}},
    }
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump(document, default_style=style, default_flow_style=flow, allow_unicode=True))
    environ = {"XDG_RUNTIME_DIR": "/run/user/1000", "HOME": "/home/u"}
    fast = getcmd.token_dir_from_config(str(path), environ)
    try:
        parsed = str(config.load(path, environ, secrets=False).token_dir)
    except ConfigError as exc:  # another key is wrong: `get` needs only token_dir, which must not be the culprit
        assert fast is None or exc.key != "token_dir", (fast, exc)
    else:
        assert fast in (None, parsed)


def test_get_with_config_imports_neither_yaml_nor_the_config_module(tmp_path: Path) -> None:
    """`get -c CONFIG` on a plain config reads the token without importing yaml, freshtoken.config or argparse."""
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "demo.json").write_text(json.dumps({"access_token": "tok-123", "token_type": "Bearer", "expires_at": time.time() + 3600}))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(PLAIN.format(token_dir=tokens))
    code = (
        "import sys\n"
        "from freshtoken.cli import main\n"
        f"rc = main(['-c', {str(cfg)!r}, 'get', 'demo'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('yaml', 'argparse') or m == 'freshtoken.config')\n"
        "print(rc, heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert (proc.stdout, proc.stderr) == ("tok-123\n", "0 []\n")


def test_get_with_a_broken_config_still_says_what_is_wrong(tmp_path: Path) -> None:
    """`get -c` on a config the scanner cannot read falls back to the full parser, which reports it (exit 78)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("token_dir: /a\naccounts: [\n")
    code, out, err = main("-c", str(cfg), "get", "demo")
    assert (code, out) == (78, "") and err.startswith(f"freshtoken: {cfg}:")
