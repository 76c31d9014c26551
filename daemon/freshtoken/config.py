"""The config file: find it, read its YAML (with each key's line), read the secret files it names.

The only module that imports yaml. What the document means is schema.py's business:
`parse` there is pure; `parse` here adds what it needs from this process (the default dirs).
The config's types live in model.py and are re-exported here for the modules that import them from config.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from freshtoken import dirs, schema
from freshtoken.errors import ConfigError
from freshtoken.model import Account as Account
from freshtoken.model import Config as Config
from freshtoken.model import Output as Output
from freshtoken.model import Secret
from freshtoken.schema import TOP_KEYS as TOP_KEYS
from freshtoken.schema import VARIABLE

# ---------------------------------------------------------------- finding


def candidate_paths(environ: Mapping[str, str]) -> list[Path]:
    """Where the config is looked for, in the SPEC's order (after -c)."""
    return [Path(path) for path in dirs.config_candidates(environ)]


def find(explicit: str | None, environ: Mapping[str, str]) -> Path:
    if explicit:
        return Path(explicit)
    candidates = candidate_paths(environ)
    if environ.get("FRESHTOKEN_CONFIG"):
        return candidates[0]  # named explicitly: a missing file is an error, not a reason to look on
    for path in candidates:
        if path.exists():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise ConfigError("", "", f"no config file found (looked in {looked}); pass -c FILE or set $FRESHTOKEN_CONFIG")


# ---------------------------------------------------------------- loading


def load(
    path: Path,
    environ: Mapping[str, str] | None = None,
    *,
    secrets: bool = True,
    defer_credentials: bool = False,
    optional_token_dir: bool = False,
) -> Config:
    """Read, parse and validate the config file, then read the secret files it names.

    `secrets=False` is for commands that never send a request (`status`, `get -c`):
    a missing ${VAR} or credential file does not stop them, and no secret is read.
    `defer_credentials=True` (check-config outside systemd) lets a bare credential
    name wait for the $CREDENTIALS_DIRECTORY that systemd's LoadCredential= gives.
    `optional_token_dir=True` (status) loads a config that no token dir can be found for (schema.parse says how).
    """
    environ = os.environ if environ is None else environ
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(file, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, "", f"cannot read: {_os_reason(exc)}") from None
    doc, lines = read_yaml(text, file)
    config = parse(doc, file, environ, lines=lines, lenient=not secrets, optional_token_dir=optional_token_dir)
    if secrets:
        config = resolve_secret_files(config, environ, defer_credentials=defer_credentials)
    if info.st_mode & stat.S_IROTH and _has_literal_secret(doc):
        config = replace(
            config,
            warnings=config.warnings
            + (f"{file}: holds a secret but is readable by every user (chmod o-r {file}, or use ${{VAR}} / client_secret_file)",),
        )
    return config


def parse(
    doc: Any,
    file: str,
    environ: Mapping[str, str],
    *,
    lines: Mapping[str, int] | None = None,
    lenient: bool = False,
    optional_token_dir: bool = False,
) -> Config:
    """schema.parse with this process's default dirs (its uid, $HOME, /run/user) for a config at `file`."""
    euid = os.geteuid()
    defaults = schema.Defaults(
        dirs.default_state_dir(environ, file, euid=euid),
        dirs.default_token_dir(environ, file, euid=euid),
        euid,
        # On disk, but the user's own: the daemon makes it 0750 and its files 0600/0640 like any token dir.
        os.path.join(dirs.home(environ), ".cache", "freshtoken"),
    )
    return schema.parse(doc, file, environ, defaults=defaults, lines=lines, lenient=lenient, optional_token_dir=optional_token_dir)


