"""The command line: argparse, printing, exit codes, logging set-up. Nothing imports this module.

Heavy modules (requests, yaml, apscheduler) are imported inside the commands
that need them, so that `freshtoken get` starts about as fast as Python does.
"""

from __future__ import annotations

import os
import sys

from freshtoken import __version__
from freshtoken.errors import FreshtokenError, UsageError

TYPE_CHECKING = False  # typing, collections.abc and argparse cost `get` more than its own work
if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping, Sequence
    from typing import IO, Any

LOG_FORMATS = ("plain", "json")  # systemd.LOG_FORMATS, without importing logging for `get`

# A one-shot command over several accounts ends with the worst outcome.
SEVERITY = {0: 0, 75: 1, 1: 2, 78: 3}

EXIT_CODES = """\
exit codes:
  0    success
  1    failed: the server refused (e.g. invalid_grant: log in again), a rotated refresh token could
       not be saved, no valid token (get, also for an account it has no file for), login failed,
       another daemon holds the state dir, an account's state cannot be read (status)
  2    bad command line (unknown option; an account not in the config, except for get)
  75   temporary, try again later: network, timeout, HTTP 5xx or 429, or the state dir cannot be
       written (full disk, permissions; the message names the path)
  78   config error: the message names the file, the line, the key and the problem
  130  interrupted (Ctrl-C)
`freshtoken help exit-codes` lists them per command; `freshtoken COMMAND --help` shows one command's."""

_CONFIG = "config error: the message names the file, the line, the key and the problem"
_TEMPORARY = "temporary, try again later: network, timeout, HTTP 5xx or 429, or the state dir cannot be written"
_USAGE = "bad command line: unknown option, or an account not in the config"
# What each command exits with: the one place that says it, for its --help and `freshtoken help exit-codes`.
COMMAND_EXITS: dict[str, tuple[tuple[int, str], ...]] = {
    "run": (
        (0, "stopped by SIGTERM or SIGINT"),
        (1, "another daemon holds the state dir"),
        (2, "bad command line"),
        (78, _CONFIG + "; also a state or token dir it cannot write"),
    ),
    "login": (
        (0, "logged in: the refresh token is stored"),
        (1, "login failed: denied, timed out, or the server refused the code"),
        (2, _USAGE),
        (75, _TEMPORARY),
        (78, _CONFIG),
        (130, "interrupted (Ctrl-C): nothing was stored"),
    ),
    "logout": (
        (0, "logged out"),
        (1, "logged out here, but the revocation failed or a file could not be deleted"),
        (2, _USAGE),
        (75, "the state dir cannot be written"),
        (78, _CONFIG),
    ),
    "refresh": (
        (0, "every account refreshed, or still valid"),
        (1, "the server refused (e.g. invalid_grant: log in again), or a rotated refresh token could not be saved"),
        (2, _USAGE),
        (75, _TEMPORARY),
        (78, _CONFIG),
    ),
    "get": (
        (0, "the token was printed"),
        (
            1,
            "no valid token: no ACCOUNT.json where get looks (get reads no config, so also an unknown account),"
            " expired, valid for less than --min-valid, or not readable (the message says which group to join)",
        ),
        (2, "bad command line: unknown option, or not an account name"),
        (75, "--user: PostgreSQL cannot be reached"),
        (78, "-c CONFIG: " + _CONFIG),
    ),
    "status": (
        (0, "every account described (needs-login, expired, or from the token file only, are answers)"),
        (1, "an account's state cannot be read (its row says why)"),
        (2, "bad command line"),
        (78, _CONFIG),
    ),
    "check-config": ((0, "the config is OK"), (2, "bad command line"), (78, _CONFIG + "; also a directory it cannot write")),
    "add": (
        (0, "added"),
        (1, "the file cannot be read or written (nothing was changed)"),
        (2, "bad command line: a bad account name, provider or key, or a literal secret"),
        (78, "the file cannot be extended safely, or would not load with the account (nothing was changed)"),
    ),
    "install-systemd": (
        (0, "written"),
        (1, "a file cannot be written, or the system unit could not run this install's command (nothing was written)"),
        (2, "bad command line"),
    ),
    "demo": ((0, "stopped (--duration, or Ctrl-C)"), (2, "bad command line")),
    "db": (
        (0, "the schema is at this version's (and the reader role may read the tokens view)"),
        (2, "bad command line"),
        (75, "PostgreSQL cannot be reached"),
        (78, _CONFIG + "; also no shared_state, no psycopg (pip install 'freshtoken[postgres]'), or a newer schema"),
    ),
    "migrate-state": (
        (0, "every state copied (or there was nothing to copy)"),
        (1, "the destination already held a refresh token for an account (left alone; --force replaces it)"),
        (2, "bad command line"),
        (75, "PostgreSQL cannot be reached, or the state dir cannot be written"),
        (78, _CONFIG + "; also no shared_state, or the schema is missing (`freshtoken db init`)"),
    ),
    "help": ((0, "printed"), (2, "an unknown topic")),
}


