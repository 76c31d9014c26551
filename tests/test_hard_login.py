"""Hardening of `freshtoken login`: a listener that strays and slow clients cannot stop, clean server text,
the daemon told at once, error attributes kept, and a `get` line that works as printed."""

from __future__ import annotations

import io
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
import requests

import test_login as tl
from fakes import poll
from freshtoken import config as config_module
from freshtoken.errors import TemporaryError
from freshtoken.login import _read_head, login
from freshtoken.store import Store
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET

make_config = tl.make_config  # the fixture: one account `demo` against auth_server
WAIT = tl.WAIT


class Trickler:
    """A client that sends a request to the listener one byte every 0.2 s, until stopped or cut off."""

    def __init__(self, redirect_uri: str) -> None:
        parts = urlsplit(redirect_uri)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=WAIT)
        self.request = f"GET {parts.path}?code=slow&state=slow HTTP/1.1\r\nX-Slow: ".encode() + b"a" * 100_000
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for byte in self.request:
            if self.stop.wait(0.2):
                return
            try:
                self.sock.send(bytes([byte]))
            except OSError:
                return  # the listener cut us off, or its process ended
            self.sent += 1

    def wait_sent(self, count: int) -> None:
        assert poll(lambda: self.sent >= count, WAIT, interval=0.05), "the trickler could not send"

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WAIT)
        self.sock.close()


# ---------------------------------------------------------------- the listener: strays and slow clients


def test_stray_wrong_state_request_leaves_the_login_waiting(make_config, auth_server, dirs):
    """`curl '127.0.0.1:PORT/callback?code=x&state=wrong'` gets a short 400 page and the login goes on to succeed."""

    def stray_then_follow(url: str) -> tuple[requests.Response, requests.Response]:
        redirect_uri = tl.query(url)["redirect_uri"]
        stray = requests.get(redirect_uri + "?code=x&state=wrong", timeout=15)
        return stray, tl.follow(url)

    done = tl.run_inprocess(make_config(), drive=stray_then_follow)

    assert done.code == 0, done.err
    stray, real = done.driven
    assert stray.status_code == 400 and stray.headers["Content-Type"].startswith("text/html") and len(stray.content) < 2000
    assert real.status_code == 200
    (exchange,) = tl.token_requests(auth_server)
    assert exchange.form["code"] != "x"
    assert tl.state_file(dirs)["needs_login"] is False


def test_access_denied_with_the_right_state_ends_the_login(make_config, dirs):
    """error=access_denied carrying this login's state still ends the login at once with exit 1."""

    def deny(url: str) -> requests.Response:
        params = tl.query(url)
        return requests.get(params["redirect_uri"] + "?" + urlencode({"error": "access_denied", "state": params["state"]}), timeout=15)

    started = time.monotonic()
    done = tl.run_inprocess(make_config(), drive=deny, timeout=60)

    assert done.code == 1 and "freshtoken: login denied: access_denied" in done.err
    assert time.monotonic() - started < 30  # not the 60 s deadline
    assert not dirs["state"].exists()


@pytest.mark.slow
def test_a_trickling_connection_does_not_block_the_real_callback(make_config, auth_server, dirs):
    """A client sending its request a byte at a time is still connected when the browser's callback arrives, which logs in."""
    tricklers: list[Trickler] = []

    def trickle_then_follow(url: str) -> requests.Response:
        trickler = Trickler(tl.query(url)["redirect_uri"])
        tricklers.append(trickler)
        trickler.wait_sent(2)
        return tl.follow(url)

    try:
        done = tl.run_login(make_config(), "demo", drive=trickle_then_follow, timeout=10)
    finally:
        for trickler in tricklers:
            trickler.close()

    assert done.code == 0, done.err
    assert done.driven.status_code == 200
    assert len(tl.token_requests(auth_server)) == 1


