"""`freshtoken login`: the loopback listener, --manual, and the code exchange, over real HTTP.

Most tests call login() in this process, read the URL it prints and play the
browser with `requests` against the loopback AuthServer; a few run the real
command in a subprocess (loopback, --manual, headless Chromium). The last group
runs against the real node-oidc-provider, over HTTP and in headless Chromium.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import requests

from freshtoken import config as config_module
from freshtoken.cli import main
from freshtoken.errors import FreshtokenError
from freshtoken.login import login, parse_pasted, with_port
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_PUBLIC_CLIENT_ID, AuthServer
from oidcprovider import (
    SCOPE,
    OidcProvider,
    approve_in_browser,
    approve_over_http,
    browser_unavailable_reason,
    provider_unavailable_reason,
)

SCOPES = ["user-read-private", "playlist-read-private"]
WAIT = 20.0  # bound on any wait for a subprocess


# ---------------------------------------------------------------- helpers


@dataclass
class Finished:
    code: int
    out: str
    err: str
    url: str | None  # the authorization URL the command printed
    driven: Any  # what the driver returned (e.g. the listener's answer)


def run_login(
    config: Path,
    account: str,
    *args: str,
    drive: Callable[[str], Any] | None = None,
    paste: Callable[[str], str] | None = None,
    timeout: float = 10,
    browser: bool = False,
) -> Finished:
    """Run `freshtoken login ACCOUNT --no-browser`; a thread reads the printed URL and calls drive(url) or pastes paste(url) into stdin."""
    flags = [] if browser else ["--no-browser"]
    argv = [sys.executable, "-m", "freshtoken", "-c", str(config), "login", account, *flags, "--timeout", str(timeout), *args]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if paste else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[str, Any] = {}
    out_lines: list[str] = []
    err_chunks: list[str] = []

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out_lines.append(line)
            if "url" not in seen and line.startswith("http"):
                seen["url"] = url = line.strip()
                try:
                    if drive is not None:
                        seen["driven"] = drive(url)
                    if paste is not None:
                        assert proc.stdin is not None
                        proc.stdin.write(paste(url) + "\n")
                        proc.stdin.close()
                except Exception as exc:  # reported by the test, not lost in the thread
                    seen["error"] = exc

    def read_stderr() -> None:
        assert proc.stderr is not None
        err_chunks.append(proc.stderr.read())

    threads = [threading.Thread(target=read_stdout, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        code = proc.wait(timeout=timeout + WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for thread in threads:
            thread.join(timeout=WAIT)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()
    if "error" in seen:
        raise seen["error"]
    return Finished(code, "".join(out_lines), "".join(err_chunks), seen.get("url"), seen.get("driven"))


class _WatchedOut(io.StringIO):
    """stdout for an in-process login: hands the first printed URL line to `on_url` once it is complete."""

    def __init__(self, on_url: Callable[[str], None]) -> None:
        super().__init__()
        self.on_url: Callable[[str], None] | None = on_url

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.on_url is not None:
            for line in self.getvalue().splitlines(keepends=True):
                if line.startswith("http") and line.endswith("\n"):
                    on_url, self.on_url = self.on_url, None
                    on_url(line.strip())
                    break
        return written


def run_inprocess(
    path: Path,
    account: str = "demo",
    *,
    manual: bool = False,
    opener: Callable[[str], object] | None = None,
    stdin: IO[str] | None = None,
    timeout: float = 10,
    drive: Callable[[str], Any] | None = None,
    paste: Callable[[str], str] | None = None,
    browser: bool | None = None,
) -> Finished:
    """Call login() in this process, as run_login runs the command: a thread calls drive(url) or pastes paste(url) into stdin
    once the URL is printed; FreshtokenError becomes its exit code as in the CLI."""
    seen: dict[str, Any] = {}
    threads: list[threading.Thread] = []
    paste_end: IO[str] | None = None
    if paste is not None:
        read_end, write_end = os.pipe()
        stdin, paste_end = os.fdopen(read_end), os.fdopen(write_end, "w")

    def play(url: str) -> None:
        try:
            if drive is not None:
                seen["driven"] = drive(url)
            if paste is not None and paste_end is not None:
                paste_end.write(paste(url) + "\n")
        except Exception as exc:  # reported by the test, not lost in the thread
            seen["error"] = exc
        finally:
            if paste_end is not None:
                paste_end.close()  # EOF if the paste failed, so the login ends rather than waits

    def on_url(url: str) -> None:
        thread = threading.Thread(target=play, args=(url,), daemon=True)
        threads.append(thread)
        thread.start()

    out, err = _WatchedOut(on_url), io.StringIO()
    config = config_module.load(path, os.environ)
    try:
        code = login(
            config,
            config.accounts[account],
            browser=opener is not None if browser is None else browser,
            manual=manual,
            timeout=timeout,
            out=out,
            err=err,
            opener=opener,
            stdin=stdin,
        )
    except FreshtokenError as exc:
        err.write(f"freshtoken: {exc}\n")
        code = exc.exit_code
    finally:
        for thread in threads:
            thread.join(timeout=WAIT)
        if paste is not None:
            assert stdin is not None and paste_end is not None
            stdin.close()
            if not paste_end.closed:  # the URL was never printed
                paste_end.close()
    if "error" in seen:
        raise seen["error"]
    printed = [line for line in out.getvalue().splitlines() if line.startswith("http")]
    return Finished(code, out.getvalue(), err.getvalue(), printed[0] if printed else None, seen.get("driven"))


def query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def follow(url: str) -> requests.Response:
    """Play the browser: request the authorization URL and follow the 302 to freshtoken's listener."""
    return requests.get(url, timeout=15)


