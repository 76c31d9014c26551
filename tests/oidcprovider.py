"""A real authorization server and a real browser for freshtoken's login tests.

``OidcProvider`` runs node-oidc-provider (``tests/oidc/server.mjs``, npm
``oidc-provider`` 9.x) on 127.0.0.1 as a subprocess. ``approve_over_http``
plays the user on its login/consent pages with ``requests``;
``approve_in_browser`` does the same in Debian's headless ``/usr/bin/chromium``
(through ``tests/oidc/browser.mjs`` and playwright-core) and follows the final
redirect to the client's loopback ``redirect_uri``.

Setup: ``bash .ci/install-test-deps.sh`` (chromium from apt, ``npm ci`` in
tests/oidc). Tests skip with ``provider_unavailable_reason()`` /
``browser_unavailable_reason()`` when that was not done.
"""

from __future__ import annotations

import base64
import hashlib
import html.parser
import http.server
import json
import os
import queue
import secrets
import shutil
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import requests

from fakes import poll

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
SERVER_SCRIPT = OIDC_DIR / "server.mjs"
BROWSER_SCRIPT = OIDC_DIR / "browser.mjs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

#: A scope the provider grants (a resource-server scope; see server.mjs).
SCOPE = "api:read"

INSTALL_HINT = "run: bash .ci/install-test-deps.sh"


class HarnessError(RuntimeError):
    """The test authorization server or browser did not do what was expected."""


class _SilentStart(HarnessError):
    """A provider process that printed no ready line in time (retried once by start())."""


# --------------------------------------------------------------------------- #
# availability


def _node() -> str | None:
    return shutil.which("node")


def provider_unavailable_reason() -> str | None:
    """Why the provider cannot run here (None when it can)."""
    if _node() is None:
        return f"node is not installed ({INSTALL_HINT})"
    if not (OIDC_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
        return f"tests/oidc/node_modules/oidc-provider is missing ({INSTALL_HINT})"
    return None


def provider_available() -> bool:
    """True when node and tests/oidc/node_modules are there."""
    return provider_unavailable_reason() is None


def browser_unavailable_reason() -> str | None:
    """Why the headless browser cannot run here (None when it can)."""
    reason = provider_unavailable_reason()
    if reason:
        return reason
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} is missing ({INSTALL_HINT})"
    if not (OIDC_DIR / "node_modules" / "playwright-core" / "package.json").is_file():
        return f"tests/oidc/node_modules/playwright-core is missing ({INSTALL_HINT})"
    return None


def browser_available() -> bool:
    """True when chromium, node and playwright-core are there."""
    return browser_unavailable_reason() is None


# --------------------------------------------------------------------------- #
# the authorization server


@dataclass(frozen=True)
class OidcClient:
    """A client registered in the test provider."""

    client_id: str
    client_secret: str | None
    token_endpoint_auth_method: str  # client_secret_basic | none
    redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]

    @property
    def client_auth(self) -> str:
        """freshtoken's `client_auth` config value for this client."""
        return "none" if self.token_endpoint_auth_method == "none" else "basic"


