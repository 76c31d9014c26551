"""The microsoft, google and github presets, each against a loopback fake shaped like the provider's documented
requests and answers (method, content type, parameters, client auth, error shapes). The preset's URLs are pointed
at the fake; everything else (client auth, scopes, extra parameters, quirks) comes from the preset."""

from __future__ import annotations

import io
import itertools
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import requests

from fakes import FakeClock
from freshtoken import config as config_module
from freshtoken.config import Config
from freshtoken.errors import ConfigError, FreshtokenError, InvalidGrant
from freshtoken.login import device_login, login, logout
from freshtoken.model import Secret
from freshtoken.oauth import TokenClient, authorize_url
from freshtoken.refresh import Refresher
from freshtoken.store import Store

FORM = "application/x-www-form-urlencoded"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


# ---------------------------------------------------------------- a loopback fake provider


@dataclass
class Req:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    form: dict[str, str]


@dataclass
class Reply:
    status: int
    body: Any  # dict: JSON (or a form, if form=True); str: as is
    form: bool = False
    headers: dict[str, str] = field(default_factory=dict)


class Fake:
    """A provider on 127.0.0.1: `handle(req) -> Reply`; every request is recorded (form parsed only when form-encoded)."""

    def __init__(self, handle: Callable[[Req], Reply]) -> None:
        self.handle = handle
        self.requests: list[Req] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.answer()

            def do_POST(self) -> None:  # noqa: N802
                self.answer()

            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                headers = {k.lower(): v for k, v in self.headers.items()}
                is_form = headers.get("content-type", "").split(";")[0] == FORM
                target = urlsplit(self.path)
                req = Req(self.command, target.path, dict(parse_qsl(target.query)), headers, dict(parse_qsl(body)) if is_form else {})
                fake.requests.append(req)
                reply = fake.handle(req)
                if isinstance(reply.body, dict) and reply.form:
                    data, kind = urlencode(reply.body).encode(), FORM + "; charset=utf-8"
                elif isinstance(reply.body, dict):
                    data, kind = json.dumps(reply.body).encode(), "application/json; charset=utf-8"
                else:
                    data, kind = str(reply.body).encode(), "text/html"
                self.send_response(reply.status)
                for name, value in {"Content-Type": kind, **reply.headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> Fake:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def to(self, path: str) -> list[Req]:
        return [r for r in self.requests if r.path == path]


def oauth_error(status: int, error: str, description: str = "", **extra: Any) -> Reply:
    return Reply(status, {"error": error, "error_description": description, **extra})


def load(write_config: Callable[..., Path], account: str, body: str, **values: Any) -> Config:
    path = write_config("state_dir: {state}\ntoken_dir: {tokens}\naccounts:\n  " + account + ":\n" + body, **values)
    return config_module.load(path, os.environ)


class Sleeper:
    """sleep() for device_login: moves the fake clock and calls `tick(n)` after the n-th sleep."""

    def __init__(self, clock: FakeClock, tick: Callable[[int], None] = lambda n: None) -> None:
        self.clock, self.tick, self.sleeps = clock, tick, []

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)
        self.tick(len(self.sleeps))


def device(config: Config, name: str, clock: FakeClock, sleep: Sleeper) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    client = TokenClient(clock=clock)
    try:
        code = device_login(config, config.accounts[name], out=out, err=err, client=client, clock=clock, sleep=sleep, environ={})
    except FreshtokenError as exc:
        err.write(f"freshtoken: {exc}\n")
        code = exc.exit_code
    finally:
        client.session.close()
    return code, out.getvalue(), err.getvalue()


def state(config: Config, name: str) -> dict[str, Any]:
    return json.loads((config.state_dir / f"{name}.json").read_text())


# ---------------------------------------------------------------- microsoft


