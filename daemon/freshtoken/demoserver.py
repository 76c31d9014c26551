"""The loopback OAuth 2.0 authorization server behind `freshtoken demo`.

Stdlib only; grants live in memory. It speaks what the demo and a first try need: the token endpoint
(refresh_token with rotation and reuse revocation, client_credentials, authorization_code with PKCE) and
the authorize page. `freshtoken.testing.AuthServer` builds on it with scripting, faults, a request log and more.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import http.server
import json
import re
import secrets
import socket
import socketserver
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

__all__ = ["DEMO_CLIENT_ID", "DEMO_CLIENT_SECRET", "DEMO_PUBLIC_CLIENT_ID", "DemoServer", "RequestRecord"]

DEMO_CLIENT_ID = "freshtoken-demo"
DEMO_CLIENT_SECRET = "freshtoken-demo-secret"
DEMO_PUBLIC_CLIENT_ID = "freshtoken-demo-public"

TOKEN_PATH = "/api/token"
AUTHORIZE_PATH = "/authorize"

CODE_LIFETIME = 600.0  # RFC 6749 §4.1.2 recommends at most 10 minutes
# Consumed refresh tokens are remembered per grant so reuse can be detected;
# only the newest few, so a benchmark rotating for hours stays bounded.
CONSUMED_TOKENS_KEPT = 64
_MAX_BODY = 1 << 20
_PKCE_RE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")  # RFC 7636 §4.1 (and S256 challenges)
_FORM_TYPE = "application/x-www-form-urlencoded"
_JSON_TYPE = "application/json;charset=UTF-8"
_HTML_TYPE = "text/html; charset=utf-8"
_MISSING = object()


@dataclass
class RequestRecord:
    """One request as the server received it.

    `headers` has lower-cased names; `form` is the parsed form body (empty unless
    form-encoded); `time` is the server clock on arrival; `status` is filled in
    as the answer is sent and stays None while pending or when the connection was dropped.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: str
    form: dict[str, str]
    time: float
    status: int | None = None


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(eq=False)
class _Grant:
    """One authorization: a chain of refresh tokens of which only the newest is live."""

    client_id: str
    scope: str
    user: str
    refresh_token: str
    refresh_expires_at: float | None
    revoked: bool = False
    consumed: collections.deque[str] = field(default_factory=collections.deque)


@dataclass(eq=False)
class _AccessToken:
    client_id: str
    scope: str
    expires_at: float
    grant: _Grant | None  # None for client_credentials
    revoked: bool = False


@dataclass(eq=False)
class _Code:
    client_id: str
    redirect_uri: str
    scope: str
    code_challenge: str | None
    code_challenge_method: str | None
    expires_at: float
    used: bool = False
    grant: _Grant | None = None