class OidcProvider:
    """node-oidc-provider on 127.0.0.1, as a context manager.

    >>> with OidcProvider(access_ttl=5) as op:
    ...     op.token_url, op.conf_client.client_secret
    """

    def __init__(
        self,
        *,
        access_ttl: int = 60,
        refresh_ttl: int | None = None,
        port: int = 0,
        start_timeout: float = 20.0,
    ) -> None:
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.requested_port = port
        self.start_timeout = start_timeout
        self.info: dict = {}
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        self._log: list[str] = []
        self._log_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- lifecycle --------------------------------------------------------- #

    def start(self) -> OidcProvider:
        """Start the provider; a start that prints nothing within start_timeout is retried once with a new process.

        node-oidc-provider starts in about 0.6 s here, but twice in many hundred starts (once in a loaded run, once
        in CI) a process printed its runtime warning and then nothing for 20 s. A second process is a fresh one (new
        key, new port), so one retry removes that rare hang without hiding a provider that cannot start at all
        (an exit, or two silent starts in a row, still fail with the log).
        """
        reason = provider_unavailable_reason()
        if reason:
            raise HarnessError(reason)
        try:
            return self._start_once()
        except _SilentStart as first:
            try:
                return self._start_once()
            except _SilentStart as second:
                raise HarnessError(f"{second}\n(the first attempt was silent as well:\n{first})") from None

    def _start_once(self) -> OidcProvider:
        self._log = []
        env = dict(os.environ, ACCESS_TTL=str(self.access_ttl))
        if self.refresh_ttl is not None:
            env["REFRESH_TTL"] = str(self.refresh_ttl)
        env.pop("PORT", None)
        began = time.monotonic()
        self._proc = subprocess.Popen(
            [_node(), str(SERVER_SCRIPT), str(self.requested_port)],
            cwd=OIDC_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        lines: queue.Queue[str | None] = queue.Queue()
        self._spawn(self._read_stdout, lines)
        self._spawn(self._read_stderr)
        try:
            line = lines.get(timeout=self.start_timeout)
        except queue.Empty:
            self.stop()
            raise _SilentStart(f"oidc-provider did not start within {self.start_timeout} s:\n{self.log_text()}") from None
        if line is None:
            self.stop()
            raise HarnessError(f"oidc-provider exited at start:\n{self.log_text()}")
        self.info = json.loads(line)
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()  # the server exits when its stdin closes
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            for thread in self._threads:
                thread.join(timeout=5)
            self._threads.clear()
            for pipe in (proc.stdout, proc.stderr):
                if pipe:
                    pipe.close()

    def __enter__(self) -> OidcProvider:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _read_stdout(self, lines: queue.Queue) -> None:
        proc = self._proc
        try:
            for line in proc.stdout:
                if line.startswith("{"):
                    lines.put(line)
                elif line.strip():
                    self._append_log(f"(stdout) {line}")
        except (OSError, ValueError):
            pass
        lines.put(None)

    def _read_stderr(self) -> None:
        proc = self._proc
        try:
            for line in proc.stderr:
                self._append_log(line)
        except (OSError, ValueError):
            pass

    def _append_log(self, line: str) -> None:
        with self._log_lock:
            self._log.append(line.rstrip("\n"))

    # -- what tests use ---------------------------------------------------- #

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """Everything the server wrote to stderr so far (grant errors and the like)."""
        with self._log_lock:
            return "\n".join(self._log)

    def log_mark(self) -> int:
        """How many log lines there are so far (a start for ``wait_for_log``)."""
        with self._log_lock:
            return len(self._log)

    def wait_for_log(self, text: str, timeout: float = 5.0, *, start: int = 0) -> bool:
        """Wait until a log line from index ``start`` on contains ``text``."""

        def logged() -> bool:
            with self._log_lock:
                return any(text in line for line in self._log[start:])

        return poll(logged, timeout)

    @property
    def issuer(self) -> str:
        return self.info["issuer"]

    @property
    def port(self) -> int:
        return self.info["port"]

    @property
    def authorize_url(self) -> str:
        return self.info["authorization_endpoint"]

    @property
    def token_url(self) -> str:
        return self.info["token_endpoint"]

    @property
    def introspection_url(self) -> str:
        return self.info["introspection_endpoint"]

    @property
    def revocation_url(self) -> str:
        return self.info["revocation_endpoint"]

    @property
    def device_authorization_url(self) -> str:
        return self.info["device_authorization_endpoint"]

    @property
    def userinfo_url(self) -> str:
        """GET with a bearer token: 200 and the token's details, or 401 (server.mjs's /me)."""
        return self.info["userinfo_endpoint"]

    @property
    def scopes(self) -> list[str]:
        return list(self.info["scopes"])

    @property
    def clients(self) -> dict[str, OidcClient]:
        return {
            c["client_id"]: OidcClient(
                client_id=c["client_id"],
                client_secret=c["client_secret"],
                token_endpoint_auth_method=c["token_endpoint_auth_method"],
                redirect_uris=tuple(c["redirect_uris"]),
                grant_types=tuple(c["grant_types"]),
            )
            for c in self.info["clients"]
        }

    @property
    def conf_client(self) -> OidcClient:
        """`conf-client`: confidential, client_secret_basic, PKCE optional."""
        return self.clients["conf-client"]

    @property
    def public_client(self) -> OidcClient:
        """`public-client`: public (auth method none), PKCE required."""
        return self.clients["public-client"]

    @property
    def device_client(self) -> OidcClient:
        """`device-client`: public, device authorization grant (RFC 8628) and refresh_token only."""
        return self.clients["device-client"]

    @property
    def cc_client(self) -> OidcClient:
        """`cc-client`: confidential, client_credentials grant only."""
        return self.clients["cc-client"]

    def token_info(self, access_token: str) -> dict | None:
        """The server's view of a live access token, or None when it is not valid."""
        response = requests.get(
            self.userinfo_url,
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=10,
        )
        if response.status_code == 200:
            return response.json()
        if response.status_code == 401:
            return None
        raise HarnessError(f"/me answered {response.status_code}: {response.text[:300]}")

    def token_is_valid(self, access_token: str) -> bool:
        """True when the server accepts the access token (known, unexpired, grant alive)."""
        return self.token_info(access_token) is not None

    def authorization_url(
        self,
        client: OidcClient | str,
        redirect_uri: str,
        *,
        scope: str = SCOPE,
        state: str | None = None,
        code_challenge: str | None = None,
        **extra: str,
    ) -> str:
        """An authorization-code request URL (S256 when a code_challenge is given)."""
        client_id = client if isinstance(client, str) else client.client_id
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
        }
        if state is not None:
            params["state"] = state
        if code_challenge is not None:
            params["code_challenge"] = code_challenge
            params["code_challenge_method"] = "S256"
        params.update(extra)
        return f"{self.authorize_url}?{urllib.parse.urlencode(params)}"