class Microsoft:
    """Entra ID v2 as v2-oauth2-device-code.md and refresh-tokens document it: public client, rotating refresh tokens."""

    MAIL = "https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send"

    def __init__(self, tenant: str = "common") -> None:
        self.base = f"/{tenant}/oauth2/v2.0"
        self.polls: list[Reply] = []  # device-poll answers to give, in order; then the tokens
        self.live: set[str] = set()

    def tokens(self, scope: str) -> Reply:
        refresh = "M.C5" + secrets.token_urlsafe(16)
        self.live.add(refresh)  # the old ones stay valid: Microsoft does not revoke them on rotation
        return Reply(200, {"token_type": "Bearer", "scope": scope, "expires_in": 3599, "ext_expires_in": 3599,
                           "access_token": "EwB" + secrets.token_urlsafe(16), "refresh_token": refresh})  # fmt: skip

    def __call__(self, req: Req) -> Reply:
        assert req.method == "POST" and req.headers["content-type"] == FORM
        assert "authorization" not in req.headers and "client_secret" not in req.form  # a public client
        if req.path == self.base + "/devicecode":
            assert set(req.form) == {"client_id", "scope"} and "offline_access" in req.form["scope"].split()
            self.scope = req.form["scope"]
            return Reply(200, {"device_code": "DAQABAAEAAAD" + "x" * 40, "user_code": "GQVQWT7XJ", "verification_uri": "https://microsoft.com/devicelogin",
                               "expires_in": 900, "interval": 5, "message": "To sign in, use a web browser..."})  # fmt: skip
        assert req.path == self.base + "/token"
        if req.form["grant_type"] == DEVICE_GRANT:
            assert set(req.form) == {"grant_type", "client_id", "device_code"}
            return self.polls.pop(0) if self.polls else self.tokens(self.scope)
        assert req.form["grant_type"] == "refresh_token" and set(req.form) == {"grant_type", "client_id", "refresh_token"}
        if req.form["refresh_token"] not in self.live:
            return oauth_error(400, "invalid_grant", "AADSTS70000: The provided value for the 'refresh_token' is not valid.")
        return self.tokens(self.scope)


MICROSOFT_ACCOUNT = """\
    provider: microsoft
    tenant: {tenant}
    token_url: {url}/{tenant}/oauth2/v2.0/token
    device_authorization_url: {url}/{tenant}/oauth2/v2.0/devicecode
    client_id: 9e5f94bc-e8a4-4e73-b8be-63364c29d753
    scopes: [https://outlook.office.com/IMAP.AccessAsUser.All, https://outlook.office.com/SMTP.Send]
"""


def test_microsoft_preset_urls_tenant_offline_access_and_public_client(write_config):
    """The preset fills the v2 URLs for the tenant (default common), adds offline_access, and is a public PKCE client."""
    config = load(write_config, "ms", "    provider: microsoft\n    client_id: abc\n    scopes: [https://outlook.office.com/SMTP.Send]\n")
    ms = config.accounts["ms"]
    assert ms.token_url == "https://login.microsoftonline.com/common/oauth2/v2.0/token"
    assert ms.device_authorization_url == "https://login.microsoftonline.com/common/oauth2/v2.0/devicecode"
    assert ms.scopes == ("https://outlook.office.com/SMTP.Send", "offline_access")
    assert ms.client_auth == "none" and ms.revocation_url is None and ms.refresh_token_lifetime is None
    url = authorize_url(ms, "http://127.0.0.1:8888/callback", "st", "ch")
    assert url.startswith("https://login.microsoftonline.com/common/oauth2/v2.0/authorize?") and "offline_access" in url
    assert "code_challenge_method=S256" in url

    org = load(write_config, "ms", "    provider: microsoft\n    tenant: contoso.onmicrosoft.com\n    client_id: abc\n")
    assert org.accounts["ms"].authorize_url == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize"
    with pytest.raises(ConfigError, match=r"accounts.ms.tenant: 'a/b' is not a tenant"):
        load(write_config, "ms", "    provider: microsoft\n    tenant: a/b\n    client_id: abc\n")
    with pytest.raises(ConfigError, match=r"accounts.s.tenant: only a provider whose URLs name a tenant"):
        load(write_config, "s", "    provider: spotify\n    tenant: common\n    client_id: abc\n    client_secret: x\n")


