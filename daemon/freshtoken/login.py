"""`freshtoken login` and `logout`.

login: authorization code + PKCE + state, through a loopback listener or a pasted URL; or the
device authorization grant (RFC 8628, `--device`). Builds the authorization request locally,
waits for exactly one callback (or polls for the device code), and hands the answer to
Refresher.adopt. Nothing is stored unless the grant succeeds.

logout: revoke the refresh token (RFC 7009) where the provider can, delete the state and the token files.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import html
import http.server
import io
import logging
import os
import secrets
import select
import shlex
import socket
import socketserver
import sys
import threading
import time
import webbrowser
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlsplit

from freshtoken import outputs
from freshtoken.dirs import token_dir_candidates
from freshtoken.durations import humanize
from freshtoken.errors import (
    ConfigError,
    FreshtokenError,
    InvalidGrant,
    LoginFailed,
    TemporaryError,
    TokenUnavailable,
    UsageError,
)
from freshtoken.getcmd import find_token_file
from freshtoken.model import USER_SEPARATOR, Account, AccountState, ClientAuth, Config, Grant, TokenResponse
from freshtoken.oauth import DeviceCode, TokenClient, authorize_url, clean_server_text, make_pkce
from freshtoken.providers import PRESETS
from freshtoken.refresh import Refresher, apply_seed
from freshtoken.statestore import open_store
from freshtoken.units import shown_command

log = logging.getLogger(__name__)

LOOPBACK_IPS = ("127.0.0.1", "::1")
# Each connection has its own thread; these bound how long one may hold it.
IDLE_CONNECTION_TIMEOUT = 3.0  # silence between two reads (a browser's speculative pre-connection sends nothing)
REQUEST_DEADLINE = 10.0  # for the whole request head, however it trickles in
MAX_HEAD = 16384  # a callback URL with its headers is a few KB
SCOPE_LIMIT = 500  # the granted scopes as shown and logged; providers with many scopes stay readable
DEVICE_INTERVAL = 5.0  # RFC 8628 §3.2: the poll interval when the server gives none (node-oidc-provider gives none)
SLOW_DOWN_STEP = 5.0  # RFC 8628 §3.5: slow_down adds 5 s to the interval, for this and every later poll
MAX_TEMPORARY_FAILURES = 3  # consecutive network errors while polling before the device login gives up


@dataclass(frozen=True, slots=True)
class Loopback:
    """Where the listener binds, and the path the provider redirects to."""

    host: str  # as written in redirect_uri (127.0.0.1, ::1 or localhost)
    bind: str  # the IP literal actually bound
    port: int | None  # None: any free port (RFC 8252 §7.3)
    path: str


def loopback_target(redirect_uri: str) -> Loopback | None:
    """The listener for an http loopback redirect_uri; None when freshtoken cannot listen there."""
    parts = urlsplit(redirect_uri)
    try:
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if parts.scheme != "http" or host not in (*LOOPBACK_IPS, "localhost"):
        return None
    return Loopback(host=host, bind="127.0.0.1" if host == "localhost" else host, port=port, path=parts.path or "/")


def with_port(redirect_uri: str, port: int) -> str:
    """redirect_uri with `port` put into its authority; path, trailing slash and query stay exactly as written."""
    scheme, rest = redirect_uri.split("://", 1)
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    return f"{scheme}://{authority}:{port}{tail}"


def parse_pasted(text: str) -> dict[str, str]:
    """The callback parameters from what the user pasted: the whole redirected URL, its query, or a bare code."""
    text = text.strip().strip("'\"<>").strip()
    if not text:
        raise LoginFailed("nothing was pasted; paste the address your browser ended on (or just the code)")
    if "://" in text or text.startswith(("?", "/")) or "=" in text:
        query = urlsplit(text).query if ("://" in text or text.startswith("/")) else text.lstrip("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        if "code" in params or "error" in params:
            return params
        if "response_type" in params or "client_id" in params:
            raise LoginFailed("that is the authorization URL itself: open it, approve, then paste the address you land on")
        raise LoginFailed("the pasted URL has no code or error parameter; paste the whole address your browser ended on")
    if any(ch.isspace() for ch in text):
        raise LoginFailed("the pasted text is neither a URL nor a code (it contains spaces)")
    return {"code": text}


def check_callback(params: Mapping[str, str], state: str, *, require_state: bool) -> str:
    """The code from a callback whose state matches; LoginFailed for a mismatch, a denial or no code."""
    got = params.get("state")
    if got is None:
        if require_state:
            raise LoginFailed("the answer carried no state, so it cannot be matched to this login; refused")
    elif not hmac.compare_digest(got.encode(), state.encode()):
        raise LoginFailed("state mismatch: the answer does not belong to this login (an old browser tab, or a forged request); refused")
    error = params.get("error")
    if error is not None:
        description = params.get("error_description")
        hidden = (state, params.get("code") or "")
        detail = clean_server_text(error, 60, hidden) + (f": {clean_server_text(description, 200, hidden)}" if description else "")
        if error == "access_denied":
            raise LoginFailed(f"login denied: {detail}")
        raise LoginFailed(f"the authorization server refused the login: {detail}")
    code = params.get("code")
    if not code:
        raise LoginFailed("the answer carried no code")
    return code


def login(
    config: Config,
    account: Account,
    *,
    browser: bool = True,
    manual: bool = False,
    timeout: float = 300,
    out: IO[str],
    err: IO[str],
    opener: Callable[[str], object] | None = None,
    stdin: IO[str] | None = None,
    client: TokenClient | None = None,
    clock: Callable[[], float] = time.time,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run one login for `account`; prints the URL and a summary, returns 0 or raises a FreshtokenError.

    `opener` opens the URL (default: the desktop's browser, in the background);
    `stdin` is where --manual reads the pasted URL; `environ` decides the `freshtoken get` line shown.
    """
    if account.grant == Grant.CLIENT_CREDENTIALS:
        raise UsageError(f"{account.name}: a client_credentials account needs no login")
    if not account.authorize_url:
        raise ConfigError(config.file, f"accounts.{account.name}.authorize_url", "missing: login needs it (or a provider preset)")
    target = loopback_target(account.redirect_uri)
    if target is None and not manual:
        raise UsageError(
            f"{account.name}: redirect_uri {account.redirect_uri} is not an http loopback address (http://127.0.0.1[:PORT]/... or http://[::1]...)"
            f" that freshtoken can listen on; run `freshtoken login {account.name} --manual` and paste the address your browser lands on"
        )
    if target is not None and target.host == "localhost":
        print(
            f"warning: redirect_uri uses 'localhost', which providers such as Spotify refuse;"
            f" register and configure http://127.0.0.1:{target.port or 8888}{target.path} instead",
            file=err,
        )
    if browser and opener is None and not _has_desktop(os.environ):
        browser = False  # webbrowser would start a text browser in this terminal
        if target is not None and not manual:
            port = target.port or "PORT"
            print(
                "No graphical session here: open the URL in a browser that can reach this host"
                f" (for example through `ssh -L {port}:127.0.0.1:{port}`), or use --manual.",
                file=err,
            )
    own_client = client is None
    if client is None:
        client = TokenClient(timeouts=config.timeouts, clock=clock)
    flow = _Flow(config, account, client, clock)
    try:
        if manual:
            flow.redirect_uri = account.redirect_uri
            flow.announce(out, err, browser)
            if browser:
                _start_opener(opener or webbrowser.open, flow.url, err)
            _read_paste(flow, stdin if stdin is not None else sys.stdin, timeout, err)
        else:
            assert target is not None
            _listen(flow, target, browser, opener, timeout, out, err)
    finally:
        if own_client:
            client.session.close()
    assert flow.result is not None
    _summary(config, account, flow.result, flow.daemon_told, clock(), out, os.environ if environ is None else environ)
    return 0


