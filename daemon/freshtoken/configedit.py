"""`freshtoken add`: append an account to the config file as text, keeping every other byte of it.

A YAML dumper would drop the comments and reorder the keys, so the new block is inserted as text
under `accounts:`; the result must parse to the old document plus the new account, and must pass
config.load, before it atomically replaces the file (same mode and owner). No literal secret is
ever written: the client secret is a ${VAR} reference or a client_secret_file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from freshtoken.errors import ConfigError, FreshtokenError, UsageError
from freshtoken.fsutil import TEMP_MARK, fsync_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import IO, Any

NEW_FILE_MODE = 0o600  # a config may come to hold secrets; only its owner reads it until they decide otherwise
NEW_DIR_MODE = 0o700
# The system service's config (/etc/freshtoken/config.yaml, made by root) is laid out as install-systemd lays it out:
# the service runs as the freshtoken user, so the file is root:freshtoken 0640 in a 0755 dir (add writes no secret).
SYSTEM_FILE_MODE = 0o640
SYSTEM_DIR_MODE = 0o755
SERVICE_GROUP = "freshtoken"
SECRET_KEYS = ("client_secret", "refresh_token")
_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_ACCOUNTS_LINE = re.compile(r"""(?P<indent> *)(?P<key>accounts|"accounts"|'accounts') *:(?P<rest>[^\r\n]*)(?P<eol>\r?\n?)""")
_EMPTY_VALUE = re.compile(r"\s*(?:\{\s*\}|~|null|Null|NULL)?\s*(?P<comment>#.*)?")
_NEW_FILE_HEADER = "# freshtoken config (see the README). `freshtoken add` appends accounts below; edit freely.\n"


@dataclass(frozen=True, slots=True)
class AddResult:
    path: Path
    name: str
    created: bool  # the config file did not exist before
    block: str  # the text inserted
    notes: tuple[str, ...]
    next_command: str  # `freshtoken login NAME` (with -c when the file is not the default one)
    mode: int = NEW_FILE_MODE  # a new file's mode

    @property
    def message(self) -> str:
        """What `freshtoken add` prints on success."""
        where = f"a new {self.path} (mode {self.mode:04o})" if self.created else str(self.path)
        lines = [f"added account {self.name!r} to {where}", *(f"note: {note}" for note in self.notes)]
        lines.append(f"next: {self.next_command}")
        lines.append("then reload a running daemon (systemctl [--user] reload freshtoken, or kill -HUP) so that it keeps the token fresh")
        return "\n".join(lines) + "\n"


def add_account(
    config_path: Path,
    name: str,
    *,
    provider: str,
    options: Mapping[str, object],
    environ: Mapping[str, str],
    system: bool | None = None,
    group: str = SERVICE_GROUP,
) -> AddResult:
    """Append account `name` to the config file (creating it if missing) and return what to tell the user.

    Raises UsageError for a bad name, provider, key or a literal secret; ConfigError when the
    file cannot be extended safely or the result would not load (the file is then unchanged).
    A new system config (`system`; default: root creating /etc/freshtoken/config.yaml) is made
    root:`group` 0640 in a 0755 dir, so the service can read it; without that group, a note says how.
    """
    from freshtoken.dirs import is_system_config
    from freshtoken.model import Grant
    from freshtoken.schema import ACCOUNT_KEYS, ACCOUNT_NAME

    if not ACCOUNT_NAME.fullmatch(name):
        raise UsageError(f"{name!r} is not a valid account name: start with a letter or digit, then use letters, digits, '_', '.', '-'")
    from freshtoken.providers import PRESETS

    known = [*PRESETS, "generic"]  # read now: presets are plain data that other modules add to
    if provider not in known:
        raise UsageError(f"unknown provider {provider!r} (known: {', '.join(known)})")
    entry = _entry(provider, options, ACCOUNT_KEYS)
    path = Path(os.path.realpath(config_path))  # a symlinked config (dotfiles) keeps its link: write the target
    if system is None:
        system = os.geteuid() == 0 and is_system_config(str(path))
    layout = _Layout(NEW_FILE_MODE, NEW_DIR_MODE, None)
    notes_before: list[str] = []
    if system:
        gid = _group_id(group)
        layout = _Layout(SYSTEM_FILE_MODE, SYSTEM_DIR_MODE, gid)
        if gid is None:
            notes_before.append(
                f"group {group} does not exist yet, so the service could not read this file: after creating it"
                f" (`freshtoken install-systemd`, or systemd-sysusers), run `chgrp {group} {_shell_word(str(path))}`"
            )
    with _locked(path) as old:
        if old is None:
            text = _NEW_FILE_HEADER + "accounts:\n" + _block(name, entry, "  ", "  ", "\n")
            block = text[len(_NEW_FILE_HEADER) + len("accounts:\n") :]
            expected: dict[str, Any] = {"accounts": {name: entry}}
        else:
            text, block, expected = _insert(old[0], str(path), name, entry)
        _check_result(text, str(path), name, expected)
        loaded = _write_validated(path, text, old[1] if old else None, environ, layout)
    notes = (*_notes(entry, loaded.warnings, name, environ), *(notes_before if old is None else ()))
    login = f"freshtoken login {name}"
    if entry.get("grant") == Grant.CLIENT_CREDENTIALS:
        login = f"freshtoken refresh {name}   (client_credentials: no login needed)"
    if not _is_default_config(path, environ):
        login = login.replace("freshtoken ", f"freshtoken -c {_shell_word(str(path))} ", 1)
    return AddResult(path=path, name=name, created=old is None, block=block, notes=notes, next_command=login, mode=layout.file_mode)


@dataclass(frozen=True, slots=True)
class _Layout:
    """How a new config file and its new directories are made."""

    file_mode: int
    dir_mode: int
    gid: int | None  # the file's group (None: the creator's)


def _group_id(name: str) -> int | None:
    from freshtoken.fsutil import resolve_group

    try:
        return resolve_group(name)
    except LookupError:
        return None


# ---------------------------------------------------------------- the block


def _entry(provider: str, options: Mapping[str, object], account_keys: tuple[str, ...]) -> dict[str, Any]:
    """The account's keys in the config's own order, each value checked to be writable without a secret."""
    entry: dict[str, Any] = {"provider": provider}
    for key in options:
        if key == "provider" or key not in account_keys:
            allowed = ", ".join(k for k in account_keys if k != "provider")
            raise UsageError(f"{key!r} is not an account key freshtoken add can set (known: {allowed})")
    for key in account_keys:
        value = options.get(key)
        if value is None:
            continue
        if key in SECRET_KEYS and not (isinstance(value, str) and _REFERENCE.fullmatch(value)):
            # The message must not echo the value: it may be the secret itself.
            raise UsageError(
                f"{key}: freshtoken add never writes a literal secret into the config;"
                " use --client-secret-env VAR (written as ${VAR}) or --client-secret-file PATH"
            )
        kinds: tuple[type, ...]
        if isinstance(value, list | tuple):
            items, kinds = list(value), (str,)
        else:
            items, kinds = [value], (str, bool, int)
        for item in items:
            if not isinstance(item, kinds):
                raise UsageError(f"{key}: freshtoken add writes strings, numbers, booleans and lists of strings; edit the file for more")
            if isinstance(item, str) and not item.isprintable():
                raise UsageError(f"{key}: the value contains a control character")
        entry[key] = list(value) if isinstance(value, list | tuple) else value
    return entry


_COMMENTS = {
    "client_secret": "read from the environment when freshtoken starts; never written here",
    "client_secret_file": "an absolute path, or a systemd credential name (LoadCredential=)",
}


def _block(name: str, entry: Mapping[str, Any], indent: str, step: str, newline: str) -> str:
    lines = [f"{indent}# added by `freshtoken add`; then run `freshtoken login {name}`", f"{indent}{_scalar(name)}:"]
    for key, value in entry.items():
        comment = f"  # {_COMMENTS[key]}" if key in _COMMENTS else ""
        if isinstance(value, list):
            lines.append(f"{indent}{step}{key}:{comment}")
            lines.extend(f"{indent}{step}{step}- {_scalar(item)}" for item in value)
        else:
            lines.append(f"{indent}{step}{key}: {_scalar(value)}{comment}")
    return newline.join(lines) + newline


def _scalar(value: object) -> str:
    """`value` as YAML that reads back as exactly `value`: plain when that is safe, else double-quoted."""
    from freshtoken.config import read_yaml

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    # YAML 1.1 reads on, no, 0755, 1e3, 12:30 or 2024-01-01 as other types: keep the plain form only if it reads back.
    with contextlib.suppress(ConfigError):
        if text and text == text.strip() and " #" not in text and read_yaml(f"k: {text}\n", "")[0] == {"k": text}:
            return text
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


# ---------------------------------------------------------------- placing it


def _insert(text: str, file: str, name: str, entry: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(new text, inserted block, the document the new text must parse to)."""
    from freshtoken.config import read_yaml

    newline = "\r\n" if "\r\n" in text else "\n"
    doc, lines = read_yaml(text, file)
    if doc is None:  # empty, or only comments
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(file, "", "the top level is not a mapping, so freshtoken add cannot extend it")
    accounts = doc.get("accounts")
    if accounts is not None and not isinstance(accounts, dict):
        raise ConfigError(file, "accounts", "is not a mapping, so freshtoken add cannot extend it", lines.get("accounts"))
    if accounts and name in accounts:
        raise UsageError(f"account {name!r} already exists in {file} (line {lines.get(f'accounts.{name}', '?')}); pick another name")
    expected = {**doc, "accounts": {**(accounts or {}), name: entry}}
    src = text.splitlines(keepends=True)
    if src and not src[-1].endswith("\n"):
        src[-1] += newline
    if "accounts" not in doc:
        block = _block(name, entry, "  ", "  ", newline)
        return "".join(src) + "accounts:" + newline + block, block, expected

    at = lines["accounts"] - 1
    match = _ACCOUNTS_LINE.fullmatch(src[at])
    rest = match and _EMPTY_VALUE.fullmatch(match["rest"]) if match else None
    if not match or not rest or _starts_flow(src, at + 1):
        flow = "{" in src[at] or _starts_flow(src, at + 1)
        why = "is written in flow style ({...})" if flow else "is written in a form (anchor, tag or flow) freshtoken add does not edit"
        raise ConfigError(file, "accounts", f"{why}; rewrite it as an indented block, or add the account by hand", at + 1)
    base = len(match["indent"])
    if not accounts:
        # `accounts:`, `accounts: {}` or `accounts: null`: the key stays, its empty value goes, a comment stays.
        comment = f" {rest['comment']}" if rest["comment"] else ""
        src[at] = f"{match['indent']}{match['key']}:{comment}{match['eol'] or newline}"
        indent, step = " " * (base + 2), "  "
    else:
        first = next(iter(accounts))
        first_line = src[lines[f"accounts.{first}"] - 1]
        indent = first_line[: len(first_line) - len(first_line.lstrip(" "))]
        step = _child_step(src, lines, f"accounts.{first}", accounts[first], len(indent))
    last = _last_line_of_block(src, at, base)
    block = _block(name, entry, indent, step, newline)
    return "".join(src[: last + 1]) + block + "".join(src[last + 1 :]), block, expected


