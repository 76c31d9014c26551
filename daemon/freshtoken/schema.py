"""The config's schema: a YAML document in, a validated Config (or a ConfigError naming the key) out.

Pure: `parse` reads no file and asks the system nothing; what it needs from outside
(the environment for ${VAR}, the default dirs, the keys' line numbers) is passed in.
config.py is the adapter that reads the file and the secret files.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from freshtoken.dirs import TOP_KEYS as TOP_KEYS
from freshtoken.durations import parse_duration
from freshtoken.errors import ConfigError
from freshtoken.model import Account, ClientAuth, Config, Grant, Output, OutputFormat, Secret, line_of
from freshtoken.providers import PRESETS, Preset

# The Config dataclass holds every top-level default; the schema only applies them.
_DEFAULT: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Config)}

E = TypeVar("E", bound=StrEnum)


@dataclass(frozen=True, slots=True)
class Defaults:
    """The dirs a config gets for the keys it leaves out, worked out by the caller (config.parse, from dirs).

    `token_dir` is None when nothing gives one; `euid` only says which /run/user dir was missing, and
    `suggested_token_dir` what the message suggests to write instead.
    """

    state_dir: str
    token_dir: str | None
    euid: int
    suggested_token_dir: str = "~/.cache/freshtoken"


# A Config's token_dir when nothing gives one and the caller (`status`) can do without: a path no file is under.
UNSET_TOKEN_DIR = "/nonexistent/freshtoken-token-dir-not-set"

# The first character is a letter or digit: freshtoken's own files in the state and token dirs
# (`.freshtoken-tmp-*`, swept at start-up) start with a dot, so no account's file can look like one.
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
VARIABLE = re.compile(r"\$\{([^}]*)\}")
ACCOUNT_KEYS = (
    "provider",
    "token_url",
    "authorize_url",
    "grant",
    "client_auth",
    "client_id",
    "client_secret",
    "client_secret_file",
    "refresh_token",
    "scopes",
    "redirect_uri",
    "pkce",
    "show_dialog",
    "refresh_margin",
    "outputs",
    "on_refresh",
    "refresh_token_lifetime",
    "tenant",
    "authorize_params",
    "device_authorization_url",
    "device_login",
    "revocation_url",
)
# Parameters freshtoken sets itself in an authorization request: authorize_params may not replace them.
OWN_AUTHORIZE_PARAMS = ("response_type", "client_id", "redirect_uri", "state", "scope", "code_challenge", "code_challenge_method")
TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")  # common, organizations, consumers, a GUID or a domain
OUTPUT_KEYS = ("path", "format", "mode", "group", "name")


class _Reader:
    """Type-checked access to one mapping of the document, with errors that name the key."""

    def __init__(self, doc: Any, path: str, ctx: _Context, known: tuple[str, ...] | None = None) -> None:
        self.ctx = ctx
        self.path = path
        if not isinstance(doc, dict):
            raise ctx.error(path, f"expected a mapping, got {_type_name(doc)}")
        for key in doc:
            if not isinstance(key, str):
                raise ctx.error(path, f"keys must be strings, got {_type_name(key)} {key!r}")
        self.doc: dict[str, Any] = doc
        # Unknown keys first: a typo (tokn_url) explains a "missing token_url" better than the missing key does.
        if known is not None:
            for key in doc:
                if key not in known:
                    raise ctx.error(self.key(key), "unknown key" + _did_you_mean(key, set(known)))

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def raw(self, name: str) -> Any:
        return self.doc.get(name)

    def string(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.ctx.error(self.key(name), f"expected a string, got {_type_name(value)}")
        return self.ctx.expand(self.key(name), str(value))

    def choice(self, name: str, kind: type[E], default: E) -> E:
        value = self.string(name)
        if value is None:
            return default
        try:
            return kind(value)
        except ValueError:
            raise self.ctx.error(self.key(name), f"{value!r} is not one of {', '.join(kind)}") from None

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.ctx.error(self.key(name), f"expected true or false, got {_type_name(value)}")
        return value

    def duration(self, name: str) -> int | None:
        value = self.raw(name)
        if value is None:
            return None
        if isinstance(value, str):
            value = self.ctx.expand(self.key(name), value)
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise self.ctx.error(self.key(name), str(exc)) from None

    def number(self, name: str, default: float, *, minimum: float, integer: bool = False, duration: bool = False) -> float:
        value = self.raw(name)
        if value is None:
            return default
        if duration and isinstance(value, str):
            # Timeouts read like every other duration ("10s"), and may also be fractional seconds (0.5).
            value = self.duration(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
            kind = "an integer" if integer else "a number"
            raise self.ctx.error(self.key(name), f"expected {kind}, got {_type_name(value)}")
        if isinstance(value, float) and not math.isfinite(value) or value >= 1e300:
            # .nan passes every comparison below, .inf would mean no timeout, and float() overflows on a huge int
            raise self.ctx.error(self.key(name), "expected a finite number")
        if value < minimum:
            raise self.ctx.error(self.key(name), f"must be at least {minimum:g}")
        return value

    def string_list(self, name: str) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        if isinstance(value, str):
            value = value.split()  # "a b c" is how OAuth itself writes scopes
        if not isinstance(value, list):
            raise self.ctx.error(self.key(name), f"expected a list of strings, got {_type_name(value)}")
        items = []
        for index, item in enumerate(value):
            key = f"{self.key(name)}[{index}]"
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise self.ctx.error(key, f"expected a string, got {_type_name(item)}")
            items.append(self.ctx.expand(key, str(item)))
        return tuple(items)


@dataclass
class _Context:
    file: str
    environ: Mapping[str, str]
    lines: Mapping[str, int]
    lenient: bool = False  # leave a missing ${VAR} as written (read-only commands)
    unresolved: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)

    def warn(self, key: str, problem: str) -> None:
        """A warning in the same `file:line: key: problem` form as a ConfigError."""
        line = line_of(self.lines, key)
        self.warnings.append(f"{self.file}:{line}: {key}: {problem}" if line else f"{self.file}: {key}: {problem}")

    def error(self, key: str, problem: str) -> ConfigError:
        # Keys come from the file: escape a newline in one so the message stays a single line.
        shown = key if key.isprintable() else key.encode("unicode_escape").decode("ascii")
        return ConfigError(self.file, shown, problem, line_of(self.lines, key))

    def expand(self, key: str, value: str) -> str:
        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if not ENV_NAME.fullmatch(name):
                raise self.error(key, f"${{{name}}} is not a valid variable name")
            if name not in self.environ:
                if self.lenient:
                    self.unresolved.add(key)
                    return match.group(0)
                raise self.error(key, f"environment variable {name} is not set")
            return self.environ[name]

        if "\x00" in value:  # every later open() or mkdir() would raise ValueError on it
            raise self.error(key, "contains a NUL character")
        return VARIABLE.sub(substitute, value)


def parse(
    doc: Any,
    file: str,
    environ: Mapping[str, str],
    *,
    defaults: Defaults,
    lines: Mapping[str, int] | None = None,
    lenient: bool = False,
    optional_token_dir: bool = False,
) -> Config:
    """Validate a loaded YAML document into a Config. Raises only ConfigError.

    `file` only names the config in messages; `defaults` fills state_dir and token_dir when the document leaves them out.
    With `optional_token_dir` (`status`, which only reads) a token dir that nothing gives is not an error: the
    Config's token_dir is then UNSET_TOKEN_DIR, `unresolved` holds "token_dir" and `warnings` say why.
    """
    ctx = _Context(file, environ, lines or {}, lenient)
    if doc is None:
        raise ctx.error("", "the file is empty")
    top = _Reader(doc, "", ctx, TOP_KEYS)
    state_dir = top.string("state_dir") or defaults.state_dir
    token_dir = top.string("token_dir") or defaults.token_dir
    if not token_dir:
        problem = (
            f"not set, and none of $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR or /run/user/{defaults.euid} gives a default;"
            f" set it in the config, e.g. `token_dir: {defaults.suggested_token_dir}`"
        )
        if not optional_token_dir:
            raise ctx.error("token_dir", problem)
        ctx.warn("token_dir", problem)
        ctx.unresolved.add("token_dir")
        token_dir = UNSET_TOKEN_DIR
    for key, value in (("state_dir", state_dir), ("token_dir", token_dir)):
        if not os.path.isabs(value):
            raise ctx.error(key, f"{value!r} must be an absolute path")
    margin = top.duration("refresh_margin")
    metrics = _listen_address(top)
    workers = int(top.number("workers", _DEFAULT["workers"], minimum=1, integer=True))
    backoff_max = top.duration("backoff_max")
    hook_timeout = top.duration("hook_timeout")
    connect_timeout = top.number("connect_timeout", _DEFAULT["connect_timeout"], minimum=0.1, duration=True)
    read_timeout = top.number("read_timeout", _DEFAULT["read_timeout"], minimum=0.1, duration=True)
    min_refresh_interval = top.number("min_refresh_interval", _DEFAULT["min_refresh_interval"], minimum=1.0, duration=True)

    shared_state = _shared_state(top)
    accounts = _parse_section(top, "accounts", ctx, shared=shared_state is not None)
    templates = _parse_section(top, "templates", ctx, shared=True) if top.raw("templates") is not None else {}
    if templates and shared_state is None:
        raise ctx.error("templates", "templates need shared_state: their users' grants are rows in PostgreSQL")
    for name in templates:
        if name in accounts:
            raise ctx.error(f"templates.{name}", f"{name!r} is an account too; give the template another name")
    if not accounts and not templates:
        raise ctx.error(
            "accounts", "missing: the config needs at least one account" if top.raw("accounts") is None else "no accounts defined"
        )
    warnings = tuple(
        f"{file}: accounts.{name}.redirect_uri: Spotify refuses localhost; register and use http://127.0.0.1:PORT/... instead"
        for name, account in accounts.items()
        if account.provider == "spotify" and "://localhost" in account.redirect_uri.lower()
    ) + tuple(ctx.warnings)
    return Config(
        file=file,
        state_dir=Path(state_dir),
        token_dir=Path(token_dir),
        accounts=accounts,
        refresh_margin=margin,
        metrics_listen=metrics,
        workers=workers,
        backoff_max=backoff_max if backoff_max is not None else _DEFAULT["backoff_max"],
        hook_timeout=hook_timeout if hook_timeout is not None else _DEFAULT["hook_timeout"],
        connect_timeout=float(connect_timeout),
        read_timeout=float(read_timeout),
        min_refresh_interval=float(min_refresh_interval),
        shared_state=Secret(shared_state) if shared_state else None,
        templates=templates,
        warnings=warnings,
        unresolved=frozenset(ctx.unresolved),
        lines=dict(ctx.lines),
    )


def _shared_state(top: _Reader) -> str | None:
    """The libpq connection string, checked for its form only (libpq itself parses it when the store connects)."""
    value = top.string("shared_state")
    if value is None:
        return None
    if not (value.startswith(("postgresql://", "postgres://")) or "=" in value):
        raise top.ctx.error("shared_state", "expected a libpq connection URI (postgresql://user@host/db) or key=value string")
    return value


def _parse_section(top: _Reader, section: str, ctx: _Context, *, shared: bool) -> dict[str, Account]:
    """`accounts:` or `templates:` (a template also obeys _check_template)."""
    raw = top.raw(section)
    if raw is None:
        return {}
    reader = _Reader(raw, section, ctx)
    parsed = {}
    for name in reader.doc:
        if not ACCOUNT_NAME.fullmatch(name):
            raise ctx.error(
                f"{section}.{name}", f"{section[:-1]} names start with a letter or digit and use only letters, digits, '_', '.' and '-'"
            )
        parsed[name] = _parse_account(name, reader.doc[name], ctx, section=section, shared=shared)
    return parsed


def _check_template(r: _Reader, account: Account) -> None:
    """A template's users get their grants from `login TEMPLATE --user NAME` (or the application), and no files."""
    if account.grant != Grant.REFRESH_TOKEN:
        raise r.ctx.error(r.key("grant"), "a template's users log in: only the refresh_token grant")
    for key in ("refresh_token", "on_refresh"):
        if r.raw(key) is not None:
            raise r.ctx.error(r.key(key), f"a template takes no {key}: each user's grant is a row in PostgreSQL")
    if r.raw("outputs") not in (None, []):
        raise r.ctx.error(r.key("outputs"), "a template's users get no files: applications read the freshtoken_tokens view")


