"""How the daemon scales with the number of accounts: memory, CPU per refresh, cold start, freshness.

    python bench/scale.py                          # 1, 100, 1000, 10000 accounts, 120 s tokens, 300 s windows
    python bench/scale.py --accounts 1000 --window 60 --lifetime 60

For each size the authorization server runs in its own process
(bench/authserver.py) with one seeded grant per account, so its CPU is not
the daemon's. The daemon starts cold (empty state and token dirs, seeds in
the config) and the run records:

- cold start: from the daemon's fork until every account's token file exists
  and holds a token the server accepts (each `.json` read, `expires_at` in
  the future; a random 50 checked with the server);
- RSS (current and peak, /proc) and CPU seconds (user + system, all threads);
- CPU seconds per refresh over the steady window (daemon CPU / refreshes the
  server answered in that window);
- the share of reader samples holding a valid token: a reader picks a random
  account every --sample-interval seconds, reads its token file and asks the
  server whether that token works at that moment;
- the most token requests the server saw in flight at once (`workers` bounds it);
- a warm restart: SIGTERM, start again, time until systemd READY=1 (every
  stored token written out again).

The baseline is measured in the same run: the RSS of an idle
`python -c "import requests, yaml, apscheduler.schedulers.background"`.
Results go to --out (JSON); --chart draws RSS and cold start against accounts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    AccountSpec,
    DaemonProcess,
    Sampler,
    baseline_rss_mib,
    clean_env,
    cpu_seconds,
    machine,
    rss_mib,
    write_config,
)

HERE = Path(__file__).resolve().parent


class ServerProcess:
    """bench/authserver.py as a child; `ask` sends one command and returns its JSON answer."""

    def __init__(self, accounts: int, lifetime: float, workdir: Path, *, latency: float = 0.0, extra: tuple[str, ...] = ()) -> None:
        self.seeds_file = workdir / "seeds.json"
        argv = [
            sys.executable,
            str(HERE / "authserver.py"),
            "--accounts",
            str(accounts),
            "--lifetime",
            str(lifetime),
            "--tokens-out",
            str(self.seeds_file),
            "--delay",
            str(latency),
            *extra,
        ]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None
        self.info = json.loads(self.proc.stdout.readline())
        self.seeds: list[str] = json.loads(self.seeds_file.read_text())
        self._lock = threading.Lock()

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def is_valid(self, token: str) -> bool:
        return bool(self.ask(f"valid {token}")["valid"])

    def stop(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


class NotifyListener:
    """A NOTIFY_SOCKET for the daemon: records when READY=1 arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.ready_at: float | None = None
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._halt.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if b"READY=1" in data.split(b"\n") and self.ready_at is None:
                self.ready_at = time.monotonic()

    def close(self) -> None:
        self._halt.set()
        self._thread.join(timeout=5)
        self.sock.close()


def all_tokens_valid(token_dir: Path, names: list[str], now: float) -> bool:
    """True once every account has a `.json` whose expires_at lies in the future (cheap enough to poll)."""
    try:
        present = {e.name for e in os.scandir(token_dir)}
    except FileNotFoundError:
        return False
    if any(f"{n}.token" not in present for n in names):
        return False
    for name in names:
        try:
            doc = json.loads((token_dir / f"{name}.json").read_bytes())
        except (OSError, ValueError):
            return False
        if doc.get("expires_at", 0) <= now:
            return False
    return True