def exit_codes(command: str) -> str:
    """The `exit codes:` block of one command's --help."""
    import textwrap

    lines = ["exit codes:"]
    for code, meaning in COMMAND_EXITS[command]:
        lines.append(textwrap.fill(meaning, 100, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7))
    return "\n".join(lines)


def all_exit_codes() -> str:
    """`freshtoken help exit-codes`: the general table, then each command's."""
    parts = [EXIT_CODES.rpartition("\n")[0]]
    for command in COMMAND_EXITS:
        parts.append(exit_codes(command).replace("exit codes:", f"freshtoken {command}:", 1))
    return "\n\n".join(parts)


USER_HELP = "the user whose grant of the template ACCOUNT (templates: in the config, with shared_state) this is"

GET_LOOKS = """\
where get looks: --token-dir DIR, else $FRESHTOKEN_TOKEN_DIR, else $RUNTIME_DIRECTORY, else the token_dir of
-c CONFIG, else $XDG_RUNTIME_DIR/freshtoken (or /run/user/$UID/freshtoken), then /run/freshtoken.
get reads only the token file ACCOUNT.json there: no network, no state, no secrets."""


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from freshtoken.formats import FORMATS

    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="freshtoken",
        description="Keep OAuth 2.0 access tokens fresh in files.",
        epilog=EXIT_CODES + "\n\n`freshtoken COMMAND --help` describes each command.",
        formatter_class=formatter,
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="CONFIG",
        help="config file (default: $FRESHTOKEN_CONFIG, ./freshtoken.yaml, ~/.config/freshtoken/config.yaml, /etc/freshtoken/config.yaml)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help="plain: time, level, message (in the journal: its own format); json: one object per line with time, level,"
        " logger, message and account (default: $FRESHTOKEN_LOG_FORMAT, else plain)",
    )
    parser.add_argument("--version", action="version", version=f"freshtoken {__version__}")
    # -c and -v also work after the command (`freshtoken status -c FILE`); SUPPRESS keeps
    # the subcommand from overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", metavar="CONFIG", default=argparse.SUPPRESS, help="config file (default: see `freshtoken --help`)"
    )
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output")
    common.add_argument(
        "--log-format", choices=LOG_FORMATS, default=argparse.SUPPRESS, help="plain or json log lines (default: see `freshtoken --help`)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plain_add_parser = sub.add_parser

    def add_parser(name: str, **options: Any) -> argparse.ArgumentParser:
        # Each command's help ends with its own exit codes (get exits 1 for an account it has no file for, others 2).
        epilog = options.pop("epilog", None)
        options["epilog"] = f"{epilog}\n\n{exit_codes(name)}" if epilog else exit_codes(name)
        return plain_add_parser(name, parents=[common], formatter_class=formatter, **options)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    sub.add_parser(
        "run",
        help="the daemon, in the foreground (systemd runs it)",
        description="Keep every account's token fresh until SIGTERM; SIGHUP reloads the config, SIGUSR1 refreshes all now."
        " Refuses to start (exit 78) on what check-config refuses.",
    )

    login = sub.add_parser(
        "login",
        help="log in through the browser (or with a device code) and store the refresh token",
        description="Log in once and store the refresh token in the state dir. By default freshtoken listens on the loopback"
        " redirect_uri and opens (or prints) the authorization URL; --manual reads the redirected URL pasted instead;"
        " --device prints a page and a code to enter on any device (RFC 8628: no listener, no browser here; works over SSH)"
        " and waits, polling at the server's interval, until approved, denied or expired. Ctrl-C gives up (exit 130).",
    )
    login.add_argument("account", metavar="ACCOUNT", help="the account to log in, as named under accounts: in the config")
    login.add_argument("--user", metavar="NAME", help=USER_HELP)
    login.add_argument("--no-browser", action="store_true", help="print the URL instead of opening a browser")
    login.add_argument("--manual", action="store_true", help="paste the redirected URL instead of listening (headless hosts)")
    login.add_argument(
        "--device",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log in with a device code (needs device_authorization_url or a preset that has one); --no-device: through"
        " the browser (default: the account's device_login, false unless set)",
    )
    login.add_argument(
        "--timeout", type=_duration, default=300, metavar="S", help="give up waiting for the browser after this long (default 5m)"
    )

    logout = sub.add_parser(
        "logout",
        help="revoke the refresh token where possible, delete the account's state and token files",
        description="Revoke the refresh token at the provider's RFC 7009 endpoint (revocation_url; the google preset has one,"
        " microsoft and github do not), then delete the account's state and its token files (ACCOUNT.token, ACCOUNT.json and"
        " the configured outputs) and tell a running daemon, which then shows the account as needing a login."
        " Exit 0 when done; 1 when the local logout is done but the revocation failed or a file could not be deleted.",
    )
    logout.add_argument("account", metavar="ACCOUNT", help="the account to log out, as named under accounts: in the config")
    logout.add_argument("--user", metavar="NAME", help=USER_HELP)
    logout.add_argument("--no-revoke", action="store_true", help="only delete here; the refresh token stays valid at the provider")

    refresh = sub.add_parser("refresh", help="refresh now, then exit")
    refresh.add_argument("accounts", nargs="*", metavar="ACCOUNT", help="accounts to refresh (default: all of them)")
    refresh.add_argument("--if-needed", action="store_true", help="only accounts whose token is inside the refresh margin")
    refresh.add_argument("--user", metavar="NAME", help=USER_HELP + " (give the template as the one ACCOUNT)")

    get = sub.add_parser("get", help="print the current token (reads only the token dir)", epilog=GET_LOOKS)
    get.add_argument("account", metavar="ACCOUNT", help="the account whose access token to print")
    get.add_argument(
        "--format",
        choices=FORMATS,
        default="raw",
        help="raw: the token alone; json: token, type, expiry and scope; header: `Authorization: Bearer ...`;"
        " env: ACCESS_TOKEN=... (default raw)",
    )
    get.add_argument(
        "--min-valid", type=_duration, default=0, metavar="DURATION", help="fail unless the token is valid for at least this long"
    )
    get.add_argument("--token-dir", metavar="DIR", help="read the token from DIR, overriding every default (see below)")
    get.add_argument("--user", metavar="NAME", help=USER_HELP + ", read from PostgreSQL (reads the config and the database)")

    status = sub.add_parser(
        "status",
        help="per account: state, expiry, last refresh, last error; whether the daemon runs",
        description="Read the state dir (never the network, never a secret, no writes) and show each account, and whether"
        " a daemon runs on that state dir (its pid, since when, its last heartbeat)."
        " Exit 1 if an account's state cannot be read (its row says why), else 0.",
    )
    status.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list, one object per account, instead of the table; each has the same `daemon` object"
        " (running, pid, since, last_heartbeat as epoch seconds)",
    )

    sub.add_parser(
        "check-config",
        help="validate the config and print what it would do",
        description="Check the config and every directory freshtoken will write (creating the state and token dirs),"
        " then print the plan. `run` makes the same checks before it starts.",
    )

    from freshtoken.configedit import add_arguments

    add_arguments(sub.add_parser("add", help="add an account to the config file (comments kept), then log in"))

    install = sub.add_parser(
        "install-systemd",
        help="write the systemd unit, sysusers snippet and a config for this install",
        description="Write the systemd unit with ExecStart= naming this install's freshtoken command, the sysusers snippet"
        " and, unless one exists, a config (the example, reading the client secret from a file). Units are replaced,"
        " a config never. As root on the live system it also runs `systemd-sysusers` and `systemctl daemon-reload`;"
        " then it prints the remaining steps. The system unit hides /home, /root, /run/user and /tmp (ProtectHome=,"
        " PrivateTmp=) and runs as the freshtoken user: when this install's command, its Python or its package is"
        " there, or not executable by other users, the service would fail with status=203/EXEC, so install-systemd"
        " refuses (exit 1) and says how to install where the service can reach it; with --force or --root DIR it"
        " writes the unit and warns.",
    )
    install.add_argument(
        "--user", action="store_true", help="a user service (~/.config/systemd/user, ~/.config/freshtoken) instead of the system one"
    )
    install.add_argument(
        "--root",
        metavar="DIR",
        help="write under DIR instead of / (with --user: instead of $HOME), e.g. an image being built; runs no systemd tool",
    )
    install.add_argument(
        "--force",
        action="store_true",
        help="write the system unit even though the service cannot run this install's command (see above); a warning instead",
    )

    help_command = sub.add_parser(
        "help",
        help="print the exit codes of every command, or one command's help",
        description="`freshtoken help exit-codes` prints what each command exits with; `freshtoken help COMMAND` is"
        " `freshtoken COMMAND --help`; `freshtoken help` alone is `freshtoken --help`.",
    )
    help_command.add_argument("topic", nargs="?", metavar="TOPIC", help="exit-codes, or a command's name")

    db = sub.add_parser(
        "db",
        help="shared state: create or upgrade freshtoken's schema in PostgreSQL",
        description="`db init` creates freshtoken's tables, the freshtoken_tokens view and the freshtoken_put_grant() function in"
        " the shared_state database, or upgrades them; run it once, as a role that may create tables, before the daemons start"
        " (they refuse an older schema, exit 78). Idempotent. --reader-role ROLE lets ROLE (created NOLOGIN if missing) read"
        " the view of access tokens and nothing else: never a refresh token or a client secret.",
    )
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_init = db_sub.add_parser(
        "init",
        parents=[common],
        formatter_class=formatter,
        help="create or upgrade the schema",
        description=db.description,
        epilog=exit_codes("db"),
    )
    db_init.add_argument("--reader-role", metavar="ROLE", help="let ROLE read the freshtoken_tokens view only (e.g. freshtoken_reader)")

    migrate = sub.add_parser(
        "migrate-state",
        help="copy the accounts' states from the state dir into PostgreSQL, or back (--to-files)",
        description="Copy each account's state (its refresh token above all) from the state dir into the shared_state database,"
        " or back with --to-files, under both locks. A destination that already holds a refresh token is left alone unless"
        " --force. The source is kept as it was; stop the daemons first, and start them on the destination afterwards.",
    )
    migrate.add_argument("accounts", nargs="*", metavar="ACCOUNT", help="accounts to copy (default: all of them)")
    migrate.add_argument("--to-files", action="store_true", help="from PostgreSQL into the state dir instead")
    migrate.add_argument("--force", action="store_true", help="replace a refresh token the destination already holds")

    demo = sub.add_parser("demo", help="the daemon against a built-in loopback authorization server")
    demo.add_argument("--duration", type=_duration, default=None, metavar="D", help="stop after this long (default: until Ctrl-C)")
    demo.add_argument(
        "--lifetime", type=_duration, default=20, metavar="D", help="access-token lifetime the demo server issues (default 20s)"
    )
    return parser