def _parse_account(name: str, doc: Any, ctx: _Context, *, section: str = "accounts", shared: bool = False) -> Account:
    r = _Reader(doc, f"{section}.{name}", ctx, ACCOUNT_KEYS)
    provider = r.string("provider")
    preset = None
    if provider is not None:
        preset = PRESETS.get(provider)
        if preset is None and provider != "generic":
            raise ctx.error(r.key("provider"), f"unknown provider {provider!r} (known: {', '.join([*PRESETS, 'generic'])})")
    tenant = _tenant(r, preset)

    def url(name: str, default: str | None) -> str | None:
        value = r.string(name, default.replace("{tenant}", tenant) if default and tenant else default)
        if value:
            _check_url(r, name, value)
        return value

    token_url = url("token_url", preset.token_url if preset else None)
    if not token_url:
        raise ctx.error(r.key("token_url"), "missing: give token_url or a provider preset such as 'spotify'")
    authorize_url = url("authorize_url", preset.authorize_url if preset else None)
    device_url = url("device_authorization_url", preset.device_authorization_url if preset else None)
    revocation_url = url("revocation_url", preset.revocation_url if preset else None)
    grant = r.choice("grant", Grant, Grant.REFRESH_TOKEN)
    client_auth = r.choice("client_auth", ClientAuth, preset.client_auth if preset else ClientAuth.BASIC)
    client_id = r.string("client_id")
    secret_value = r.string("client_secret")
    secret_file = r.string("client_secret_file")
    if secret_value and secret_file:
        raise ctx.error(r.key("client_secret_file"), "give client_secret or client_secret_file, not both")
    if not client_id:
        raise ctx.error(r.key("client_id"), "missing: the client id of your registered app")
    if client_auth != ClientAuth.NONE and not (secret_value or secret_file):
        raise ctx.error(
            r.key("client_secret"),
            f"missing: client_auth '{client_auth}' needs client_secret or client_secret_file"
            " (or set client_auth: none for a public PKCE client)",
        )
    if grant == Grant.CLIENT_CREDENTIALS and client_auth == ClientAuth.NONE:
        raise ctx.error(r.key("client_auth"), "client_credentials needs a client secret (basic or post)")
    refresh_token = r.string("refresh_token")
    if grant == Grant.CLIENT_CREDENTIALS and refresh_token:
        raise ctx.error(r.key("refresh_token"), "client_credentials does not use a refresh token")
    redirect_uri = r.string("redirect_uri", "http://127.0.0.1:8888/callback") or ""
    _check_url(r, "redirect_uri", redirect_uri)
    lifetime = r.duration("refresh_token_lifetime")
    if lifetime is None and preset:
        lifetime = preset.refresh_token_lifetime
    scopes = r.string_list("scopes")
    if preset:
        scopes += tuple(scope for scope in preset.added_scopes if scope not in scopes)
    device_login = r.boolean("device_login", preset.device_login if preset else False)
    if device_login and not device_url:
        raise ctx.error(r.key("device_login"), "needs device_authorization_url (or a provider preset that has one)")
    refused = [scope for scope in scopes if preset and scope in preset.device_refused_scopes]
    if device_login and refused:
        raise ctx.error(r.key("device_login"), f"{provider}'s device flow cannot grant {refused[0]}; log in through the browser")
    outputs = _parse_outputs(r, ctx)
    on_refresh = r.string_list("on_refresh")
    if on_refresh and not os.path.isabs(on_refresh[0]):
        raise ctx.error(
            r.key("on_refresh"), f"{on_refresh[0]!r}: give the program as an absolute path (hooks run without a shell or PATH search)"
        )
    account = Account(
        name=name,
        provider=provider,
        token_url=token_url,
        authorize_url=authorize_url,
        grant=grant,
        client_auth=client_auth,
        client_id=client_id,
        client_secret=Secret(secret_value) if secret_value else None,
        client_secret_file=secret_file,
        refresh_token=Secret(refresh_token) if refresh_token else None,
        scopes=scopes,
        redirect_uri=redirect_uri,
        pkce=r.boolean("pkce", True),
        show_dialog=r.boolean("show_dialog", False),
        refresh_margin=r.duration("refresh_margin"),
        outputs=outputs,
        on_refresh=on_refresh,
        refresh_token_lifetime=lifetime,
        authorize_params=_authorize_params(r, preset),
        device_authorization_url=device_url,
        device_login=device_login,
        revocation_url=revocation_url,
        # `outputs: []` with a shared state: no files at all (without one, the token dir's files are all a reader has).
        local_files=not (section == "templates" or (shared and r.raw("outputs") == [])),
    )
    if section == "templates":
        _check_template(r, account)
    return account