def pkce_pair() -> tuple[str, str]:
    """A fresh (code_verifier, S256 code_challenge) pair."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def callback_params(url: str) -> dict[str, str]:
    """The query parameters of a redirect to the redirect_uri (code, state, iss / error...)."""
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


# --------------------------------------------------------------------------- #
# the user's part, over plain HTTP


class _Forms(html.parser.HTMLParser):
    """The forms (action, method, inputs) and links of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []
        self.links: list[tuple[str, str]] = []
        self._link: list | None = None
        self._skip = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("style", "script"):
            self._skip += 1
        elif tag == "form":
            self.forms.append({"action": a.get("action", ""), "method": (a.get("method") or "get").lower(), "inputs": {}})
        elif tag in ("input", "button") and self.forms and a.get("name"):
            self.forms[-1]["inputs"][a["name"]] = a.get("value", "")
        elif tag == "a" and a.get("href"):
            self._link = [a["href"], ""]

    def handle_endtag(self, tag):
        if tag in ("style", "script"):
            self._skip = max(0, self._skip - 1)
        elif tag == "a" and self._link is not None:
            self.links.append((self._link[0], self._link[1].strip()))
            self._link = None

    def handle_data(self, data):
        if self._link is not None:
            self._link[1] += data
        if not self._skip:
            self.text.append(data)


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.netloc


def approve_over_http(
    authorize_url: str,
    *,
    deny: bool = False,
    login: str = "alice",
    password: str = "any-password",
    timeout: float = 10.0,
) -> str:
    """Play the user with `requests`: sign in, approve (or cancel with deny=True).

    Returns the URL the browser would be redirected to (the redirect_uri with
    code & state, or error=access_denied), without requesting it.
    """
    issuer = _origin(authorize_url)
    url, method, data = authorize_url, "GET", None
    with requests.Session() as session:
        for _ in range(20):
            response = session.request(method, url, data=data, allow_redirects=False, timeout=timeout)
            location = response.headers.get("Location")
            if response.is_redirect and location:
                target = urllib.parse.urljoin(url, location)
                if _origin(target) != issuer:
                    return target
                url, method, data = target, "GET", None
                continue
            page = _Forms()
            page.feed(response.text)
            if response.status_code != 200 or not page.forms:
                text = " ".join(" ".join(page.text).split())
                raise HarnessError(f"{method} {url} -> {response.status_code}: {text[:500]}")
            cancel = [href for href, label in page.links if "abort" in href or "Cancel" in label]
            if deny and cancel:
                url, method, data = urllib.parse.urljoin(url, cancel[0]), "GET", None
                continue
            form = page.forms[0]
            fields = dict(form["inputs"])
            if "login" in fields:
                fields["login"] = login
            if "password" in fields:
                fields["password"] = password
            url = urllib.parse.urljoin(url, form["action"] or url)
            method, data = form["method"].upper(), fields
    raise HarnessError(f"no redirect to the client after 20 steps (last: {url})")


