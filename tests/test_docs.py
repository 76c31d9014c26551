"""The README and systemd/README.md as a newcomer follows them: the example config, the cron reader line, the demo sample."""

from __future__ import annotations

import http.server
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from freshtoken import cli
from freshtoken.config import Account
from freshtoken.model import AccessToken, Secret
from freshtoken.outputs import write_all

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SYSTEMD_README = ROOT / "systemd" / "README.md"
EXAMPLE = ROOT / "config.example.yaml"

# What the README's cron line names, and the test replaces (nothing else).
README_FRESHTOKEN = "/usr/local/bin/freshtoken"
README_API = "https://api.spotify.com/v1/me/player"


def code_blocks(text: str, lang: str = "") -> list[list[str]]:
    """The fenced blocks of a Markdown text with this info string, as lists of lines (indentation removed)."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    info, indent = "", 0
    for line in text.splitlines():
        stripped = line.strip()
        if current is None and stripped.startswith("```"):
            current, info, indent = [], stripped[3:], len(line) - len(line.lstrip())
        elif current is not None and stripped == "```":
            if info == lang:
                blocks.append(current)
            current = None
        elif current is not None:
            current.append(line[indent:])
    return blocks


def cron_lines(path: Path) -> list[str]:
    return [line for block in code_blocks(path.read_text(), "cron") for line in block if line and not line.startswith("#")]


def freshtoken_executable() -> str:
    """The console script of the freshtoken installed in this venv, as `pip install` made it."""
    script = Path(sys.executable).parent / "freshtoken"
    assert script.exists(), script
    return str(script)


# ------------------------------------------------------------------ item 2: the example config works as shown


def test_example_config_passes_check_config_without_warnings(tmp_path: Path) -> None:
    """config.example.yaml, as shipped, passes `check-config` with $SPOTIFY_CLIENT_SECRET set: exit 0, nothing on stderr."""
    environ = {
        "SPOTIFY_CLIENT_SECRET": "example-secret",
        "HOME": str(tmp_path),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["-c", str(EXAMPLE), "check-config"], environ=environ, stdout=out, stderr=err)
    assert (code, err.getvalue()) == (0, "")
    assert f"config {EXAMPLE}: OK" in out.getvalue()
    assert "example-secret" not in out.getvalue()


def test_example_config_names_the_missing_secret_variable(tmp_path: Path) -> None:
    """Without $SPOTIFY_CLIENT_SECRET, check-config on the example exits 78 and names the variable (not an OK with a warning)."""
    environ = {"HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_RUNTIME_DIR": str(tmp_path / "runtime")}
    err = io.StringIO()
    assert cli.main(["-c", str(EXAMPLE), "check-config"], environ=environ, stdout=io.StringIO(), stderr=err) == 78
    assert "SPOTIFY_CLIENT_SECRET" in err.getvalue()


def test_example_config_shows_the_systemd_variant_beside_the_quick_start_one() -> None:
    """The example's active secret is the quick start's ${SPOTIFY_CLIENT_SECRET}; the credential-file line is there, commented."""
    text = EXAMPLE.read_text()
    assert re.search(r"^    client_secret: \$\{SPOTIFY_CLIENT_SECRET\}$", text, re.MULTILINE)
    assert re.search(r"^    # client_secret_file: spotify-client-secret$", text, re.MULTILINE)
    assert "client_secret: ${SPOTIFY_CLIENT_SECRET}" in "\n".join(line for block in code_blocks(README.read_text(), "sh") for line in block)


# ------------------------------------------------------------------ item 3: one reader line, run as cron would


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Records each request's Authorization header, then holds the answer until the test has looked at every argv."""

    seen: list[str | None]
    arrived: threading.Event
    release: threading.Event

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).seen.append(self.headers.get("Authorization"))
        type(self).arrived.set()
        type(self).release.wait(60)
        body = b'{"is_playing": false}\n'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def api_server() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Recorder", (_Recorder,), {"seen": [], "arrived": threading.Event(), "release": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/me/player", handler
    finally:
        handler.release.set()
        server.shutdown()
        server.server_close()


def all_argvs() -> list[bytes]:
    """The command line of every process this user can see in /proc."""
    argvs = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argvs.append((entry / "cmdline").read_bytes())
            except OSError:  # exited meanwhile
                pass
    return argvs


def test_readme_and_systemd_readme_recommend_the_same_reader_line() -> None:
    """README.md and systemd/README.md show one and the same cron line: full path to freshtoken, token through `curl -H @-`."""
    readme, systemd_readme = cron_lines(README), cron_lines(SYSTEMD_README)
    assert len(readme) == 1, readme
    assert systemd_readme == readme
    line = readme[0]
    assert f" {README_FRESHTOKEN} get spotify --format header | curl " in line
    assert "-H @-" in line and "$(" not in line and "`" not in line
    assert "%" not in line  # cron turns % into a newline


