"""The long resilience run: the daemon against a provider that fails 30 % of token requests.

    python bench/flaky.py                       # the three profiles below, 300 s each
    python bench/flaky.py --profiles ci --duration 600

Faults mix 500, 502 (HTML), 503 (text), 429 with Retry-After: 1, hangs
(longer than the read timeout, then 504) and connection resets. Reported per
profile: the share of reader samples whose token the server accepted at
that moment, the longest stretch one account went without a valid token,
token requests against the minimum needed (one token per lifetime per
account) plus the failed attempts, and reuse (must be 0).

Profiles (time is compressed; the margin is half the lifetime below 60 s):
  ci         4 s tokens, read_timeout 1 s, backoff_max 1 s, 2 s hangs  (tests/test_resilience.py, longer)
  brief      3 s tokens, read_timeout 1 s, backoff_max 3 s, 2 s hangs  (one retry fits in the 1.5 s margin)
  realistic  60 s tokens (30 s margin), read_timeout 5 s, default backoff_max (5 min), 10 s hangs, 10 accounts
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flakykit import flaky_run  # noqa: E402
from harness import clean_env, machine  # noqa: E402

HERE = Path(__file__).resolve().parent

PROFILES: dict[str, dict[str, Any]] = {
    "ci": {
        "accounts": 3,
        "token_lifetime": 4,
        "fault_hang": 2,
        "settings": {"read_timeout": 1, "connect_timeout": 1, "backoff_max": 1},
    },
    "brief": {
        "accounts": 3,
        "token_lifetime": 3,
        "fault_hang": 2,
        "settings": {"read_timeout": 1, "connect_timeout": 1, "backoff_max": 3},
    },
    "realistic": {
        "accounts": 10,
        "token_lifetime": 60,
        "fault_hang": 10,
        "settings": {"read_timeout": 5, "connect_timeout": 5},
    },
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="ci,brief,realistic")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds per profile (default 300)")
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--source", default="", help="a daemon/ dir to run freshtoken from (default: the installed one)")
    parser.add_argument("--out", default=str(HERE / "out" / "flaky.json"))
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    info = machine()
    if args.source:
        info["source"] = args.source
    print(f"machine {info}", flush=True)
    results = []
    for name in args.profiles.split(","):
        profile = PROFILES[name]
        workdir = out.parent / f"flaky-{name}"
        started = time.monotonic()
        report = flaky_run(
            workdir,
            duration=args.duration,
            fault_rate=args.fault_rate,
            seed=args.seed,
            env=clean_env(out.parent, Path(args.source) if args.source else None),
            **profile,
        )
        row = {
            "profile": name,
            **{k: v for k, v in profile.items() if k != "settings"},
            "settings": profile["settings"],
            "wall_s": time.monotonic() - started,
            "valid_share": report.valid_share,
            "minimum_needed": report.minimum_needed,
            "failures": report.failures,
            "request_ratio": report.request_ratio,
            "report": asdict(report),
        }
        row["report"]["torn"] = len(report.torn)
        results.append(row)
        print(f"{name}: {report.summary()}", flush=True)
        command = " ".join([Path(sys.executable).name, *sys.argv])
        out.write_text(json.dumps({"machine": info, "command": command, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
