"""The lost-response window, measured: SIGKILL `freshtoken refresh` a chosen delay after the server's answer reached it.

    python bench/crashwindow.py                         # 60 trials each, old (main) and new (this checkout), 0-5 ms
    python bench/crashwindow.py --trials 120 --old-ref 2535136 --max-delay 3

Each trial is one `python -m freshtoken -c CFG refresh` against an in-process
AuthServer that rotates refresh tokens and revokes the whole grant when a
spent one comes back (RFC 9700 §4.14.2). Between the two sits a relay on
loopback: it forwards the request, forwards the answer, and when the whole
answer has been handed to the client's socket it waits the trial's delay
(spread evenly over 0..--max-delay ms) and SIGKILLs the client. A trial is
*lost* when the state file still holds the refresh token the server has just
consumed: the next run would present it and the server would revoke the login.
*Saved* means the state holds the rotated token; *finished* that the process
had exited before the kill.

The old code is `git archive <--old-ref> daemon` run from a temp dir through
PYTHONPATH; the new code is whatever `import freshtoken` finds (this checkout
when installed editable), or `--new-source DIR`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import AccountSpec, clean_env, machine, read_state, write_config  # noqa: E402

from freshtoken.testing import AuthServer  # noqa: E402
from freshtoken.model import Secret  # noqa: E402

HERE = Path(__file__).resolve().parent
CLIENT = ("window-client", "window-secret")


def next_refresh_token(stored: dict[str, object] | None, seed: str) -> object:
    """The refresh token the next run would present: the state's, unless the state has not seen the config's seed yet.

    The seeded state is saved with the answer (refresh.Refresher._transaction), not before the request,
    so a kill in the window leaves no state at all: the next run then presents the seed, which the server consumed.
    """
    if stored is None or stored.get("seed") != Secret(seed).fingerprint():
        return seed
    return stored.get("refresh_token")


class Relay:
    """A loopback TCP relay to `upstream` that SIGKILLs the armed pid `delay` seconds after forwarding a whole HTTP answer."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pid: int | None = None
        self.delay = 0.0
        self.killed_after: float | None = None  # seconds from the answer's last byte to the kill, as measured
        self.done = threading.Event()  # the armed trial's connection is over (answered and closed, or the client died)
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, pid: int, delay: float) -> None:
        self.pid, self.delay, self.killed_after = pid, delay, None
        self.done.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        server = socket.create_connection(self.upstream)
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=self._pump_up, args=(client, server), daemon=True).start()
        answer = b""
        try:
            while True:
                data = server.recv(65536)
                if not data:
                    break
                client.sendall(data)
                answer += data
                if _complete(answer):
                    self._kill_later()
                    answer = b""
        except OSError:
            pass
        finally:
            client.close()
            server.close()
            self.done.set()

    def _kill_later(self) -> None:
        sent = time.perf_counter()
        pid, self.pid = self.pid, None
        if pid is None:
            return
        # sleep(), not a busy wait: on a 2-core machine a spinning thread slows the client it is timing.
        # The kernel's timer slack makes it up to ~0.1 ms late; killed_after records what it really was.
        time.sleep(self.delay)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.killed_after = time.perf_counter() - sent

    @staticmethod
    def _pump_up(client: socket.socket, server: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                server.sendall(data)
        except OSError:
            pass
        finally:
            # The client is gone (killed, or done): let the server side finish and close.
            try:
                server.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def _complete(answer: bytes) -> bool:
    """True once `answer` holds a whole HTTP response with a Content-Length body."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return True


@dataclass
class Trial:
    delay_ms: float
    outcome: str  # lost | saved | finished | unexplained
    killed_after_ms: float | None


@dataclass
class Tally:
    label: str
    source: str
    trials: list[Trial] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for t in self.trials if t.outcome == outcome)

    def by_ms(self) -> dict[int, tuple[int, int]]:
        """{whole ms: (lost, trials)} over the delays."""
        table: dict[int, list[int]] = {}
        for trial in self.trials:
            row = table.setdefault(int(trial.delay_ms), [0, 0])
            row[0] += trial.outcome == "lost"
            row[1] += 1
        return {ms: (row[0], row[1]) for ms, row in sorted(table.items())}

    def summary(self) -> str:
        counts = Counter(t.outcome for t in self.trials)
        per_ms = ", ".join(f"{ms}-{ms + 1} ms {lost}/{n}" for ms, (lost, n) in self.by_ms().items())
        return f"{self.label}: lost {counts['lost']} of {len(self.trials)} ({dict(counts)}); by delay: {per_ms}"


class WindowRun:
    """One AuthServer, one relay, one work dir; run(tally, delays) adds a trial per delay."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.server = AuthServer(token_lifetime=3600, rotate_refresh_tokens=True, revoke_grant_on_reuse=True, clients=dict([CLIENT]))
        self.relay: Relay | None = None
        self.trials = 0

    def __enter__(self) -> WindowRun:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.server.start()
        self.relay = Relay(("127.0.0.1", self.server.port))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.relay is not None:
            self.relay.close()
        self.server.stop()

    def trial(self, delay: float, env: dict[str, str]) -> Trial:
        """One `freshtoken refresh` from a fresh state dir (the config's seed is a new, live grant), killed `delay` s after the answer."""
        assert self.relay is not None
        self.trials += 1
        base = self.workdir / f"trial-{self.trials}"
        state, tokens = base / "state", base / "tokens"
        seed = self.server.issue_refresh_token(CLIENT[0])
        url = self.server.token_url.replace(f":{self.server.port}/", f":{self.relay.port}/")
        base.mkdir(parents=True)
        config = write_config(
            base / "freshtoken.yaml", state_dir=state, token_dir=tokens, accounts={"acct": AccountSpec(url, *CLIENT, seed)}
        )
        argv = [sys.executable, "-m", "freshtoken", "-c", str(config), "refresh"]
        with open(base / "stderr", "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env)
            self.relay.arm(proc.pid, delay)
            code = proc.wait(timeout=60)
        self.relay.done.wait(10)
        self.server.wait_until(lambda s: all(r.status is not None for r in s.requests[-3:]), 5)
        live = self.server.current_refresh_token(seed)
        held = next_refresh_token(read_state(state, "acct"), seed)
        if code == 0:
            outcome = "finished"
        elif live is not None and held == live != seed:
            outcome = "saved"
        elif held == seed and live != seed:
            outcome = "lost"
        else:
            outcome = "unexplained"
        killed = self.relay.killed_after
        return Trial(round(delay * 1000, 3), outcome, None if killed is None else round(killed * 1000, 3))

    def run(self, tally: Tally, delays: list[float], env: dict[str, str]) -> Tally:
        for delay in delays:
            tally.trials.append(self.trial(delay, env))
        return tally


def delays_for(trials: int, max_delay_ms: float) -> list[float]:
    """`trials` delays spread evenly over 0..max_delay_ms, in seconds (the same list for every variant)."""
    if trials == 1:
        return [0.0]
    return [max_delay_ms / 1000 * i / (trials - 1) for i in range(trials)]


def export(ref: str, into: Path) -> Path:
    """`git archive <ref> daemon` unpacked into `into`; returns the daemon/ dir to put on PYTHONPATH."""
    repo = HERE.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", ref, "daemon"], capture_output=True, check=True).stdout  # noqa: S607
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)  # noqa: S607
    return into / "daemon"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60, help="trials per variant (default 60)")
    parser.add_argument("--max-delay", type=float, default=5.0, help="kill up to this many ms after the answer (default 5)")
    parser.add_argument("--old-ref", default="main", help="git ref of the old code (default main); '' to skip it")
    parser.add_argument("--new-source", default="", help="a daemon/ dir for the new code (default: the installed freshtoken)")
    parser.add_argument("--out", default=str(HERE / "out" / "crashwindow.json"))
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"machine {info}; load average {os.getloadavg()}", flush=True)
    delays = delays_for(args.trials, args.max_delay)
    with tempfile.TemporaryDirectory(prefix="crashwindow-", dir=out.parent) as temp:
        work = Path(temp)
        variants: list[tuple[str, Path | None]] = []
        if args.old_ref:
            variants.append((f"old ({args.old_ref})", export(args.old_ref, work / "old")))
        variants.append(("new", Path(args.new_source) if args.new_source else None))
        tallies = [Tally(label, str(source or "installed")) for label, source in variants]
        envs = [clean_env(work, source) for _, source in variants]
        with WindowRun(work / "runs") as run:
            # Interleaved, old then new at each delay: both see the same machine load (other
            # processes on a 2-core box move these figures more than anything else).
            for delay in delays:
                for tally, env in zip(tallies, envs, strict=True):
                    run.run(tally, [delay], env)
            reuse = run.server.reuse_count
        for tally in tallies:
            print(tally.summary(), flush=True)
    doc = {
        "machine": info,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "server_reuse_count": reuse,
        "loadavg_after": os.getloadavg(),
        "variants": [
            {
                "label": t.label,
                "source": t.source,
                "lost": t.count("lost"),
                "saved": t.count("saved"),
                "finished": t.count("finished"),
                "unexplained": t.count("unexplained"),
                "by_ms": {str(ms): list(v) for ms, v in t.by_ms().items()},
                "trials": [t.__dict__ for t in t.trials],
            }
            for t in tallies
        ],
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return 1 if any(t.count("unexplained") for t in tallies) else 0


if __name__ == "__main__":
    sys.exit(main())