@pytest.mark.slow
def test_a_trickler_alone_cannot_hold_the_login_past_its_timeout(make_config, dirs):
    """With only a trickling client connected, `--timeout 2` still ends the login in about 2 s with exit 1."""
    tricklers: list[Trickler] = []

    def trickle(url: str) -> None:
        tricklers.append(Trickler(tl.query(url)["redirect_uri"]))

    started = time.monotonic()
    try:
        done = tl.run_login(make_config(), "demo", drive=trickle, timeout=2)
    finally:
        elapsed = time.monotonic() - started
        for trickler in tricklers:
            trickler.close()

    assert done.code == 1, done.err
    assert "no answer from the browser within 2s" in done.err
    assert elapsed < 10
    assert tricklers and tricklers[0].sent > 0


def test_a_request_head_trickling_past_its_deadline_is_dropped():
    """The listener reads a request head under one deadline: bytes arriving every 0.05 s do not keep a connection past it."""
    ours, theirs = socket.socketpair()
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.05):
            try:
                theirs.send(b"a")
            except OSError:
                return

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        with pytest.raises(TimeoutError):
            _read_head(ours, time.monotonic() + 0.2)
        theirs.send(b" HTTP/1.1\r\nHost: x\r\n\r\n")
        stop.set()
        sender.join(WAIT)
        assert _read_head(ours, time.monotonic() + WAIT).endswith(b"\r\n\r\n")  # a complete head is returned whole
    finally:
        stop.set()
        ours.close()
        theirs.close()


# ---------------------------------------------------------------- server text


def test_server_text_shown_during_login_is_printable_bounded_and_redacted(make_config, auth_server, dirs):
    """An error_description with escapes, newlines, the state echoed and 5000 characters reaches stderr as one short clean line."""
    echoed: dict[str, str] = {}

    def deny_noisily(url: str) -> requests.Response:
        params = tl.query(url)
        echoed["state"] = params["state"]
        description = f"\x1b[31mno\nfreshtoken: forged line\r state={params['state']} " + "x" * 5000
        answer = {"error": "access_denied", "error_description": description, "state": params["state"]}
        return requests.get(params["redirect_uri"] + "?" + urlencode(answer), timeout=15)

    done = tl.run_inprocess(make_config(), drive=deny_noisily)

    assert done.code == 1
    (line,) = [line for line in done.err.splitlines() if "login denied" in line]
    assert "\x1b" not in done.err and "\r" not in done.err
    assert "\nfreshtoken: forged line" not in done.err
    assert echoed["state"] not in done.err and "<redacted>" in line
    assert len(line) < 400


def test_granted_scopes_from_the_server_are_shown_clean(make_config, auth_server, dirs):
    """A token answer whose scope holds an ANSI escape and a newline is summarised on one clean line."""
    auth_server.script(
        200,
        json={
            "access_token": "at-" + "a" * 40,
            "token_type": "Bearer",
            "expires_in": 3600,
            "refresh_token": "rt-" + "r" * 40,
            "scope": "read\x1b[31m write\nfreshtoken: forged",
        },
    )
    done = tl.run_inprocess(make_config(), manual=True, stdin=io.StringIO("some-code\n"))

    assert done.code == 0, done.err
    assert "\x1b" not in done.out
    assert not any(line.startswith("freshtoken: forged") for line in done.out.splitlines())
    (scopes,) = [line for line in done.out.splitlines() if "scopes granted:" in line]
    assert "read" in scopes and "forged" in scopes


# ---------------------------------------------------------------- the daemon, error attributes


def test_login_tells_a_running_daemon_at_once(make_config, dirs):
    """After a login the daemon's wake socket receives "rescan", and the summary says the daemon was told; without one it says none runs."""
    path = make_config()
    alone = tl.run_inprocess(path, manual=True, paste=tl.redirect_location)
    assert alone.code == 0, alone.err
    assert "No `freshtoken run` is running on this state dir" in alone.out

    store = Store(dirs["state"])
    store.prepare()
    wake = store.open_wake_socket()
    assert wake is not None
    with wake:
        wake.settimeout(WAIT)
        done = tl.run_inprocess(path, drive=tl.follow)
        assert done.code == 0, done.err
        assert wake.recv(64) == b"rescan"
    assert "The running `freshtoken run` has been told" in done.out