def _duration(text: str) -> int:
    import argparse

    from freshtoken.durations import parse_duration

    try:
        return parse_duration(int(text) if text.isdigit() else text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    environ = os.environ if environ is None else environ
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    words = sys.argv[1:] if argv is None else list(argv)
    args: Any = _plain_get(words)
    if args is None:
        parser = build_parser()
        if not words:
            parser.print_help(err)
            return 2
        try:
            args = parser.parse_args(words)
        except SystemExit as exc:
            return int(exc.code or 0)
    try:
        handler = COMMANDS[args.command]
        code: int = handler(args, environ, out, err)
        return code
    except FreshtokenError as exc:
        print(f"freshtoken: {exc}", file=err)
        return exc.exit_code
    except BrokenPipeError:
        # `freshtoken get x | head -c 5`: the reader left; that is not an error of ours.
        _silence_stdout()
        return 0
    except OSError as exc:
        # e.g. stdout closed (`freshtoken get x >&-`): say so in one line, no traceback, naming the file if any
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"freshtoken: {where}{exc.strerror or exc}", file=err)
        return 1
    except KeyboardInterrupt:
        return 130


class _GetArgs:
    """The namespace argparse would give a plain `get` command line."""

    command = "get"
    verbose = 0
    log_format = None

    def __init__(self, account: str, format: str, min_valid: int, token_dir: str | None, config: str | None) -> None:
        self.account, self.format, self.min_valid, self.token_dir, self.config = account, format, min_valid, token_dir, config
        self.user = None  # `get TEMPLATE --user NAME` reads the database: argparse's path