def test_microsoft_device_login_then_rotating_refresh(write_config, clock):
    """Device login with Microsoft's request and error shapes (no verification_uri_complete), then refreshes that rotate the token."""
    fake_ms = Microsoft()
    fake_ms.polls = [oauth_error(400, "authorization_pending", "AADSTS70016: OAuth 2.0 device flow error.", error_codes=[70016])]
    with Fake(fake_ms) as fake:
        config = load(write_config, "ms", MICROSOFT_ACCOUNT, url=fake.url, tenant="common")
        code, out, err = device(config, "ms", clock, Sleeper(clock))
        assert code == 0, err
        assert "  https://microsoft.com/devicelogin\nand enter the code:  GQVQWT7XJ\n" in out and "or open" not in out
        first = state(config, "ms")["refresh_token"]

        client = TokenClient(clock=clock)
        refresher = Refresher(config, Store(config.state_dir), client, clock=clock)
        refresher.refresh(config.accounts["ms"])
        second = state(config, "ms")["refresh_token"]
        client.session.close()
    assert second != first and first in fake_ms.live  # rotated; the old one is not revoked, but freshtoken moved on
    assert len(fake.to("/common/oauth2/v2.0/token")) == 3


@pytest.mark.parametrize(
    ("error", "said"),
    [
        ("authorization_declined", "login denied: authorization_declined"),
        ("expired_token", "the code expired before it was approved (expired_token"),
        ("bad_verification_code", "the server does not know this device code (bad_verification_code"),
    ],
)
def test_microsoft_device_errors_end_the_login(write_config, clock, error, said):
    """Microsoft's authorization_declined, expired_token and bad_verification_code stop the polling with exit 1."""
    fake_ms = Microsoft(tenant="organizations")
    fake_ms.polls = [oauth_error(400, "authorization_pending", "AADSTS70016"), oauth_error(400, error, "AADSTS")]
    with Fake(fake_ms) as fake:
        config = load(write_config, "ms", MICROSOFT_ACCOUNT, url=fake.url, tenant="organizations")
        code, _, err = device(config, "ms", clock, Sleeper(clock))
    assert code == 1 and said in err
    assert not (config.state_dir / "ms.json").exists()


# ---------------------------------------------------------------- google


class Google:
    """Google's token, device/code and revoke endpoints as its native-app and limited-input-device pages show them."""

    def __init__(self) -> None:
        self.polls: list[Reply] = []
        self.refresh_tokens: set[str] = set()
        self.codes: dict[str, str] = {}  # authorization code -> code_challenge

    def tokens(self, scope: str, *, refresh: bool) -> Reply:
        body = {"access_token": "ya29." + secrets.token_urlsafe(16), "expires_in": 3599, "scope": scope, "token_type": "Bearer"}
        if refresh:  # a refresh token only from the exchange (access_type=offline); a refresh answer has none
            body["refresh_token"] = "1//0g" + secrets.token_urlsafe(16)
            self.refresh_tokens.add(body["refresh_token"])
        return Reply(200, body)

    def __call__(self, req: Req) -> Reply:
        if req.path == "/o/oauth2/v2/auth":
            q = req.query
            assert q["access_type"] == "offline" and q["prompt"] == "consent" and q["code_challenge_method"] == "S256"
            code = "4/0A" + secrets.token_urlsafe(8)
            self.codes[code] = q["code_challenge"]
            return Reply(
                302, "", headers={"Location": f"{q['redirect_uri']}?{urlencode({'state': q['state'], 'code': code, 'scope': q['scope']})}"}
            )
        assert req.method == "POST" and req.headers["content-type"] == FORM and "authorization" not in req.headers
        if req.path == "/device/code":
            assert set(req.form) == {"client_id", "scope"}
            return Reply(200, {"device_code": "4/4-GMMhmHCXhWEzkobqIHGG_EnNYYsAkukHspeYUk9E8", "user_code": "GQVQ-JKEC",
                               "verification_url": "https://www.google.com/device", "expires_in": 1800, "interval": 5})  # fmt: skip
        if req.path == "/revoke":
            if req.form["token"] not in self.refresh_tokens:
                return oauth_error(400, "invalid_token", "Token expired or revoked")
            self.refresh_tokens.discard(req.form["token"])
            return Reply(200, {})
        assert req.path == "/token" and req.form["client_secret"] == "GOCSPX-secret"  # the secret in the body
        grant = req.form["grant_type"]
        if grant == DEVICE_GRANT:
            assert set(req.form) == {"client_id", "client_secret", "device_code", "grant_type"}
            return self.polls.pop(0) if self.polls else self.tokens("https://www.googleapis.com/auth/drive.file", refresh=True)
        if grant == "authorization_code":
            assert set(req.form) == {"grant_type", "code", "redirect_uri", "code_verifier", "client_id", "client_secret"}
            assert req.form["code"] in self.codes
            return self.tokens("https://mail.google.com/", refresh=True)
        assert grant == "refresh_token" and req.form["refresh_token"] in self.refresh_tokens
        return self.tokens("https://mail.google.com/", refresh=False)