def _tenant(r: _Reader, preset: Preset | None) -> str | None:
    """The account's tenant for a preset whose URLs hold {tenant}; refused for every other account."""
    tenant = r.string("tenant")
    if preset is None or preset.default_tenant is None:
        if tenant is not None:
            raise r.ctx.error(r.key("tenant"), "only a provider whose URLs name a tenant (microsoft) takes one")
        return None
    tenant = tenant or preset.default_tenant
    if not TENANT.fullmatch(tenant):
        raise r.ctx.error(r.key("tenant"), f"{tenant!r} is not a tenant (common, organizations, consumers, a tenant id or domain)")
    return tenant


def _authorize_params(r: _Reader, preset: Preset | None) -> tuple[tuple[str, str], ...]:
    """The preset's extra authorization-request parameters, then the account's (which win)."""
    params = dict(preset.authorize_params if preset else ())
    raw = r.raw("authorize_params")
    if raw is None:
        return tuple(params.items())
    section = _Reader(raw, r.key("authorize_params"), r.ctx)
    for name, value in section.doc.items():
        key = section.key(name)
        if name in OWN_AUTHORIZE_PARAMS:
            raise r.ctx.error(key, "freshtoken sets this parameter itself (scopes, redirect_uri and pkce are account keys)")
        if value is None:
            params.pop(name, None)  # `prompt: null` drops a preset's parameter
            continue
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise r.ctx.error(key, f"expected a string, got {_type_name(value)}")
        params[name] = r.ctx.expand(key, str(value))
    return tuple(params.items())


