"""The systemd units, sysusers snippet and example config shipped in the package, rendered for this install and written out.

`freshtoken install-systemd` is a thin shell around `install_units`; nothing here runs a program or talks to systemd.
"""

from __future__ import annotations

import os
import shutil
import stat
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
    stamp = "# ExecStart= names the freshtoken command of the install that wrote this file (freshtoken install-systemd).\n"
    return {
        SYSTEM_UNIT: _swap_command(system, SYSTEM_COMMAND, word, stamp),
        USER_UNIT: _swap_command(user, USER_COMMAND, word, stamp),
        SYSUSERS: data_file(f"systemd/{SYSUSERS}").read_text(),
    }


def _swap_command(unit: str, old: str, word: str, stamp: str) -> str:
    line = f"ExecStart={old} "
    if unit.count(line) != 1:  # the shipped units are the contract; a silent no-op would install the wrong path
        raise ValueError(f"expected one {line!r} line in the shipped unit")
    before, _, after = unit.partition(line)
    kept = before.splitlines(keepends=True)
    while kept and kept[-1].startswith("#"):  # the shipped comment explains the shipped path, not the one written here
        kept.pop()
    return "".join(kept) + f"{stamp}ExecStart={word} " + after


def example_config(secret_file: str) -> str:
    """config.example.yaml with the client secret read from `secret_file` (a credential name or an absolute path), not the environment."""
    text = data_file("config.example.yaml").read_text()
    if text.count(_SECRET_FROM_ENV) != 1 or text.count(_SECRET_FROM_FILE) != 1:
        raise ValueError("config.example.yaml no longer has its two client-secret lines")
    text = text.replace(_SECRET_FROM_ENV, "    # client_secret: ${SPOTIFY_CLIENT_SECRET}\n")
    return text.replace(_SECRET_FROM_FILE, f"    client_secret_file: {secret_file}\n")


def default_exec_start(executable: str | None = None) -> str:
    """The freshtoken command of this install: the script beside this Python (a venv's or pipx's bin/), else the one on PATH."""
    beside = Path(executable or sys.executable).parent / "freshtoken"  # not resolved: a venv's python is a symlink out of the venv
    if beside.is_file():
        return str(beside.absolute())
    found = shutil.which("freshtoken")
    if found is None:
        raise LookupError("cannot find the freshtoken command beside this Python or on PATH")
    return str(Path(found).absolute())


# What the system unit cannot see: PrivateTmp=yes gives it its own /tmp and /var/tmp, ProtectHome=yes
# hides /home, /root and /run/user. A command, Python or package under one of them fails with 203/EXEC.
HIDDEN_FROM_SERVICE = {
    "/tmp": "PrivateTmp=yes",  # noqa: S108 (a path the unit hides, not a file we make)
    "/var/tmp": "PrivateTmp=yes",  # noqa: S108
    "/home": "ProtectHome=yes",
    "/root": "ProtectHome=yes",
    "/run/user": "ProtectHome=yes",
}
REACHABLE_INSTALL = (
    "install freshtoken where the service can run it, with a system Python:"
    " `/usr/bin/python3 -m venv /opt/freshtoken && /opt/freshtoken/bin/pip install freshtoken` (or a checkout's path),"
    " then run `/opt/freshtoken/bin/freshtoken install-systemd`"
)


def unreachable(exec_start: str, package_dir: Path | None = None) -> str | None:
    """Why the system unit (User=freshtoken, ProtectHome=yes, PrivateTmp=yes) could not run `exec_start`; None if it can.

    Looks at the command as written and resolved, the Python its #! line names (resolved: a venv's python
    is a symlink, often into /root/.pyenv) and the freshtoken package that Python imports (an editable
    install lives in its checkout): none may be under a directory the unit hides, and another user must
    be able to reach and run each (o+x on every directory on the way).
    """
    command = Path(exec_start)
    checks: list[tuple[str, Path]] = [("the freshtoken command", command)]
    interpreter = _interpreter(command)
    if interpreter is not None:
        checks.append(("its Python", Path(interpreter)))
    checks.append(("the freshtoken package", package_dir or Path(__file__).resolve().parent))
    for what, path in checks:
        for shown in dict.fromkeys([path, path.resolve()]):
            for hidden, option in HIDDEN_FROM_SERVICE.items():
                if shown == Path(hidden) or Path(hidden) in shown.parents:
                    return f"{what} {shown} is under {hidden}, which the unit's {option} hides from the service"
            denied = _not_for_others(shown)
            if denied is not None:
                return f"{what} {shown} cannot be run by the service user: {denied}"
    return None


def _interpreter(script: Path) -> str | None:
    """The Python a console script runs: its #! line, or the `'''exec' PYTHON` line pip writes when #! would be too long."""
    try:
        with open(script, "rb") as handle:
            head = handle.read(4096).decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    if not head or not head[0].startswith("#!"):
        return None
    words = head[0][2:].split()
    if words == ["/bin/sh"] and len(head) > 1 and head[1].startswith("'''exec' "):
        import shlex

        words = shlex.split(head[1][len("'''exec' ") :])
    if words and os.path.basename(words[0]) == "env" and len(words) > 1:
        return shutil.which(words[1])
    return words[0] if words and words[0].startswith("/") else None


def _not_for_others(path: Path) -> str | None:
    """Why a user outside the owner's group cannot reach and run `path` (o+x on it and every directory above), or None."""
    for step in [*reversed(path.parents), path]:
        try:
            mode = step.stat().st_mode
        except OSError as exc:
            return f"{step}: {exc.strerror}"
        if not mode & stat.S_IXOTH:
            kind = "searchable" if stat.S_ISDIR(mode) else "executable"
            return f"{step} is mode {stat.S_IMODE(mode):04o}, not {kind} by other users"
    return None


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


def this_command(argv0: str | None = None, executable: str | None = None) -> str:
    """The absolute path of the freshtoken command running now, for messages that tell the user what to run next.

    argv[0] when it is the freshtoken script (a console script is started by its path); else, under
    `python -m freshtoken`, the script beside this Python; else plain `freshtoken`.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    if os.path.basename(argv0) == "freshtoken" and os.path.isfile(argv0):
        return os.path.abspath(argv0)
    try:
        return default_exec_start(executable)
    except LookupError:
        return "freshtoken"


def shown_command(argv0: str | None = None, path: str | None = None) -> str:
    """`freshtoken` when that name on PATH runs this install, else this command's full path (shell-quoted).

    A system install (/opt/freshtoken/bin) or a venv not activated in the user's next shell is not on PATH:
    a printed `freshtoken get ...` would then fail, or run another install.
    """
    import shlex

    mine = this_command(argv0)
    found = shutil.which("freshtoken", path=path)
    if found is not None and os.path.realpath(found) == os.path.realpath(mine):
        return "freshtoken"
    return shlex.quote(mine)