# ---------------------------------------------------------------- the flow


class _Flow:
    """One login attempt: its secrets (state, verifier) and what to do with the answer."""

    def __init__(self, config: Config, account: Account, client: TokenClient, clock: Callable[[], float]) -> None:
        self.config = config
        self.account = account
        self.client = client
        self.clock = clock
        self.state = secrets.token_urlsafe(24)
        # PKCE always for public clients; for confidential ones unless the account says pkce: false.
        use_pkce = account.client_auth == ClientAuth.NONE or account.pkce
        self.verifier: str | None = None
        self.challenge: str | None = None
        if use_pkce:
            self.verifier, self.challenge = make_pkce()
        self.redirect_uri = account.redirect_uri
        self.result: AccountState | None = None
        self.daemon_told = False  # a daemon was listening on the state dir when the grant was stored

    @property
    def url(self) -> str:
        return authorize_url(self.account, self.redirect_uri, self.state, self.challenge)

    def announce(self, out: IO[str], err: IO[str], opening: bool) -> None:
        how = " (opening it now)" if opening else ""
        print(f"Log in to account {self.account.name!r}: open this URL in a browser{how}:", file=err, flush=True)
        print(self.url, file=out, flush=True)

    def finish(self, params: Mapping[str, str], *, require_state: bool) -> AccountState:
        """Check the answer, exchange the code (same redirect_uri as asked with), store the grant."""
        code = check_callback(params, self.state, require_state=require_state)
        try:
            response = self.client.exchange_code(self.account, code, self.redirect_uri, self.verifier)
        except InvalidGrant as exc:
            raise LoginFailed(
                f"the code was refused ({exc}): it expired or was used already,"
                " or the redirect_uri differs from the registered one; run login again"
            ) from None
        except FreshtokenError as exc:
            raise _prefixed(exc, "code exchange failed: ") from None
        self.result, self.daemon_told = _adopt(self.config, self.account, self.client, self.clock, response)
        return self.result


