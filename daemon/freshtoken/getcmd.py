"""`freshtoken get`: read a token from the token dir. Stdlib only; never needs the config.

This is what cron jobs run every minute, so it imports nothing heavy: no
pathlib, dataclasses, typing or json (each would cost more than the work).
"""

from __future__ import annotations

import os
import time

from freshtoken.dirs import TOP_KEYS as CONFIG_KEYS
from freshtoken.dirs import default_token_dir, token_dir_candidates
from freshtoken.errors import TokenUnavailable, UsageError
from freshtoken.formats import render_values

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_TOKEN_FILE = 4 << 20  # a token file is a few KB (the daemon takes answers up to 1 MiB); more is not ours


GROUP_HINT = "join the token dir's group, e.g. `usermod -aG {group} $USER`, then log in again"


def find_token_file(account: str, dirs: list[tuple[str, bool]]) -> str:
    denied = None
    for directory, decisive in dirs:
        path = os.path.join(directory, f"{account}.json")
        if decisive:
            return path
        try:
            os.stat(path)
        except PermissionError:
            # The dir is there but not ours to search (the system install's /run/freshtoken, 0750 root:freshtoken):
            # "no token" would send the user looking for a daemon that is running fine.
            denied = denied or directory
            continue
        except OSError:
            continue
        return path
    if denied is not None:
        raise TokenUnavailable(f"cannot read {denied}: permission denied ({group_hint(denied)})")
    looked = " and ".join(d for d, _ in dirs)
    raise TokenUnavailable(f"no token for {account!r} in {looked} (is the daemon running, and is the account named so?)")


def group_hint(path: str) -> str:
    """How to become a reader of the token dir at or above `path`: join its group (named when it can be told)."""
    group = "freshtoken"
    try:
        import grp

        gid = os.stat(path).st_gid
        if gid == 0:
            return f"{path} is root's: run as root, or give it a readers' group as the system install does"
        group = grp.getgrgid(gid).gr_name
    except (OSError, KeyError):
        pass
    return GROUP_HINT.format(group=group)


def read_token(path: str, account: str) -> tuple[str, str, float, str | None]:
    """(access token, token type, expires_at, scope) from a token dir's .json file."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_TOKEN_FILE + 1)
        if len(raw) > MAX_TOKEN_FILE:
            raise ValueError("too big")
        data = _loads(raw)
        # Only what the daemon writes passes: anything else is damage, and must not be printed as a token.
        value, token_type, scope, expires_at = (
            data["access_token"],
            data.get("token_type") or "Bearer",
            data.get("scope"),
            data["expires_at"],
        )
        if not (isinstance(value, str) and value and isinstance(token_type, str)):
            raise ValueError("wrong types")
        if isinstance(expires_at, bool) or not isinstance(expires_at, int | float) or not -1e15 < expires_at < 1e15:  # also NaN
            raise ValueError("expires_at out of range")
        return value, token_type, float(expires_at), scope if isinstance(scope, str) else None
    except FileNotFoundError:
        raise TokenUnavailable(f"no token for {account!r}: {path} does not exist (is the daemon running?)") from None
    except PermissionError:
        raise TokenUnavailable(f"cannot read {path}: permission denied ({group_hint(os.path.dirname(path))})") from None
    except OSError as exc:
        raise TokenUnavailable(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):  # RecursionError: [[[[... nested a million deep
        raise TokenUnavailable(f"{path} is not a freshtoken token file") from None


class _Strict:
    """What json.loads hands the C scanner; `parse_constant` refuses NaN and Infinity."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        raise ValueError(f"{name} is not a number")


def _loads(data: bytes) -> dict[str, object]:
    """json.loads for our own small file, through the C scanner json uses.

    `import json` pulls in `re`, which costs `get` more than everything else it
    does; `_json` is the C half of json and imports nothing.
    """
    text = data.decode("utf-8").strip(" \t\n\r")
    try:
        from _json import make_scanner
    except ImportError:  # another Python implementation
        import json

        value = json.loads(text)
    else:
        try:
            value, end = make_scanner(_Strict())(text, 0)  # type: ignore[arg-type]  # duck-typed JSONDecoder
        except StopIteration:
            raise ValueError("not JSON") from None
        if end != len(text):
            raise ValueError("trailing data")
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def get(
    account: str,
    *,
    fmt: str = "raw",
    min_valid: float = 0.0,
    token_dir: str | None = None,
    config_token_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
    now: float | None = None,
) -> bytes:
    """The bytes to print for `account`, or TokenUnavailable (exit 1)."""
    environ = os.environ if environ is None else environ
    now = time.time() if now is None else now
    if not (account[:1].isalnum() and account.isascii() and all(c.isalnum() or c in "_.-" for c in account)):
        raise UsageError(f"{account!r} is not an account name (a letter or digit, then letters, digits, '_', '.' and '-')")
    path = find_token_file(account, token_dir_candidates(environ, token_dir, config_token_dir))
    value, token_type, expires_at, scope = read_token(path, account)
    check_valid_for(account, expires_at - now, min_valid)
    return render_values(fmt, value, token_type, expires_at, scope, account)