def read_yaml(text: str, file: str) -> tuple[Any, dict[str, int]]:
    """The document and a map from dotted key path to its 1-based YAML line."""
    lines: dict[str, int] = {}
    try:
        try:
            # libyaml when present: at 10,000 accounts 0.7 s and 80 MiB at peak instead of 6 s and 160 MiB.
            node, doc = _parse(text, FAST_LOADER)
            if node is not None:
                _collect_lines(node, "", lines, file, set())
        except (yaml.YAMLError, ValueError, RecursionError):
            lines.clear()
            node, doc = _parse(text, yaml.SafeLoader)  # a bad file: PyYAML's own words for the error
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(file, "", f"malformed YAML: {_unquoted(str(exc.problem))}", line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(file, "", f"malformed YAML: {_unquoted(str(exc))}") from None
    except ValueError as exc:  # the constructors' int() and date(): a 5000-digit number, 2024-13-01
        raise ConfigError(file, "", f"malformed YAML: a value cannot be read ({exc})") from None
    except RecursionError:
        raise ConfigError(file, "", "malformed YAML: nested too deeply") from None
    if node is not None and not lines:
        _collect_lines(node, "", lines, file, set())
    return doc, lines


FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# PyYAML quotes the file's own text when it names an alias, an anchor or a tag ("found undefined alias
# 'abc…'"): a secret after a stray `*`, `&` or `!` would be printed. YAML's own tags are kept: they help.
_NAMED = re.compile(r"""\b(alias|anchor|tag) ('[^'\n]*'|"[^"\n]*")""")


def _unquoted(problem: str) -> str:
    def hide(match: re.Match[str]) -> str:
        return match.group(0) if match.group(2)[1:].startswith("tag:yaml.org,2002:") else f"{match.group(1)} '…'"

    return _NAMED.sub(hide, problem)


def _parse(text: str, loader_class: Any) -> tuple[Any, Any]:
    """One parse gives both the node tree (for line numbers) and the document."""
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def _collect_lines(node: yaml.Node, prefix: str, lines: dict[str, int], file: str, visited: set[int]) -> None:
    # Aliases share nodes: walking each once keeps `&a [*a]` from recursing for ever
    # and a chain of aliases ("billion laughs") from taking exponential time.
    if id(node) in visited:
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            path = f"{prefix}.{key}" if prefix else key
            if key in seen:
                raise ConfigError(file, path, "duplicate key", key_node.start_mark.line + 1)
            seen.add(key)
            lines[path] = key_node.start_mark.line + 1
            _collect_lines(value_node, path, lines, file, visited)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = f"{prefix}[{index}]"
            lines[path] = item.start_mark.line + 1
            _collect_lines(item, path, lines, file, visited)


def resolve_secret_files(config: Config, environ: Mapping[str, str], *, defer_credentials: bool = False) -> Config:
    warnings = list(config.warnings)

    def resolved(section: str, accounts: dict[str, Account]) -> dict[str, Account]:
        done = {}
        for name, account in accounts.items():
            value = account.client_secret_file
            if value and defer_credentials and "/" not in value and not environ.get("CREDENTIALS_DIRECTORY"):
                warnings.append(
                    f"{section}.{name}.client_secret_file: credential {value!r} is read when systemd starts the service"
                    " (LoadCredential=); not checked here"
                )
            elif value:
                secret = _read_secret_file(config.file, f"{section}.{name}.client_secret_file", value, environ)
                account = replace(account, client_secret=Secret(secret))
            done[name] = account
        return done

    accounts, templates = resolved("accounts", config.accounts), resolved("templates", config.templates)
    return replace(config, accounts=accounts, templates=templates, warnings=tuple(warnings))


def _read_secret_file(file: str, key: str, value: str, environ: Mapping[str, str]) -> str:
    if os.path.isabs(value):
        path = value
    elif "/" in value:
        raise ConfigError(file, key, f"{value!r}: give an absolute path or a bare credential name")
    elif environ.get("CREDENTIALS_DIRECTORY"):
        path = os.path.join(environ["CREDENTIALS_DIRECTORY"], value)
    else:
        raise ConfigError(
            file, key, f"{value!r} is a credential name but $CREDENTIALS_DIRECTORY is not set (use an absolute path outside systemd)"
        )
    try:
        with open(path, encoding="utf-8") as handle:
            secret = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, key, f"cannot read {path}: {_os_reason(exc)}") from None
    if not secret:
        raise ConfigError(file, key, f"{path} is empty")
    return secret


def _has_literal_secret(doc: Any) -> bool:
    if not isinstance(doc, dict):
        return False
    if isinstance(doc.get("shared_state"), str) and re.search(r"password=(?!\$\{)|:(?!\$\{)[^/@:]+@", doc["shared_state"]):
        return True  # a password written into the connection string
    sections = [doc.get(key) for key in ("accounts", "templates")]
    for account in [a for section in sections if isinstance(section, dict) for a in section.values()]:
        if isinstance(account, dict):
            for key in ("client_secret", "refresh_token"):
                value = account.get(key)
                if isinstance(value, str) and value and not VARIABLE.fullmatch(value.strip()):
                    return True
    return False


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
