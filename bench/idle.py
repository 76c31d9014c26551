"""What does an idle `freshtoken run` cost? Memory and CPU, against a process that only imports the same libraries.

The daemon spends nearly all its life waiting: one account, a token that lasts
an hour, a heartbeat every 30 s. This starts `python -m freshtoken -c CFG run`
with one account against a loopback AuthServer in this process, lets it finish
its start-up, then samples it over `--duration` seconds:

- RSS: VmRSS from /proc/PID/status, every `--interval` seconds (first, last, max);
- CPU: utime + stime from /proc/PID/stat (clock ticks) at the start and the end of the window, and
  the nanosecond run time of every thread from /proc/PID/task/*/schedstat (ticks are too coarse
  for a process that runs a few milliseconds a minute);
- wake-ups: voluntary + involuntary context switches from /proc/PID/status.

The baseline, measured over the same window, is
`python -c "import requests, yaml, apscheduler.schedulers.background; import time; time.sleep(...)"`:
the same interpreter with the same libraries loaded, doing nothing.

    python bench/idle.py [--duration 300] [--lifetime 3600] [--interval 5] [--out bench/idle.md]

`--duration 30` gives a quick run. With `--lifetime` below the duration the
window includes refreshes (the figure printed says how many).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "daemon"))

from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
SETTLE = 5.0  # seconds after READY before the window opens: start-up work is not idle
BASELINE = "import requests, yaml, apscheduler.schedulers.background; import time; time.sleep({seconds})"


@dataclass
class Sample:
    rss_kib: list[int] = field(default_factory=list)
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    switches_start: int = 0
    switches_end: int = 0
    cpu_at_open: float = 0.0  # CPU seconds spent before the window (start-up)
    sched_start: int = 0  # ns on CPU, summed over threads
    sched_end: int = 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid`, in seconds (fields 14 and 15 of /proc/PID/stat, after the command name)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_fields(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def rss_kib(pid: int) -> int:
    return int(status_fields(pid)["VmRSS"].split()[0])


def run_ns(pid: int) -> int:
    """Nanoseconds on CPU of every live thread of `pid` (first field of each thread's schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def switches(pid: int) -> int:
    """Context switches of every thread of `pid` (a waiting daemon wakes in its threads, not only the main one)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def machine() -> list[str]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    import apscheduler
    import requests
    import yaml

    return [
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"nproc: {os.cpu_count()} ({model})",
        f"memory: {mem}",
        f"python: {platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        f"libraries: requests {requests.__version__}, PyYAML {yaml.__version__}, APScheduler {apscheduler.__version__}",
        f"system: {platform.platform()}",
    ]


def run(duration: float, lifetime: float, interval: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="freshtoken-idle-") as tmp, AuthServer(token_lifetime=lifetime) as server:
        root = Path(tmp)
        config = root / "freshtoken.yaml"
        config.write_text(
            f"state_dir: {root}/state\ntoken_dir: {root}/tokens\nmin_refresh_interval: 1s\naccounts:\n  bench:\n"
            f"    token_url: {server.token_url}\n    client_id: {DEMO_CLIENT_ID}\n    client_secret: {DEMO_CLIENT_SECRET}\n"
            f"    refresh_token: {server.issue_refresh_token(DEMO_CLIENT_ID)}\n"
        )
        os.chmod(config, 0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_", "JOURNAL_STREAM"))}
        log = root / "daemon.log"
        with open(log, "wb") as stderr:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "freshtoken", "-c", str(config), "run"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
            )
            baseline = subprocess.Popen(
                [sys.executable, "-c", BASELINE.format(seconds=duration + SETTLE + 60)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
            )
            try:
                deadline = time.monotonic() + 30
                while "ready: " not in log.read_text():
                    if daemon.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"the daemon did not become ready:\n{log.read_text()}")
                    time.sleep(0.05)
                time.sleep(SETTLE)
                procs = {"freshtoken run": daemon.pid, "baseline": baseline.pid}
                samples = {name: Sample() for name in procs}
                refreshes_before = server.refreshes_ok
                for name, pid in procs.items():
                    s = samples[name]
                    s.cpu_start = s.cpu_at_open = cpu_seconds(pid)
                    s.switches_start = switches(pid)
                    s.sched_start = run_ns(pid)
                    s.rss_kib.append(rss_kib(pid))
                opened = time.monotonic()
                while (left := duration - (time.monotonic() - opened)) > 0:
                    time.sleep(min(interval, left))
                    for name, pid in procs.items():
                        samples[name].rss_kib.append(rss_kib(pid))
                window = time.monotonic() - opened
                for name, pid in procs.items():
                    samples[name].cpu_end = cpu_seconds(pid)
                    samples[name].switches_end = switches(pid)
                    samples[name].sched_end = run_ns(pid)
                refreshes = server.refreshes_ok - refreshes_before
                daemon.send_signal(signal.SIGTERM)
                code = daemon.wait(10)
            finally:
                for process in (daemon, baseline):
                    if process.poll() is None:
                        process.kill()
                        process.wait(5)
        return {"samples": samples, "window": window, "refreshes": refreshes, "exit": code}


def report(result: dict[str, object], duration: float, lifetime: float, interval: float, command: str) -> str:
    samples: dict[str, Sample] = result["samples"]  # type: ignore[assignment]
    window: float = result["window"]  # type: ignore[assignment]
    minutes = window / 60
    lines = [
        "# Idle cost of `freshtoken run`",
        "",
        f"Command: `{command}` (from the repository root).",
        f"One account against a loopback AuthServer issuing {lifetime:g} s tokens; "
        f"window of {window:.1f} s opened {SETTLE:g} s after READY;",
        f'RSS sampled every {interval:g} s. Baseline: `python -c "{BASELINE.format(seconds="…")}"` over the same window.',
        f"Refreshes inside the window: {result['refreshes']}. The daemon exited {result['exit']} on SIGTERM.",
        "",
        "| process | RSS first MiB | RSS last MiB | RSS max MiB | start-up CPU s | CPU s in window (ticks) "
        "| CPU ms in window (schedstat) | CPU s / idle min | wake-ups / min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in samples.items():
        ticks = s.cpu_end - s.cpu_start
        precise = (s.sched_end - s.sched_start) / 1e9
        wakeups = (s.switches_end - s.switches_start) / minutes
        lines.append(
            f"| {name} | {s.rss_kib[0] / 1024:.1f} | {s.rss_kib[-1] / 1024:.1f} | {max(s.rss_kib) / 1024:.1f} | "
            f"{s.cpu_at_open:.2f} | {ticks:.2f} | {precise * 1000:.2f} | {precise / minutes:.5f} | {wakeups:.0f} |"
        )
    d, b = samples["freshtoken run"], samples["baseline"]
    lines += [
        "",
        f"**Over the baseline: +{(d.rss_kib[-1] - b.rss_kib[-1]) / 1024:.1f} MiB RSS, "
        f"+{((d.sched_end - d.sched_start) - (b.sched_end - b.sched_start)) / 1e9 / minutes:.5f} CPU s per idle minute.**",
        "",
        f"Tick CPU comes from /proc/PID/stat (1/{TICK} s resolution); the schedstat column sums the live threads'",
        'nanosecond run time and is what "CPU s / idle min" uses. "start-up CPU s" is everything used before the window opened.',
        "Wake-ups are context switches (voluntary + involuntary) summed over the process's threads.",
        "",
        "Machine:",
        "",
        *[f"- {line}" for line in machine()],
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of idle to measure (default 300)")
    parser.add_argument("--lifetime", type=float, default=3600.0, help="access-token lifetime the server issues (default 3600)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    args = parser.parse_args()
    command = "python bench/idle.py " + " ".join(sys.argv[1:])
    result = run(args.duration, args.lifetime, args.interval)
    text = report(result, args.duration, args.lifetime, args.interval, command.strip())
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