def _adopt(
    config: Config, account: Account, client: TokenClient, clock: Callable[[], float], response: TokenResponse
) -> tuple[AccountState, bool]:
    """Store a login's grant as the account's new state; the state, and whether a running daemon was told."""
    store = open_store(config)
    try:
        result = Refresher(config, store, client, clock=clock).adopt(account, response)
    except outputs.OutputError as exc:
        store.wake_daemon()  # the grant is stored: a running daemon takes it over (and retries the outputs)
        raise _prefixed(exc, "logged in and stored the refresh token, but ") from None
    finally:
        store.close()
    # A running daemon re-reads the account now instead of at its next heartbeat.
    told = store.wake_daemon()
    log.info("login account=%s scope=%s", account.name, clean_server_text(response.access.scope or "-", SCOPE_LIMIT))
    return result, told


# ---------------------------------------------------------------- the device authorization grant (RFC 8628)


def device_login(
    config: Config,
    account: Account,
    *,
    out: IO[str],
    err: IO[str],
    client: TokenClient | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], object] = time.sleep,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Log in with a device code: print where to go and the code (stdout, flushed), poll until approved, store the grant.

    No listener and no browser here: the user approves on any device. `clock` and `sleep`
    drive the polling (tests inject both). Returns 0 or raises a FreshtokenError.
    """
    name = account.name
    if account.grant == Grant.CLIENT_CREDENTIALS:
        raise UsageError(f"{name}: a client_credentials account needs no login")
    if not account.device_authorization_url:
        raise ConfigError(
            config.file, f"accounts.{name}.device_authorization_url", "missing: a device login needs it (or a provider preset that has one)"
        )
    preset = PRESETS.get(account.provider or "")
    refused = [scope for scope in account.scopes if preset is not None and scope in preset.device_refused_scopes]
    if refused:
        raise UsageError(
            f"{name}: {account.provider}'s device flow cannot grant the scope {refused[0]};"
            f" log in through the browser instead: `freshtoken login {name} --no-device` (add --manual on a host without one)"
        )
    own_client = client is None
    if client is None:
        client = TokenClient(timeouts=config.timeouts, clock=clock)
    try:
        try:
            code = client.device_authorization(account)
        except FreshtokenError as exc:
            raise _prefixed(exc, "device authorization request failed: ") from None
        try:
            _announce_device(account, code, out, err)
            response = _poll_device(account, client, code, clock, sleep, err)
        except KeyboardInterrupt:
            print(f"\nlogin of {name!r} interrupted; nothing was stored", file=err, flush=True)
            raise
        state, told = _adopt(config, account, client, clock, response)
    finally:
        if own_client:
            client.session.close()
    _summary(config, account, state, told, clock(), out, os.environ if environ is None else environ)
    return 0


def _announce_device(account: Account, code: DeviceCode, out: IO[str], err: IO[str]) -> None:
    """Where to go and what to type, on stdout (a script or a human reads it), flushed before any wait."""
    lines = [
        f"To log in account {account.name!r}, open this page in a browser on any device:",
        f"  {code.verification_uri}",
        f"and enter the code:  {code.user_code}",
    ]
    if code.verification_uri_complete:
        lines.append(f"(or open {code.verification_uri_complete} , which fills in the code)")
    print("\n".join(lines), file=out, flush=True)
    print(f"Waiting up to {humanize(code.expires_in)} for the approval (Ctrl-C gives up) ...", file=err, flush=True)


def _poll_device(
    account: Account, client: TokenClient, code: DeviceCode, clock: Callable[[], float], sleep: Callable[[float], object], err: IO[str]
) -> TokenResponse:
    """Poll the token endpoint at the server's pace until the grant comes, or the code is refused, denied or expires."""
    name = account.name
    again = f"run `freshtoken login {name} --device` again"
    interval = code.interval or DEVICE_INTERVAL
    deadline = clock() + code.expires_in
    failures = 0
    while True:
        if clock() + interval > deadline:
            raise LoginFailed(f"the code was not approved within {humanize(code.expires_in)} and has expired; {again}")
        sleep(interval)
        try:
            answer = client.poll_device(account, code.device_code)
        except InvalidGrant as exc:
            raise LoginFailed(f"the device code was refused ({exc}); {again}") from None
        except TemporaryError as exc:
            # RFC 8628 §3.5: back off on connection trouble, but a server that stays away ends the wait.
            failures += 1
            if failures >= MAX_TEMPORARY_FAILURES:
                raise _prefixed(exc, "polling for the device login failed: ") from None
            print(f"warning: polling for the device login: {exc}; trying again", file=err, flush=True)
            interval *= 2
            continue
        except FreshtokenError as exc:
            raise _prefixed(exc, "device login failed: ") from None
        failures = 0
        if isinstance(answer, TokenResponse):
            return answer
        detail = answer.error + (f": {answer.description}" if answer.description else "")
        if answer.error == "authorization_pending":
            continue
        if answer.error == "slow_down":
            # +5 s from now on; GitHub says the new interval itself.
            interval = answer.interval if answer.interval is not None and answer.interval > interval else interval + SLOW_DOWN_STEP
            continue
        if answer.error in ("access_denied", "authorization_declined"):
            raise LoginFailed(f"login denied: {detail}")
        if answer.error == "expired_token":
            raise LoginFailed(f"the code expired before it was approved ({detail}); {again}")
        raise LoginFailed(f"the server does not know this device code ({detail}); {again}")


