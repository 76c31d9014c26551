"""A freshtoken.testing.AuthServer in its own process for the benchmarks, so its CPU is never counted as the daemon's.

    python bench/authserver.py --accounts 1000 --lifetime 120 --tokens-out seeds.json

Seeds one grant per account, writes their refresh tokens to --tokens-out,
prints one JSON line ({"url", "token_url", "client_id", "client_secret"}) on
stdout and then answers one command per stdin line, one JSON line each:

    stats          counters, the most token requests ever in flight at once, 429s from --rate-limit
    valid TOKEN    {"valid": true|false}: does this access token work right now
    quit (or EOF)  stop
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any

from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, FAULT_KINDS, AuthServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, required=True)
    parser.add_argument("--lifetime", type=float, default=120.0)
    parser.add_argument("--tokens-out", required=True)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-hang", type=float, default=30.0)
    parser.add_argument("--fault-kinds", default=",".join(FAULT_KINDS))
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each token request takes (a provider's latency)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate-limit", type=float, default=0.0, help="answer 429 above this many token requests a second")
    parser.add_argument("--rate-limit-retry-after", type=int, default=1, help="the Retry-After of those 429s (seconds)")
    args = parser.parse_args(argv)

    server = AuthServer(
        rate_limit=args.rate_limit,
        rate_limit_retry_after=args.rate_limit_retry_after,
        token_lifetime=args.lifetime,
        fault_rate=args.fault_rate,
        fault_hang=args.fault_hang,
        fault_kinds=tuple(args.fault_kinds.split(",")),
        rng=random.Random(args.seed),  # noqa: S311 - seeded simulation, not secrets
        request_log_size=1000,
    )
    with server:
        if args.delay:
            server.script(delay=args.delay, times=10**9)
        tokens = [server.issue_refresh_token(DEMO_CLIENT_ID, "bench") for _ in range(args.accounts)]
        with open(args.tokens_out, "w") as out:
            json.dump(tokens, out)
        print(
            json.dumps(
                {"url": server.url, "token_url": server.token_url, "client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET}
            ),
            flush=True,
        )
        for line in sys.stdin:
            command, _, arg = line.strip().partition(" ")
            if command == "quit":
                break
            if command == "valid":
                answer: dict[str, Any] = {"valid": server.is_valid_access_token(arg)}
            elif command == "stats":
                answer = {
                    "token_requests": server.token_requests,
                    "refreshes_ok": server.refreshes_ok,
                    "reuse_count": server.reuse_count,
                    "connections": server.connections,
                    "faults": dict(server.faults),
                    "max_inflight": server.max_inflight,
                    "rate_limited": server.rate_limited,
                }
            else:
                answer = {"error": f"unknown command {command!r}"}
            print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