def _starts_flow(src: list[str], start: int) -> bool:
    """True when the first line with content after `start` opens a flow mapping (`accounts:` then `  {a: ...}`)."""
    for line in src[start:]:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return stripped.startswith("{")
    return False


def _child_step(src: list[str], lines: Mapping[str, int], key: str, value: object, parent_indent: int) -> str:
    """The indentation the file uses for an account's keys, relative to the account name (default two spaces)."""
    if isinstance(value, dict) and value:
        line = src[lines.get(f"{key}.{next(iter(value))}", 1) - 1]
        width = len(line) - len(line.lstrip(" ")) - parent_indent
        if width > 0:
            return " " * width
    return "  "


def _last_line_of_block(src: list[str], start: int, base: int) -> int:
    """The last line inside the mapping that starts at `start`: content or comments indented deeper than its key.

    A comment at the key's own depth after the block (`# --- metrics ---`) belongs to what follows it;
    an indented one (a commented-out account) belongs to the accounts and stays above the new block.
    """
    last = start
    for index in range(start + 1, len(src)):
        stripped = src[index].strip()
        if not stripped:
            continue
        depth = len(src[index]) - len(src[index].lstrip(" "))
        if depth > base:
            last = index
        elif not stripped.startswith("#"):
            break
    return last


def _check_result(text: str, file: str, name: str, expected: dict[str, Any]) -> None:
    """The new text must read as the old document plus the account, appended last; else nothing is written."""
    from freshtoken.config import read_yaml

    try:
        doc, _ = read_yaml(text, file)
    except ConfigError:
        doc = None
    if doc != expected or list(doc["accounts"])[-1] != name:
        raise ConfigError(file, "", "freshtoken add cannot place an account in this file's layout safely; add it by hand")


