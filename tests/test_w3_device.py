"""`freshtoken login --device` (RFC 8628) against the devserver's device endpoint, and once against node-oidc-provider.

The polling logic runs in process with a fake clock shared by client and server and a sleep
that moves it (and plays the user at a chosen poll), so no test waits out a 5 s interval.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fakes import FakeClock
from freshtoken import config as config_module
from freshtoken.cli import main
from freshtoken.errors import FreshtokenError, MalformedAnswer, TemporaryError
from freshtoken.login import device_login
from freshtoken.oauth import TokenClient, parse_device_code
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_PUBLIC_CLIENT_ID, AuthServer
from oidcprovider import OidcProvider, approve_device_over_http, provider_unavailable_reason

WAIT = 20.0
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(clock: FakeClock):
    with AuthServer(token_lifetime=3600, clock=clock) as s:
        yield s


def device_config(write_config: Callable[..., Path], server: AuthServer, extra: str = "", *, public: bool = True) -> Path:
    auth = (
        f"client_id: {DEMO_PUBLIC_CLIENT_ID}\n    client_auth: none"
        if public
        else f"client_id: {DEMO_CLIENT_ID}\n    client_secret: {DEMO_CLIENT_SECRET}"
    )
    return write_config(
        "state_dir: {state}\ntoken_dir: {tokens}\naccounts:\n  dev:\n    token_url: {token}\n"
        "    device_authorization_url: {device}\n    {auth}\n    scopes: [demo]\n{extra}",
        token=server.token_url,
        device=server.device_authorization_url,
        auth=auth,
        extra=extra,
    )


class User:
    """sleep() for device_login: moves the fake clock, and at sleep number `at` plays the user with `act(user_code)`."""

    def __init__(self, clock: FakeClock, server: AuthServer, act: Callable[[str], None] | None = None, at: int = 1) -> None:
        self.clock, self.server, self.act, self.at = clock, server, act, at
        self.sleeps: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)
        if self.act is not None and len(self.sleeps) == self.at:
            (code,) = self.server.device_user_codes()
            self.act(code)


def run_device(path: Path, clock: FakeClock, sleep: Callable[[float], None]) -> tuple[int, str, str]:
    """device_login in process; a FreshtokenError becomes its exit code and message, as the CLI prints them."""
    config = config_module.load(path, os.environ)
    out, err = io.StringIO(), io.StringIO()
    client = TokenClient(clock=clock)
    try:
        code = device_login(config, config.accounts["dev"], out=out, err=err, client=client, clock=clock, sleep=sleep, environ={})
    except FreshtokenError as exc:
        err.write(f"freshtoken: {exc}\n")
        code = exc.exit_code
    finally:
        client.session.close()
    return code, out.getvalue(), err.getvalue()


def polls(server: AuthServer) -> list[Any]:
    return [r for r in server.requests if r.path == "/api/token" and r.form.get("grant_type") == DEVICE_GRANT]


def gaps(server: AuthServer) -> list[float]:
    """Seconds from the device authorization request to the first poll, then between polls (server clock)."""
    (start,) = [r.time for r in server.requests if r.path == "/device/code"]
    times = [start] + [r.time for r in polls(server)]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def state(dirs: dict[str, Path]) -> dict[str, Any]:
    return json.loads((dirs["state"] / "dev.json").read_text())


# ---------------------------------------------------------------- the polling logic, against the devserver


def test_device_login_shows_page_and_code_polls_at_the_interval_and_stores_the_grant(write_config, server, clock, dirs):
    """The page and code go to stdout, polls come every `interval` s until approved, and the grant is stored as a browser login does."""
    user = User(clock, server, server.approve_device, at=2)
    code, out, err = run_device(device_config(write_config, server), clock, user)

    assert code == 0, err
    (user_code,) = server.device_user_codes("spent")
    assert f"  {server.verification_uri}\n" in out and f"enter the code:  {user_code}\n" in out
    assert f"{server.verification_uri}?user_code={user_code}" in out  # verification_uri_complete, when given
    assert gaps(server) == [5, 5] and user.sleeps == [5, 5]
    first = polls(server)[0]
    assert set(first.form) == {"grant_type", "device_code", "client_id"} and first.form["client_id"] == DEMO_PUBLIC_CLIENT_ID
    saved = state(dirs)
    assert server.current_refresh_token(saved["refresh_token"]) == saved["refresh_token"]
    assert server.is_valid_access_token(saved["access_token"])
    assert (dirs["tokens"] / "dev.token").read_text().strip() == saved["access_token"]
    assert "Logged in: account 'dev'" in out and "print it with:   freshtoken get dev --token-dir" in out
    assert saved["refresh_token"] not in out + err and first.form["device_code"] not in out + err


def test_no_interval_in_the_answer_means_five_seconds(write_config, server, clock):
    """A server that sends no `interval` (node-oidc-provider) is polled every 5 s, RFC 8628's default."""
    server.device_interval = None
    user = User(clock, server, server.approve_device, at=3)
    code, _, err = run_device(device_config(write_config, server), clock, user)

    assert code == 0, err
    assert gaps(server) == [5, 5, 5]


