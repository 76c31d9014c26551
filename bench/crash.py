"""The full crash run: SIGKILL the daemon hundreds of times at random moments and count what it cost.

    python bench/crash.py                    # 300 kills, 5 accounts, 1 s tokens
    python bench/crash.py --kills 1000 --seed 7

The loop is bench/crashkit.py (tests/test_crash.py runs it with 50 kills):
an in-process server that rotates refresh tokens and revokes the grant on
reuse, a SIGKILL at a seeded random moment of every daemon life, restart at
once, and after every kill a check of each account against the server's
request log. The report separates kills that landed in the lost-response
window (the server rotated, our state had not been renamed into place) from every
other outcome, which must cost nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crashkit import CrashLoop  # noqa: E402
from harness import clean_env, machine  # noqa: E402

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=300)
    parser.add_argument("--accounts", type=int, default=5)
    parser.add_argument("--lifetime", type=float, default=1.0, help="access-token lifetime in seconds (default 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-delay", type=float, default=0.3, help="kill up to this long after the first request (default 0.3)")
    parser.add_argument("--source", default="", help="a daemon/ dir to run freshtoken from (default: the installed one)")
    parser.add_argument("--out", default=str(HERE / "out" / "crash.json"))
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    info = machine()
    if args.source:
        info["source"] = args.source
    print(f"machine {info}", flush=True)
    workdir = out.parent / "crash-run"
    shutil.rmtree(workdir, ignore_errors=True)
    with CrashLoop(
        workdir,
        accounts=args.accounts,
        token_lifetime=args.lifetime,
        seed=args.seed,
        max_delay=args.max_delay,
        env=clean_env(out.parent, Path(args.source) if args.source else None),
    ) as loop:
        report = loop.run(args.kills)
    print(report.summary(), flush=True)
    doc = {
        "machine": info,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "report": asdict(report),
        "window_hits": len(report.window),
        "grants_lost_outside_window": report.grants_lost_outside_window,
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")
    failed = report.reuse_count or report.grants_lost_outside_window or report.torn or report.early_exits
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