GET_OPTIONS = {"-c": "--config", "--config": "--config", "--format": "--format", "--min-valid": "--min-valid", "--token-dir": "--token-dir"}


def _plain_get(argv: list[str]) -> _GetArgs | None:
    """`[-c CONFIG] get ACCOUNT [--format F] [--min-valid D] [--token-dir DIR] [-c CONFIG]` read without
    argparse, whose import costs more than the whole of `get`; None for anything else (argparse then
    parses it, or explains)."""
    values: dict[str, str] = {}
    if argv[:1] in (["-c"], ["--config"]) and len(argv) > 2 and not argv[1].startswith("-"):
        values["--config"], argv = argv[1], argv[2:]
    elif argv[:1] and argv[0].startswith("--config="):
        values["--config"], argv = argv[0].partition("=")[2], argv[1:]
    if not argv or argv[0] != "get":
        return None
    account = None
    rest = iter(argv[1:])
    for word in rest:
        if word.startswith("-"):
            name, equals, value = word.partition("=")
            if name not in GET_OPTIONS or name == "-c" and equals:
                return None
            name = GET_OPTIONS[name]
            if not equals:
                value = next(rest, "-")
                if value.startswith("-"):
                    return None
            values[name] = value
        elif account is None:
            account = word
        else:
            return None
    from freshtoken.formats import FORMATS  # get imports it anyway

    fmt = values.get("--format", "raw")
    if account is None or fmt not in FORMATS:
        return None
    min_valid = 0
    text = values.get("--min-valid")
    if text is not None:
        if text.isdigit() and len(text) < 10:  # below parse_duration's 100-year limit: the same number
            min_valid = int(text)
        else:
            from freshtoken.durations import parse_duration

            try:
                min_valid = parse_duration(text)
            except ValueError:
                return None  # argparse says what is wrong
    return _GetArgs(account, fmt, min_valid, values.get("--token-dir"), values.get("--config"))


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------- commands