def check_valid_for(account: str, left: float, min_valid: float) -> None:
    """TokenUnavailable unless a token with `left` seconds to live satisfies --min-valid (and has not expired)."""
    if left <= 0 or left < min_valid:
        from freshtoken.durations import humanize  # only on failure: it compiles a regex at import

        if left <= 0:
            raise TokenUnavailable(f"the token for {account!r} expired {humanize(-left)} ago; check `freshtoken status`")
        raise TokenUnavailable(f"the token for {account!r} is valid for {humanize(left)} only, less than --min-valid {humanize(min_valid)}")


TOP_KEYS = frozenset(CONFIG_KEYS)  # the config's top-level keys; another key makes the scanner unsure
# Line breaks str.split("\n") and YAML disagree about (a lone CR; NEL, LS, PS in YAML 1.1), a BOM, and
# tabs: a file holding one is left to the full parser.
_UNSURE_CHARS = "\r\x85\u2028\u2029\ufeff\t"


def token_dir_from_config(file: str, environ: Mapping[str, str]) -> str | None:
    """The token dir the config at `file` gives, read by a small line scanner; None when unsure.

    `get -c CONFIG` needs only this, and importing yaml and the config module costs 3x
    Python's own start-up. The scanner accepts only a block-mapping document whose
    top-level lines it fully understands; for anything else (None) the caller runs the
    full parser, which also gives the error message for a broken file.
    """
    try:
        with open(file, "rb") as handle:
            text = handle.read(MAX_TOKEN_FILE + 1).decode("utf-8").replace("\r\n", "\n")
    except (OSError, ValueError):
        return None
    if len(text) > MAX_TOKEN_FILE or any(c in text for c in _UNSURE_CHARS):
        return None
    top: dict[str, str] = {}
    previous = None
    for line in text.split("\n"):
        body = _strip_comment(line)
        if body is None:
            return None  # a quote left open: a multi-line scalar could hold a line that looks top-level
        if not body.strip():
            continue
        if line[0] == " ":
            if previous == "token_dir":
                return None  # token_dir continued on an indented line: a nested value or a folded scalar
            continue
        if body.rstrip() == "---" and not top:
            continue
        key, colon, value = body.partition(":")
        value = value.strip()
        if key not in TOP_KEYS or key in top or not colon or body[len(key) + 1 : len(key) + 2] not in ("", " "):
            return None  # not a known `key: value` once (a directive, list, flow mapping, duplicate key, ...)
        if value[:1] in ("'", '"'):
            if len(value) < 2 or value[-1] != value[0] or value[0] in value[1:-1] or "\\" in value:
                return None  # an escape or a quote inside: let the real parser read it
        elif value[:1] in tuple("-?:,[]{}#&*!|>%@`") or ": " in value or value.endswith(":"):
            return None  # an indicator (anchor, alias, tag, flow collection, block scalar) or a YAML error
        top[key] = value
        previous = key
    if top.get("accounts", "-") != "":
        return None  # no accounts mapping below `accounts:`: the full parser says what is wrong
    value = top.get("token_dir", "")
    if value in ("", "~", "null", "Null", "NULL", '""', "''"):
        return default_token_dir(environ, file)
    expanded = _expand(value[1:-1] if value[0] in "'\"" else value, environ)
    if expanded is None or not expanded.startswith("/") or "\0" in expanded:
        return None  # the full parser explains
    return expanded


def _strip_comment(line: str) -> str | None:
    """`line` without its comment; None when it ends inside a quoted string."""
    quote = None
    escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif quote:
            if char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = None
        elif char in "'\"" and (index == 0 or line[index - 1] in " :[{,-"):
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] == " "):
            return line[:index]
    return None if quote else line


def _expand(value: str, environ: Mapping[str, str]) -> str | None:
    """${VAR} expanded as schema.py does it; None for anything it would refuse or leave as written."""
    out = []
    rest = value
    while "${" in rest:
        before, _, after = rest.partition("${")
        name, closed, rest = after.partition("}")
        if not closed or not name.isidentifier() or not name.isascii() or name not in environ:
            return None
        out += [before, environ[name]]
    return "".join([*out, rest])