# ---------------------------------------------------------------- writing


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[tuple[str, os.stat_result] | None]:
    """The file's text and stat under an exclusive flock, or None when it does not exist.

    Two `freshtoken add` at once must not both extend the same old text. The lock is on the file
    itself (no lock file beside it); once a waiter holds it, it checks that the path still names
    the inode it locked, because the holder it waited for replaced the file by rename.
    """
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            yield None
            return
        except OSError as exc:
            raise FreshtokenError(f"{path}: cannot read: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            info = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                continue
            if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
                continue
            with open(fd, "rb", closefd=False) as handle:
                data = handle.read()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigError(str(path), "", "cannot read: not UTF-8 text") from None
            yield text, info
            return
        finally:
            os.close(fd)


def _write_validated(path: Path, text: str, old: os.stat_result | None, environ: Mapping[str, str], layout: _Layout | None = None) -> Any:
    """Write `text` to a temp file beside `path` with the old file's mode and owner, load it, then rename it in place.

    Validating the temp copy means a file that would not load never replaces the old one, even for a
    moment (a daemon reloading meanwhile sees the whole old file or the whole new one). A new file gets
    `layout`; the directories made for it are removed again when it is not added.
    """
    layout = layout or _Layout(NEW_FILE_MODE, NEW_DIR_MODE, None)
    made = _make_dirs(path.parent, layout.dir_mode) if old is None else []
    try:
        return _write_new_copy(path, text, old, environ, layout)
    except BaseException:
        for directory in reversed(made):  # nothing of a failed add stays behind, not even an empty ~/.config/freshtoken
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        raise


def _make_dirs(directory: Path, mode: int) -> list[Path]:
    """Create `directory` and its missing parents (each `mode`, whatever the umask); the ones created, outermost first."""
    missing = []
    while not directory.exists() and directory.parent != directory:
        missing.append(directory)
        directory = directory.parent
    made: list[Path] = []
    for new in reversed(missing):
        try:
            os.mkdir(new, mode)
        except FileExistsError:
            continue
        except OSError as exc:
            for directory in reversed(made):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
            raise FreshtokenError(f"cannot create {new}: {exc.strerror}; nothing was changed") from None
        os.chmod(new, mode)
        made.append(new)
    return made


def _write_new_copy(path: Path, text: str, old: os.stat_result | None, environ: Mapping[str, str], layout: _Layout) -> Any:
    from freshtoken import config

    mode = layout.file_mode if old is None else old.st_mode & 0o7777
    temp = path.parent / f"{TEMP_MARK}{path.name}.{secrets.token_hex(4)}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise FreshtokenError(f"{path}: cannot write a new copy in {path.parent}: {exc.strerror}; nothing was changed") from None
    try:
        try:
            if old is None and layout.gid is not None:
                os.fchown(fd, -1, layout.gid)
            if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(fd, old.st_uid, old.st_gid)
            os.fchmod(fd, mode)  # after fchown, which may clear set-id bits
        except PermissionError:
            raise FreshtokenError(
                f"{path}: cannot give the new copy the file's owner {old.st_uid if old else '?'}:{old.st_gid if old else '?'}"
                " (run freshtoken add as that user, or as root); nothing was changed"
            ) from None
        with open(fd, "wb", closefd=False) as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(fd)
        try:
            loaded = config.load(temp, environ, secrets=False)
        except ConfigError as exc:
            raise ConfigError(str(path), exc.key, f"{exc.problem} (account not added; the file is unchanged)") from None
        if old is None:
            try:
                os.link(temp, path)  # unlike rename, never replaces a file someone created meanwhile
            except FileExistsError:
                raise FreshtokenError(f"{path}: created by someone else meanwhile; run freshtoken add again") from None
        else:
            os.replace(temp, path)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    fsync_dir(path.parent)
    return loaded


# ---------------------------------------------------------------- telling the user


def _notes(entry: Mapping[str, Any], warnings: tuple[str, ...], name: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    notes = []
    reference = entry.get("client_secret")
    if isinstance(reference, str) and reference[2:-1] not in environ:
        notes.append(f"${reference[2:-1]} is not set here: set it wherever freshtoken runs (the shell, or Environment= in the unit)")
    secret_file = entry.get("client_secret_file")
    if isinstance(secret_file, str) and os.path.isabs(secret_file) and not os.path.isfile(secret_file):
        notes.append(f"{secret_file} does not exist yet: put the client secret there (chmod 600) before you log in")
    notes.extend(w for w in warnings if f"accounts.{name}." in w)
    return tuple(notes)


def _is_default_config(path: Path, environ: Mapping[str, str]) -> bool:
    """True when a plain `freshtoken login` (no -c) finds this file."""
    from freshtoken import config

    try:
        return os.path.realpath(config.find(None, environ)) == str(path)
    except ConfigError:
        return False


def _shell_word(text: str) -> str:
    import shlex

    return shlex.quote(text)


def default_path(explicit: str | None, environ: Mapping[str, str], *, euid: int | None = None) -> Path:
    """The file `add` edits: -c, else $FRESHTOKEN_CONFIG, else the first existing candidate, else a new one.

    A new file goes where `freshtoken` looks for it: ~/.config/freshtoken/config.yaml for a user,
    /etc/freshtoken/config.yaml (the system service's) for root.
    """
    from freshtoken import config
    from freshtoken.dirs import SYSTEM_CONFIG, is_system_config

    if explicit:
        return Path(explicit)
    if environ.get("FRESHTOKEN_CONFIG"):
        return Path(environ["FRESHTOKEN_CONFIG"])
    candidates = config.candidate_paths(environ)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    if (os.geteuid() if euid is None else euid) == 0:
        return Path(SYSTEM_CONFIG)
    return next(p for p in candidates if p.parent.name == "freshtoken" and not is_system_config(str(p)))


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `freshtoken add` (cli.py passes the subcommand's parser)."""
    from freshtoken.model import ClientAuth
    from freshtoken.providers import PRESETS

    parser.description = (
        "Append an account to the config file (created 0600 if missing; as root, /etc/freshtoken/config.yaml is created"
        " root:freshtoken 0640 so that the service can read it), keeping its comments and order,"
        " check that the file still loads, and print the login command to run next."
        " The client secret is never written: give the name of an environment variable or a file that holds it."
    )
    parser.add_argument("account", metavar="ACCOUNT", help="the new account's name: a letter or digit, then letters, digits, _ . -")
    parser.add_argument(
        "--provider", required=True, metavar="P", help=f"a preset ({', '.join(PRESETS)}) or generic (then give --token-url)"
    )
    parser.add_argument("--client-id", metavar="ID", help="the client id of your registered app")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--client-secret-env", metavar="VAR", help="read the client secret from $VAR (written as ${VAR})")
    secret.add_argument("--client-secret-file", metavar="PATH", help="read the client secret from this file, or systemd credential name")
    parser.add_argument(
        "--client-auth", choices=[auth.value for auth in ClientAuth], help="how the client authenticates (none: a public client)"
    )
    parser.add_argument(
        "--scope", action="append", default=[], metavar="S", help="a scope to request (repeat, or give several separated by spaces)"
    )
    parser.add_argument(
        "--redirect-uri", metavar="URI", help="the redirect URI registered for the app (default http://127.0.0.1:8888/callback)"
    )
    parser.add_argument("--token-url", metavar="URL", help="the token endpoint (generic provider, or to override a preset)")
    parser.add_argument("--authorize-url", metavar="URL", help="the authorization endpoint (generic provider, or to override a preset)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other account key, e.g. --set grant=client_credentials",
    )


def run_add(args: argparse.Namespace, environ: Mapping[str, str], out: IO[str], err: IO[str]) -> int:
    """`freshtoken add`: the handler cli.py's COMMANDS table calls."""
    if args.client_secret_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.client_secret_env):
        raise UsageError(f"--client-secret-env {args.client_secret_env!r}: not an environment variable name")
    options: dict[str, object] = {}
    for item in args.set:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        options[key.strip()] = {"true": True, "false": False}.get(value, value)
    secret_file = args.client_secret_file
    if secret_file and ("/" in secret_file or secret_file.startswith("~")):
        secret_file = os.path.abspath(os.path.expanduser(secret_file))  # the config wants an absolute path
    scopes = [scope for word in args.scope for scope in word.split()]
    options.update(
        {
            key: value
            for key, value in (
                ("client_id", args.client_id),
                ("client_secret", f"${{{args.client_secret_env}}}" if args.client_secret_env else None),
                ("client_secret_file", secret_file),
                ("client_auth", args.client_auth),
                ("scopes", scopes or None),
                ("redirect_uri", args.redirect_uri),
                ("token_url", args.token_url),
                ("authorize_url", args.authorize_url),
            )
            if value is not None
        }
    )
    path = default_path(getattr(args, "config", None), environ)
    result = add_account(path, args.account, provider=args.provider, options=options, environ=environ)
    out.write(result.message)
    out.flush()
    return 0
