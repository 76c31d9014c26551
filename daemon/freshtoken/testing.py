"""A scriptable, fault-injecting OAuth 2.0 server for testing code that uses freshtoken (and for freshtoken's own tests).

Like `structlog.testing`, this is public API: `AuthServer` is the demo's server (freshtoken.demoserver) plus
scripted replies, random faults, a provider's rate limit, a request log with `wait_until`, Spotify's quirks,
and the revocation (RFC 7009), device authorization (RFC 8628) and protected-resource endpoints.

    from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer

    with AuthServer(token_lifetime=5) as server:
        refresh_token = server.issue_refresh_token(DEMO_CLIENT_ID, "scope")
        server.script(503)  # the next token request fails once
        ...                 # point your config's token_url at server.token_url

`python -m freshtoken.testing` runs one in the foreground for manual tries.
"""

from __future__ import annotations

import collections
import random
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from freshtoken.demoserver import (
    _HTML_TYPE,
    _JSON_TYPE,
    AUTHORIZE_PATH,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_PUBLIC_CLIENT_ID,
    TOKEN_PATH,
    DemoServer,
    RequestRecord,
    _Grant,
    _Handler,
    _html_response,
    _json_bytes,
    _json_response,
    _new_token,
    _OAuthError,
    _Response,
    _with_query,
)

__all__ = [
    "DEMO_CLIENT_ID",
    "DEMO_CLIENT_SECRET",
    "DEMO_PUBLIC_CLIENT_ID",
    "FAULT_KINDS",
    "AuthServer",
    "RequestRecord",
    "main",
]

REVOKE_PATH = "/revoke"
ME_PATH = "/v1/me"
DEVICE_PATH = "/device/code"  # RFC 8628 device authorization endpoint
VERIFY_PATH = "/device"  # the verification_uri shown to the user (approve with approve_device())
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

# What fault mode mixes, drawn uniformly: three 5xx, a 429 with Retry-After,
# a hang that ends in 504, and a connection reset without any answer.
FAULT_KINDS: tuple[str, ...] = ("500", "502", "503", "429", "hang", "reset")


@dataclass(frozen=True)
class _Reply:
    """A planned token-endpoint reply; status None means "answer normally"."""

    status: int | None = None
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    process: bool = False


@dataclass
class _Scripted:
    reply: _Reply
    times_left: int


@dataclass(eq=False)
class _DeviceCode:
    """One device authorization (RFC 8628): pending until approve_device() or deny_device(), then spent."""

    client_id: str
    scope: str
    user_code: str
    expires_at: float
    interval: float  # what the client must wait between polls; slow_down adds 5 s
    last_poll: float | None = None
    status: str = "pending"  # pending | approved | denied | spent