GOOGLE_ACCOUNT = """\
    provider: google
    authorize_url: {url}/o/oauth2/v2/auth
    token_url: {url}/token
    device_authorization_url: {url}/device/code
    revocation_url: {url}/revoke
    client_id: 1234-abc.apps.googleusercontent.com
    client_secret: GOCSPX-secret
    redirect_uri: http://127.0.0.1/callback
    scopes: [{scope}]
{extra}"""


def browser_login(config: Config, name: str, clock: FakeClock) -> tuple[int, str, str]:
    """A loopback login whose 'browser' follows the fake's redirect back to freshtoken's listener."""
    out, err = io.StringIO(), io.StringIO()
    code = login(
        config,
        config.accounts[name],
        opener=lambda url: requests.get(url, timeout=10),
        out=out,
        err=err,
        timeout=20,
        clock=clock,
        environ={},
    )
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def google() -> Iterator[tuple[Google, Fake]]:
    provider = Google()
    with Fake(provider) as fake:
        yield provider, fake


def test_google_login_asks_offline_and_consent_sends_the_secret_in_the_body_and_warns_about_testing_apps(write_config, google, clock):
    """The authorization URL carries access_type=offline, prompt=consent and PKCE; the exchange posts the secret; the 7-day note shows."""
    provider, fake = google
    config = load(write_config, "gm", GOOGLE_ACCOUNT, url=fake.url, scope="https://mail.google.com/", extra="")
    code, out, err = browser_login(config, "gm", clock)

    assert code == 0, err
    assert len(fake.to("/o/oauth2/v2/auth")) == 1 and len(fake.to("/token")) == 1
    assert "Google revokes this refresh token after 7 days" in out and "refresh_token_lifetime: 7d" in out
    assert state(config, "gm")["refresh_token_expires_at"] is None


def test_google_refresh_token_lifetime_7d_is_the_expiry_freshtoken_warns_about(write_config, google, clock):
    """With refresh_token_lifetime: 7d the login records a 7-day expiry (the daemon's expiry warning uses it), and no note."""
    _, fake = google
    config = load(
        write_config, "gm", GOOGLE_ACCOUNT, url=fake.url, scope="https://mail.google.com/", extra="    refresh_token_lifetime: 7d\n"
    )
    code, out, _ = browser_login(config, "gm", clock)

    assert code == 0
    assert state(config, "gm")["refresh_token_expires_at"] == clock() + 7 * 86400
    assert "refresh token:   expires" in out and "(in 7d 0h)" in out and "Testing" not in out


def test_google_refresh_answers_without_a_refresh_token_keep_the_old_one(write_config, google, clock):
    """Google does not rotate: a refresh answer without refresh_token leaves the stored one in place."""
    provider, fake = google
    config = load(write_config, "gm", GOOGLE_ACCOUNT, url=fake.url, scope="https://mail.google.com/", extra="")
    assert browser_login(config, "gm", clock)[0] == 0
    before = state(config, "gm")["refresh_token"]
    client = TokenClient(clock=clock)
    Refresher(config, Store(config.state_dir), client, clock=clock).refresh(config.accounts["gm"])
    client.session.close()
    assert state(config, "gm")["refresh_token"] == before
    assert {"client_id", "client_secret", "refresh_token", "grant_type"} == set(fake.to("/token")[-1].form)


def test_google_device_flow_verification_url_428_pending_and_403_slow_down(write_config, google, clock):
    """Google's device answer names `verification_url`; its 428 authorization_pending and 403 slow_down are read by their error code."""
    provider, fake = google
    provider.polls = [oauth_error(428, "authorization_pending", "Precondition Required"), oauth_error(403, "slow_down", "Forbidden")]
    config = load(write_config, "gd", GOOGLE_ACCOUNT, url=fake.url, scope="https://www.googleapis.com/auth/drive.file", extra="")
    sleeper = Sleeper(clock)
    code, out, err = device(config, "gd", clock, sleeper)

    assert code == 0, err
    assert "  https://www.google.com/device\nand enter the code:  GQVQ-JKEC\n" in out
    assert sleeper.sleeps == [5, 5, 10]
    assert state(config, "gd")["refresh_token"] in provider.refresh_tokens


