"""The systemd units, sysusers snippet and example config shipped in the package, rendered for this install and written out.

`freshtoken install-systemd` is a thin shell around `install_units`; nothing here runs a program or talks to systemd.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from freshtoken.fsutil import atomic_write, ensure_dir, resolve_group

DATA = Path(__file__).resolve().parent / "data"

# What the shipped units name as the command; render_units puts the real one in its place.
SYSTEM_COMMAND = "/usr/local/bin/freshtoken"
USER_COMMAND = "%h/.local/bin/freshtoken"
SYSTEM_UNIT, USER_UNIT, SYSUSERS = "freshtoken.service", "freshtoken-user.service", "sysusers.d/freshtoken.conf"

# The example config's two ways to give the client secret (config.example.yaml keeps both).
_SECRET_FROM_ENV = "    client_secret: ${SPOTIFY_CLIENT_SECRET}\n"
_SECRET_FROM_FILE = "    # client_secret_file: spotify-client-secret\n"


@dataclass(frozen=True, slots=True)
class Installed:
    """One file install_units wrote, or kept because it was there already (a config is never overwritten)."""

    path: Path
    written: bool

    def __str__(self) -> str:
        return f"{'wrote' if self.written else 'kept '} {self.path}"


def data_file(name: str) -> Path:
    """A file shipped in the package's data directory: `systemd/freshtoken.service`, `config.example.yaml`, `man/freshtoken.1`…"""
    return DATA / name


def systemd_word(path: str) -> str:
    """`path` as one word on a systemd Exec line: % and $ escaped, quoted when it holds blanks, quotes or backslashes."""
    if not path.startswith("/"):
        raise ValueError(f"ExecStart needs an absolute path, not {path!r}")
    if any(c in path for c in "\n\r\0"):
        raise ValueError(f"a control character in {path!r}")
    word = path.replace("%", "%%").replace("$", "$$")
    if any(c in word for c in " \t\"'\\;"):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def render_units(exec_start: str) -> dict[str, str]:
    """The shipped systemd files, keyed by their path under systemd/, with ExecStart= running `exec_start` (an absolute path)."""
    word = systemd_word(exec_start)
    system = data_file(f"systemd/{SYSTEM_UNIT}").read_text()
    user = data_file(f"systemd/{USER_UNIT}").read_text()
    stamp = "# ExecStart= names the freshtoken command of the install that wrote this file.\n"
    return {
        SYSTEM_UNIT: _swap_command(system, SYSTEM_COMMAND, word, stamp),
        USER_UNIT: _swap_command(user, USER_COMMAND, word, stamp),
        SYSUSERS: data_file(f"systemd/{SYSUSERS}").read_text(),
    }


def _swap_command(unit: str, old: str, word: str, stamp: str) -> str:
    line = f"ExecStart={old} "
    if unit.count(line) != 1:  # the shipped units are the contract; a silent no-op would install the wrong path
        raise ValueError(f"expected one {line!r} line in the shipped unit")
    return unit.replace(line, f"{stamp}ExecStart={word} ")


def example_config(secret_file: str) -> str:
    """config.example.yaml with the client secret read from `secret_file` (a credential name or an absolute path), not the environment."""
    text = data_file("config.example.yaml").read_text()
    if text.count(_SECRET_FROM_ENV) != 1 or text.count(_SECRET_FROM_FILE) != 1:
        raise ValueError("config.example.yaml no longer has its two client-secret lines")
    text = text.replace(_SECRET_FROM_ENV, "    # client_secret: ${SPOTIFY_CLIENT_SECRET}\n")
    return text.replace(_SECRET_FROM_FILE, f"    client_secret_file: {secret_file}\n")


def default_exec_start(executable: str = sys.executable) -> str:
    """The freshtoken command of this install: the script beside this Python (a venv's or pipx's bin/), else the one on PATH."""
    beside = Path(executable).parent / "freshtoken"  # not resolved: a venv's python is a symlink out of the venv
    if beside.is_file():
        return str(beside.absolute())
    found = shutil.which("freshtoken")
    if found is None:
        raise LookupError("cannot find the freshtoken command beside this Python or on PATH")
    return str(Path(found).absolute())


def install_units(
    dest_root: Path, *, exec_start: str, user: bool = False, create_user: Callable[[Path], object] | None = None
) -> list[Installed]:
    """Write the units (and, system-wide, the sysusers snippet) for `exec_start`, plus a config if there is none yet.

    System-wide (`user=False`), under `dest_root` (normally /): etc/systemd/system/freshtoken.service,
    etc/sysusers.d/freshtoken.conf and etc/freshtoken/config.yaml (the example, reading the secret from the
    `spotify-client-secret` credential; 0640, group freshtoken when that group exists on this system).
    For one user (`user=True`), `dest_root` is the home directory: .config/systemd/user/freshtoken.service and
    .config/freshtoken/config.yaml (0600, the secret from .config/freshtoken/spotify-client-secret).
    Units are replaced; an existing config is kept as it is.

    `create_user(sysusers_file)` runs between the sysusers snippet and the config, so that the config can get
    the freshtoken group; the command passes `systemd-sysusers FILE` on a live system, tests pass a recorder.
    """
    units = render_units(exec_start)
    group: str | None = None
    if user:
        config_dir = dest_root / ".config" / "freshtoken"
        files = [(dest_root / ".config" / "systemd" / "user" / "freshtoken.service", units[USER_UNIT], 0o644)]
        config = (config_dir / "config.yaml", example_config(str(config_dir / "spotify-client-secret")), 0o600)
    else:
        etc = dest_root / "etc"
        files = [
            (etc / "systemd" / "system" / "freshtoken.service", units[SYSTEM_UNIT], 0o644),
            (etc / "sysusers.d" / "freshtoken.conf", units[SYSUSERS], 0o644),
        ]
        config = (etc / "freshtoken" / "config.yaml", example_config("spotify-client-secret"), 0o640)
    done = []
    for path, text, mode in files:
        _ensure_parents(path.parent)
        atomic_write(path, text.encode(), mode)
        done.append(Installed(path, written=True))
    if not user:
        if create_user is not None:
            create_user(files[1][0])
        # Only on the live system does the host's group database say who "freshtoken" is.
        group = "freshtoken" if dest_root.resolve() == Path("/") and _group_exists("freshtoken") else None
    path, text, mode = config
    _ensure_parents(path.parent, 0o700 if user else 0o755)
    if path.exists():
        done.append(Installed(path, written=False))
    else:
        atomic_write(path, text.encode(), mode, group)
        done.append(Installed(path, written=True))
    return done


def _ensure_parents(directory: Path, mode: int = 0o755) -> None:
    if not directory.parent.is_dir():
        directory.parent.mkdir(parents=True, mode=0o755)
    ensure_dir(directory, mode)


def _group_exists(name: str) -> bool:
    try:
        resolve_group(name)
    except LookupError:
        return False
    return True