def redirect_location(url: str) -> str:
    """The redirect the authorization server answers with, without following it."""
    response = requests.get(url, allow_redirects=False, timeout=15)
    assert response.status_code == 302, response.text
    return response.headers["Location"]


def token_requests(server: AuthServer) -> list[Any]:
    return [r for r in server.requests if r.path == "/api/token"]


def authorize_requests(server: AuthServer) -> list[Any]:
    return [r for r in server.requests if r.path == "/authorize"]


def state_file(dirs: dict[str, Path], account: str = "demo") -> dict[str, Any]:
    return json.loads((dirs["state"] / f"{account}.json").read_text())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def make_config(write_config: Callable[..., Path], auth_server: AuthServer) -> Callable[..., Path]:
    """A config with one account `demo` pointing at auth_server; keyword arguments change the account's keys."""

    def make(
        *,
        redirect_uri: str = "http://127.0.0.1/callback",
        client_id: str = DEMO_CLIENT_ID,
        client_secret: str | None = DEMO_CLIENT_SECRET,
        server: AuthServer | None = None,
        extra: str = "",
        name: str = "freshtoken.yaml",
    ) -> Path:
        server = server or auth_server
        secret = f"\n    client_secret: {client_secret}" if client_secret else "\n    client_auth: none"
        return write_config(
            "state_dir: {state}\ntoken_dir: {tokens}\naccounts:\n  demo:\n"
            "    token_url: {token_url}\n    authorize_url: {authorize_url}\n    client_id: {client_id}{secret}\n"
            "    scopes: [{scopes}]\n    redirect_uri: {redirect_uri}\n{extra}",
            name=name,
            token_url=server.token_url,
            authorize_url=server.authorize_url,
            client_id=client_id,
            secret=secret,
            scopes=", ".join(SCOPES),
            redirect_uri=redirect_uri,
            extra=extra,
        )

    return make