def test_google_device_flow_refuses_the_gmail_scope(write_config, google, clock):
    """Google's device flow cannot grant https://mail.google.com/: --device refuses (exit 2) before any request; device_login: true, 78."""
    _, fake = google
    config = load(write_config, "gm", GOOGLE_ACCOUNT, url=fake.url, scope="https://mail.google.com/", extra="")
    code, _, err = device(config, "gm", clock, Sleeper(clock))

    assert code == 2
    assert "google's device flow cannot grant the scope https://mail.google.com/" in err and "--no-device" in err
    assert not fake.requests
    with pytest.raises(ConfigError, match="device_login: google's device flow cannot grant https://mail.google.com/"):
        load(write_config, "gm", GOOGLE_ACCOUNT, url=fake.url, scope="https://mail.google.com/", extra="    device_login: true\n")


def test_google_logout_revokes_and_an_already_dead_token_is_fine(write_config, google, clock):
    """logout POSTs the refresh token to Google's revoke endpoint; Google's 400 invalid_token (already dead) still counts as done."""
    provider, fake = google
    config = load(write_config, "gm", GOOGLE_ACCOUNT, url=fake.url, scope="https://mail.google.com/", extra="")
    assert browser_login(config, "gm", clock)[0] == 0
    token = state(config, "gm")["refresh_token"]
    out = io.StringIO()
    assert logout(config, config.accounts["gm"], out=out, err=io.StringIO(), clock=clock) == 0
    (revoke,) = fake.to("/revoke")
    assert revoke.form["token"] == token and revoke.form["token_type_hint"] == "refresh_token"
    assert token not in provider.refresh_tokens

    assert browser_login(config, "gm", clock)[0] == 0
    provider.refresh_tokens.clear()  # revoked meanwhile, e.g. in the Google account's security page
    assert logout(config, config.accounts["gm"], out=io.StringIO(), err=io.StringIO(), clock=clock) == 0


# ---------------------------------------------------------------- github


class GitHub:
    """github.com/login as authorizing-oauth-apps.md and refreshing-user-access-tokens.md show it: form-encoded unless asked
    for JSON, errors with HTTP 200, 8-hour tokens and 6-month refresh tokens that a refresh replaces."""

    def __init__(self, *, json_when_asked: bool = True) -> None:
        self.json_when_asked = json_when_asked
        self.polls: list[dict[str, Any]] = []
        self.live: set[str] = set()
        self.ids = itertools.count()

    def reply(self, req: Req, body: dict[str, Any]) -> Reply:
        as_json = self.json_when_asked and req.headers.get("accept") == "application/json"
        return Reply(200, body, form=not as_json)  # always 200, errors too

    def tokens(self, req: Req) -> Reply:
        refresh = f"ghr_{next(self.ids)}{secrets.token_urlsafe(12)}"
        self.live = {refresh}  # refreshing kills the old pair
        return self.reply(req, {"access_token": "ghu_" + secrets.token_urlsafe(12), "expires_in": 28800, "refresh_token": refresh,
                                "refresh_token_expires_in": 15897600, "scope": "", "token_type": "bearer"})  # fmt: skip

    def __call__(self, req: Req) -> Reply:
        assert req.method == "POST" and req.headers["content-type"] == FORM
        if req.path == "/login/device/code":
            assert set(req.form) == {"client_id"}
            return self.reply(req, {"device_code": "3584d83530557fdd1f46af8289938c8ef79f9dc5", "user_code": "WDJB-MJHT",
                                    "verification_uri": "https://github.com/login/device", "expires_in": 900, "interval": 5})  # fmt: skip
        assert req.path == "/login/oauth/access_token"
        if req.form["grant_type"] == DEVICE_GRANT:
            assert set(req.form) == {"client_id", "device_code", "grant_type"}  # no secret in the device flow
            return self.reply(req, self.polls.pop(0)) if self.polls else self.tokens(req)
        assert req.form["grant_type"] == "refresh_token"
        if req.form["refresh_token"] not in self.live:
            return self.reply(req, {"error": "bad_refresh_token", "error_description": "The refresh token passed is incorrect or expired.",
                                    "error_uri": "https://docs.github.com"})  # fmt: skip
        return self.tokens(req)


