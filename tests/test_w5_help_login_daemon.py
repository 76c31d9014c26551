"""w5 items 7, 8 and 12b: per-command exit codes and `freshtoken help`, the login messages, the daemon's rescan log line."""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests

import test_daemon
import test_login as tl
from freshtoken import cli, units
from freshtoken import config as config_module
from freshtoken.daemon import Daemon
from freshtoken.login import get_command
from freshtoken.model import Secret
from freshtoken.refresh import Refresher
from freshtoken.store import Store
from freshtoken.testing import DEMO_CLIENT_ID, AuthServer
from test_daemon import account_yaml, view

server, mono, write, make_daemon, logs = test_daemon.server, test_daemon.mono, test_daemon.write, test_daemon.make_daemon, test_daemon.logs
make_config = tl.make_config


def run(*argv: str, environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), environ=environ or {}, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def command_help(name: str) -> str:
    """What `freshtoken NAME --help` prints."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return str(commands[name].format_help())


ONE_ACCOUNT = (
    "state_dir: {state}\ntoken_dir: {tokens}\naccounts:\n"
    "  a:\n    token_url: http://127.0.0.1:1/t\n    client_id: c\n    client_secret: s\n"
)


def exit_lines(help_text: str) -> dict[int, str]:
    """The `exit codes:` block of a --help text, as {code: meaning} (continuation lines joined)."""
    block = help_text.partition("\nexit codes:\n")[2]
    codes: dict[int, str] = {}
    last = None
    for line in block.splitlines():
        if line.startswith("  ") and line.split()[0].isdigit():
            last = int(line.split()[0])
            codes[last] = line.split(maxsplit=1)[1]
        elif line.startswith("       ") and last is not None:
            codes[last] += " " + line.strip()
        else:
            break
    return codes


# ------------------------------------------------------------------ 7. exit codes per command, `freshtoken help`


def test_get_help_says_an_unknown_account_is_exit_1_and_get_does_exit_1(tmp_path: Path) -> None:
    """`get --help` lists no 'unknown account' under 2 but under 1, which is what `get` exits with for one."""
    codes = exit_lines(command_help("get"))
    assert "unknown account" in codes[1] and "account" not in codes[2].replace("not an account name", "")
    assert run("get", "nosuch", "--token-dir", str(tmp_path))[0] == 1


def test_refresh_help_says_an_unknown_account_is_exit_2_and_refresh_does_exit_2(write_config: Callable[..., Path]) -> None:
    """`refresh --help` puts an account not in the config under 2, which is what `refresh` exits with for one."""
    path = write_config(ONE_ACCOUNT)
    assert "an account not in the config" in exit_lines(command_help("refresh"))[2]
    assert run("-c", str(path), "refresh", "nosuch")[0] == 2


def test_every_command_help_ends_with_its_own_exit_codes() -> None:
    """Each command's --help has an exit-codes block that is exactly that command's entry (0 always first)."""
    for command, exits in cli.COMMAND_EXITS.items():
        codes = exit_lines(command_help(command))
        assert list(codes) == [code for code, _ in exits], command
        assert next(iter(codes)) == 0


def test_help_exit_codes_lists_every_command() -> None:
    """`freshtoken help exit-codes` prints the general table, then a section per command."""
    code, out, err = run("help", "exit-codes")
    assert (code, err) == (0, "")
    assert out.startswith("exit codes:\n  0    success\n")
    for command in cli.COMMAND_EXITS:
        assert f"\nfreshtoken {command}:\n  0    " in out


def test_help_command_is_the_commands_own_help_and_an_unknown_topic_is_exit_2() -> None:
    """`freshtoken help get` prints what `freshtoken get --help` prints; `help` alone the top-level help; `help nope` exits 2."""
    assert run("help", "get")[:2] == (0, command_help("get"))
    assert run("help")[1] == cli.build_parser().format_help()
    code, _, err = run("help", "nope")
    assert code == 2 and "exit-codes" in err


# ------------------------------------------------------------------ 8. login messages


@pytest.mark.slow
def test_a_login_timeout_after_an_ignored_request_says_only_wrong_requests_came(make_config: Callable[..., Path]) -> None:
    """A request with another login's state, then silence: the timeout says only requests that were not this login's came (1 ignored)."""

    def forge(url: str) -> int:
        location = tl.redirect_location(url)
        params = tl.query(location)
        forged = location.split("?")[0] + "?" + urlencode({**params, "state": "not-this-login"})
        return requests.get(forged, timeout=15).status_code

    done = tl.run_login(make_config(), "demo", drive=forge, timeout=2)
    assert (done.code, done.driven) == (1, 400)
    assert "only requests that were not the answer to this login came to http://127.0.0.1:" in done.err
    assert "(1 ignored)" in done.err and "nothing came" not in done.err


def test_the_get_line_names_this_freshtoken_when_path_has_another(tmp_path: Path, write_config: Callable[..., Path]) -> None:
    """The success line's `get` command is this install's full path when PATH has no (or another) freshtoken, else `freshtoken`."""
    path = write_config(ONE_ACCOUNT)
    config = config_module.load(path, {})
    mine = units.this_command()
    assert os.path.isabs(mine)
    assert get_command(config, "a", {"PATH": str(tmp_path)}).startswith(f"{mine} get a --token-dir ")
    assert get_command(config, "a", {"PATH": os.path.dirname(mine)}).startswith("freshtoken get a --token-dir ")


# ------------------------------------------------------------------ 12b. the daemon says which login it picked up


def test_a_rescan_logs_each_new_login_it_picks_up(server: AuthServer, clock, dirs, write, make_daemon, logs) -> None:  # noqa: ANN001
    """A login stored by another process over a working account, then the wake-up's rescan: one INFO `a: new login picked up`."""
    path = write(
        account_yaml("a", server, server.issue_refresh_token(DEMO_CLIENT_ID)),
        account_yaml("b", server, server.issue_refresh_token(DEMO_CLIENT_ID)),
    )
    daemon: Daemon = make_daemon(path)
    daemon.startup()
    daemon.step()
    daemon.step()
    assert not view(daemon, "a").needs_login

    config = config_module.load(path, {})
    login = Refresher(config, Store(config.state_dir), daemon.client, clock=clock)
    login.adopt(config.accounts["a"], daemon.client.refresh(config.accounts["a"], Secret(server.issue_refresh_token(DEMO_CLIENT_ID))))
    daemon.request_rescan()  # what the wake datagram from login asks for
    daemon.step()

    assert logs("new login") == ["a: new login picked up"]