def approve_device_over_http(
    verification_uri: str,
    user_code: str,
    *,
    deny: bool = False,
    login: str = "alice",
    password: str = "any-password",
    timeout: float = 10.0,
) -> str:
    """Play the user of a device login with `requests`: enter the code, confirm (or abort with deny=True), sign in, consent.

    Returns the text of the last page (node-oidc-provider's "Sign-in Success", or its
    "interrupted" page after an abort).
    """
    issuer = _origin(verification_uri)
    url, method, data = verification_uri, "GET", None
    aborted = False
    with requests.Session() as session:
        for _ in range(20):
            response = session.request(method, url, data=data, allow_redirects=False, timeout=timeout)
            location = response.headers.get("Location")
            if response.is_redirect and location:
                url, method, data = urllib.parse.urljoin(url, location), "GET", None
                if _origin(url) != issuer:
                    raise HarnessError(f"device flow left the provider for {url}")
                continue
            page = _Forms()
            page.feed(response.text)
            text = " ".join(" ".join(page.text).split())
            if response.status_code != 200:
                raise HarnessError(f"{method} {url} -> {response.status_code}: {text[:500]}")
            if not page.forms or aborted:
                return text  # the final page: success, or the code-entry page saying the request was interrupted
            fields = dict(page.forms[0]["inputs"])
            if "user_code" in fields and "confirm" not in fields:
                fields["user_code"] = user_code
            # The confirm page's [ Abort ] button (outside the form) is read as one of its fields.
            if "confirm" in fields:
                if deny:
                    fields = {"xsrf": fields["xsrf"], "user_code": fields["user_code"], "abort": "yes"}
                    aborted = True
                else:
                    fields.pop("abort", None)
            if "login" in fields:
                fields["login"] = login
            if "password" in fields:
                fields["password"] = password
            url = urllib.parse.urljoin(url, page.forms[0]["action"] or url)
            method, data = page.forms[0]["method"].upper(), fields
    raise HarnessError(f"the device flow did not end after 20 steps (last: {url})")


# --------------------------------------------------------------------------- #
# the user's part, in headless Chromium


class BrowserResult(NamedTuple):
    """Where the browser ended up: the final page's URL and its text."""

    url: str
    text: str
    redirect_url: str | None  # the first URL outside the authorization server
    status: int | None  # HTTP status of the final page
    unreachable: str | None = None  # with allow_unreachable: why the redirect target did not load


def approve_in_browser(
    authorize_url: str,
    timeout: float = 60,
    *,
    deny: bool = False,
    login: str = "alice",
    password: str = "any-password",
    allow_unreachable: bool = False,
) -> BrowserResult:
    """Open the URL in headless Chromium, sign in, approve (or cancel), follow the redirect.

    The redirect_uri must be served (e.g. by freshtoken's loopback listener or a
    ``CallbackListener``); the result holds that page's URL and text. With
    ``allow_unreachable=True`` a redirect_uri where nothing listens (the
    ``--manual`` case) is not an error: ``redirect_url`` is what the user would
    copy from the address bar.
    """
    reason = browser_unavailable_reason()
    if reason:
        raise HarnessError(reason)
    args = {
        "url": authorize_url,
        "deny": deny,
        "login": login,
        "password": password,
        "allow_unreachable": allow_unreachable,
        "timeout_ms": int(max(timeout - 3, 1) * 1000),
    }
    try:
        done = subprocess.run(
            [_node(), str(BROWSER_SCRIPT), json.dumps(args)],
            cwd=OIDC_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"browser.mjs did not finish within {timeout} s: {exc.stderr!r}") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise HarnessError(f"browser.mjs failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(lines[-1])
    if done.returncode != 0 or result.get("error"):
        raise HarnessError(
            f"browser: {result.get('error')} (at {result.get('url')}, pages {result.get('pages')}); stderr: {done.stderr[-1000:]}"
        )
    return BrowserResult(
        url=result["url"] or "",
        text=result["text"] or "",
        redirect_url=result["redirect_url"],
        status=result["status"],
        unreachable=result.get("unreachable"),
    )


# --------------------------------------------------------------------------- #
# a stand-in for the client's loopback listener


class CallbackListener:
    """A tiny HTTP server on 127.0.0.1:0 that records the redirect and answers a page.

    >>> with CallbackListener() as cb:
    ...     url = approve_in_browser(op.authorization_url(client, cb.redirect_uri))
    ...     cb.wait()   # the full callback URL
    """

    PAGE = "freshtoken test listener: authorization received, you can close this window."

    def __init__(self, path: str = "/callback", host: str = "127.0.0.1") -> None:
        self.path = path
        self.host = host
        self.received: queue.Queue[str] = queue.Queue()
        self.urls: list[str] = []
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise HarnessError("CallbackListener is not started (use it as a context manager)")
        return self._port

    @property
    def redirect_uri(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    def __enter__(self) -> CallbackListener:
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                url = f"http://{listener.host}:{listener.port}{self.path}"
                ok = urllib.parse.urlsplit(self.path).path == listener.path
                body = (listener.PAGE if ok else "not found").encode()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                if ok:
                    listener.urls.append(url)
                    listener.received.put(url)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float = 10.0) -> str:
        """The first callback URL received (waits for it)."""
        try:
            return self.received.get(timeout=timeout)
        except queue.Empty:
            raise HarnessError(f"no request to {self.redirect_uri} within {timeout} s") from None

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None