def cmd_get(args: argparse.Namespace, environ: Mapping[str, str], out: IO[str], err: IO[str]) -> int:
    from freshtoken.getcmd import get, token_dir_from_config

    if args.user:
        import time

        from freshtoken.sharedcmd import get_from_db, resolve_account

        config = _load_config(args, environ, secrets=False)
        account = resolve_account(config, args.account, args.user)
        out.write(get_from_db(config, account, args.format, args.min_valid, time.time()).decode())
        out.flush()
        return 0

    config_token_dir = None
    if args.config and not args.token_dir:
        # The line scanner answers for a plain config at a fraction of yaml's import cost; the full parse, when unsure.
        config_token_dir = token_dir_from_config(args.config, environ) or str(_load_config(args, environ, secrets=False).token_dir)
    data = get(
        args.account,
        fmt=args.format,
        min_valid=args.min_valid,
        token_dir=args.token_dir,
        config_token_dir=config_token_dir,
        environ=environ,
    )
    out.write(data.decode())
    out.flush()
    return 0


def cmd_refresh(args: argparse.Namespace, environ: Mapping[str, str], out: IO[str], err: IO[str]) -> int:
    from freshtoken.durations import humanize
    from freshtoken.refresh import RefreshPolicy

    config = _load_config(args, environ)
    _setup_logging(args, args.verbose, environ, err, accounts=lambda: config.accounts)
    refresher = _make_refresher(config)
    policy = RefreshPolicy.IF_NEEDED if args.if_needed else RefreshPolicy.ALWAYS
    worst = 0
    if args.user:
        from freshtoken.sharedcmd import resolve_account

        if len(args.accounts) != 1:
            raise UsageError("--user NAME needs exactly one ACCOUNT: the template")
        accounts = [resolve_account(config, args.accounts[0], args.user)]
    else:
        accounts = _select_accounts(config, args.accounts)
    try:
        for account in accounts:
            try:
                result = refresher.refresh(account, policy)
            except FreshtokenError as exc:
                print(f"{account.name}: failed: {exc}", file=err)
                worst = _worse(worst, exc.exit_code)
                continue
            access = result.state.access
            left = humanize(access.expires_at - refresher.clock()) if access else "?"
            verb = "refreshed" if result.refreshed else "still valid, not refreshed"
            print(f"{account.name}: {verb}; expires in {left}", file=out)
    finally:
        refresher.store.close()
    return worst


