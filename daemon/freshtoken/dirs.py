"""Where freshtoken's files are: the config's candidates, the default state and token dirs, where `get` looks.

The one owner of these rules: config (for a config that names no dirs), `get` and `login` ask here.
Stdlib `os` only, no pathlib or dataclasses: `freshtoken get` imports this module and
must start about as fast as Python itself.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

SYSTEM_CONFIG = "/etc/freshtoken/config.yaml"
SYSTEM_STATE_DIR = "/var/lib/freshtoken"  # systemd's StateDirectory=freshtoken
SYSTEM_TOKEN_DIR = "/run/freshtoken"  # systemd's RuntimeDirectory=freshtoken
USER_RUNTIME = "/run/user"  # where logind makes each user's $XDG_RUNTIME_DIR; it exists without a session too (lingering)

# The config's top-level keys. Here, not in schema.py, because `get -c` scans a config for its
# token_dir without importing the schema (re, dataclasses), and must know every key to be sure.
TOP_KEYS = (
    "state_dir",
    "token_dir",
    "refresh_margin",
    "metrics_listen",
    "workers",
    "backoff_max",
    "hook_timeout",
    "connect_timeout",
    "read_timeout",
    "min_refresh_interval",
    "shared_state",
    "accounts",
    "templates",
)


def is_system_config(file: str | None) -> bool:
    """True for /etc/freshtoken/config.yaml: the system service's config, whose dirs are systemd's."""
    return file is not None and os.path.abspath(file) == SYSTEM_CONFIG


def home(environ: Mapping[str, str]) -> str:
    return environ.get("HOME") or os.path.expanduser("~")


def config_candidates(environ: Mapping[str, str]) -> list[str]:
    """Where the config is looked for, in the SPEC's order (after -c)."""
    paths = []
    if environ.get("FRESHTOKEN_CONFIG"):
        paths.append(environ["FRESHTOKEN_CONFIG"])
    paths.append("freshtoken.yaml")
    xdg = environ.get("XDG_CONFIG_HOME") or os.path.join(home(environ), ".config")
    paths.append(os.path.join(xdg, "freshtoken", "config.yaml"))
    paths.append(SYSTEM_CONFIG)
    return paths


def user_runtime_dir(environ: Mapping[str, str], *, euid: int | None = None, base: str = USER_RUNTIME) -> str | None:
    """$XDG_RUNTIME_DIR, else /run/user/$UID when it exists (cron, su and sudo -u do not set the variable)."""
    if environ.get("XDG_RUNTIME_DIR"):
        return environ["XDG_RUNTIME_DIR"]
    euid = os.geteuid() if euid is None else euid
    candidate = os.path.join(base, str(euid))
    return candidate if euid != 0 and os.path.isdir(candidate) else None


def default_token_dir(
    environ: Mapping[str, str], config_file: str | None = None, *, euid: int | None = None, base: str = USER_RUNTIME
) -> str | None:
    """The token dir of a config that sets no token_dir; None when nothing gives one."""
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]  # systemd: a colon-separated list; ours is first
    if runtime:
        return runtime
    if is_system_config(config_file):
        return SYSTEM_TOKEN_DIR  # where the service's RuntimeDirectory= is, whoever reads it
    user = user_runtime_dir(environ, euid=euid, base=base)
    if user:
        return os.path.join(user, "freshtoken")
    if (os.geteuid() if euid is None else euid) == 0:
        return SYSTEM_TOKEN_DIR
    return None


def default_state_dir(environ: Mapping[str, str], config_file: str | None = None, *, euid: int | None = None) -> str:
    """The state dir of a config that sets no state_dir."""
    if environ.get("STATE_DIRECTORY"):
        return environ["STATE_DIRECTORY"].split(":")[0]
    if is_system_config(config_file):
        return SYSTEM_STATE_DIR  # a reader of the system install looks where the service keeps its state
    if environ.get("XDG_STATE_HOME"):
        return os.path.join(environ["XDG_STATE_HOME"], "freshtoken")
    if (os.geteuid() if euid is None else euid) == 0:
        return SYSTEM_STATE_DIR  # beside root's /run/freshtoken token dir, where systemd's StateDirectory= puts it
    return os.path.join(home(environ), ".local/state", "freshtoken")


def token_dir_candidates(environ: Mapping[str, str], explicit: str | None, config_token_dir: str | None) -> list[tuple[str, bool]]:
    """Where `get` looks: (dir, decisive) in the SPEC's order; a decisive dir is used even if the account is missing there."""
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]  # systemd: a colon-separated list; ours is first
    for value in (explicit, environ.get("FRESHTOKEN_TOKEN_DIR"), runtime, config_token_dir):
        if value:
            return [(value, True)]
    dirs = []
    user = user_runtime_dir(environ)
    if user:
        dirs.append((os.path.join(user, "freshtoken"), False))
    dirs.append((SYSTEM_TOKEN_DIR, False))
    return dirs