def run_size(n: int, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    workdir = out_dir / f"scale-{n}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    print(f"--- {n} accounts: seeding the server", flush=True)
    extra = ("--rate-limit", str(args.rate_limit), "--rate-limit-retry-after", str(args.rate_limit_retry_after)) if args.rate_limit else ()
    server = ServerProcess(n, args.lifetime, workdir, latency=args.latency, extra=extra)
    names = [f"a{i:05d}" for i in range(n)]
    # systemd's RuntimeDirectory= lives on /run, a tmpfs: token files cost no disk flush there.
    token_dir = Path(args.token_root) / f"freshtoken-bench-{n}" if args.token_root else workdir / "tokens"
    shutil.rmtree(token_dir, ignore_errors=True)
    settings: dict[str, object] = {"min_refresh_interval": 1}  # a short --lifetime keeps its meaning under the 10 s floor
    if args.workers:
        settings["workers"] = args.workers
    specs = {
        name: AccountSpec(server.info["token_url"], server.info["client_id"], server.info["client_secret"], seed)
        for name, seed in zip(names, server.seeds, strict=True)
    }
    config = write_config(workdir / "freshtoken.yaml", state_dir=workdir / "state", token_dir=token_dir, accounts=specs, settings=settings)
    result: dict[str, Any] = {
        "accounts": n,
        "lifetime": args.lifetime,
        "workers": args.workers or 4,
        "latency": args.latency,
        "token_dir": str(token_dir),
    }
    env = clean_env(workdir, Path(args.source) if args.source else None)
    rss_samples: list[float] = []
    try:
        with DaemonProcess(config, workdir / "daemon.log", env=env) as daemon:
            # ---- cold start
            deadline = time.monotonic() + args.cold_timeout
            while not all_tokens_valid(token_dir, names, time.time()):
                if not daemon.alive():
                    raise RuntimeError(f"{n} accounts: the daemon exited; see {workdir / 'daemon.log'}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{n} accounts: no valid token for every account after {args.cold_timeout}s")
                rss_samples.append(rss_mib(daemon.pid)[0])
                time.sleep(0.05 if n < 1000 else 0.2)
            result["cold_start_s"] = time.monotonic() - daemon.started_at
            result["cold_cpu_s"] = cpu_seconds(daemon.pid)
            stats = server.ask("stats")
            result["cold_refreshes"] = stats["refreshes_ok"]
            result["cold_token_requests"] = stats["token_requests"]
            result["cold_rate_limited"] = stats["rate_limited"]
            checked = random.Random(0).sample(names, min(50, n))  # noqa: S311 - seeded simulation, not secrets
            result["cold_checked_with_server"] = sum(server.is_valid((token_dir / f"{name}.token").read_text().strip()) for name in checked)
            result["cold_checked"] = len(checked)
            result["rss_after_cold_mib"], _ = rss_mib(daemon.pid)
            print(f"    cold start {result['cold_start_s']:.1f}s, rss {result['rss_after_cold_mib']:.1f} MiB", flush=True)

            # ---- steady window
            cpu0, refreshed0 = cpu_seconds(daemon.pid), stats["refreshes_ok"]
            sampler = Sampler(token_dir, names, server.is_valid, interval=args.sample_interval, rng=random.Random(1))  # noqa: S311 - seeded simulation, not secrets
            sampler.start()
            window_start = time.monotonic()
            while time.monotonic() - window_start < args.window:
                time.sleep(1.0)
                if not daemon.alive():
                    raise RuntimeError("the daemon died during the window")
                rss_samples.append(rss_mib(daemon.pid)[0])
            samples = sampler.stop()
            window = time.monotonic() - window_start
            cpu1 = cpu_seconds(daemon.pid)
            stats = server.ask("stats")
            refreshes = stats["refreshes_ok"] - refreshed0
            result.update(
                window_s=window,
                window_refreshes=refreshes,
                window_cpu_s=cpu1 - cpu0,
                cpu_per_refresh_ms=(cpu1 - cpu0) / refreshes * 1000 if refreshes else None,
                cpu_share_of_one_core=(cpu1 - cpu0) / window,
                samples=samples.samples,
                valid_share=samples.valid_share,
                missing=samples.missing,
                torn=len(samples.torn),
                invalid_accounts=len(samples.invalid_by_account),
            )
            rss_now, rss_peak = rss_mib(daemon.pid)
            result.update(rss_end_mib=rss_now, rss_peak_mib=rss_peak, rss_max_sampled_mib=max(rss_samples or [rss_now]))
            stop_started = time.monotonic()
            result["stop_exit_code"] = daemon.stop(timeout=30)
            result["stop_s"] = time.monotonic() - stop_started
            print(
                f"    window {window:.0f}s: {refreshes} refreshes, {result['cpu_per_refresh_ms'] or 0:.2f} ms CPU each, "
                f"valid {samples.valid_share:.4f} of {samples.samples}, rss peak {rss_peak:.1f} MiB",
                flush=True,
            )

        # ---- warm restart: every stored token still valid, written out again
        if not args.no_warm:
            warm_restart(config, workdir, env, args.cold_timeout, result)
        stats = server.ask("stats")
        result.update(
            reuse_count=stats["reuse_count"],
            max_inflight=stats["max_inflight"],
            connections=stats["connections"],
            token_requests=stats["token_requests"],
        )
        warm = result.get("warm_ready_s", float("nan"))  # nan when skipped
        print(f"    warm restart READY after {warm:.1f}s; max in flight {stats['max_inflight']}", flush=True)
    finally:
        server.stop()
    if not args.keep:
        shutil.rmtree(workdir / "state", ignore_errors=True)
        shutil.rmtree(token_dir, ignore_errors=True)
    return result


def warm_restart(config: Path, workdir: Path, env: dict[str, str], timeout: float, result: dict[str, Any]) -> None:
    """Start again on the state of the run before; record when systemd would hear READY=1."""
    listener = NotifyListener(workdir / "notify.sock")
    try:
        env_notify = {**env, "NOTIFY_SOCKET": str(listener.path)}
        with DaemonProcess(config, workdir / "daemon.log", env=env_notify) as daemon:
            deadline = time.monotonic() + timeout
            while listener.ready_at is None and time.monotonic() < deadline and daemon.alive():
                time.sleep(0.05)
            if listener.ready_at is not None:
                result["warm_ready_s"] = listener.ready_at - daemon.started_at
            result["warm_rss_mib"] = rss_mib(daemon.pid)[0]
            result["warm_stop_exit_code"] = daemon.stop(timeout=30)
    finally:
        listener.close()


def draw_chart(
    results: list[dict[str, Any]], baseline: float, path: Path, title: str, also: list[dict[str, Any]] | None = None, also_label: str = ""
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["accounts"] for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(ns, [r["rss_peak_mib"] for r in results], "o-", label="daemon peak RSS (VmHWM, config parse)")
    left.plot(ns, [r["rss_end_mib"] for r in results], "s-", label="daemon RSS after the steady window")
    if also:
        xs = [r["accounts"] for r in also]
        left.plot(xs, [r["rss_peak_mib"] for r in also], "^:", color="tab:green", label=f"peak RSS, {also_label}")
    left.axhline(baseline, color="grey", linestyle="--", label="baseline: python + requests, yaml, apscheduler")
    left.axhline(120, color="red", linestyle=":", label="goal at 10,000 accounts: 120 MiB")
    left.set_xscale("log")
    left.set_xlabel("accounts")
    left.set_ylabel("MiB")
    left.set_title("memory")
    left.legend(fontsize=7)
    right.plot(ns, [r["cold_start_s"] for r in results], "o-", label="cold start: every token file valid")
    warm = [(r["accounts"], r["warm_ready_s"]) for r in results if "warm_ready_s" in r]
    if warm:
        right.plot([w[0] for w in warm], [w[1] for w in warm], "s--", label="warm restart: READY=1")
    if also:
        xs = [r["accounts"] for r in also]
        right.plot(xs, [r["cold_start_s"] for r in also], "^:", color="tab:green", label=f"cold start, {also_label}")
    right.axhline(60, color="red", linestyle=":", label="goal at 10,000 accounts: 60 s")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("accounts")
    right.set_ylabel("seconds")
    right.set_title("start-up")
    right.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _commit_of(source: Path) -> str:
    stamp = source / "COMMIT"  # written next to a `git archive HEAD daemon` export
    if stamp.exists():
        return stamp.read_text().strip()
    try:
        argv = ["git", "-C", str(source), "rev-parse", "--short", "HEAD"]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()  # noqa: S607
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", default="1,100,1000,10000", help="comma-separated sizes (default 1,100,1000,10000)")
    parser.add_argument("--lifetime", type=float, default=120.0, help="access-token lifetime in seconds (default 120)")
    parser.add_argument("--window", type=float, default=300.0, help="steady window per size in seconds (default 300)")
    parser.add_argument("--workers", type=int, default=0, help="the config's `workers` (default: leave the daemon's default)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the server takes per token request (default 0)")
    parser.add_argument("--rate-limit", type=float, default=0.0, help="the server answers 429 above this many requests a second")
    parser.add_argument("--rate-limit-retry-after", type=int, default=1)
    parser.add_argument("--no-warm", action="store_true", help="skip the warm restart")
    parser.add_argument("--sample-interval", type=float, default=0.01)
    parser.add_argument("--cold-timeout", type=float, default=600.0)
    parser.add_argument("--out", default=str(HERE / "out" / "scale.json"))
    parser.add_argument("--chart", default="", help="write a PNG chart here (needs matplotlib)")
    parser.add_argument("--source", default="", help="a daemon/ dir to run freshtoken from (e.g. a git worktree of one commit)")
    parser.add_argument(
        "--token-root",
        default="/dev/shm" if os.path.isdir("/dev/shm") else "",  # noqa: S108 - a benchmark's own subdirectory
        help="tmpfs for the token dir, as systemd's /run (default /dev/shm; empty: inside the work dir, on disk)",
    )
    parser.add_argument("--chart-from", default="", help="only draw --chart from an earlier --out JSON")
    parser.add_argument("--chart-also", default="", help="with --chart-from: a second --out JSON to draw beside it")
    parser.add_argument("--chart-also-label", default="with the proposed patches")
    parser.add_argument("--keep", action="store_true", help="keep the state and token dirs")
    args = parser.parse_args(argv)

    if args.chart_from:
        doc = json.loads(Path(args.chart_from).read_text())
        info = doc["machine"]
        title = f"freshtoken {info['date']}: {info['nproc']} cores, Python {info['python']}"
        also = json.loads(Path(args.chart_also).read_text())["results"] if args.chart_also else None
        draw_chart(doc["results"], doc["baseline_rss_mib"], Path(args.chart), title, also, args.chart_also_label)
        return 0
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    info = machine()
    if args.source:
        info["source"] = f"{args.source} at " + _commit_of(Path(args.source))
    baseline = baseline_rss_mib()
    print(f"machine {info}; baseline RSS {baseline:.1f} MiB", flush=True)
    results = []
    for n in [int(x) for x in args.accounts.split(",")]:
        results.append(run_size(n, args, out.parent))
        command = " ".join([Path(sys.executable).name, *sys.argv])
        doc = {"machine": info, "command": command, "baseline_rss_mib": baseline, "results": results}
        out.write_text(json.dumps(doc, indent=1) + "\n")
    if args.chart:
        draw_chart(results, baseline, Path(args.chart), f"freshtoken {info['date']}: {info['nproc']} cores, Python {info['python']}")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