def test_an_interval_from_the_server_is_kept(write_config, server, clock):
    """The server's own interval (here 7 s) paces the polls."""
    server.device_interval = 7
    user = User(clock, server, server.approve_device, at=2)
    assert run_device(device_config(write_config, server), clock, user)[0] == 0
    assert gaps(server) == [7, 7]


def test_slow_down_adds_five_seconds_for_this_and_every_later_poll(write_config, server, clock):
    """After slow_down the interval is 5 s longer from then on (RFC 8628 §3.5), and the login still succeeds."""
    server.script(400, json={"error": "slow_down"})
    user = User(clock, server, server.approve_device, at=3)
    code, _, err = run_device(device_config(write_config, server), clock, user)

    assert code == 0, err
    assert gaps(server) == [5, 10, 10]


def test_slow_down_twice_adds_five_seconds_each_time(write_config, server, clock):
    """Each slow_down adds another 5 s."""
    server.script(400, json={"error": "slow_down"}, times=2)
    user = User(clock, server, server.approve_device, at=3)
    assert run_device(device_config(write_config, server), clock, user)[0] == 0
    assert gaps(server) == [5, 10, 15]


def test_slow_down_with_a_new_interval_uses_it(write_config, server, clock):
    """GitHub's slow_down (HTTP 200, form-encoded) carries the new interval; the client uses it."""
    server.script(
        200,
        raw=b"error=slow_down&error_description=Too+many+requests&interval=17",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    user = User(clock, server, server.approve_device, at=3)
    assert run_device(device_config(write_config, server), clock, user)[0] == 0
    assert gaps(server) == [5, 17, 17]


def test_the_devserver_answers_a_too_early_poll_with_slow_down(server, clock):
    """The devserver enforces the interval: a poll sooner than it gets slow_down, and the next must wait 5 s more."""
    import requests

    code = requests.post(server.device_authorization_url, data={"client_id": DEMO_PUBLIC_CLIENT_ID}, timeout=5).json()
    form = {"grant_type": DEVICE_GRANT, "device_code": code["device_code"], "client_id": DEMO_PUBLIC_CLIENT_ID}
    answers = []
    for step in (5, 1, 9, 15):  # pending at 5; too early at 6 (now 10 s); at 15 too early again (now 15 s); fine at 30
        clock.advance(step)
        answers.append(requests.post(server.token_url, data=form, timeout=5).json()["error"])
    assert answers == ["authorization_pending", "slow_down", "slow_down", "authorization_pending"]


@pytest.mark.parametrize("error", ["access_denied", "authorization_declined"])
def test_a_denied_login_ends_with_one_line_and_exit_1(write_config, server, clock, dirs, error):
    """access_denied, and Microsoft's authorization_declined, stop the polling: exit 1, "login denied", nothing stored."""
    server.device_denial_error = error
    user = User(clock, server, server.deny_device, at=2)
    code, _, err = run_device(device_config(write_config, server), clock, user)

    assert code == 1
    assert err.strip().splitlines()[-1].startswith(f"freshtoken: login denied: {error}")
    assert len(polls(server)) == 2
    assert not (dirs["state"] / "dev.json").exists() and not (dirs["tokens"] / "dev.token").exists()


def test_expired_token_from_the_server_ends_the_login(write_config, clock, dirs):
    """The server's expired_token (its clock ran past the code's life) ends the login with exit 1 and says so."""
    server_clock = FakeClock()
    with AuthServer(clock=server_clock) as server:

        def sleep(seconds: float) -> None:
            clock.advance(seconds)
            server_clock.advance(seconds if polls(server) else 601)  # the host slept through the code's 10 minutes

        code, _, err = run_device(device_config(write_config, server), clock, sleep)

    assert code == 1
    assert "freshtoken: the code expired before it was approved (expired_token" in err
    assert "run `freshtoken login dev --device` again" in err
    assert not (dirs["state"] / "dev.json").exists()


def test_the_code_lifetime_stops_the_polling(write_config, server, clock, dirs):
    """Without an approval, polling stops once the next poll would come after expires_in, with nothing sent past it."""
    server.device_expires_in = 12
    code, _, err = run_device(device_config(write_config, server), clock, User(clock, server))

    assert code == 1
    assert "the code was not approved within 12s and has expired" in err
    assert gaps(server) == [5, 5]


def test_bad_verification_code_is_a_clear_failure(write_config, server, clock):
    """Microsoft's bad_verification_code (the server does not know the device code) ends the login with exit 1."""
    server.script(400, json={"error": "bad_verification_code", "error_description": "AADSTS70019"})
    code, _, err = run_device(device_config(write_config, server), clock, User(clock, server))

    assert code == 1
    assert "the server does not know this device code (bad_verification_code: AADSTS70019)" in err


def test_a_network_error_while_polling_is_retried(write_config, server, clock):
    """One 503 while polling is a warning and a longer wait, not the end of the login."""
    server.script(503, body="busy")
    user = User(clock, server, server.approve_device, at=2)
    code, _, err = run_device(device_config(write_config, server), clock, user)

    assert code == 0, err
    assert "warning: polling for the device login: HTTP 503" in err
    assert user.sleeps == [5, 10]


def test_a_server_that_stays_away_ends_the_login_as_temporary(write_config, server, clock):
    """Three failed polls in a row end the login with the temporary-error exit code 75."""
    server.script(503, body="busy", times=3)
    code, _, err = run_device(device_config(write_config, server), clock, User(clock, server))

    assert code == TemporaryError.exit_code == 75
    assert "polling for the device login failed: HTTP 503" in err


def test_the_device_request_uses_basic_auth_for_a_confidential_client(write_config, server, clock):
    """A client that authenticates with Basic does so at the device endpoint and when polling (RFC 8628 §3.1, §3.4)."""
    user = User(clock, server, server.approve_device, at=1)
    assert run_device(device_config(write_config, server, public=False), clock, user)[0] == 0
    device_request = next(r for r in server.requests if r.path == "/device/code")
    assert device_request.headers["authorization"].startswith("Basic ") and device_request.form == {"scope": "demo"}
    assert polls(server)[0].headers["authorization"].startswith("Basic ")


def test_parse_device_code_reads_google_verification_url_and_refuses_junk():
    """Google's `verification_url` counts as verification_uri; a non-http page or a missing code is a malformed answer."""
    parsed = parse_device_code(
        {"device_code": "d", "user_code": "ABC-DEF", "verification_url": "https://www.google.com/device", "expires_in": 1800}
    )
    assert parsed.verification_uri == "https://www.google.com/device" and parsed.interval is None and parsed.expires_in == 1800
    for body in (
        {"device_code": "d", "user_code": "A", "verification_uri": "javascript:alert(1)", "expires_in": 5},
        {"device_code": "d", "user_code": "A\x1b[2J", "verification_uri": "https://x/d", "expires_in": 5},
        {"user_code": "A", "verification_uri": "https://x/d", "expires_in": 5},
        {"device_code": "d", "user_code": "A", "verification_uri": "https://x/d", "expires_in": "soon"},
    ):
        with pytest.raises(MalformedAnswer):
            parse_device_code(body)


# ---------------------------------------------------------------- the command line


def cli(path: Path, *args: str, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "freshtoken", "-c", str(path), *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli_here(path: Path, *args: str) -> tuple[int, str, str]:
    """`freshtoken -c PATH ARGS...` through the CLI's main() in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    return main(["-c", str(path), *args], stdout=out, stderr=err), out.getvalue(), err.getvalue()


def approve_when_asked(server: AuthServer) -> threading.Thread:
    """A user who approves the first device code the server hands out."""

    def run() -> None:
        if server.wait_until(lambda s: bool(s.device_user_codes()), WAIT):
            server.approve_device(server.device_user_codes()[0])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_device_login_key_makes_login_use_the_device_flow(write_config):
    """`device_login: true` makes a plain `freshtoken login ACCOUNT` a device login; it prints the code and exits 0."""
    with AuthServer(device_interval=0.05) as server:
        path = device_config(write_config, server, "    device_login: true\n")
        approve_when_asked(server)
        code, out, err = cli_here(path, "login", "dev")

    assert code == 0, err
    assert re.search(r"enter the code:  [A-Z]{4}-[A-Z]{4}\n", out) and "Logged in: account 'dev'" in out
    assert not any(r.path == "/authorize" for r in server.requests)


def test_no_device_overrides_the_key(write_config, dirs):
    """`--no-device` on an account with device_login: true goes through the browser flow (here: its missing authorize_url)."""
    with AuthServer() as server:
        path = device_config(write_config, server, "    device_login: true\n")
        code, _, err = cli_here(path, "login", "dev", "--no-device")
    assert code == 78 and "authorize_url: missing" in err


def test_device_needs_a_device_authorization_url(write_config):
    """`--device` on an account without device_authorization_url is a config error (78) naming the key."""
    path = write_config(
        "state_dir: {state}\ntoken_dir: {tokens}\naccounts:\n  dev:\n    token_url: http://127.0.0.1:9/t\n"
        "    client_id: x\n    client_auth: none\n"
    )
    code, _, err = cli_here(path, "login", "dev", "--device")
    assert code == 78 and "accounts.dev.device_authorization_url: missing" in err


def test_device_and_manual_together_are_refused(write_config, server):
    """`--device --manual` is a usage error (2)."""
    code, _, err = cli_here(device_config(write_config, server), "login", "dev", "--device", "--manual")
    assert code == 2 and "--device and --manual" in err


def test_ctrl_c_while_waiting_exits_130_without_a_traceback(write_config, dirs):
    """SIGINT during the wait for approval ends the login at once with exit 130, one line, no traceback, nothing stored."""
    with AuthServer(device_interval=60) as server:
        proc = cli(device_config(write_config, server), "login", "dev", "--device")
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("and enter the code:"):
                break
        assert server.wait_until(lambda s: bool(s.device_user_codes()), WAIT)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=WAIT)

    assert proc.returncode == 130
    assert "Traceback" not in err and "login of 'dev' interrupted; nothing was stored" in err
    assert not polls(server) and not (dirs["state"] / "dev.json").exists()


# ---------------------------------------------------------------- against node-oidc-provider

_provider_missing = provider_unavailable_reason()


@pytest.mark.slow
@pytest.mark.skipif(bool(_provider_missing), reason=_provider_missing or "")
def test_device_login_end_to_end_against_node_oidc_provider(write_config, dirs):
    """A real device login on node-oidc-provider's pages: polled at 5 s (it sends no interval), stored, and it refreshes."""
    with OidcProvider(access_ttl=300) as op:
        path = write_config(
            "state_dir: {state}\ntoken_dir: {tokens}\naccounts:\n  op:\n    token_url: {token}\n"
            "    device_authorization_url: {device}\n    revocation_url: {revoke}\n    client_id: device-client\n"
            "    client_auth: none\n    scopes: [api:read]\n",
            token=op.token_url,
            device=op.device_authorization_url,
            revoke=op.revocation_url,
        )
        proc = cli(path, "login", "op", "--device")
        assert proc.stdout is not None
        page = code = None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("  http"):
                page = line.strip()
            if line.startswith("and enter the code:"):
                code = line.split(":", 1)[1].strip()
                break
        assert page and code
        final_page = approve_device_over_http(page, code)
        rest, err = proc.communicate(timeout=WAIT + 10)
        out = "".join(lines) + rest

        assert proc.returncode == 0, err + op.log_text()[-2000:]
        assert "Sign-in Success" in final_page
        assert "scopes granted:  api:read" in out
        token = (dirs["tokens"] / "op.token").read_text().strip()
        assert op.token_info(token)["client_id"] == "device-client"
        refreshed = subprocess.run(
            [sys.executable, "-m", "freshtoken", "-c", str(path), "refresh", "op"], capture_output=True, text=True, timeout=WAIT
        )
        assert refreshed.returncode == 0, refreshed.stderr
        assert op.token_is_valid((dirs["tokens"] / "op.token").read_text().strip())