def cmd_status(args: argparse.Namespace, environ: Mapping[str, str], out: IO[str], err: IO[str]) -> int:
    import json

    from freshtoken.status import daemon_status, describe, render_header, render_table

    config = _load_config(args, environ, secrets=False, optional_token_dir=True)
    for warning in config.warnings:
        if "token_dir" in config.unresolved and ": token_dir: " in warning:
            print(f"warning: {warning}", file=err)
    if config.shared_state:
        import time

        from freshtoken import sharedcmd

        rows = sharedcmd.describe(config, time.time())
    else:
        rows = describe(config)
    daemon = daemon_status(config.state_dir)
    if args.json:
        # Still a list of accounts (scripts index it); each row carries the same daemon object.
        print(json.dumps([{**row, "daemon": daemon} for row in rows], indent=2), file=out)
    else:
        print(render_header(config, daemon), file=out)
        print(render_table(rows), file=out)
        if config.templates:
            import time

            from freshtoken.sharedcmd import template_rows

            try:
                templates = template_rows(config, time.time())
            except FreshtokenError as exc:
                templates = []
                print(f"templates: {exc}", file=out)
            for t in templates:
                print(
                    f"template {t['template']}: {t['users']} user grant(s), {t['valid']} with a valid token,"
                    f" {t['needs_login']} waiting for a login",
                    file=out,
                )
    # A row that could not be described is a failure a script should see; expired or needs-login rows are answers,
    # and so are rows a reader of the system install could only describe from the token file.
    return 1 if any(row["state"] == "error" for row in rows) else 0


def cmd_check_config(args: argparse.Namespace, environ: Mapping[str, str], out: IO[str], err: IO[str]) -> int:
    from freshtoken.status import check_config

    config = _load_config(args, environ, defer_credentials=True)
    for warning in config.warnings:
        print(f"warning: {warning}", file=err)
    print(check_config(config), file=out)
    return 0


def cmd_run(args: argparse.Namespace, environ: Mapping[str, str], out: IO[str], err: IO[str]) -> int:
    from freshtoken.daemon import run
    from freshtoken.status import validate

    names: set[str] = set()  # the accounts JSON log lines are about, as of the last (re)load

    def load() -> Any:
        # The checks check-config makes, at start and on every reload: a config it refuses is exit 78 here too.
        config = _load_config(args, environ)
        validate(config)
        names.update(config.accounts)
        return config

    config = load()
    _setup_logging(args, args.verbose + 1, environ, err, accounts=lambda: names)
    return run(config, config_loader=load)


def cmd_login(args: argparse.Namespace, environ: Mapping[str, str], out: IO[str], err: IO[str]) -> int:
    from freshtoken.login import login

    config = _load_config(args, environ)
    _setup_logging(args, args.verbose, environ, err, accounts=lambda: config.accounts)
    account = _one_account(config, args)
    if config.shared_state:  # before the browser: a login approved into a database without the schema would be lost
        from freshtoken.sharedcmd import pg_store

        with pg_store(config) as store:
            store.check_schema()
    device = account.device_login if args.device is None else args.device
    if device:
        from freshtoken.login import device_login

        if args.manual:
            raise UsageError("--device and --manual are two different ways to log in; give one")
        return device_login(config, account, out=out, err=err)
    return login(config, account, browser=not args.no_browser, manual=args.manual, timeout=args.timeout, out=out, err=err)


def cmd_logout(args: argparse.Namespace, environ: Mapping[str, str], out: IO[str], err: IO[str]) -> int:
    from freshtoken.login import logout

    config = _load_config(args, environ)
    _setup_logging(args, args.verbose, environ, err, accounts=lambda: config.accounts)
    account = _one_account(config, args)
    return logout(config, account, out=out, err=err, revoke=not args.no_revoke)


def cmd_db(args: argparse.Namespace, environ: Mapping[str, str], out: IO[str], err: IO[str]) -> int:
    from freshtoken.sharedcmd import db_init

    config = _load_config(args, environ, secrets=False)
    _setup_logging(args, args.verbose, environ, err)
    return db_init(config, args.reader_role, out)


def cmd_migrate_state(args: argparse.Namespace, environ: Mapping[str, str], out: IO[str], err: IO[str]) -> int:
    from freshtoken.sharedcmd import migrate_state

    config = _load_config(args, environ, secrets=False)
    _setup_logging(args, args.verbose, environ, err)
    return migrate_state(config, args.accounts, to_files=args.to_files, force=args.force, out=out, err=err)


def cmd_demo(args: argparse.Namespace, environ: Mapping[str, str], out: IO[str], err: IO[str]) -> int:
    from freshtoken.demo import demo

    _setup_logging(args, args.verbose + 1, environ, err)
    return demo(duration=args.duration, lifetime=args.lifetime, out=out)


def cmd_add(args: argparse.Namespace, environ: Mapping[str, str], out: IO[str], err: IO[str]) -> int:
    from freshtoken.configedit import run_add

    return run_add(args, environ, out, err)


