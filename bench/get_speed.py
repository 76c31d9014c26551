"""How fast is `freshtoken get`? Against `python -c pass` on the same interpreter, and `cat` of the token file.

`get` is what cron jobs and scripts run every time they need a token, so its
cost is mostly Python's own start-up plus whatever freshtoken imports. The
goal: `freshtoken get` at most 2x `python -c pass`, and `freshtoken get -c CONFIG`
(which reads token_dir from a config like the README's) at most 3x.

By default the package is measured as `pip install .` leaves it: a fresh venv
(no pip, no other packages, no .pth files of this machine), the package copied
into its site-packages with byte-code compiled, and the console script pip
writes. `--in-place` measures the current interpreter and its installed
`freshtoken` script instead (whatever .pth files that environment runs).

    python bench/get_speed.py [--runs 60] [--in-place] [--out bench/get_speed.md]

Each round runs every command once, in a rotating order; the first rounds are
warm-up. Reported: median, p10 and p90 wall time of one whole process run
(fork/exec to exit) as seen by subprocess.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "daemon" / "freshtoken"
ACCOUNT = "bench"
TOKEN = "BQD" + "x" * 180  # about the size of a Spotify access token
WARMUP = 5

# What pip writes for `[project.scripts] freshtoken = "freshtoken.cli:main"` (pip 23/24).
CONSOLE_SCRIPT = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from freshtoken.cli import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""


def make_venv(where: Path, package: Path = PACKAGE) -> tuple[str, str]:
    """A venv holding only freshtoken, as `pip install .` would leave it; returns (python, console script)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    shutil.copytree(package, site / "freshtoken", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([str(python), "-m", "compileall", "-q", str(site / "freshtoken")], check=True, env=env, stdout=subprocess.DEVNULL)
    script = where / "bin" / "freshtoken"
    script.write_text(CONSOLE_SCRIPT.format(python=python))
    script.chmod(0o755)
    return str(python), str(script)


def write_token(token_dir: Path) -> Path:
    sys.path.insert(0, str(REPO / "daemon"))
    from freshtoken.config import Account
    from freshtoken.model import AccessToken, Secret
    from freshtoken.outputs import write_all

    write_all(
        token_dir,
        Account(name=ACCOUNT, token_url="http://127.0.0.1/", client_id="bench"),
        AccessToken(Secret(TOKEN), "Bearer", time.time() + 30 * 86400),
    )
    return token_dir / f"{ACCOUNT}.token"


CONFIG = """\
# as the README writes it
token_dir: {token_dir}
refresh_margin: 5m
accounts:
  {account}:
    provider: spotify
    client_id: "0123456789abcdef"
    client_secret: ${{SPOTIFY_CLIENT_SECRET}}
    scopes: [user-read-playback-state, user-modify-playback-state]
    outputs:
      - path: /tmp/freshtoken-bench-unused.env
        format: env
        mode: "0640"
"""


def time_runs(
    commands: dict[str, list[str]], env: dict[str, str], runs: int, envs: dict[str, dict[str, str]] | None = None
) -> dict[str, list[float]]:
    names = list(commands)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(WARMUP + runs):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            subprocess.run(commands[name], env=(envs or {}).get(name, env), stdout=subprocess.DEVNULL, check=True)
            elapsed = time.perf_counter() - started
            if round_ >= WARMUP:
                samples[name].append(elapsed * 1000)
    return samples


def extra_imports(python: str, get: list[str], env: dict[str, str]) -> list[tuple[str, int]]:
    """Modules `get` imports beyond `python -c pass`, with their self time in µs (from -X importtime)."""

    def modules(command: list[str]) -> dict[str, int]:
        err = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stderr
        found = {}
        for line in err.splitlines():
            if line.startswith("import time:") and "|" in line:
                self_us, _, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
                if self_us.isdigit():
                    found[name] = int(self_us)
        return found

    base = modules([python, "-X", "importtime", "-c", "pass"])
    ours = modules([python, "-X", "importtime", *get])
    return sorted(((name, us) for name, us in ours.items() if name not in base), key=lambda item: -item[1])


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def machine() -> list[str]:
    memory = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    cpu = "?"
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return [
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- nproc: {os.cpu_count()} ({cpu})",
        f"- memory: {memory}",
        f"- python: {platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        f"- system: {platform.platform()}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60, help="measured runs per command (default 60)")
    parser.add_argument(
        "--in-place", action="store_true", help="use this interpreter and its installed freshtoken script instead of a clean venv"
    )
    parser.add_argument("--out", type=Path, help="write the report (markdown) here")
    parser.add_argument(
        "--package",
        type=Path,
        default=PACKAGE,
        help="the freshtoken package dir to install in the venv (default: daemon/freshtoken), e.g. an older checkout",
    )
    args = parser.parse_args()
    if args.runs < 50:
        parser.error("--runs must be at least 50")

    with tempfile.TemporaryDirectory(prefix="freshtoken-bench-") as temp:
        tmp = Path(temp)
        if args.in_place:
            python = sys.executable
            script = shutil.which("freshtoken", path=os.path.dirname(sys.executable)) or shutil.which("freshtoken")
            if script is None:
                parser.error("no freshtoken script installed next to this Python or on PATH")
            where = f"in place: {python} and {script}"
        else:
            python, script = make_venv(tmp / "venv", args.package)
            where = (
                "a fresh venv holding only freshtoken (copied from the repository's daemon/freshtoken, byte-compiled, pip's console script)"
            )
        token_file = write_token(tmp / "tokens")
        config = tmp / "config.yaml"
        config.write_text(CONFIG.format(token_dir=tmp / "tokens", account=ACCOUNT))
        env = dict(os.environ, FRESHTOKEN_TOKEN_DIR=str(tmp / "tokens"))
        with_config = f"freshtoken get -c CONFIG {ACCOUNT}"
        commands = {
            "python -c pass": [python, "-c", "pass"],
            "python -c 'import re'": [python, "-c", "import re"],  # the floor for pip's console script, which imports re
            f"freshtoken get {ACCOUNT}": [script, "get", ACCOUNT],
            f"python -m freshtoken get {ACCOUNT}": [python, "-m", "freshtoken", "get", ACCOUNT],
            with_config: [script, "get", "-c", str(config), ACCOUNT],
            "cat <token file>": ["cat", str(token_file)],
        }
        # -c is the token dir's only source for this one: $FRESHTOKEN_TOKEN_DIR would win over it.
        envs = {with_config: {k: v for k, v in env.items() if k not in ("FRESHTOKEN_TOKEN_DIR", "RUNTIME_DIRECTORY")}}
        for name in commands:
            if "get" in name:
                out = subprocess.run(commands[name], env=envs.get(name, env), capture_output=True, text=True, check=True)
                assert out.stdout == TOKEN + "\n" and out.stderr == "", (name, out)
        samples = time_runs(commands, env, args.runs, envs)
        imports = extra_imports(python, ["-m", "freshtoken", "get", ACCOUNT], env)

    base = statistics.median(samples["python -c pass"])
    rows = []
    for name, values in samples.items():
        median = statistics.median(values)
        rows.append(f"| `{name}` | {median:.2f} | {percentile(values, 0.1):.2f} | {percentile(values, 0.9):.2f} | {median / base:.2f}x |")
    script_ratio = statistics.median(samples[f"freshtoken get {ACCOUNT}"]) / base
    module_ratio = statistics.median(samples[f"python -m freshtoken get {ACCOUNT}"]) / base
    config_ratio = statistics.median(samples[with_config]) / base
    verdict = "is met" if script_ratio <= 2 else "is missed"
    config_verdict = "is met" if config_ratio <= 3 else "is missed"
    command = "python bench/get_speed.py " + " ".join(sys.argv[1:])
    report = [
        "# `freshtoken get` start-up time",
        "",
        f"Command: `{command.strip()}` (from the repository root).",
        f"Measured: {where}; one token file; {args.runs} measured runs per command after {WARMUP} warm-up rounds,",
        "commands alternating round by round. Times are whole process runs (spawn to exit) in milliseconds.",
        "",
        "| command | median ms | p10 | p90 | / python -c pass |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        f"**get / python = {script_ratio:.2f}x** for the console script ({module_ratio:.2f}x for `python -m freshtoken`); "
        f"the goal (<= 2x) {verdict}.",
        f"**get -c CONFIG / python = {config_ratio:.2f}x** (a README-like config, token_dir read by getcmd.py's line scanner); "
        f"the goal (<= 3x) {config_verdict}.",
        "",
        "pip's console script imports `re` before it calls freshtoken (see `python -c 'import re'`): most of the gap",
        "between the script and `python -m freshtoken` is that import, which freshtoken's own `get` path avoids.",
        "",
        "Machine:",
        "",
        *machine(),
        "",
        "Modules `python -m freshtoken get` imports beyond `python -c pass` (self time, µs, one -X importtime run):",
        "",
        "| module | self µs |",
        "|---|---:|",
        *(f"| {name} | {us} |" for name, us in imports),
        "",
    ]
    text = "\n".join(report)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
