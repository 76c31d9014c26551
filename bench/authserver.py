"""A devserver.AuthServer in its own process for the benchmarks, so its CPU is never counted as the daemon's.

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
import threading
import time
from typing import Any

from freshtoken.devserver import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, FAULT_KINDS, AuthServer, _json_bytes, _Reply


class CountingAuthServer(AuthServer):
    """An AuthServer that also counts token requests in flight: from arrival (and any scripted delay) to answer."""

    def __init__(self, *, rate_limit: float = 0.0, rate_limit_retry_after: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rate_limit = rate_limit
        self.rate_limit_retry_after = rate_limit_retry_after
        self.rate_limited = 0
        self._bucket = rate_limit  # a provider's own limit: one second's worth of burst, then `rate_limit` a second
        self._bucket_at = time.monotonic()
        self._inflight_lock = threading.Lock()
        self._mine = threading.local()  # each connection has its own handler thread
        self.inflight = 0
        self.max_inflight = 0

    def _plan_token_request(self) -> Any:
        with self._inflight_lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        self._mine.counted = True
        if self.rate_limit and self._over_limit():
            with self._changed:
                self.token_requests += 1
                self._changed.notify_all()
            body = _json_bytes({"error": "too_many_requests", "error_description": "rate limit"})
            return _Reply(429, body, {"Content-Type": "application/json", "Retry-After": str(self.rate_limit_retry_after)})
        return super()._plan_token_request()

    def _over_limit(self) -> bool:
        with self._inflight_lock:
            now = time.monotonic()
            self._bucket = min(self.rate_limit, self._bucket + (now - self._bucket_at) * self.rate_limit)
            self._bucket_at = now
            if self._bucket < 1:
                self.rate_limited += 1
                return True
            self._bucket -= 1
            return False

    def _answered(self) -> None:
        if getattr(self._mine, "counted", False):
            self._mine.counted = False
            with self._inflight_lock:
                self.inflight -= 1
        super()._answered()


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

    server = CountingAuthServer(
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