def cmd_help(args: argparse.Namespace, environ: Mapping[str, str], out: IO[str], err: IO[str]) -> int:
    import argparse

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if args.topic is None:
        parser.print_help(out)
    elif args.topic in ("exit-codes", "exit-code", "exit"):
        print(all_exit_codes(), file=out)
    elif args.topic in commands:
        commands[args.topic].print_help(out)
    else:
        raise UsageError(f"no help on {args.topic!r}: give exit-codes or one of {', '.join(commands)}")
    return 0


def cmd_install_systemd(args: argparse.Namespace, environ: Mapping[str, str], out: IO[str], err: IO[str]) -> int:
    import shutil
    from pathlib import Path

    from freshtoken import units

    if args.root is not None:
        root = Path(args.root).absolute()
    elif args.user:
        root = Path(environ.get("HOME") or Path.home())
    else:
        root = Path("/")
    # Only on this machine's own / and as root do the systemd tools act on what we wrote.
    live = not args.user and root == Path("/") and os.geteuid() == 0

    def create_user(sysusers_file: Path) -> None:
        tool = shutil.which("systemd-sysusers")
        if tool is None:
            print("no systemd-sysusers here: create the freshtoken system user and group yourself", file=out)
            return
        _run_tool(out, tool, str(sysusers_file))

    try:
        exec_start = units.default_exec_start()
    except LookupError as exc:
        raise FreshtokenError(str(exc)) from None
    problem = None if args.user else units.unreachable(exec_start)
    if problem is not None and args.root is None and not args.force:
        raise FreshtokenError(
            f"the system unit could not run {exec_start} (status=203/EXEC): {problem}; nothing was written."
            f" {units.REACHABLE_INSTALL[0].upper()}{units.REACHABLE_INSTALL[1:]} (--force writes the unit anyway)"
        )
    try:
        done = units.install_units(root, exec_start=exec_start, user=args.user, create_user=create_user if live else None)
    except LookupError as exc:
        raise FreshtokenError(str(exc)) from None
    except PermissionError as exc:
        hint = "run it as root, or use --user" if not args.user else "check the directory's owner"
        raise FreshtokenError(f"cannot write {exc.filename}: permission denied ({hint})") from None
    for item in done:
        print(item, file=out)
    if problem is not None:
        print(
            f"warning: the system unit cannot run {exec_start} (it would fail with status=203/EXEC): {problem}; {units.REACHABLE_INSTALL}",
            file=out,
        )
    reloaded = False
    if live and shutil.which("systemctl"):
        reloaded = _run_tool(out, "systemctl", "daemon-reload")
    print(_next_steps(done[-1].path, exec_start, user=args.user, live=live, reloaded=reloaded), file=out)
    return 0


def _config_access(config: Any, live: bool) -> list[str]:
    """The commands that let the service's group read the system config, if it cannot yet: none when it is 0640-ish root:freshtoken.

    Under --root the group of the host is not the image's: there the config is always named by its path on the target system.
    """
    import grp
    import stat

    target = "/etc/freshtoken/config.yaml"
    if not live:
        return [f"chgrp freshtoken {target}"]
    info = config.stat()
    try:
        group_ok = grp.getgrgid(info.st_gid).gr_name == "freshtoken"
    except KeyError:
        group_ok = False
    commands = [] if group_ok else [f"chgrp freshtoken {target}"]
    if not info.st_mode & stat.S_IRGRP:
        commands.append(f"chmod g+r {target}")
    return commands