GITHUB_ACCOUNT = """\
    provider: github
    token_url: {url}/login/oauth/access_token
    device_authorization_url: {url}/login/device/code
    client_id: Iv23liABCDEF
{auth}"""


def test_github_device_login_takes_slow_down_interval_and_records_the_refresh_expiry(write_config, clock):
    """GitHub's device flow: 200 + error answers, slow_down with the new interval, and refresh_token_expires_in stored."""
    provider = GitHub()
    provider.polls = [{"error": "authorization_pending"}, {"error": "slow_down", "interval": 10, "error_description": "Too many requests"}]
    with Fake(provider) as fake:
        config = load(write_config, "gh", GITHUB_ACCOUNT, url=fake.url, auth="    client_auth: none\n    device_login: true\n")
        sleeper = Sleeper(clock)
        code, out, err = device(config, "gh", clock, sleeper)
    assert code == 0, err
    assert "  https://github.com/login/device\nand enter the code:  WDJB-MJHT\n" in out
    assert sleeper.sleeps == [5, 5, 10]
    saved = state(config, "gh")
    assert saved["refresh_token_expires_at"] == clock() + 15897600 and saved["expires_at"] == clock() + 28800


@pytest.mark.parametrize("json_when_asked", [True, False], ids=["json", "form-encoded"])
def test_github_refresh_rotates_and_a_spent_token_is_bad_refresh_token(write_config, clock, json_when_asked):
    """A refresh replaces the pair (JSON, or form-encoded from a server that ignores Accept); the spent one's HTTP 200
    bad_refresh_token is invalid_grant: the account needs a login."""
    provider = GitHub(json_when_asked=json_when_asked)
    with Fake(provider) as fake:
        config = load(write_config, "gh", GITHUB_ACCOUNT, url=fake.url, auth="    client_secret: s3cret\n")
        assert config.accounts["gh"].client_auth == "post"
        first = provider.tokens(Req("POST", "", {}, {}, {})).body["refresh_token"]
        Store(config.state_dir).prepare()
        client = TokenClient(clock=clock)
        config_seeded = load(
            write_config, "gh", GITHUB_ACCOUNT + "    refresh_token: {rt}\n", url=fake.url, auth="    client_secret: s3cret\n", rt=first
        )
        refresher = Refresher(config_seeded, Store(config.state_dir), client, clock=clock)
        refresher.refresh(config_seeded.accounts["gh"])
        second = state(config, "gh")["refresh_token"]
        assert second != first and second.startswith("ghr_")
        assert fake.requests[-1].form["client_secret"] == "s3cret"  # client_auth post: the secret in the body

        with pytest.raises(InvalidGrant, match="HTTP 200 bad_refresh_token"):
            client.refresh(config.accounts["gh"], Secret(first))
        provider.live.clear()  # six months later
        with pytest.raises(InvalidGrant):
            refresher.refresh(config_seeded.accounts["gh"])
        client.session.close()
    assert state(config, "gh")["needs_login"] is True


# ---------------------------------------------------------------- authorize_params, for presets and generic servers


def test_authorize_params_extend_and_override_a_preset_and_cannot_replace_freshtokens_own(write_config):
    """An account's authorize_params add to the preset's, replace them, or drop them with null; response_type & co. are refused."""
    body = "    provider: google\n    client_id: c\n    client_secret: s\n    authorize_params:\n{params}"
    params = "      prompt: select_account\n      login_hint: me@example.com\n      access_type: null\n"
    config = load(write_config, "g", body, params=params)
    account = config.accounts["g"]
    assert account.authorize_params == (("prompt", "select_account"), ("login_hint", "me@example.com"))
    url = authorize_url(account, "http://127.0.0.1/cb", "st", None)
    assert "prompt=select_account" in url and "login_hint=me%40example.com" in url and "access_type" not in url
    with pytest.raises(ConfigError, match="accounts.g.authorize_params.redirect_uri: freshtoken sets this parameter itself"):
        load(write_config, "g", body, params="      redirect_uri: http://evil/\n")
    with pytest.raises(ConfigError, match=r"accounts.g.authorize_params.prompt: expected a string, got a list"):
        load(write_config, "g", body, params="      prompt: [a]\n")