class _OAuthError(Exception):
    """An RFC 6749 §5.2 error answer."""

    def __init__(self, error: str, description: str, status: int = 400, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.headers = dict(headers or {})


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


def _json_response(status: int, value: Any, headers: Mapping[str, str] | None = None) -> _Response:
    return _Response(status, _json_bytes(value), {"Content-Type": _JSON_TYPE, **(headers or {})})


def _html_response(status: int, text: str, headers: Mapping[str, str] | None = None) -> _Response:
    page = f"<html><head><title>{text}</title></head><body><h1>{text}</h1></body></html>\n"
    return _Response(status, page.encode(), {"Content-Type": _HTML_TYPE, **(headers or {})})


def _new_token() -> str:
    return secrets.token_urlsafe(32)


def _is_loopback_host(host: str | None) -> bool:
    # `localhost` is left out on purpose: Spotify refuses it and RFC 8252 §8.3 advises against it.
    return host in ("127.0.0.1", "::1")


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _with_query(uri: str, params: Mapping[str, str | None]) -> str:
    parts = urlsplit(uri)
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


class DemoServer:
    """An in-memory OAuth 2.0 authorization server on loopback HTTP, as small as `freshtoken demo` needs.

    Endpoints (relative to `.url`): `POST /api/token` (grants `refresh_token`,
    `client_credentials` and `authorization_code` with PKCE) and `GET /authorize`
    (auto-approves with a 302 to the redirect URI).

    Clients authenticate with HTTP Basic (id and secret form-urlencoded before
    base64, RFC 6749 §2.3.1), with `client_id`/`client_secret` in the body, or as
    public clients with `client_id` alone (secret None in `clients`). By default
    `clients` holds DEMO_CLIENT_ID/DEMO_CLIENT_SECRET and the public
    DEMO_PUBLIC_CLIENT_ID.

    Refresh tokens rotate by default; presenting a consumed one answers
    `invalid_grant`, counts in `reuse_count` and revokes the whole grant
    (RFC 9700 §4.14.2). With rotation off, refresh answers carry no
    `refresh_token` and the client keeps its old one. `refresh_token_expires_in`
    makes refresh tokens die that many seconds after the grant was created
    (rotation does not extend it, as at Spotify) and adds the remaining seconds
    to token answers. All expiry follows `clock`.

    These attributes may be changed while the server runs: token_lifetime,
    rotate_refresh_tokens, revoke_grant_on_reuse, refresh_token_expires_in,
    deny_authorization.
    Counters (read-only): token_requests, refreshes_ok, tokens_issued,
    reuse_count, connections.
    """

    # path -> the one method it answers; subclasses add theirs
    ROUTES: ClassVar[dict[str, str]] = {TOKEN_PATH: "POST", AUTHORIZE_PATH: "GET"}

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
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Configure the server; nothing listens until start().

        `redirect_uris` None accepts any http loopback IP redirect URI; otherwise
        a redirect URI must be listed exactly, or match a listed loopback URI
        registered without a port on any port (RFC 8252 §7.3).
        """
        self.host = host
        self.port = port
        self.token_lifetime = token_lifetime
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.revoke_grant_on_reuse = revoke_grant_on_reuse
        self.refresh_token_expires_in = refresh_token_expires_in
        self.clients: dict[str, str | None] = dict(
            clients if clients is not None else {DEMO_CLIENT_ID: DEMO_CLIENT_SECRET, DEMO_PUBLIC_CLIENT_ID: None}
        )
        self.redirect_uris: list[str] | None = None if redirect_uris is None else list(redirect_uris)
        self.deny_authorization = deny_authorization
        self.clock = clock

        self.token_requests = 0
        self.refreshes_ok = 0
        self.tokens_issued = 0
        self.reuse_count = 0
        self.connections = 0

        # One re-entrant lock guards all state; the condition lets subclasses
        # wake waiters as requests arrive and are answered.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._refresh: dict[str, _Grant] = {}  # live and recently consumed tokens
        self._access: dict[str, _AccessToken] = {}
        self._prune_access_at = 4096
        self._codes: dict[str, _Code] = {}
        self._open_sockets: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Bind and serve in a daemon thread; returns self.

        After stop(), start() listens on the same port again with all grants
        kept, so a test can stage an outage that ends.
        """
        if self._httpd is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._stopping.clear()
        self._httpd = _HTTPServer((self.host, self.port), _Handler, self)
        self.port = self._httpd.server_address[1]
        # A short poll interval keeps stop() prompt.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="freshtoken-devserver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, wake any hang or delay, and close every open connection. Idempotent."""
        self._stopping.set()
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        # Keep-alive connections would otherwise still be answered by their
        # handler threads after stop(), hiding an "outage" from the client.
        with self._lock:
            sockets = list(self._open_sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- URLs

    @property
    def url(self) -> str:
        """Base URL, as http://127.0.0.1:PORT (only once started)."""
        if self._httpd is None and self.port == 0:
            raise RuntimeError(f"{type(self).__name__} not started: no port yet")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    @property
    def authorize_url(self) -> str:
        return self.url + AUTHORIZE_PATH

    # ------------------------------------------------------ grants (direct)

    def issue_refresh_token(self, client_id: str = DEMO_CLIENT_ID, scope: str = "", *, user: str = "demo-user") -> str:
        """Create a grant as if `user` had logged in, and return its refresh token."""
        if client_id not in self.clients:
            raise ValueError(f"unknown client_id {client_id!r}")
        with self._lock:
            return self._new_grant(client_id, scope, user, self.clock()).refresh_token

    def current_refresh_token(self, refresh_token: str) -> str | None:
        """The live refresh token of the grant that `refresh_token` (live or consumed) belongs to; None if revoked or unknown."""
        with self._lock:
            grant = self._refresh.get(refresh_token)
            return None if grant is None or grant.revoked else grant.refresh_token

    def revoke_grant(self, refresh_token: str) -> bool:
        """Revoke the whole grant of a refresh token (live or consumed) and its access tokens; False if unknown."""
        with self._lock:
            grant = self._refresh.get(refresh_token)
            if grant is None:
                return False
            grant.revoked = True
            return True

    def is_valid_access_token(self, token: str) -> bool:
        """True when `token` was issued here, is not revoked and has not expired by the server clock."""
        with self._lock:
            return self._access_problem(token) is None

    # ----------------------------------------------------------- scripting
    # ============================================================ internals

    def _say(self, standard: str, spotify: str) -> str:
        """An error description: the standard one here; a subclass may speak a provider's dialect."""
        return standard

    def _new_grant(self, client_id: str, scope: str, user: str, now: float) -> _Grant:
        lifetime = self.refresh_token_expires_in
        grant = _Grant(client_id, scope, user, _new_token(), None if lifetime is None else now + lifetime)
        self._refresh[grant.refresh_token] = grant
        return grant

    def _rotate(self, grant: _Grant) -> None:
        grant.consumed.append(grant.refresh_token)
        if len(grant.consumed) > CONSUMED_TOKENS_KEPT:
            del self._refresh[grant.consumed.popleft()]
        grant.refresh_token = _new_token()
        self._refresh[grant.refresh_token] = grant

    def _access_problem(self, token: str) -> str | None:
        """Why `token` cannot be used now (Spotify's wording), or None if it can."""
        record = self._access.get(token)
        if record is None or record.revoked or (record.grant is not None and record.grant.revoked):
            return "Invalid access token"
        if self.clock() >= record.expires_at:
            return "The access token expired"
        return None

    def _token_answer(self, client_id: str, scope: str, grant: _Grant | None, now: float) -> dict[str, Any]:
        token = _new_token()
        lifetime = self.token_lifetime
        self._access[token] = _AccessToken(client_id, scope, now + lifetime, grant)
        if len(self._access) > self._prune_access_at:
            # Amortised cleanup so long benchmarks do not accumulate dead tokens.
            self._access = {k: v for k, v in self._access.items() if v.expires_at > now}
            self._prune_access_at = max(4096, 2 * len(self._access))
        self.tokens_issued += 1
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(lifetime) if float(lifetime).is_integer() else lifetime,
            "scope": scope,
        }

    def _add_refresh_fields(self, answer: dict[str, Any], grant: _Grant, now: float) -> None:
        answer["refresh_token"] = grant.refresh_token
        if grant.refresh_expires_at is not None:
            answer["refresh_token_expires_in"] = max(0, int(grant.refresh_expires_at - now))

    # ------------------------------------------------------ request log

    # ------------------------------------------------ hooks for subclasses

    def _log_request(self, record: RequestRecord) -> None:
        """A request arrived (parsed, not yet answered)."""

    def _answered(self) -> None:
        """The request handled last by this thread has been answered (or dropped)."""

    def _track(self, sock: socket.socket, is_open: bool) -> None:
        with self._lock:
            if not is_open:
                self._open_sockets.discard(sock)
                return
            self.connections += 1
            self._open_sockets.add(sock)
        if self._stopping.is_set():  # accepted while stop() was closing the others
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _serve(self, handler: _Handler, record: RequestRecord) -> None:
        """Answer a request to one of ROUTES with the right method."""
        if record.path == AUTHORIZE_PATH:
            handler.send(self._authorize_endpoint(record.query))
        else:
            self._token_request(handler, record)

    def _token_request(self, handler: _Handler, record: RequestRecord) -> None:
        with self._changed:
            self.token_requests += 1
            self._changed.notify_all()
        handler.send(self._token_endpoint(record.headers, record.body))

    # ------------------------------------------------------ token endpoint

    def _token_endpoint(self, headers: Mapping[str, str], body: str) -> _Response:
        try:
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != _FORM_TYPE:
                raise _OAuthError("invalid_request", f"Content-Type must be {_FORM_TYPE}")
            pairs = parse_qsl(body, keep_blank_values=True)
            form = dict(pairs)
            if len(form) != len(pairs):
                raise _OAuthError("invalid_request", "a parameter was sent more than once")
            client_id = self._authenticate(headers, form)
            answer = self._grant(form.get("grant_type"), client_id, form)
        except _OAuthError as e:
            error = {"error": e.error, "error_description": e.description}
            return _json_response(e.status, error, {"Cache-Control": "no-store", **e.headers})
        return _json_response(200, answer, {"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _grant(self, grant_type: str | None, client_id: str, form: Mapping[str, str]) -> dict[str, Any]:
        """The token answer for `grant_type`, or _OAuthError."""
        if grant_type == "refresh_token":
            return self._grant_refresh(client_id, form)
        if grant_type == "authorization_code":
            return self._grant_code(client_id, form)
        if grant_type == "client_credentials":
            return self._grant_client_credentials(client_id, form)
        if grant_type is None:
            raise _OAuthError("invalid_request", "grant_type is missing")
        raise _OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")

    def _authenticate(self, headers: Mapping[str, str], form: Mapping[str, str]) -> str:
        """Return the authenticated client_id or raise invalid_client (RFC 6749 §2.3)."""
        authorization = headers.get("authorization")
        secret: str | None
        body_id, body_secret = form.get("client_id"), form.get("client_secret")
        if authorization is not None:
            scheme, _, credentials = authorization.partition(" ")
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            raw_id, colon, raw_secret = decoded.partition(":")
            if scheme.lower() != "basic" or not colon:
                raise self._invalid_client("malformed Authorization header")
            if body_secret is not None:
                raise _OAuthError("invalid_request", "use only one client authentication method")
            # §2.3.1: both halves were form-urlencoded before base64.
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
            if body_id is not None and body_id != client_id:
                raise self._invalid_client("client_id in the body differs from the Authorization header")
        elif body_id is not None:
            client_id, secret = body_id, body_secret
        else:
            raise self._invalid_client("no client authentication")
        expected = self.clients.get(client_id, _MISSING)
        if expected is _MISSING:
            raise self._invalid_client("unknown client")
        if expected is None:
            if secret is not None:  # a public client has no secret to present
                raise self._invalid_client("public client must not send a secret")
        elif secret is None or not hmac.compare_digest(secret.encode(), str(expected).encode()):
            raise self._invalid_client("wrong client secret")
        return client_id

    def _invalid_client(self, why: str) -> _OAuthError:
        return _OAuthError("invalid_client", why, 401, {"WWW-Authenticate": 'Basic realm="freshtoken-devserver"'})

    def _grant_refresh(self, client_id: str, form: Mapping[str, str]) -> dict[str, Any]:
        token = form.get("refresh_token")
        if not token:
            raise _OAuthError("invalid_request", "refresh_token is missing")
        with self._lock:
            now = self.clock()
            grant = self._refresh.get(token)
            if grant is None or grant.client_id != client_id:
                raise _OAuthError("invalid_grant", self._say("refresh token unknown", "Invalid refresh token"))
            if token != grant.refresh_token:
                self.reuse_count += 1
                if self.revoke_grant_on_reuse:
                    grant.revoked = True
                    why = "refresh token already used: grant revoked (RFC 9700 §4.14.2)"
                else:
                    why = "refresh token already used"
                raise _OAuthError("invalid_grant", self._say(why, "Refresh token revoked"))
            if grant.revoked:
                raise _OAuthError("invalid_grant", self._say("grant revoked", "Refresh token revoked"))
            if grant.refresh_expires_at is not None and now >= grant.refresh_expires_at:
                raise _OAuthError("invalid_grant", self._say("refresh token expired", "Refresh token expired"))
            scope = self._narrow_scope(grant.scope, form.get("scope"))
            answer = self._token_answer(client_id, scope, grant, now)
            if self.rotate_refresh_tokens:
                self._rotate(grant)
                self._add_refresh_fields(answer, grant, now)
            elif grant.refresh_expires_at is not None:
                answer["refresh_token_expires_in"] = max(0, int(grant.refresh_expires_at - now))
            self.refreshes_ok += 1
            return answer

    @staticmethod
    def _narrow_scope(granted: str, requested: str | None) -> str:
        if not requested:
            return granted
        if not set(requested.split()) <= set(granted.split()):
            raise _OAuthError("invalid_scope", "requested scope exceeds the granted scope")
        return requested

    def _grant_code(self, client_id: str, form: Mapping[str, str]) -> dict[str, Any]:
        code = form.get("code")
        if not code:
            raise _OAuthError("invalid_request", "code is missing")
        verifier = form.get("code_verifier")
        invalid_code = self._say("authorization code unknown, expired or already used", "Invalid authorization code")
        with self._lock:
            now = self.clock()
            record = self._codes.get(code)
            if record is None or record.client_id != client_id:
                raise _OAuthError("invalid_grant", invalid_code)
            if record.used:
                # RFC 6749 §4.1.2: a replayed code revokes what it already granted.
                if record.grant is not None:
                    record.grant.revoked = True
                raise _OAuthError("invalid_grant", invalid_code)
            record.used = True  # burnt by any attempt, successful or not
            if now >= record.expires_at:
                raise _OAuthError("invalid_grant", invalid_code)
            if form.get("redirect_uri") != record.redirect_uri:
                raise _OAuthError(
                    "invalid_grant",
                    self._say("redirect_uri differs from the authorization request", "Invalid redirect URI"),
                )
            if record.code_challenge is None:
                if verifier is not None:  # RFC 9700 §2.1.1: refuse a PKCE downgrade
                    raise _OAuthError("invalid_grant", "code_verifier sent but no code_challenge was")
            else:
                if verifier is None or not _PKCE_RE.fullmatch(verifier):
                    raise _OAuthError("invalid_grant", "code_verifier missing or malformed (RFC 7636 §4.1)")
                computed = _s256(verifier) if record.code_challenge_method == "S256" else verifier
                if not hmac.compare_digest(computed, record.code_challenge):
                    raise _OAuthError("invalid_grant", self._say("code_verifier does not match", "code_verifier was incorrect"))
            grant = self._new_grant(client_id, record.scope, "demo-user", now)
            record.grant = grant
            answer = self._token_answer(client_id, record.scope, grant, now)
            self._add_refresh_fields(answer, grant, now)
            return answer

    def _grant_client_credentials(self, client_id: str, form: Mapping[str, str]) -> dict[str, Any]:
        if self.clients[client_id] is None:
            raise _OAuthError("unauthorized_client", "a public client cannot use client_credentials")
        with self._lock:
            return self._token_answer(client_id, form.get("scope", ""), None, self.clock())

    # --------------------------------------------------- other endpoints

    def _authorize_endpoint(self, query: Mapping[str, str]) -> _Response:
        client_id = query.get("client_id", "")
        redirect_uri = query.get("redirect_uri", "")
        # Errors about the client or redirect URI are shown, never redirected
        # (RFC 6749 §4.1.2.1): the redirect target is not trusted yet.
        if client_id not in self.clients:
            return _html_response(400, "INVALID_CLIENT: Invalid client")
        if not self._redirect_allowed(redirect_uri):
            return _html_response(400, "INVALID_CLIENT: Invalid redirect URI")
        state = query.get("state")

        def bounce(**params: str) -> _Response:
            return _Response(302, b"", {"Location": _with_query(redirect_uri, {**params, "state": state})})

        if query.get("response_type") != "code":
            return bounce(error="unsupported_response_type")
        challenge = query.get("code_challenge")
        method = query.get("code_challenge_method") or ("plain" if challenge else None)
        if challenge is not None:
            if method not in ("S256", "plain") or not _PKCE_RE.fullmatch(challenge):
                return bounce(error="invalid_request", error_description="bad code_challenge or method")
        elif self.clients[client_id] is None:
            return bounce(error="invalid_request", error_description="PKCE is required for public clients")
        if self.deny_authorization:
            return bounce(error="access_denied")
        code = _new_token()
        with self._lock:
            now = self.clock()
            # Drop stale codes here so a long run of logins stays bounded.
            self._codes = {k: v for k, v in self._codes.items() if v.expires_at > now}
            self._codes[code] = _Code(client_id, redirect_uri, query.get("scope", ""), challenge, method, now + CODE_LIFETIME)
        return bounce(code=code)

    def _redirect_allowed(self, uri: str) -> bool:
        try:
            parts = urlsplit(uri)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            return False
        if not parts.scheme or parts.fragment:
            return False
        if self.redirect_uris is None:
            return parts.scheme == "http" and _is_loopback_host(parts.hostname)
        for registered in self.redirect_uris:
            if uri == registered:
                return True
            r = urlsplit(registered)
            if (
                r.port is None
                and _is_loopback_host(r.hostname)
                and (r.scheme, r.hostname, r.path, r.query) == (parts.scheme, parts.hostname, parts.path, parts.query)
            ):
                return True
        return False


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for a hanging handler
    request_queue_size = 1024  # benchmarks open many connections at once

    def __init__(self, address: tuple[str, int], handler: type[_Handler], auth: DemoServer) -> None:
        self.auth = auth
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() would look up the host's FQDN, which can
        # stall on a machine with slow DNS; nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or vanish mid-answer are normal here, not news.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.1 with Content-Length everywhere, so clients can keep connections alive.
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle on, the body waits for
    # the client's delayed ACK (~40 ms a request on Linux).
    disable_nagle_algorithm = True
    timeout = 60  # an idle keep-alive connection must not pin a thread forever
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.auth._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.auth._track(self.connection, False)

    def version_string(self) -> str:
        return "freshtoken-devserver"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests and the demo want a quiet stderr; `requests` is the log

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        auth = self.server.auth
        self._record: RequestRecord | None = None
        target = urlsplit(self.path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        length = int(headers.get("content-length") or 0)
        if length > _MAX_BODY:
            self.close_connection = True
            self.send(_json_response(413, {"error": "invalid_request", "error_description": "body too large"}))
            return
        body = self.rfile.read(length).decode("utf-8", errors="replace") if length else ""
        is_form = headers.get("content-type", "").split(";")[0].strip().lower() == _FORM_TYPE
        record = self._record = RequestRecord(
            method=self.command,
            path=target.path,
            query=dict(parse_qsl(target.query, keep_blank_values=True)),
            headers=headers,
            body=body,
            form=dict(parse_qsl(body, keep_blank_values=True)) if is_form else {},
            time=auth.clock(),
        )
        auth._log_request(record)
        try:
            allowed = auth.ROUTES.get(record.path)
            if allowed is None:
                self.send(_json_response(404, {"error": "not_found"}))
            elif record.method != allowed:
                self.send(_json_response(405, {"error": "method_not_allowed"}, {"Allow": allowed}))
            else:
                auth._serve(self, record)
        except (ConnectionError, TimeoutError):
            # The client gave up (e.g. its read timeout during a hang) or vanished.
            self.close_connection = True
        except Exception:  # noqa: BLE001 - any bug, reported below
            # A devserver bug must be loud: traceback on stderr and a 500 the test sees.
            traceback.print_exc()
            self.send(_json_response(500, {"error": "server_error", "error_description": "devserver bug"}))
        finally:
            auth._answered()

    def send(self, response: _Response) -> None:
        if self._record is not None:
            # Recorded before writing, so a client that has its answer also sees it logged.
            self._record.status = response.status
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def reset(self) -> None:
        """Close the connection with a TCP RST and no answer."""
        self.close_connection = True
        try:
            # Linger 0 turns close() into a reset; the real close happens when
            # finish() releases the socket's file objects.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
