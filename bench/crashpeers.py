"""The lost-response window of freshtoken beside its peers, in crashwindow.py's harness.

    python bench/crashpeers.py                              # 60 trials per client, 0-5 ms, about 4 minutes
    python bench/crashpeers.py --trials 30 --old-ref main   # also freshtoken as on main (before/after)

Every client refreshes one live, rotating, reuse-revoking grant of the same
in-process AuthServer through crashwindow.Relay, which SIGKILLs it a chosen
delay after handing it the answer's last byte. The clients, interleaved at
each delay so that all see the same machine load:

- freshtoken: `python -m freshtoken -c CFG refresh` (crashwindow.WindowRun.trial);
- spotipy: SpotifyOAuth with its default CacheFileHandler; the script calls
  validate_token(cache_handler.get_cached_token()) on an expired cache, which
  refreshes and rewrites the cache file in place (open "w", write);
- requests-oauthlib: OAuth2Session.refresh_token, then json.dump into the token
  file opened "w" (its documented recipe);
- authlib: OAuth2Session.refresh_token, then the same in-place json.dump.

The peers are installed at run time into a venv of their own (--peer-venv,
created with pip from PyPI when it lacks them); none of their code is kept
here. A peer trial is *lost* when its token file does not hold the grant's
live refresh token after the server rotated it: the old token (the next run
replays it and the server revokes the login) or a file cut short by the kill
(counted as lost too, shown as `torn`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crashwindow import CLIENT, Tally, Trial, WindowRun, delays_for, export  # noqa: E402
from harness import clean_env, machine  # noqa: E402

HERE = Path(__file__).resolve().parent
PEER_PACKAGES = ["spotipy", "requests-oauthlib", "authlib"]
LOST = ("lost", "torn")

# One tiny script per peer: argv = token URL, token file; the client id and secret come in the environment.
PEERS = {
    "spotipy": """
import os, sys, spotipy.oauth2 as oauth2
from spotipy.cache_handler import CacheFileHandler
url, path = sys.argv[1:]
auth = oauth2.SpotifyOAuth(os.environ["CLIENT_ID"], os.environ["CLIENT_SECRET"], "http://127.0.0.1:9/cb",
                           cache_handler=CacheFileHandler(cache_path=path))
auth.OAUTH_TOKEN_URL = url
assert auth.validate_token(auth.cache_handler.get_cached_token())
""",
    "requests-oauthlib": """
import json, os, sys
from requests_oauthlib import OAuth2Session
url, path = sys.argv[1:]
with open(path) as f:
    token = json.load(f)
session = OAuth2Session(os.environ["CLIENT_ID"], token=token)
token = session.refresh_token(url, client_id=os.environ["CLIENT_ID"], client_secret=os.environ["CLIENT_SECRET"])
with open(path, "w") as f:
    json.dump(token, f)
""",
    "authlib": """
import json, os, sys
from authlib.integrations.requests_client import OAuth2Session
url, path = sys.argv[1:]
with open(path) as f:
    token = json.load(f)
session = OAuth2Session(os.environ["CLIENT_ID"], os.environ["CLIENT_SECRET"], token=token)
token = session.refresh_token(url)
with open(path, "w") as f:
    json.dump(dict(token), f)
""",
}


def peer_python(venv: Path) -> Path:
    """The venv's python, with the peers installed (pip from PyPI on first use)."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    check = "import spotipy, requests_oauthlib, authlib"
    if subprocess.run([str(python), "-c", check], capture_output=True).returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python


def versions(python: Path) -> str:
    names = ("requests", "urllib3", *PEER_PACKAGES)
    code = f"import importlib.metadata as m; print(' '.join(p + ' ' + m.version(p) for p in {names!r}))"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