def _parse_outputs(r: _Reader, ctx: _Context) -> tuple[Output, ...]:
    raw = r.raw("outputs")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ctx.error(r.key("outputs"), f"expected a list of outputs, got {_type_name(raw)}")
    outputs = []
    for index, item in enumerate(raw):
        o = _Reader(item, f"{r.key('outputs')}[{index}]", ctx, OUTPUT_KEYS)
        path = o.string("path")
        if not path:
            raise ctx.error(o.key("path"), "missing: where to write the token")
        if not os.path.isabs(path):
            raise ctx.error(o.key("path"), f"{path!r} must be an absolute path")
        fmt = o.choice("format", OutputFormat, OutputFormat.RAW)
        mode = _parse_mode(o, ctx)
        group = o.raw("group")
        if group is not None:
            if isinstance(group, bool) or not isinstance(group, str | int):
                raise ctx.error(o.key("group"), f"expected a group name or gid, got {_type_name(group)}")
            if isinstance(group, str):
                group = ctx.expand(o.key("group"), group)
            elif not 0 <= group < 2**32 - 1:
                raise ctx.error(o.key("group"), f"{group} is not a group id")
        var = o.string("name", "ACCESS_TOKEN") or "ACCESS_TOKEN"
        if not ENV_NAME.fullmatch(var):
            raise ctx.error(o.key("name"), f"{var!r} is not a valid variable name")
        outputs.append(Output(path=Path(path), format=fmt, mode=mode, group=group, name=var))
    return tuple(outputs)