def _run_tool(out: IO[str], *argv: str) -> bool:
    """Run a systemd tool, saying so; its failure is reported, not fatal (the files are written and the next steps say the rest)."""
    import subprocess

    print(f"running {' '.join(argv)}", file=out)
    out.flush()
    result = subprocess.run(argv, check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        print(f"warning: {argv[0]} exited {result.returncode}", file=out)
    return result.returncode == 0


def _next_steps(config: Any, exec_start: str, *, user: bool, live: bool, reloaded: bool) -> str:
    """What is left to do after install-systemd, as commands to paste (paths as written; a --root tree says so)."""
    import shlex

    secret = shlex.quote(str(config.parent / "spotify-client-secret"))
    command = shlex.quote(exec_start)
    systemctl = "systemctl --user" if user else "systemctl"
    steps = []
    access = [] if user else _config_access(config, live)
    if not user and not live:
        steps.append(["create the freshtoken user and group, and give it the config (on the system that runs it):", "  systemd-sysusers"])
        steps[-1] += [f"  {line}" for line in access]
    elif access:
        steps.append(["let the service (group freshtoken) read its config:", *(f"  {line}" for line in access)])
    steps.append([f"edit {config}: client_id and scopes (leave state_dir and token_dir to the unit)"])
    steps.append(
        [
            "store the client secret, never readable by others (`read -s` does not echo; printf is a shell builtin):",
            f"  install -m 0600 /dev/null {secret}",
            f"  read -rs SECRET && printf '%s' \"$SECRET\" > {secret}; unset SECRET",
        ]
    )
    if user:
        steps.append([f"log in once: {command} -c {shlex.quote(str(config))} login spotify"])
    else:
        steps.append(
            [
                "log in once as the service user, in the unit's directories (systemd/README.md, step 4):",
                "  systemd-run --pty --wait --collect -p User=freshtoken -p Group=freshtoken -p UMask=0027 \\",
                "    -p StateDirectory=freshtoken -p StateDirectoryMode=0700 \\",
                "    -p RuntimeDirectory=freshtoken -p RuntimeDirectoryMode=0750 -p RuntimeDirectoryPreserve=yes \\",
                "    -p LoadCredential=spotify-client-secret:/etc/freshtoken/spotify-client-secret \\",
                f"    {command} -c /etc/freshtoken/config.yaml login spotify --manual",
            ]
        )
    enable = f"{systemctl} enable --now freshtoken"
    steps.append([enable if reloaded else f"{systemctl} daemon-reload && {enable}"])
    if user:
        steps[-1].append("(`loginctl enable-linger` keeps it running while you are logged out)")
    lines = ["", "next steps:"]
    for number, (first, *rest) in enumerate(steps, 1):
        lines.append(f"  {number}. {first}")
        lines += [f"     {line}" for line in rest]
    return "\n".join(lines)


COMMANDS: dict[str, Any] = {
    "get": cmd_get,
    "refresh": cmd_refresh,
    "status": cmd_status,
    "check-config": cmd_check_config,
    "run": cmd_run,
    "login": cmd_login,
    "logout": cmd_logout,
    "demo": cmd_demo,
    "add": cmd_add,
    "install-systemd": cmd_install_systemd,
    "help": cmd_help,
    "db": cmd_db,
    "migrate-state": cmd_migrate_state,
}


# ---------------------------------------------------------------- helpers


def _load_config(args: argparse.Namespace, environ: Mapping[str, str], **options: bool) -> Any:
    from freshtoken import config

    return config.load(config.find(args.config, environ), environ, **options)


def _select_accounts(config: Any, names: Sequence[str]) -> list[Any]:
    if not names:
        return list(config.accounts.values())
    unknown = [n for n in names if n not in config.accounts]
    if unknown:
        from freshtoken.sharedcmd import resolve_account

        resolve_account(config, unknown[0], None)  # raises the UsageError that says why (a template, or unknown)
    return [config.accounts[n] for n in dict.fromkeys(names)]


def _one_account(config: Any, args: argparse.Namespace) -> Any:
    """ACCOUNT, or TEMPLATE --user NAME (a user's grant in the shared state)."""
    from freshtoken.sharedcmd import resolve_account

    return resolve_account(config, args.account, args.user)


def _make_refresher(config: Any) -> Any:
    from freshtoken.oauth import TokenClient
    from freshtoken.refresh import Refresher
    from freshtoken.statestore import open_store

    client = TokenClient(timeouts=config.timeouts)
    return Refresher(config, open_store(config), client)


def _worse(a: int, b: int) -> int:
    return a if SEVERITY.get(a, 2) >= SEVERITY.get(b, 2) else b


def _setup_logging(
    args: argparse.Namespace, verbosity: int, environ: Mapping[str, str], stream: IO[str], *, accounts: Any = frozenset
) -> None:
    """Log to `stream` at the level -v asks for, in --log-format (else $FRESHTOKEN_LOG_FORMAT, else plain)."""
    import logging

    from freshtoken.systemd import make_log_handler

    log_format = args.log_format or environ.get("FRESHTOKEN_LOG_FORMAT") or "plain"
    if log_format not in LOG_FORMATS:
        raise UsageError(f"$FRESHTOKEN_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = make_log_handler(environ, stream=stream, log_format=log_format, accounts=accounts)  # type: ignore[arg-type]  # any text stream
    root.addHandler(handler)
    root.setLevel(level)
    # urllib3 at DEBUG logs request lines; keep it quiet whatever -v says.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    # APScheduler narrates every job at INFO; our own canonical lines say what matters.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