def test_a_temporary_exchange_error_keeps_its_retry_after(make_config, auth_server):
    """A 429 with Retry-After on the code exchange surfaces as a TemporaryError that still carries retry_after."""
    auth_server.script(429, json={"error": "slow_down"}, headers={"Retry-After": "30"})
    config = config_module.load(make_config(), os.environ)

    with pytest.raises(TemporaryError) as caught:
        login(
            config, config.accounts["demo"], browser=False, manual=True, out=io.StringIO(), err=io.StringIO(), stdin=io.StringIO("a-code\n")
        )

    assert str(caught.value).startswith("code exchange failed: HTTP 429")
    assert caught.value.retry_after == 30


# ---------------------------------------------------------------- the `get` line in the summary


def _printed_get(out: str) -> list[str]:
    match = re.search(r"(freshtoken get [^`\n]+)", out)
    assert match, out
    return shlex.split(match.group(1).strip())


def _run_printed(words: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a printed `freshtoken ...` command line as the user would, in this environment, from another directory."""
    assert words[0] == "freshtoken"
    return subprocess.run([sys.executable, "-m", "freshtoken", *words[1:]], capture_output=True, text=True, timeout=WAIT, cwd="/")


def test_the_printed_get_command_works_with_a_custom_token_dir(write_config, auth_server, tmp_path):
    """With a token_dir outside the default places, the summary's `freshtoken get` line (--token-dir, quoted) prints the token."""
    tokens = tmp_path / "my tokens"
    path = write_config(
        "state_dir: {state}\ntoken_dir: '{custom}'\naccounts:\n  demo:\n    token_url: {token_url}\n    authorize_url: {authorize_url}\n"
        "    client_id: {cid}\n    client_secret: {secret}\n    redirect_uri: http://127.0.0.1/callback\n",
        custom=tokens,
        token_url=auth_server.token_url,
        authorize_url=auth_server.authorize_url,
        cid=DEMO_CLIENT_ID,
        secret=DEMO_CLIENT_SECRET,
    )
    done = tl.run_inprocess(path, drive=tl.follow)
    assert done.code == 0, done.err

    words = _printed_get(done.out)
    assert words == ["freshtoken", "get", "demo", "--token-dir", str(tokens)]
    got = _run_printed(words)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == (tokens / "demo.token").read_text().strip()
    assert auth_server.is_valid_access_token(got.stdout.strip())


def test_the_printed_get_command_is_plain_when_the_token_dir_is_the_default(write_config, auth_server, tmp_path):
    """With the default token dir ($XDG_RUNTIME_DIR/freshtoken) the summary says plain `freshtoken get demo`, and that works."""
    path = write_config(
        "state_dir: {state}\naccounts:\n  demo:\n    token_url: {token_url}\n    authorize_url: {authorize_url}\n"
        "    client_id: {cid}\n    client_secret: {secret}\n    redirect_uri: http://127.0.0.1/callback\n",
        token_url=auth_server.token_url,
        authorize_url=auth_server.authorize_url,
        cid=DEMO_CLIENT_ID,
        secret=DEMO_CLIENT_SECRET,
    )
    done = tl.run_inprocess(path, drive=tl.follow)
    assert done.code == 0, done.err

    words = _printed_get(done.out)
    assert words == ["freshtoken", "get", "demo"]
    got = _run_printed(words)
    assert got.returncode == 0, got.stderr
    assert auth_server.is_valid_access_token(got.stdout.strip())
    assert Path(os.environ["XDG_RUNTIME_DIR"], "freshtoken", "demo.token").exists()