# ---------------------------------------------------------------- logout


def logout(
    config: Config,
    account: Account,
    *,
    out: IO[str],
    err: IO[str],
    revoke: bool = True,
    client: TokenClient | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """Revoke the refresh token where the provider can (RFC 7009), delete the state and every token file, tell a daemon.

    Returns 0, or 1 when the local logout is done but the revocation failed or a token file
    could not be deleted (the messages say which). Raises a FreshtokenError for what stops it.
    """
    name = account.name
    store = open_store(config)
    notes: list[str] = []
    problems: list[str] = []
    own_client = client is None
    if client is None:
        client = TokenClient(timeouts=config.timeouts, clock=clock)
    try:
        # Under the account lock: a refresh running now would rotate the token we revoke, or write
        # the files we delete; one that waits finds no state and stops at "needs login".
        with store.transaction(name) as tx:
            if tx.unusable is not None:
                notes.append(f"{tx.unusable}; deleting it")
                tx.delete()
            state = apply_seed(account, tx.state, clock())
            token = state.refresh_token
            if token is None:
                notes.append("no refresh token was stored; nothing to revoke")
            elif not revoke:
                notes.append("--no-revoke: the refresh token was deleted here but stays valid at the provider")
            elif account.revocation_url:
                host = _host_of(account.revocation_url)
                try:
                    client.revoke(account, token)
                    notes.append(f"revoked the refresh token at {host}")
                except FreshtokenError as exc:
                    problems.append(f"could not revoke the refresh token at {host} ({exc}): it may stay valid until it expires")
            else:
                who = account.provider if account.provider in PRESETS else "this account"
                notes.append(
                    f"{who} has no RFC 7009 revocation endpoint (revocation_url): the refresh token was deleted here"
                    " but stays valid until it expires, unless you remove the app's access in your account settings"
                )
            if account.refresh_token is not None:
                # A state that remembers the config's refresh_token as used, or the next run would seed from it again.
                tx.save(
                    AccountState(
                        seed=account.refresh_token.fingerprint(), needs_login=True, last_error="logged out", last_error_at=clock()
                    ),
                )
                notes.append(f"the config still has a refresh_token for {name}: remove it from {config.file}")
            else:
                tx.delete()
            removed, failed = outputs.remove_all(config.token_dir, account)
            problems += [f"could not delete {failure}" for failure in failed]
    finally:
        store.close()
        if own_client:
            client.session.close()
    told = store.wake_daemon()
    lines = [f"Logged out: account {name!r}"]
    lines += [f"  {note}" for note in notes]
    lines.append(f"  deleted:  the state{''.join(f', {path}' for path in removed)}")
    if told:
        lines.append("The running `freshtoken run` has been told; the account needs a new login.")
    print("\n".join(lines), file=out, flush=True)
    for problem in problems:
        print(f"freshtoken: {name}: {problem}", file=err, flush=True)
    return 1 if problems else 0


def _host_of(url: str) -> str:
    return urlsplit(url).hostname or url


def _read_paste(flow: _Flow, stdin: IO[str], timeout: float, err: IO[str]) -> None:
    print(
        f"After you approve, the browser goes to {flow.redirect_uri}?code=... (the page may fail to load; that is fine).\n"
        "Paste that whole address from the address bar (or just the code) and press Enter:",
        file=err,
        flush=True,
    )
    try:
        fd: int | None = stdin.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is not None:
        ready, _, _ = select.select([fd], [], [], max(timeout, 0))
        if not ready:
            raise LoginFailed(f"nothing pasted within {humanize(timeout)}; run `freshtoken login {flow.account.name} --manual` again")
    line = stdin.readline()
    if not line:
        raise LoginFailed("no URL pasted (end of input)")
    flow.finish(parse_pasted(line), require_state=False)


# ---------------------------------------------------------------- the loopback listener


def _listen(
    flow: _Flow,
    target: Loopback,
    browser: bool,
    opener: Callable[[str], object] | None,
    timeout: float,
    out: IO[str],
    err: IO[str],
) -> None:
    shown = f"[{target.bind}]" if ":" in target.bind else target.bind
    try:
        server = _Listener((target.bind, target.port or 0), target.path, flow, err)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise LoginFailed(
                f"port {target.port} on {target.bind} is in use (another program, or another `freshtoken login` still waiting);"
                " stop it, or register and configure another port in redirect_uri"
            ) from None
        raise LoginFailed(f"cannot listen on {shown}:{target.port or 0}: {exc.strerror or exc}") from None
    with server:
        port = server.server_address[1]
        if target.port is None:
            flow.redirect_uri = with_port(flow.account.redirect_uri, port)
        flow.announce(out, err, browser)
        if browser:
            _start_opener(opener or webbrowser.open, flow.url, err)
        print(f"Waiting up to {humanize(timeout)} for the browser to come back to {flow.redirect_uri} ...", file=err, flush=True)
        # shutdown() waits up to one poll interval: a short one lets a finished login exit at once.
        serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="freshtoken-login", daemon=True)
        serving.start()
        try:
            # The deadline bounds the wait for the callback; an exchange already under way is
            # let finish (its own timeouts bound it), or a granted login would be thrown away.
            if not server.done.wait(max(timeout, 0)) and server.close_claims():
                came = (
                    f"only requests that were not the answer to this login came to {flow.redirect_uri} ({server.ignored} ignored)"
                    if server.ignored
                    else f"nothing came to {flow.redirect_uri}"
                )
                raise LoginFailed(
                    f"no answer from the browser within {humanize(timeout)} ({came});"
                    f" run `{shown_command()} login {flow.account.name}` again"
                )
            server.done.wait()
        finally:
            server.shutdown()
            server.drop_connections()
            serving.join()
    if isinstance(server.outcome, BaseException):
        raise server.outcome