def test_readme_cron_line_sends_the_token_without_putting_it_in_argv(tmp_path: Path, api_server: tuple[str, type[_Recorder]]) -> None:
    """The README's cron line, run by /bin/sh with cron's PATH, sends `Bearer <token>` and no process's argv holds the token."""
    url, recorder = api_server
    token = "tok-" + os.urandom(12).hex()
    tokens = tmp_path / "tokens"
    write_all(
        tokens,
        Account(name="spotify", token_url="http://127.0.0.1/", client_id="x"),
        AccessToken(Secret(token), "Bearer", time.time() + 3600, ""),
    )
    (line,) = cron_lines(README)
    command = line.split(None, 5)[5]  # drop the five schedule fields, as cron does
    assert command.count(README_FRESHTOKEN) == 1 and command.count(README_API) == 1
    command = command.replace(README_FRESHTOKEN, freshtoken_executable()).replace(README_API, url)
    assert token not in command
    # cron's environment: a bare PATH, no XDG_RUNTIME_DIR; the token dir comes from the variable `get` honours
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh", "FRESHTOKEN_TOKEN_DIR": str(tokens)}
    job = subprocess.Popen(["/bin/sh", "-c", command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert recorder.arrived.wait(60), "the API server got no request"
        # curl is blocked on the answer, so its argv (and any still-running freshtoken's) is visible now
        leaks = [argv for argv in all_argvs() if token.encode() in argv]
    finally:
        recorder.release.set()
        out, err = job.communicate(timeout=60)
    assert leaks == []
    assert recorder.seen == [f"Bearer {token}"]
    assert (job.returncode, out, err) == (0, b'{"is_playing": false}\n', b"")


# ------------------------------------------------------------------ item 6: the demo sample in the README stays true

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def normalise(line: str) -> str:
    """Hide what changes from run to run: the temporary dir, the port, the pid, times, counts."""
    line = re.sub(r"\S*/freshtoken-demo-[^/\s]+", "<dir>", line)
    line = re.sub(r"/\S*/freshtoken(?=\s)", "freshtoken", line)  # the try: lines name the running command by its full path
    line = TIMESTAMP.sub("<time> ", line)
    return re.sub(r"\d+", "<n>", line)


def readme_demo_sample() -> tuple[list[str], list[str], list[str]]:
    """The README's demo block: its command, the lines the demo prints (stdout), and the log lines (stderr)."""
    (block,) = [b for b in code_blocks(README.read_text()) if b and b[0].startswith("$ freshtoken demo")]
    command = block[0][2:].split()
    printed = [line for line in block[1:] if line.strip() and line != "..." and not TIMESTAMP.match(line)]
    logged = [line for line in block[1:] if TIMESTAMP.match(line)]
    return command, printed, logged


def test_readme_demo_sample_matches_the_demo_output(tmp_path: Path) -> None:
    """`freshtoken demo` as the README runs it prints the README's sample (paths, ports, times and counts aside) and removes its dir."""
    command, printed, logged = readme_demo_sample()
    assert command[:2] == ["freshtoken", "demo"]
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "freshtoken", *command[1:]], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    log_lines = []
    try:
        assert demo.stderr is not None
        for line in demo.stderr:  # until the daemon has done its start-up pass; then Ctrl-C, as the sample says
            log_lines.append(line.rstrip("\n"))
            if " INFO ready: " in line:
                break
        demo.send_signal(signal.SIGINT)
        out, rest = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    log_lines += rest.splitlines()
    assert demo.returncode == 0, (out, log_lines)
    shown = [line for line in out.splitlines() if line.strip()]
    assert [normalise(line) for line in shown] == [normalise(line) for line in printed]
    assert {normalise(line) for line in logged} <= {normalise(line) for line in log_lines}, log_lines
    assert "temporary" in shown[1] and "removed" in shown[1]
    (directory,) = re.findall(r"^  dir:\s+(\S+)", out, re.MULTILINE)
    assert Path(directory).parent == tmp_path
    assert not Path(directory).exists()
    assert out.rstrip().endswith(f"freshtoken demo: removed {directory}")


@pytest.mark.parametrize(("lifetime", "floor"), [(20, 5.0), (8, 2.0), (2, 1.0), (3600, 5.0)])
def test_demo_config_lowers_the_refresh_floor_for_its_short_tokens(tmp_path: Path, lifetime: int, floor: float) -> None:
    """The demo's config sets min_refresh_interval to at most a quarter of the token life, so the 10 s default never delays it."""
    from freshtoken import config, demo

    path = tmp_path / "freshtoken.yaml"
    path.write_text(demo.render_config(tmp_path, "http://127.0.0.1:1/token", lifetime))
    loaded = config.load(path, {"DEMO_CLIENT_SECRET": "s", "DEMO_REFRESH_TOKEN": "r"})
    assert loaded.min_refresh_interval == floor


# ------------------------------------------------------------------ the newcomer commands at the top of the README


def test_readme_first_commands_name_things_that_exist() -> None:
    """The README's first two commands use a demo option, a CI script and a pip extra that all exist."""
    first = code_blocks(README.read_text(), "sh")[0]
    assert "freshtoken demo --duration 60" in first[0]
    assert "bash .ci/install-test-deps.sh" in first[1] and (ROOT / ".ci" / "install-test-deps.sh").exists()
    assert "'.[test]'" in first[1] and "test = [" in (ROOT / "pyproject.toml").read_text()
    parser = cli.build_parser()
    assert parser.parse_args(["demo", "--duration", "60"]).duration == 60


# ------------------------------------------------------------------ item 8: the secret file is never readable by others


def systemd_readme_lines(word: str) -> list[str]:
    """The lines of systemd/README.md's sh blocks that mention `word`."""
    return [line for block in code_blocks(SYSTEMD_README.read_text(), "sh") for line in block if word in line]


def test_systemd_readme_creates_the_secret_file_0600_before_writing_it(tmp_path: Path) -> None:
    """The README's secret lines, run by bash under a 022 umask, leave a 0600 file holding exactly the typed secret."""
    lines = [
        line
        for line in systemd_readme_lines("/etc/freshtoken/spotify-client-secret")
        if line.startswith(("install ", "read ", "printf ", "chmod ", "echo ")) and "systemd-creds" not in line
    ]
    assert lines[0] == "install -m 0600 /dev/null /etc/freshtoken/spotify-client-secret"
    assert not any(line.startswith("chmod") for line in lines)
    script = "umask 022\n" + "\n".join(lines).replace("/etc/freshtoken", str(tmp_path))
    subprocess.run(["/bin/bash", "-c", script], input=b"s3cret value\n", check=True, timeout=60)
    secret = tmp_path / "spotify-client-secret"
    assert (secret.stat().st_mode & 0o777, secret.read_text()) == (0o600, "s3cret value")


ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")
def test_systemd_readme_switches_the_unit_to_the_encrypted_credential(tmp_path: Path) -> None:
    """The README's sed line turns the shipped unit's LoadCredential= into LoadCredentialEncrypted=, and the unit still verifies."""
    (sed,) = [line for line in systemd_readme_lines("LoadCredentialEncrypted=") if line.startswith("sed ")]
    command = tmp_path / "freshtoken"
    command.write_text("#!/bin/sh\n")
    command.chmod(0o755)
    unit = tmp_path / "freshtoken.service"
    unit.write_text(
        (ROOT / "systemd" / "freshtoken.service").read_text().replace("ExecStart=/usr/local/bin/freshtoken ", f"ExecStart={command} ")
    )
    subprocess.run(["/bin/sh", "-c", sed.replace("/etc/systemd/system/freshtoken.service", str(unit))], check=True, timeout=60)
    text = unit.read_text()
    assert "\nLoadCredentialEncrypted=spotify-client-secret:/etc/freshtoken/spotify-client-secret.cred\n" in text
    assert "\nLoadCredential=" not in text
    assert ANALYZE is not None
    result = subprocess.run([ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# ------------------------------------------------------------------ issue 12: the README's preset configs load


def test_every_yaml_config_in_the_readme_passes_check_config(tmp_path: Path) -> None:
    """Each ```yaml block of the README that defines accounts (the quick start's, the presets') passes check-config as written."""
    blocks = ["\n".join(block) for block in code_blocks(README.read_text(), "yaml")]
    configs = [block for block in blocks if block.lstrip().startswith("accounts:")]
    assert len(configs) >= 1, "the README has no account config block"
    for index, block in enumerate(configs):
        path = tmp_path / f"readme-{index}.yaml"
        path.write_text(f"state_dir: {tmp_path}/state-{index}\ntoken_dir: {tmp_path}/tokens-{index}\n{block}\n")
        variables = {name: "not-a-real-secret" for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", block)}
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(["-c", str(path), "check-config"], environ={"HOME": str(tmp_path), **variables}, stdout=out, stderr=err)
        assert (code, err.getvalue()) == (0, ""), block
        assert "not-a-real-secret" not in out.getvalue()