class AuthServer(DemoServer):
    """The demo's OAuth 2.0 server on loopback HTTP, scriptable and fault-injecting.

    Endpoints (relative to `.url`): `POST /api/token` (grants `refresh_token`,
    `client_credentials`, `authorization_code` with PKCE, and RFC 8628's device_code),
    `GET /authorize` (auto-approves with a 302 to the redirect URI), `POST /revoke`
    (RFC 7009), `POST /device/code` (RFC 8628 device authorization; the user's part is
    approve_device() / deny_device()) and `GET /v1/me` (a protected resource proving
    an access token works). Clients, rotation, reuse revocation and refresh-token
    expiry work as in DemoServer.

    Token-endpoint replies can be queued with `script()`; `strict=True` makes an
    unscripted token request answer 500 `{"error": "unscripted"}`;
    `fault_rate` mixes random FAULT_KINDS drawn from `rng`, where a hang lasts
    `fault_hang` seconds then answers 504 without touching any grant.
    `rate_limit` answers 429 (Retry-After `rate_limit_retry_after`) to token requests
    above that many a second, after one second's worth of burst, as a provider would.

    `spotify_quirks=True` answers `invalid_client` with 400 (spotify/web-api#1372)
    and uses Spotify's error descriptions.

    These attributes may be changed while the server runs: token_lifetime,
    rotate_refresh_tokens, revoke_grant_on_reuse, refresh_token_expires_in,
    deny_authorization, strict, fault_rate, fault_hang, fault_retry_after,
    token_type, expires_in_as_string, invalid_client_status.
    Counters (read-only): token_requests, refreshes_ok, tokens_issued,
    reuse_count, connections, faults (a Counter by kind), rate_limited,
    inflight and max_inflight (token requests from arrival, scripted delay
    included, to answer).
    """

    ROUTES: ClassVar[dict[str, str]] = {
        TOKEN_PATH: "POST",
        AUTHORIZE_PATH: "GET",
        REVOKE_PATH: "POST",
        ME_PATH: "GET",
        DEVICE_PATH: "POST",
        VERIFY_PATH: "GET",
    }

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token_lifetime: float = 20,
        rotate_refresh_tokens: bool = True,
        revoke_grant_on_reuse: bool = True,
        refresh_token_expires_in: int | None = None,
        clients: Mapping[str, str | None] | None = None,
        redirect_uris: Iterable[str] | None = None,
        deny_authorization: bool = False,
        spotify_quirks: bool = False,
        invalid_client_status: int | None = None,
        token_type: str = "Bearer",
        expires_in_as_string: bool = False,
        strict: bool = False,
        fault_rate: float = 0.0,
        fault_kinds: Iterable[str] = FAULT_KINDS,
        fault_hang: float = 30.0,
        fault_retry_after: int = 1,
        rate_limit: float = 0.0,
        rate_limit_retry_after: int = 1,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        request_log_size: int | None = 10_000,
        device_interval: float | None = 5,
        device_expires_in: float = 600,
        device_denial_error: str = "access_denied",
    ) -> None:
        """Configure the server; nothing listens until start().

        `redirect_uris` None accepts any http loopback IP redirect URI; otherwise
        a redirect URI must be listed exactly, or match a listed loopback URI
        registered without a port on any port (RFC 8252 §7.3).
        `request_log_size` bounds `requests` (None: unbounded).
        `device_interval` is the device-code poll interval the server asks for and enforces (a
        poll sooner gets slow_down and 5 s more); None leaves `interval` out of the answer (as
        node-oidc-provider does) and enforces RFC 8628's 5 s default. `device_denial_error` is
        what a denied device login answers (Microsoft says authorization_declined).
        """
        super().__init__(
            host=host,
            port=port,
            token_lifetime=token_lifetime,
            rotate_refresh_tokens=rotate_refresh_tokens,
            revoke_grant_on_reuse=revoke_grant_on_reuse,
            refresh_token_expires_in=refresh_token_expires_in,
            clients=clients,
            redirect_uris=redirect_uris,
            deny_authorization=deny_authorization,
            clock=clock,
        )
        self.spotify_quirks = spotify_quirks
        self.invalid_client_status = invalid_client_status if invalid_client_status is not None else 400 if spotify_quirks else 401
        self.token_type = token_type
        self.expires_in_as_string = expires_in_as_string
        self.strict = strict
        self.fault_rate = fault_rate
        self.fault_kinds: tuple[str, ...] = tuple(fault_kinds)
        unknown = set(self.fault_kinds) - set(FAULT_KINDS)
        if unknown or not self.fault_kinds:
            raise ValueError(f"fault_kinds must be a non-empty subset of {FAULT_KINDS}, got {unknown or 'nothing'}")
        self.fault_hang = fault_hang
        self.fault_retry_after = fault_retry_after
        self.rate_limit = rate_limit
        self.rate_limit_retry_after = rate_limit_retry_after
        self.rng = rng if rng is not None else random.Random()
        self.device_interval = device_interval
        self.device_expires_in = device_expires_in
        self.device_denial_error = device_denial_error

        self.faults: collections.Counter[str] = collections.Counter()
        self.rate_limited = 0
        self.inflight = 0
        self.max_inflight = 0

        self._bucket = rate_limit
        self._bucket_at = time.monotonic()
        self._device_codes: dict[str, _DeviceCode] = {}  # by device_code
        self._script: collections.deque[_Scripted] = collections.deque()
        self._log: collections.deque[RequestRecord] = collections.deque(maxlen=request_log_size)

    # ---------------------------------------------------------------- URLs

    @property
    def revoke_url(self) -> str:
        return self.url + REVOKE_PATH

    @property
    def me_url(self) -> str:
        return self.url + ME_PATH

    @property
    def device_authorization_url(self) -> str:
        return self.url + DEVICE_PATH

    @property
    def verification_uri(self) -> str:
        return self.url + VERIFY_PATH

    # ------------------------------------------------------ device codes (the user's part)

    def device_user_codes(self, status: str = "pending") -> list[str]:
        """The user codes of device authorizations in `status` (pending, approved, denied, spent), oldest first."""
        with self._lock:
            return [d.user_code for d in self._device_codes.values() if d.status == status]

    def approve_device(self, user_code: str) -> None:
        """Play the user who enters `user_code` and approves: the next poll gets the tokens."""
        self._decide_device(user_code, "approved")

    def deny_device(self, user_code: str) -> None:
        """Play the user who declines: the next poll gets `device_denial_error`."""
        self._decide_device(user_code, "denied")

    def _decide_device(self, user_code: str, status: str) -> None:
        with self._changed:
            for record in self._device_codes.values():
                if record.user_code == user_code and record.status == "pending":
                    record.status = status
                    self._changed.notify_all()
                    return
        raise ValueError(f"no pending device authorization with user code {user_code!r}")

    # ----------------------------------------------------------- scripting

    def script(
        self,
        status: int | None = None,
        *,
        json: Any = None,
        body: str | None = None,
        raw: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
        drop: bool = False,
        process: bool = False,
        times: int = 1,
    ) -> None:
        """Queue a reply for the next `times` token requests, after anything already queued.

        With `status` or a body (`json`, `body` as text/html, or `raw` bytes with
        no Content-Type unless given; status defaults to 200) the canned reply is
        sent and no grant changes. With neither, the request is handled normally
        after `delay` seconds, with `headers` added. `drop=True` resets the
        connection (after `delay`) without answering; with `process=True` the
        request is handled first, so e.g. a refresh token rotates and the client
        never learns the new one (a lost response).
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        bodies = [b for b in (json, body, raw) if b is not None]
        if len(bodies) > 1:
            raise ValueError("give at most one of json=, body=, raw=")
        canned = status is not None or bool(bodies)
        if drop and canned:
            raise ValueError("drop=True sends no answer: do not give a status or body")
        if process and not drop:
            raise ValueError("process=True only makes sense with drop=True")
        payload = b""
        base_headers: dict[str, str] = {}
        if json is not None:
            payload, base_headers = _json_bytes(json), {"Content-Type": _JSON_TYPE}
        elif body is not None:
            payload, base_headers = body.encode(), {"Content-Type": _HTML_TYPE}
        elif raw is not None:
            payload = raw
        reply = _Reply(
            status=(status if status is not None else 200) if canned else None,
            body=payload,
            headers={**base_headers, **(headers or {})},
            delay=delay,
            drop=drop,
            process=process,
        )
        with self._lock:
            self._script.append(_Scripted(reply, times))

    @property
    def pending_scripts(self) -> int:
        """How many scripted replies are still queued."""
        with self._lock:
            return sum(entry.times_left for entry in self._script)

    def clear_script(self) -> None:
        """Forget every queued reply."""
        with self._lock:
            self._script.clear()

    # ---------------------------------------------------------- inspection

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the request log, oldest first (bounded by request_log_size)."""
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def wait_until(self, predicate: Callable[[AuthServer], bool], timeout: float) -> bool:
        """Block until `predicate(self)` holds, re-checked as each request arrives and is answered; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    # ============================================================ internals

    def _say(self, standard: str, spotify: str) -> str:
        return spotify if self.spotify_quirks else standard

    def _invalid_client(self, why: str) -> _OAuthError:
        status = self.invalid_client_status
        headers = {"WWW-Authenticate": 'Basic realm="freshtoken-devserver"'} if status == 401 else {}
        return _OAuthError("invalid_client", self._say(why, "Invalid client"), status, headers)

    def _token_answer(self, client_id: str, scope: str, grant: _Grant | None, now: float) -> dict[str, Any]:
        answer = super()._token_answer(client_id, scope, grant, now)
        answer["token_type"] = self.token_type
        if self.expires_in_as_string:
            answer["expires_in"] = str(answer["expires_in"])
        return answer

    # ------------------------------------------------------ request log

    def _log_request(self, record: RequestRecord) -> None:
        with self._changed:
            self._log.append(record)
            self._changed.notify_all()

    def _answered(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _sleep(self, seconds: float) -> bool:
        """Wait, but wake at once on stop(); True if the wait ran its course."""
        return not self._stopping.wait(seconds) if seconds > 0 else not self._stopping.is_set()

    # ------------------------------------------------- token-request plan

    def _plan_token_request(self) -> _Reply | None:
        """Count a token request and decide how to treat it: a scripted or faulted reply, or None for normal."""
        with self._changed:
            self.token_requests += 1
            self._changed.notify_all()
            if self.rate_limit and self._over_limit():
                body = _json_bytes({"error": "too_many_requests", "error_description": "rate limit"})
                return _Reply(429, body, {"Content-Type": "application/json", "Retry-After": str(self.rate_limit_retry_after)})
            if self._script:
                entry = self._script[0]
                entry.times_left -= 1
                if entry.times_left == 0:
                    self._script.popleft()
                return entry.reply
            if self.strict:
                error = {"error": "unscripted", "error_description": "strict mode: no scripted reply queued"}
                return _Reply(500, _json_bytes(error), {"Content-Type": _JSON_TYPE})
            if self.fault_rate > 0 and self.rng.random() < self.fault_rate:
                kind = self.rng.choice(self.fault_kinds)
                self.faults[kind] += 1
                return self._fault_reply(kind)
            return None

    def _fault_reply(self, kind: str) -> _Reply:
        # Bodies differ on purpose: real outages come as JSON, proxy HTML and bare text.
        if kind == "500":
            body = _json_bytes({"error": "server_error", "error_description": "injected fault"})
            return _Reply(500, body, {"Content-Type": _JSON_TYPE})
        if kind == "502":
            return _Reply(502, _html_response(502, "502 Bad Gateway").body, {"Content-Type": _HTML_TYPE})
        if kind == "503":
            return _Reply(503, b"Service Unavailable\n", {"Content-Type": "text/plain"})
        if kind == "429":
            body = _json_bytes({"error": "too_many_requests", "error_description": "injected fault"})
            return _Reply(429, body, {"Content-Type": _JSON_TYPE, "Retry-After": str(self.fault_retry_after)})
        if kind == "hang":
            # Ends in 504 and not in a normal answer: a refresh committed after
            # the client gave up would rotate the token and later kill the grant.
            body = _html_response(504, "504 Gateway Timeout").body
            return _Reply(504, body, {"Content-Type": _HTML_TYPE}, delay=self.fault_hang)
        return _Reply(drop=True)

    # ------------------------------------------------------ token endpoint

    def _serve(self, handler: _Handler, record: RequestRecord) -> None:
        if record.path == ME_PATH:
            handler.send(self._me_endpoint(record.headers))
        elif record.path == REVOKE_PATH:
            handler.send(self._revoke_endpoint(record.headers, record.body))
        elif record.path == DEVICE_PATH:
            handler.send(self._device_endpoint(record.headers, record.body))
        elif record.path == VERIFY_PATH:
            handler.send(_html_response(200, "freshtoken devserver: device logins are approved by the test (approve_device)"))
        else:
            super()._serve(handler, record)

    def _token_request(self, handler: _Handler, record: RequestRecord) -> None:
        with self._lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            self._answer_token_request(handler, record)
        finally:
            with self._lock:
                self.inflight -= 1

    def _answer_token_request(self, handler: _Handler, record: RequestRecord) -> None:
        plan = self._plan_token_request()
        if plan is None:
            handler.send(self._token_endpoint(record.headers, record.body))
        elif not self._sleep(plan.delay):
            handler.reset()  # stop() during a hang or delay
        elif plan.drop:
            if plan.process:
                self._token_endpoint(record.headers, record.body)
            handler.reset()
        elif plan.status is None:
            response = self._token_endpoint(record.headers, record.body)
            response.headers.update(plan.headers)
            handler.send(response)
        else:
            handler.send(_Response(plan.status, plan.body, dict(plan.headers)))

    def _over_limit(self) -> bool:
        """Take one token from the rate-limit bucket; True when it is empty (the caller holds the lock)."""
        now = time.monotonic()
        self._bucket = min(self.rate_limit, self._bucket + (now - self._bucket_at) * self.rate_limit)
        self._bucket_at = now
        if self._bucket < 1:
            self.rate_limited += 1
            return True
        self._bucket -= 1
        return False

    def _grant(self, grant_type: str | None, client_id: str, form: Mapping[str, str]) -> dict[str, Any]:
        if grant_type == DEVICE_GRANT:
            return self._grant_device(client_id, form)
        return super()._grant(grant_type, client_id, form)

    def _grant_device(self, client_id: str, form: Mapping[str, str]) -> dict[str, Any]:
        """RFC 8628 §3.4-3.5: pending, slow_down (polled sooner than the interval), denied, expired, or the grant."""
        device_code = form.get("device_code")
        if not device_code:
            raise _OAuthError("invalid_request", "device_code is missing")
        with self._lock:
            now = self.clock()
            record = self._device_codes.get(device_code)
            if record is None or record.client_id != client_id or record.status == "spent":
                raise _OAuthError("invalid_grant", "device code unknown or already used")
            if now >= record.expires_at:
                raise _OAuthError("expired_token", "the device code has expired")
            too_soon = record.last_poll is not None and now - record.last_poll < record.interval
            record.last_poll = now
            if too_soon:
                record.interval += 5
                raise _OAuthError("slow_down", f"poll at most every {record.interval:g} s")
            if record.status == "pending":
                raise _OAuthError("authorization_pending", "the user has not approved yet")
            if record.status == "denied":
                record.status = "spent"
                raise _OAuthError(self.device_denial_error, "the user declined")
            record.status = "spent"
            grant = self._new_grant(client_id, record.scope, "device-user", now)
            answer = self._token_answer(client_id, record.scope, grant, now)
            self._add_refresh_fields(answer, grant, now)
            return answer

    def _device_endpoint(self, headers: Mapping[str, str], body: str) -> _Response:
        """RFC 8628 §3.1-3.2: a device code for an authenticated (or public) client."""
        try:
            form = dict(parse_qsl(body, keep_blank_values=True))
            client_id = self._authenticate(headers, form)
        except _OAuthError as e:
            return _json_response(e.status, {"error": e.error, "error_description": e.description}, e.headers)
        device_code = _new_token()
        letters = "BCDFGHJKLMNPQRSTVWXZ"  # RFC 8628 §6.1: no vowels, so no words; case-insensitive
        user_code = "".join(secrets.choice(letters) for _ in range(4)) + "-" + "".join(secrets.choice(letters) for _ in range(4))
        with self._lock:
            now = self.clock()
            self._device_codes = {k: v for k, v in self._device_codes.items() if v.expires_at > now - 3600}
            interval = self.device_interval if self.device_interval is not None else 5.0
            self._device_codes[device_code] = _DeviceCode(
                client_id, form.get("scope", ""), user_code, now + self.device_expires_in, interval
            )
        answer: dict[str, Any] = {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": self.verification_uri,
            "verification_uri_complete": _with_query(self.verification_uri, {"user_code": user_code}),
            "expires_in": int(self.device_expires_in) if float(self.device_expires_in).is_integer() else self.device_expires_in,
        }
        if self.device_interval is not None:
            answer["interval"] = self.device_interval
        return _json_response(200, answer, {"Cache-Control": "no-store"})

    def _revoke_endpoint(self, headers: Mapping[str, str], body: str) -> _Response:
        """RFC 7009: a refresh token revokes its grant, an access token only itself; unknown tokens are fine."""
        try:
            form = dict(parse_qsl(body, keep_blank_values=True))
            client_id = self._authenticate(headers, form)
            token = form.get("token")
            if not token:
                raise _OAuthError("invalid_request", "token is missing")
        except _OAuthError as e:
            return _json_response(e.status, {"error": e.error, "error_description": e.description}, e.headers)
        with self._lock:
            grant = self._refresh.get(token)
            if grant is not None and grant.client_id == client_id:
                grant.revoked = True
            access = self._access.get(token)
            if access is not None and access.client_id == client_id:
                access.revoked = True
        return _Response(200)

    def _me_endpoint(self, headers: Mapping[str, str]) -> _Response:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = token.strip()
        with self._lock:
            problem = "No token provided" if scheme.lower() != "bearer" or not token else self._access_problem(token)
            if problem is None:
                record = self._access[token]
                me = {
                    "id": record.grant.user if record.grant is not None else record.client_id,
                    "display_name": "freshtoken demo user",
                    "client_id": record.client_id,
                    "scope": record.scope,
                }
                return _json_response(200, me)
        # Spotify Web API's error shape, with RFC 6750's challenge header.
        challenge = 'Bearer realm="freshtoken-devserver", error="invalid_token"'
        return _json_response(401, {"error": {"status": 401, "message": problem}}, {"WWW-Authenticate": challenge})


def main(argv: Sequence[str] | None = None) -> int:
    """Run an AuthServer in the foreground, print its URLs and a seeded refresh token; Ctrl-C stops it."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(
        prog="python -m freshtoken.testing", description="A loopback OAuth 2.0 server to play with freshtoken."
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    parser.add_argument("--lifetime", type=float, default=20, help="access token lifetime in seconds (default 20)")
    parser.add_argument("--no-rotate", action="store_true", help="keep refresh tokens instead of rotating them")
    parser.add_argument("--refresh-token-expires-in", type=int, metavar="SECONDS")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of token requests that fail (0..1)")
    parser.add_argument("--seed", type=int, help="seed for fault mode")
    parser.add_argument("--spotify-quirks", action="store_true", help="answer invalid_client with 400, as Spotify")
    args = parser.parse_args(argv)

    server = AuthServer(
        port=args.port,
        token_lifetime=args.lifetime,
        rotate_refresh_tokens=not args.no_rotate,
        refresh_token_expires_in=args.refresh_token_expires_in,
        fault_rate=args.fault_rate,
        rng=random.Random(args.seed),
        spotify_quirks=args.spotify_quirks,
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly on SIGTERM too
    with server:
        refresh_token = server.issue_refresh_token(DEMO_CLIENT_ID, "user-read-private")
        print(
            f"freshtoken devserver on {server.url}\n"
            f"  token_url:     {server.token_url}\n"
            f"  authorize_url: {server.authorize_url}\n"
            f"  revoke_url:    {server.revoke_url}\n"
            f"  device_authorization_url: {server.device_authorization_url}\n"
            f"  resource:      {server.me_url}\n"
            f"  client_id:     {DEMO_CLIENT_ID}  client_secret: {DEMO_CLIENT_SECRET}\n"
            f"  public client: {DEMO_PUBLIC_CLIENT_ID}  (PKCE, no secret)\n"
            f"  refresh_token: {refresh_token}\n"
            f"try: curl -u {DEMO_CLIENT_ID}:{DEMO_CLIENT_SECRET} -d grant_type=refresh_token"
            f" -d refresh_token={refresh_token} {server.token_url}",
            flush=True,
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