def _parse_mode(o: _Reader, ctx: _Context) -> int:
    value = o.raw("mode")
    if value is None:
        return 0o640
    # YAML reads an unquoted 0640 as the integer 416 (octal); accept that too.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ctx.error(o.key("mode"), f'expected an octal mode such as "0640", got {_type_name(value)}')
    if isinstance(value, int):
        mode = value
    else:
        text = value.strip()
        if not re.fullmatch(r"0?o?[0-7]{3,4}", text):
            raise ctx.error(o.key("mode"), f'{value!r} is not an octal mode such as "0640"')
        mode = int(text.replace("o", ""), 8)
    if not 0 <= mode <= 0o777:
        raise ctx.error(o.key("mode"), f"{value!r} is not a file mode between 0000 and 0777")
    if mode & 0o400 == 0:
        raise ctx.error(o.key("mode"), f"{mode:04o} would not let even the owner read the file")
    if mode & 0o002:
        raise ctx.error(o.key("mode"), f"{mode:04o} makes a token world-writable")
    if mode & 0o004:
        ctx.warn(o.key("mode"), f"{mode:04o} lets every user on this host read the token (use 0640 with group:, or 0600)")
    return mode


def _listen_address(top: _Reader) -> tuple[str, int] | None:
    value = top.string("metrics_listen")
    if not value:
        return None
    match = re.fullmatch(r"\[?([0-9A-Za-z.:-]+?)\]?:(\d{1,5})", value)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise top.ctx.error("metrics_listen", f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:9464)")
    host = match.group(1)
    if not _is_loopback(host):
        top.ctx.warn("metrics_listen", f"{host} is not a loopback address: the metrics are served to the network (use 127.0.0.1:PORT)")
    return host, int(match.group(2))


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def _check_url(r: _Reader, name: str, value: str) -> None:
    if not re.match(r"https?://[^/\s]+", value):
        raise r.ctx.error(r.key(name), f"{value!r} is not an http(s) URL")


def _type_name(value: Any) -> str:
    names: dict[type, str] = {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "nothing",
    }
    return names.get(type(value), type(value).__name__)


def _did_you_mean(key: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