def assert_no_secrets(finished: Finished, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret and secret not in finished.out and secret not in finished.err


# ---------------------------------------------------------------- loopback listener against AuthServer


def test_no_browser_login_stores_the_grant_and_writes_token_files(make_config, auth_server, dirs):
    """--no-browser prints a PKCE+state URL, the listener takes the redirect, tokens land in state and token dirs, no secret printed."""
    port = free_port()
    redirect_uri = f"http://127.0.0.1:{port}/callback"
    path = make_config(redirect_uri=redirect_uri)
    done = run_login(path, "demo", drive=follow)

    assert done.code == 0, done.err
    params = query(done.url)
    assert params["response_type"] == "code"
    assert params["client_id"] == DEMO_CLIENT_ID
    assert params["redirect_uri"] == redirect_uri
    assert params["scope"] == "user-read-private playlist-read-private"
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert len(params["state"]) >= 32
    assert "%20" in done.url  # scopes space-separated, encoded as %20
    page = done.driven
    assert page.status_code == 200 and page.url.startswith(redirect_uri + "?code=")
    assert "freshtoken: logged in" in page.text and "You can close this window" in page.text
    assert page.headers["Cache-Control"] == "no-store"

    (exchange,) = token_requests(auth_server)
    assert exchange.form["grant_type"] == "authorization_code"
    assert exchange.form["redirect_uri"] == redirect_uri
    state = state_file(dirs)
    assert state["needs_login"] is False
    assert auth_server.current_refresh_token(state["refresh_token"]) == state["refresh_token"]
    token = (dirs["tokens"] / "demo.token").read_text().strip()
    assert auth_server.is_valid_access_token(token)
    assert json.loads((dirs["tokens"] / "demo.json").read_text())["access_token"] == token
    assert "scopes granted:" in done.out and str(dirs["tokens"] / "demo.token") in done.out
    assert done.out.splitlines()[0] == done.url  # the URL is a line of its own, first
    assert_no_secrets(
        done,
        [exchange.form["code"], exchange.form["code_verifier"], token, state["refresh_token"], DEMO_CLIENT_SECRET],
    )


@pytest.mark.parametrize(("written", "path"), [("http://127.0.0.1/callback", "/callback"), ("http://127.0.0.1/", "/")])
def test_portless_redirect_uri_listens_on_a_free_port_and_sends_it(make_config, auth_server, written, path):
    """A loopback redirect_uri without a port gets a free port put into it, path and trailing slash exactly as written, in both requests."""
    done = run_inprocess(make_config(redirect_uri=written), drive=follow)

    assert done.code == 0, done.err
    sent = query(done.url)["redirect_uri"]
    parts = urlsplit(sent)
    assert parts.hostname == "127.0.0.1" and parts.port and parts.port > 0 and parts.path == path
    assert sent == f"http://127.0.0.1:{parts.port}{path}"
    assert token_requests(auth_server)[0].form["redirect_uri"] == sent
    assert done.driven.status_code == 200


def test_state_mismatch_is_ignored_and_the_real_callback_still_logs_in(make_config, auth_server, dirs):
    """A callback with a wrong or missing state gets a 400 page and is ignored (said once on stderr); the real callback then logs in."""

    def forge_then_follow(url: str) -> list[requests.Response]:
        location = redirect_location(url)
        params = query(location)
        base = location.split("?")[0]
        forged = requests.get(base + "?" + urlencode({**params, "state": "forged-" + params["state"][:5]}), timeout=15)
        stateless = requests.get(base + "?" + urlencode({"code": params["code"]}), timeout=15)
        return [forged, stateless, requests.get(location, timeout=15)]

    done = run_inprocess(make_config(), drive=forge_then_follow)

    assert done.code == 0, done.err
    forged, stateless, real = done.driven
    assert forged.status_code == 400 and "freshtoken: not this login" in forged.text and "ignored" in forged.text
    assert stateless.status_code == 400
    assert real.status_code == 200 and "freshtoken: logged in" in real.text
    assert done.err.count("Ignored a request to the callback whose state does not match this login") == 1
    assert len(token_requests(auth_server)) == 1
    assert state_file(dirs)["needs_login"] is False


def test_access_denied_is_reported_and_stores_nothing(make_config, dirs):
    """The provider's access_denied ends the login with exit 1, "login denied" on stderr and a failure page; nothing is stored."""
    with AuthServer(deny_authorization=True) as server:
        done = run_inprocess(make_config(server=server), drive=follow)

    assert done.code == 1
    assert "freshtoken: login denied: access_denied" in done.err
    assert done.driven.status_code == 400 and "access_denied" in done.driven.text
    assert not dirs["state"].exists() and not dirs["tokens"].exists()


def test_provider_error_description_is_shown_escaped(make_config, dirs):
    """error and error_description from the provider reach stderr as one line and the page HTML-escaped."""

    def deny_with_markup(url: str) -> requests.Response:
        params = query(url)
        answer = {"error": "access_denied", "error_description": "<b>User</b> said no", "state": params["state"]}
        return requests.get(params["redirect_uri"] + "?" + urlencode(answer), timeout=15)

    done = run_inprocess(make_config(), drive=deny_with_markup)

    assert done.code == 1
    assert "freshtoken: login denied: access_denied: <b>User</b> said no\n" in done.err
    assert "&lt;b&gt;User&lt;/b&gt; said no" in done.driven.text and "<b>User</b>" not in done.driven.text


def test_login_times_out(make_config, dirs):
    """With nobody answering, a 1 s timeout ends the login after that second with exit 1 and a message."""
    started = time.monotonic()
    done = run_inprocess(make_config(), timeout=1)
    elapsed = time.monotonic() - started

    assert done.code == 1
    assert "no answer from the browser within 1s" in done.err
    assert 1 <= elapsed < WAIT
    assert not dirs["state"].exists()


def test_port_in_use_is_a_clear_error(make_config):
    """A redirect_uri port that another program holds ends the login at once with exit 1, before any URL is printed."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = run_inprocess(make_config(redirect_uri=f"http://127.0.0.1:{port}/callback"))

    assert done.code == 1
    assert f"port {port} on 127.0.0.1 is in use (" in done.err
    assert done.url is None and done.out == ""


def test_stray_requests_are_ignored(make_config, auth_server):
    """/favicon.ico gets 404 and a bare callback path 400 while the listener keeps waiting for the real callback."""

    def browse(url: str) -> list[int]:
        base = query(url)["redirect_uri"]
        origin = base.rsplit("/", 1)[0]
        statuses = [requests.get(origin + "/favicon.ico", timeout=15).status_code, requests.get(base, timeout=15).status_code]
        return [*statuses, follow(url).status_code]

    done = run_inprocess(make_config(), drive=browse)

    assert done.code == 0, done.err
    assert done.driven == [404, 400, 200]
    assert len(token_requests(auth_server)) == 1


def test_browser_opener_gets_the_url(make_config, auth_server, dirs):
    """Without --no-browser the URL goes to the browser opener (without blocking the listener) and is also printed."""
    opened: list[str] = []
    landed = threading.Event()

    def opener(url: str) -> bool:
        opened.append(url)
        follow(url)
        landed.set()
        return True

    done = run_inprocess(make_config(), opener=opener)

    assert done.code == 0, done.err
    assert landed.wait(WAIT)
    assert opened == [done.url]
    assert "(opening it now)" in done.err
    assert auth_server.is_valid_access_token((dirs["tokens"] / "demo.token").read_text().strip())


def test_no_graphical_session_prints_the_url_instead_of_opening_a_browser(make_config, auth_server, monkeypatch):
    """Without DISPLAY, WAYLAND_DISPLAY or BROWSER no browser is started; the URL comes with an `ssh -L` hint and login still works."""
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"):
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    done = run_inprocess(make_config(redirect_uri=f"http://127.0.0.1:{port}/callback"), drive=follow, browser=True)

    assert done.code == 0, done.err
    assert "No graphical session here" in done.err and f"ssh -L {port}:127.0.0.1:{port}" in done.err
    assert "(opening it now)" not in done.err


def test_localhost_redirect_uri_warns(make_config):
    """A localhost redirect_uri still works (listening on 127.0.0.1) but warns that providers such as Spotify refuse it."""
    redirect_uri = f"http://localhost:{free_port()}/callback"
    with AuthServer(token_lifetime=3600, redirect_uris=[redirect_uri]) as server:
        done = run_inprocess(make_config(server=server, redirect_uri=redirect_uri), opener=lambda url: follow(url))

    assert done.code == 0, done.err
    assert "warning: redirect_uri uses 'localhost', which providers such as Spotify refuse" in done.err
    assert query(done.url)["redirect_uri"] == redirect_uri


# ---------------------------------------------------------------- --manual


def test_manual_with_pasted_url(make_config, auth_server, dirs):
    """--manual reads the whole redirected URL from stdin, checks its state and exchanges the code with the redirect_uri as written."""
    done = run_login(make_config(), "demo", "--manual", paste=redirect_location)

    assert done.code == 0, done.err
    assert "Paste that whole address" in done.err
    assert query(done.url)["redirect_uri"] == "http://127.0.0.1/callback"  # not listening: no port put in
    (exchange,) = token_requests(auth_server)
    assert exchange.form["redirect_uri"] == "http://127.0.0.1/callback"
    assert auth_server.is_valid_access_token((dirs["tokens"] / "demo.token").read_text().strip())


def test_manual_with_bare_code(make_config, auth_server, dirs):
    """--manual accepts just the code, without state, and logs in."""
    done = run_inprocess(make_config(), manual=True, paste=lambda url: query(redirect_location(url))["code"])

    assert done.code == 0, done.err
    assert state_file(dirs)["refresh_token"]
    assert auth_server.is_valid_access_token((dirs["tokens"] / "demo.token").read_text().strip())


def test_manual_pasted_url_with_wrong_state_is_refused(make_config, auth_server, dirs):
    """A pasted URL whose state is not this login's is refused before any exchange."""
    done = run_inprocess(make_config(), manual=True, stdin=io.StringIO("http://127.0.0.1/callback?code=abc&state=other\n"))

    assert done.code == 1 and "state mismatch" in done.err
    assert token_requests(auth_server) == [] and not dirs["state"].exists()


def test_manual_times_out_when_nothing_is_pasted(make_config, dirs):
    """--manual gives up after --timeout when stdin stays silent."""
    read_end, write_end = os.pipe()
    with os.fdopen(read_end) as stdin, os.fdopen(write_end, "w"):
        started = time.monotonic()
        done = run_inprocess(make_config(), manual=True, stdin=stdin, timeout=1)
        elapsed = time.monotonic() - started

    assert done.code == 1 and "nothing pasted within 1s" in done.err
    assert 1 <= elapsed < WAIT
    assert not dirs["state"].exists()


@pytest.mark.parametrize(
    ("pasted", "expected"),
    [
        ("http://127.0.0.1:8888/callback?code=C1&state=S", {"code": "C1", "state": "S"}),
        ("  'https://example.com/cb?state=S&code=C2'  ", {"state": "S", "code": "C2"}),
        ("?code=C3&state=S", {"code": "C3", "state": "S"}),
        ("code=C4", {"code": "C4"}),
        ("AQB-just_a.code~", {"code": "AQB-just_a.code~"}),
        ("http://127.0.0.1/cb?error=access_denied&state=S", {"error": "access_denied", "state": "S"}),
    ],
)
def test_parse_pasted(pasted, expected):
    """A pasted redirect URL, query or bare code gives the callback parameters."""
    assert parse_pasted(pasted) == expected


@pytest.mark.parametrize(
    ("pasted", "message"),
    [
        ("", "nothing was pasted"),
        ("https://accounts.example/authorize?response_type=code&client_id=x", "the authorization URL itself"),
        ("http://127.0.0.1/callback?foo=1", "no code or error parameter"),
        ("two words", "neither a URL nor a code"),
    ],
)
def test_parse_pasted_rejects(pasted, message):
    """Pastes that carry no code say what to paste instead."""
    with pytest.raises(FreshtokenError, match=message):
        parse_pasted(pasted)


def test_non_loopback_redirect_uri_requires_manual(make_config, dirs):
    """An https redirect_uri cannot be listened on: without --manual it is a usage error, with --manual the login works."""
    with AuthServer(token_lifetime=3600, redirect_uris=["https://example.com/cb"]) as server:
        path = make_config(server=server, redirect_uri="https://example.com/cb")
        refused = run_inprocess(path)
        done = run_inprocess(path, manual=True, paste=redirect_location)
        token = (dirs["tokens"] / "demo.token").read_text().strip()
        assert server.is_valid_access_token(token)

    assert refused.code == 2 and refused.url is None
    assert "redirect_uri https://example.com/cb is not an http loopback address" in refused.err and "--manual" in refused.err
    assert done.code == 0, done.err
    assert query(done.url)["redirect_uri"] == "https://example.com/cb"


# ---------------------------------------------------------------- the exchange: client auth and errors


def test_spotify_shaped_exchange(make_config, dirs):
    """A `provider: spotify` account sends show_dialog, then Basic auth and exactly grant_type, code, redirect_uri, code_verifier."""
    with AuthServer(token_lifetime=3600, spotify_quirks=True) as server:
        path = make_config(server=server, redirect_uri="http://127.0.0.1/callback", extra="    provider: spotify\n    show_dialog: true\n")
        done = run_inprocess(path, drive=follow)
        (authorize,) = authorize_requests(server)
        (exchange,) = token_requests(server)

    assert done.code == 0, done.err
    assert authorize.query["show_dialog"] == "true" and authorize.query["scope"] == "user-read-private playlist-read-private"
    scheme, _, encoded = exchange.headers["authorization"].partition(" ")
    assert scheme == "Basic" and base64.b64decode(encoded).decode() == f"{DEMO_CLIENT_ID}:{DEMO_CLIENT_SECRET}"
    assert set(exchange.form) == {"grant_type", "code", "redirect_uri", "code_verifier"}
    assert exchange.form["redirect_uri"] == query(done.url)["redirect_uri"]
    state = state_file(dirs)
    assert state["refresh_token_expires_at"] - state["refresh_token_obtained_at"] == 180 * 86400  # the preset's lifetime
    assert "refresh token:   expires" in done.out and "(in 179d 23h)" in done.out


def test_public_client_sends_client_id_and_verifier_without_authorization(make_config, auth_server, dirs):
    """A public client (client_auth none) exchanges with client_id and code_verifier in the form and no Authorization header."""
    done = run_inprocess(make_config(client_id=DEMO_PUBLIC_CLIENT_ID, client_secret=None), drive=follow)

    assert done.code == 0, done.err
    (exchange,) = token_requests(auth_server)
    assert "authorization" not in exchange.headers
    assert set(exchange.form) == {"grant_type", "code", "redirect_uri", "client_id", "code_verifier"}
    assert exchange.form["client_id"] == DEMO_PUBLIC_CLIENT_ID


def test_pkce_false_leaves_pkce_out_for_a_confidential_client(make_config, auth_server):
    """pkce: false sends neither code_challenge nor code_verifier for a confidential client."""
    done = run_inprocess(make_config(extra="    pkce: false\n"), opener=lambda url: follow(url))

    assert done.code == 0, done.err
    assert "code_challenge" not in query(done.url)
    assert "code_verifier" not in token_requests(auth_server)[0].form


def test_invalid_code_is_refused_and_nothing_is_stored(make_config, auth_server, dirs):
    """A code the server does not know ends the login with exit 1 and one clear line; the state dir is untouched."""
    done = run_inprocess(make_config(), manual=True, stdin=io.StringIO("not-a-real-code\n"))

    assert done.code == 1
    assert "freshtoken: the code was refused (HTTP 400 invalid_grant" in done.err
    assert len(done.err.strip().splitlines()[-1]) < 400
    assert len(token_requests(auth_server)) == 1 and not dirs["state"].exists()


def test_invalid_client_is_reported(make_config, auth_server, dirs):
    """A wrong client secret is reported as invalid_client with exit 1, and the secret is not echoed."""
    done = run_inprocess(make_config(client_secret="wrong-secret-123"), drive=follow)

    assert done.code == 1
    assert "code exchange failed: HTTP 401 invalid_client" in done.err and "check client_id and the client secret" in done.err
    assert "wrong-secret-123" not in done.err and "wrong-secret-123" not in done.driven.text
    assert not dirs["state"].exists()


def test_network_trouble_is_temporary(make_config, auth_server, dirs):
    """A token endpoint that cannot be reached ends the login with exit 75 and a one-line reason."""
    dead = f"http://127.0.0.1:{free_port()}/api/token"
    path = make_config()
    path.write_text(path.read_text().replace(auth_server.token_url, dead))
    done = run_inprocess(path, manual=True, stdin=io.StringIO("some-code\n"))

    assert done.code == 75
    assert "freshtoken: code exchange failed: cannot reach 127.0.0.1" in done.err and "connection refused" in done.err
    assert not dirs["state"].exists()


def test_client_credentials_account_needs_no_login(write_config, auth_server):
    """`login` on a client_credentials account is a usage error (exit 2)."""
    path = write_config(
        "state_dir: {state}\ntoken_dir: {tokens}\naccounts:\n  cc:\n    token_url: {url}\n    grant: client_credentials\n"
        "    client_id: {cid}\n    client_secret: {secret}\n",
        url=auth_server.token_url,
        cid=DEMO_CLIENT_ID,
        secret=DEMO_CLIENT_SECRET,
    )
    done = run_inprocess(path, "cc")

    assert done.code == 2 and "needs no login" in done.err


def test_with_port_keeps_the_uri_as_written():
    """with_port puts the port into the authority and nothing else changes."""
    assert with_port("http://127.0.0.1/", 5000) == "http://127.0.0.1:5000/"
    assert with_port("http://127.0.0.1", 5000) == "http://127.0.0.1:5000"
    assert with_port("http://[::1]/cb?x=1", 5000) == "http://[::1]:5000/cb?x=1"


def test_running_daemon_picks_up_a_new_login(demo_config, auth_server, dirs):
    """A daemon that parked an account on invalid_grant resumes it on its next heartbeat once login has stored a new grant."""
    from freshtoken.daemon import Daemon

    text = demo_config.read_text()
    demo_config.write_text(text + f"    authorize_url: {auth_server.authorize_url}\n    redirect_uri: http://127.0.0.1/callback\n")
    config = config_module.load(demo_config, os.environ)
    seed = config.accounts["demo"].refresh_token.reveal()
    auth_server.revoke_grant(seed)
    daemon = Daemon(config, environ={})
    daemon.scheduler.start(paused=True)
    try:
        daemon.startup()
        daemon.step()
        assert daemon.snapshot()["demo"].needs_login and state_file(dirs)["needs_login"] is True
        before = daemon.store.mtime("demo")

        done = run_inprocess(demo_config, drive=follow)
        assert done.code == 0, done.err
        state = state_file(dirs)
        assert state["needs_login"] is False and state["refresh_token"] != seed
        assert daemon.store.mtime("demo") != before

        daemon.beat()
        assert daemon.snapshot()["demo"].needs_login is False
        assert daemon.snapshot()["demo"].planned_at is not None  # scheduled again
    finally:
        daemon.scheduler.shutdown(wait=False)
        daemon.client.session.close()


# ---------------------------------------------------------------- against the real node-oidc-provider

_provider_missing = provider_unavailable_reason()
needs_provider = pytest.mark.skipif(bool(_provider_missing), reason=_provider_missing or "")
_browser_missing = browser_unavailable_reason()


@pytest.fixture
def op(oidc_provider: OidcProvider) -> OidcProvider:
    return oidc_provider


@pytest.fixture
def oidc_config(write_config: Callable[..., Path], op: OidcProvider) -> Callable[..., Path]:
    """A config with account `op` for one of the provider's clients."""

    def make(client: str, redirect_uri: str) -> Path:
        c = op.clients[client]
        secret = f"\n    client_secret: {c.client_secret}" if c.client_secret else ""
        return write_config(
            "state_dir: {state}\ntoken_dir: {tokens}\naccounts:\n  op:\n    token_url: {token_url}\n"
            "    authorize_url: {authorize_url}\n    client_id: {cid}\n    client_auth: {auth}{secret}\n"
            "    scopes: [{scope}]\n    redirect_uri: {redirect_uri}\n",
            token_url=op.token_url,
            authorize_url=op.authorize_url,
            cid=c.client_id,
            auth=c.client_auth,
            secret=secret,
            scope=SCOPE,
            redirect_uri=redirect_uri,
        )

    return make


def get_token(path: Path, account: str = "op") -> str:
    out, err = io.StringIO(), io.StringIO()
    assert main(["-c", str(path), "get", account], stdout=out, stderr=err) == 0, err.getvalue()
    return out.getvalue().strip()


def refresh_cli(path: Path, account: str = "op") -> tuple[int, str, str]:
    """`freshtoken refresh ACCOUNT` through the CLI's main(): exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    return main(["-c", str(path), "refresh", account], stdout=out, stderr=err), out.getvalue(), err.getvalue()


def over_http(url: str) -> requests.Response:
    """Sign in and consent on the provider's pages, then let `requests` land on freshtoken's listener."""
    return requests.get(approve_over_http(url), timeout=15)


@needs_provider
@pytest.mark.parametrize(("client", "redirect_uri"), [("conf-client", "http://127.0.0.1/"), ("public-client", "http://127.0.0.1/callback")])
def test_oidc_login_then_refresh_and_get(op, oidc_config, client, redirect_uri):
    """Against node-oidc-provider, login over HTTP (port-less loopback URI), then `refresh` and `get` give tokens the server accepts."""
    path = oidc_config(client, redirect_uri)
    done = run_inprocess(path, "op", drive=over_http)

    assert done.code == 0, done.err + op.log_text()[-2000:]
    assert done.driven.status_code == 200 and "freshtoken: logged in" in done.driven.text
    assert "scopes granted:  api:read" in done.out
    first = get_token(path)
    assert op.token_info(first)["client_id"] == client

    code, out, err = refresh_cli(path)
    assert code == 0, err
    assert "op: refreshed" in out
    second = get_token(path)
    assert second != first and op.token_is_valid(second)


@needs_provider
def test_oidc_manual_with_pasted_url(op, oidc_config):
    """--manual with the redirect URL from the provider's consent (nothing listening on :8888) logs in."""
    path = oidc_config("conf-client", "http://127.0.0.1:8888/callback")
    done = run_inprocess(path, "op", manual=True, paste=approve_over_http)

    assert done.code == 0, done.err
    assert op.token_is_valid(get_token(path))


@needs_provider
def test_oidc_access_denied(op, oidc_config, dirs):
    """Cancelling on the provider's consent page ends the login with exit 1 and "login denied: access_denied"."""
    path = oidc_config("public-client", "http://127.0.0.1/callback")
    done = run_inprocess(path, "op", drive=lambda url: requests.get(approve_over_http(url, deny=True), timeout=15))

    assert done.code == 1
    assert "freshtoken: login denied: access_denied" in done.err
    assert "access_denied" in done.driven.text
    assert not dirs["state"].exists()


@pytest.mark.browser
@needs_provider
@pytest.mark.skipif(bool(_browser_missing), reason=_browser_missing or "")
def test_oidc_login_in_headless_chromium(op, oidc_config, capsys):
    """Headless Chromium signs in and consents on the real pages, lands on freshtoken's success page, and `get` gives an accepted token."""
    path = oidc_config("public-client", "http://127.0.0.1/callback")
    started = time.monotonic()
    done = run_login(path, "op", drive=lambda url: approve_in_browser(url, timeout=45), timeout=50)
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(f"\nbrowser login took {elapsed:.1f} s")

    assert done.code == 0, done.err
    result = done.driven
    assert result.status == 200
    assert "freshtoken: logged in" in result.text and "You can close this window" in result.text
    assert result.url.startswith("http://127.0.0.1:") and urlsplit(result.url).path == "/callback"
    assert op.token_is_valid(get_token(path))
    assert elapsed < 30