class PeerRun(WindowRun):
    """crashwindow's server and relay, with a trial for a peer script as well."""

    def peer_trial(self, delay: float, python: Path, script: Path, env: dict[str, str]) -> Trial:
        assert self.relay is not None
        self.trials += 1
        base = self.workdir / f"trial-{self.trials}"
        base.mkdir(parents=True)
        seed = self.server.issue_refresh_token(CLIENT[0])
        url = self.server.token_url.replace(f":{self.server.port}/", f":{self.relay.port}/")
        path = base / "token.json"
        # An expired token, as a script finds it an hour later; spotipy wants expires_at and scope in its cache.
        stale = {"access_token": "stale", "token_type": "Bearer", "refresh_token": seed, "expires_in": 3600, "scope": None}
        path.write_text(json.dumps(stale | {"expires_at": int(time.time()) - 600}))
        # Loopback http: both libraries refuse it unless told (the relay cannot read TLS).
        insecure = {"OAUTHLIB_INSECURE_TRANSPORT": "1", "AUTHLIB_INSECURE_TRANSPORT": "1"}
        peer_env = env | insecure | {"CLIENT_ID": CLIENT[0], "CLIENT_SECRET": CLIENT[1]}
        argv = [str(python), str(script), url, str(path)]
        with open(base / "stderr", "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=peer_env)
            self.relay.arm(proc.pid, delay)
            code = proc.wait(timeout=60)
        self.relay.done.wait(10)
        self.server.wait_until(lambda s: all(r.status is not None for r in s.requests[-3:]), 5)
        live = self.server.current_refresh_token(seed)
        try:
            held = json.loads(path.read_text()).get("refresh_token")
        except ValueError:
            held = None  # cut short by the kill: the login is gone as surely as with the old token
        if code == 0:
            outcome = "finished" if held == live else "unexplained"
        elif live is not None and held == live != seed:
            outcome = "saved"
        elif live != seed and held == seed:
            outcome = "lost"
        elif live != seed and held is None:
            outcome = "torn"
        else:
            outcome = "unexplained"
        killed = self.relay.killed_after
        return Trial(round(delay * 1000, 3), outcome, None if killed is None else round(killed * 1000, 3))


def lost(tally: Tally) -> int:
    return sum(1 for t in tally.trials if t.outcome in LOST)


def by_ms(tally: Tally, max_delay_ms: float = 5.0) -> dict[int, tuple[int, int]]:
    """{whole ms: (lost or torn, trials)}; the last delay (max_delay_ms itself) counts in the last bucket."""
    last = max(0, int(max_delay_ms) - 1) if max_delay_ms == int(max_delay_ms) else int(max_delay_ms)
    table: dict[int, list[int]] = {}
    for trial in tally.trials:
        row = table.setdefault(min(int(trial.delay_ms), last), [0, 0])
        row[0] += trial.outcome in LOST
        row[1] += 1
    return {ms: (row[0], row[1]) for ms, row in sorted(table.items())}


def summary(tally: Tally, max_delay_ms: float) -> str:
    counts = Counter(t.outcome for t in tally.trials)
    per_ms = ", ".join(f"{lo}/{n}" for lo, n in by_ms(tally, max_delay_ms).values())
    return f"{tally.label:<22} lost {lost(tally):>2} of {len(tally.trials)}  by ms: {per_ms}  {dict(counts)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60, help="trials per client (default 60)")
    parser.add_argument("--max-delay", type=float, default=5.0, help="kill up to this many ms after the answer (default 5)")
    parser.add_argument("--old-ref", default="", help="also run freshtoken as of this git ref (e.g. main)")
    parser.add_argument("--new-source", default="", help="a daemon/ dir for freshtoken (default: the installed one)")
    parser.add_argument("--peer-venv", default=str(Path(tempfile.gettempdir()) / "crashpeers-venv"), help="venv for the peers")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ",".join(PEERS))
    parser.add_argument("--out", default=str(HERE / "out" / "crashpeers.json"))
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    python = peer_python(Path(args.peer_venv))
    info = machine()
    print(f"machine {info}; load average {os.getloadavg()}", flush=True)
    print(f"peers: {versions(python)}", flush=True)
    delays = delays_for(args.trials, args.max_delay)
    with tempfile.TemporaryDirectory(prefix="crashpeers-", dir=out.parent) as temp:
        work = Path(temp)
        runners = []  # (tally, run one trial at a delay)
        sources: list[tuple[str, Path | None]] = []
        if args.old_ref:
            sources.append((f"freshtoken {args.old_ref}", export(args.old_ref, work / "old")))
        sources.append(("freshtoken", Path(args.new_source) if args.new_source else None))
        with PeerRun(work / "runs") as run:
            for label, source in sources:
                env = clean_env(work, source)
                runners.append((Tally(label, str(source or "installed")), lambda d, env=env: run.trial(d, env)))
            for name in args.peers.split(","):
                script = work / f"peer-{name}.py"
                script.write_text(PEERS[name])
                env = clean_env(work)
                runners.append((Tally(name, versions(python)), lambda d, s=script, env=env: run.peer_trial(d, python, s, env)))
            for delay in delays:
                for tally, trial in runners:
                    tally.trials.append(trial(delay))
            reuse = run.server.reuse_count
    tallies = [tally for tally, _ in runners]
    for tally in tallies:
        print(summary(tally, args.max_delay), flush=True)
    doc = {
        "machine": info,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "server_reuse_count": reuse,
        "loadavg_after": os.getloadavg(),
        "clients": [
            {
                "label": t.label,
                "source": t.source,
                "lost": lost(t),
                "outcomes": dict(Counter(x.outcome for x in t.trials)),
                "by_ms": {str(ms): list(v) for ms, v in by_ms(t, args.max_delay).items()},
                "trials": [x.__dict__ for x in t.trials],
            }
            for t in tallies
        ],
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return 1 if any(x.outcome == "unexplained" for t in tallies for x in t.trials) else 0


if __name__ == "__main__":
    sys.exit(main())