class _Listener(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """A thread per connection, so that a slow or silent client cannot hold up the real callback.

    Everything but the one callback carrying this login's state gets an error page and is
    otherwise ignored: any web page in the user's browser can send requests to this port.
    """

    daemon_threads = True
    block_on_close = False  # connections still open at the end are cut (drop_connections), not waited for

    def __init__(self, address: tuple[str, int], path: str, flow: _Flow, err: IO[str]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.callback_path = path
        self.flow = flow
        self.err = err
        self.outcome: AccountState | BaseException | None = None
        self.claimed = threading.Event()  # the callback with our state arrived; no other one is taken
        self.done = threading.Event()  # outcome is set
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._warned = False
        self._closed = False
        self.ignored = 0  # requests to the callback that were not this login's answer
        super().__init__(address, _CallbackHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() looks up the host's FQDN, which stalls on slow DNS.
        socketserver.TCPServer.server_bind(self)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Cut connections still open (a client trickling bytes), so that their threads end now."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser that gives up on a connection, or a client too slow to send its request, is not news.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            log.warning("login listener: %s", type(sys.exc_info()[1]).__name__)

    def answer(self, params: Mapping[str, str]) -> tuple[int, str, AccountState | BaseException | None]:
        """The status and page for a request to the callback path, and the outcome that ends the wait (None: wait on)."""
        name = html.escape(self.flow.account.name)
        if not _state_matches(params, self.flow.state):
            self._ignored("a request to the callback whose state does not match this login (an old browser tab, or another page)")
            return (
                400,
                _page(
                    "freshtoken: not this login",
                    "This answer does not belong to the login freshtoken is waiting for; it was ignored."
                    " Finish the login in the tab freshtoken opened.",
                    ok=False,
                ),
                None,
            )
        with self._lock:
            taken = self.claimed.is_set() or self._closed
            if not taken:
                self.claimed.set()
        if taken:
            return 409, _page("freshtoken: login over", "This login has its answer already, or timed out.", ok=False), None
        failed = "freshtoken: login failed"
        try:
            state = self.flow.finish(params, require_state=True)
        except FreshtokenError as exc:
            return 400, _page(failed, f"Account <b>{name}</b> is not logged in: {html.escape(str(exc))}", ok=False), exc
        except Exception as exc:  # a bug: still answer the browser, then report it in the terminal
            return 500, _page(failed, "An internal error occurred; see the terminal.", ok=False), exc
        return 200, _page("freshtoken: logged in", f"Account <b>{name}</b> is logged in. You can close this window.", ok=True), state

    def close_claims(self) -> bool:
        """At the deadline: True if no callback was taken, and none will be from now on."""
        with self._lock:
            self._closed = True
            return not self.claimed.is_set()

    def end(self, outcome: AccountState | BaseException) -> None:
        self.outcome = outcome
        self.done.set()

    def _ignored(self, what: str) -> None:
        with self._lock:
            self.ignored += 1
            if self._warned:
                return  # once: a page sending requests in a loop must not flood the terminal
            self._warned = True
        print(f"Ignored {what}; still waiting.", file=self.err, flush=True)


def _state_matches(params: Mapping[str, str], state: str) -> bool:
    got = params.get("state")
    return got is not None and hmac.compare_digest(got.encode(), state.encode())


class _CallbackHandler(http.server.BaseHTTPRequestHandler):
    timeout = IDLE_CONNECTION_TIMEOUT
    server: _Listener

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        # Read the whole request head under one deadline: a per-read timeout alone lets a client
        # that trickles a byte at a time keep the connection (and its thread) for ever.
        self.rfile = io.BytesIO(_read_head(self.connection, time.monotonic() + REQUEST_DEADLINE))

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the default would print request lines, code and all, to stderr

    def version_string(self) -> str:
        return "freshtoken"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        target = urlsplit(self.path)
        if target.path != self.server.callback_path:
            self._send(404, _page("Not found", "This is freshtoken's login listener; nothing else is served here.", ok=False))
            return
        params = dict(parse_qsl(target.query, keep_blank_values=True))
        if "code" not in params and "error" not in params:
            self._send(400, _page("freshtoken: waiting", "This address waits for the authorization server's answer.", ok=False))
            return
        status, page, outcome = self.server.answer(params)
        try:
            self._send(status, page)
        finally:
            if outcome is not None:
                self.server.end(outcome)  # only now: ending the wait cuts the connections still open

    def _send(self, status: int, page: str) -> None:
        body = page.encode()
        self.send_response(status)
        for name, value in (
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Referrer-Policy", "no-referrer"),
            ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
            ("X-Content-Type-Options", "nosniff"),
            ("Connection", "close"),
        ):
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _read_head(connection: socket.socket, deadline: float) -> bytes:
    """The request line and headers (a GET has no body), or TimeoutError once the deadline passes."""
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < MAX_HEAD:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        connection.settimeout(min(remaining, IDLE_CONNECTION_TIMEOUT))
        chunk = connection.recv(4096)
        if not chunk:
            break
        head += chunk
    connection.settimeout(IDLE_CONNECTION_TIMEOUT)
    return head


def _page(title: str, message_html: str, *, ok: bool) -> str:
    colour = "#1a7f37" if ok else "#b42318"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:38em;margin:4em auto;padding:0 1em;color:#222}"
        f"h1{{font-size:1.4em;color:{colour}}}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{message_html}</p></body></html>\n"
    )


# ---------------------------------------------------------------- browser, summary


def _start_opener(opener: Callable[[str], object], url: str, err: IO[str]) -> None:
    """Open the URL without blocking: a terminal browser would otherwise hold up the listener it needs."""

    def run() -> None:
        try:
            opened = opener(url)
        except Exception:  # noqa: BLE001 - a browser that fails to start is reported, never fatal
            opened = False
        if opened is False:
            print("Could not open a browser; open the URL above yourself.", file=err, flush=True)

    threading.Thread(target=run, name="freshtoken-browser", daemon=True).start()


def _has_desktop(environ: Mapping[str, str]) -> bool:
    """False on a Linux/BSD host without a graphical session: webbrowser would start a text browser in this terminal."""
    if environ.get("BROWSER") or sys.platform in ("darwin", "win32"):
        return True
    return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def _summary(
    config: Config, account: Account, state: AccountState, daemon_told: bool, now: float, out: IO[str], environ: Mapping[str, str]
) -> None:
    access = state.access
    lines = [f"Logged in: account {account.name!r}"]
    if access is not None:
        granted = access.scope.split() if access.scope else None
        shown = clean_server_text(" ".join(granted), SCOPE_LIMIT) if granted else "(the server did not say)"
        lines.append(f"  scopes granted:  {shown}")
        missing = [s for s in account.scopes if granted is not None and s not in granted]
        if missing:
            lines.append(f"  not granted:     {' '.join(missing)}")
        lines.append(f"  access token:    expires {_when(access.expires_at)} (in {humanize(access.expires_at - now)})")
    if state.refresh_token_expires_at:
        rt = state.refresh_token_expires_at
        lines.append(f"  refresh token:   expires {_when(rt)} (in {humanize(rt - now)}); log in again before then")
    else:
        lines.append("  refresh token:   stored; the server did not say when it expires")
        preset = PRESETS.get(account.provider or "")
        if preset is not None and preset.login_note and account.refresh_token_lifetime is None:
            lines.append(f"  note:            {preset.login_note}")
    if account.local_files:
        token_file, json_file = outputs.token_paths(config.token_dir, account.name)
        lines.append(f"  token file:      {token_file} (and {json_file.name})")
        lines.append(f"  print it with:   {get_command(config, account.name, environ)}")
    else:  # a template user's grant, or `outputs: []`: the token lives in PostgreSQL only
        template, _, user = account.name.partition(USER_SEPARATOR)
        lines.append("  token file:      none (outputs: []): applications read the freshtoken_tokens view in PostgreSQL")
        if user:
            words = f"-c {shlex.quote(config.file)} get {shlex.quote(template)} --user {shlex.quote(user)}"
            lines.append(f"  print it with:   {shown_command(path=environ.get('PATH'))} {words}")
    if daemon_told:
        lines.append("The running `freshtoken run` has been told and keeps this token fresh from now on.")
    else:
        lines.append("No `freshtoken run` is running on this state dir: start it (or its systemd unit) to keep the token fresh.")
    print("\n".join(lines), file=out, flush=True)


def get_command(config: Config, account: str, environ: Mapping[str, str]) -> str:
    """The `freshtoken get` command line that finds this config's token for `account`.

    Plain `get` looks only in the default places (SPEC: $FRESHTOKEN_TOKEN_DIR, $RUNTIME_DIRECTORY,
    $XDG_RUNTIME_DIR/freshtoken, /run/freshtoken); for any other token dir it needs --token-dir,
    which is also the fast way (`-c` would load the whole config).
    """
    plain = f"{shown_command(path=environ.get('PATH'))} get {shlex.quote(account)}"
    try:
        found: str | None = find_token_file(account, token_dir_candidates(environ, None, None))
    except TokenUnavailable:
        found = None
    if found is not None and _same_dir(os.path.dirname(found), config.token_dir):
        return plain
    return f"{plain} --token-dir {shlex.quote(str(config.token_dir))}"


def _same_dir(a: str, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _prefixed(exc: FreshtokenError, prefix: str) -> FreshtokenError:
    """`exc` with its message prefixed, keeping its class and attributes (retry_after, refresh_token...)."""
    exc.args = (prefix + str(exc), *exc.args[1:])
    exc.__traceback__ = None
    return exc
