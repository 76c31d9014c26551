"""What a pip or pipx install ships (LICENSE, metadata, units, example config, completions, man page) and the units rendered for it."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

import freshtoken
from freshtoken import cli, units

ROOT = Path(__file__).resolve().parent.parent
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")


def load_regenerate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("regenerate", ROOT / "tools" / "regenerate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REGENERATE = load_regenerate()
SHIPPED = sorted([*REGENERATE.COPIES, *REGENERATE.SHTAB, "completions/freshtoken.fish", "man/freshtoken.1"])


# ------------------------------------------------------------------ shipped files are there and up to date


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_file_is_up_to_date(name: str) -> None:
    """Each file under daemon/freshtoken/data/ is what tools/regenerate.py makes from systemd/, the example and the parser today."""
    if name in REGENERATE.SHTAB:
        pytest.importorskip("shtab")
    expected = REGENERATE.generated()[name]
    assert expected is not None
    assert (ROOT / "daemon" / "freshtoken" / "data" / name).read_text() == expected, "run python tools/regenerate.py"


@pytest.mark.parametrize("name", SHIPPED)
def test_installed_package_has_the_file(name: str) -> None:
    """The freshtoken package this test imports (installed by pip, or the checkout) carries each shipped file."""
    assert (Path(freshtoken.__file__).parent / "data" / name).is_file()
    assert units.data_file(name).is_file()


def test_license_is_mit_for_the_freshtoken_authors() -> None:
    """LICENSE is the MIT text with the project's copyright line, and pyproject.toml points at it."""
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 the freshtoken authors\n")
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.slow
def test_wheel_carries_license_metadata_and_data(tmp_path: Path) -> None:
    """`pip wheel --no-deps .` builds a wheel with LICENSE, Python 3.11-3.13 classifiers, and every shipped data file."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "daemon", source / "daemon", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("freshtoken-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert {f"freshtoken/data/{name}" for name in SHIPPED} <= names
    assert "freshtoken/py.typed" in names
    assert "License-Expression: MIT" in metadata
    for version in ("3.11", "3.12", "3.13"):
        assert f"Classifier: Programming Language :: Python :: {version}" in metadata


# ------------------------------------------------------------------ render_units


def test_render_units_puts_this_install_in_exec_start() -> None:
    """The rendered system and user units run the given command; the sysusers snippet is the shipped one."""
    rendered = units.render_units("/opt/freshtoken/bin/freshtoken")
    assert "\nExecStart=/opt/freshtoken/bin/freshtoken -c /etc/freshtoken/config.yaml run\n" in rendered["freshtoken.service"]
    assert "\nExecStart=/opt/freshtoken/bin/freshtoken -c %h/.config/freshtoken/config.yaml run\n" in rendered["freshtoken-user.service"]
    assert "/usr/local/bin/freshtoken -c" not in rendered["freshtoken.service"]
    assert rendered["sysusers.d/freshtoken.conf"] == (ROOT / "systemd" / "sysusers.d" / "freshtoken.conf").read_text()


@pytest.mark.parametrize(
    ("path", "word"),
    [
        ("/usr/bin/freshtoken", "/usr/bin/freshtoken"),
        ("/home/me/my venv/bin/freshtoken", '"/home/me/my venv/bin/freshtoken"'),
        ("/srv/100%/bin/freshtoken", "/srv/100%%/bin/freshtoken"),
        ("/srv/$HOME/freshtoken", "/srv/$$HOME/freshtoken"),
        ('/srv/a"b\\c/freshtoken', '"/srv/a\\"b\\\\c/freshtoken"'),
    ],
)
def test_systemd_word_escapes_what_systemd_would_expand(path: str, word: str) -> None:
    """A command path becomes one literal ExecStart word: %-specifiers and $-variables escaped, blanks and quotes quoted."""
    assert units.systemd_word(path) == word


@pytest.mark.parametrize("path", ["freshtoken", "bin/freshtoken", "/a\nExecStartPre=/bin/evil"])
def test_systemd_word_refuses_relative_paths_and_line_breaks(path: str) -> None:
    """A relative path or one with a line break (which would add a directive) is refused."""
    with pytest.raises(ValueError):
        units.systemd_word(path)


@needs_analyze
@pytest.mark.parametrize("directory", ["bin", "my venv/bin%x"])
def test_rendered_system_unit_passes_systemd_analyze_verify(tmp_path: Path, directory: str) -> None:
    """systemd-analyze verify accepts the unit rendered for a command path, even one with a blank and a %."""
    command = tmp_path / directory / "freshtoken"
    command.parent.mkdir(parents=True)
    command.write_text("#!/bin/sh\nexit 0\n")
    command.chmod(0o755)
    unit = tmp_path / "freshtoken.service"
    unit.write_text(units.render_units(str(command))["freshtoken.service"])
    assert ANALYZE is not None
    result = subprocess.run([ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# ------------------------------------------------------------------ install_units


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def check_config(path: Path, environ: dict[str, str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["-c", str(path), "check-config"], environ=environ, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_install_units_writes_the_system_files_and_a_config_for_the_credential(tmp_path: Path) -> None:
    """A system install writes the unit, the sysusers snippet (0644) and a 0640 config that reads the LoadCredential= secret."""
    created: list[Path] = []
    done = units.install_units(tmp_path, exec_start="/opt/freshtoken/bin/freshtoken", create_user=created.append)
    etc = tmp_path / "etc"
    unit, sysusers, config = etc / "systemd/system/freshtoken.service", etc / "sysusers.d/freshtoken.conf", etc / "freshtoken/config.yaml"
    assert [(item.path, item.written) for item in done] == [(unit, True), (sysusers, True), (config, True)]
    assert created == [sysusers]
    assert "ExecStart=/opt/freshtoken/bin/freshtoken -c /etc/freshtoken/config.yaml run" in unit.read_text()
    assert (mode(unit), mode(sysusers), mode(config), mode(config.parent)) == (0o644, 0o644, 0o640, 0o755)
    # as the unit runs it: the secret comes from $CREDENTIALS_DIRECTORY, the dirs from systemd
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "spotify-client-secret").write_text("s3cret")
    environ = {"CREDENTIALS_DIRECTORY": str(credentials), "STATE_DIRECTORY": str(tmp_path / "s"), "RUNTIME_DIRECTORY": str(tmp_path / "r")}
    code, out, err = check_config(config, environ)
    assert (code, err) == (0, "")
    assert "s3cret" not in out


def test_install_units_keeps_an_existing_config_and_replaces_the_units(tmp_path: Path) -> None:
    """Running the install again rewrites the units for the new command but never touches an edited config."""
    units.install_units(tmp_path, exec_start="/old/bin/freshtoken")
    config = tmp_path / "etc/freshtoken/config.yaml"
    config.write_text("# edited by the admin\n")
    done = units.install_units(tmp_path, exec_start="/new/bin/freshtoken")
    assert [str(item) for item in done][-1] == f"kept  {config}"
    assert config.read_text() == "# edited by the admin\n"
    assert "ExecStart=/new/bin/freshtoken " in (tmp_path / "etc/systemd/system/freshtoken.service").read_text()


def test_install_units_for_one_user_writes_the_user_unit_and_a_private_config(tmp_path: Path) -> None:
    """A user install writes ~/.config/systemd/user/freshtoken.service and a 0600 config reading an absolute secret file."""
    home = tmp_path / "home"
    done = units.install_units(home, exec_start="/home/me/.local/bin/freshtoken", user=True)
    unit, config = home / ".config/systemd/user/freshtoken.service", home / ".config/freshtoken/config.yaml"
    assert [item.path for item in done] == [unit, config]
    assert "ExecStart=/home/me/.local/bin/freshtoken -c %h/.config/freshtoken/config.yaml run" in unit.read_text()
    assert (mode(config), mode(config.parent)) == (0o600, 0o700)
    secret = config.parent / "spotify-client-secret"
    secret.write_text("s3cret")
    os.chmod(secret, 0o600)
    environ = {"XDG_STATE_HOME": str(tmp_path / "s"), "XDG_RUNTIME_DIR": str(tmp_path / "r"), "HOME": str(home)}
    assert check_config(config, environ)[::2] == (0, "")


def test_default_exec_start_is_the_script_beside_this_python() -> None:
    """The command written into ExecStart= is the freshtoken script of the venv running this code, unresolved."""
    assert units.default_exec_start() == str(Path(sys.executable).parent.absolute() / "freshtoken")


def test_default_exec_start_falls_back_to_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no script beside the Python, the freshtoken on PATH is used; with none at all, a LookupError says so."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(LookupError, match="cannot find the freshtoken command"):
        units.default_exec_start(str(tmp_path / "python3"))
    script = bin_dir / "freshtoken"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert units.default_exec_start(str(tmp_path / "python3")) == str(script)


@pytest.mark.parametrize(
    "name", ["completions/freshtoken.bash", "completions/_freshtoken", "completions/freshtoken.fish", "man/freshtoken.1"]
)
def test_completions_and_man_page_know_install_systemd_and_log_format(name: str) -> None:
    """The shipped completions and man page offer `install-systemd` (with --user and --root) and `--log-format plain|json`."""
    text = units.data_file(name).read_text().replace("\\-", "-")  # roff escapes every hyphen
    for word in ("install-systemd", "log-format", "plain", "json", "root", "user"):
        assert word in text
    if name.startswith("man/"):
        assert "FRESHTOKEN_LOG_FORMAT" in text and "daemon.heartbeat" in text
