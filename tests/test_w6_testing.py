"""The split of the old devserver: the shipped demo server stays small, freshtoken.testing adds the rest."""

from __future__ import annotations

import subprocess
import sys
import threading

import requests

from freshtoken.demoserver import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DemoServer
from freshtoken.testing import AuthServer

BASIC = (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)


def test_demo_server_rotates_refresh_tokens_and_revokes_the_grant_on_reuse() -> None:
    """The demo's server rotates refresh tokens, and a spent one revokes its whole grant."""
    with DemoServer() as server:
        first = server.issue_refresh_token(DEMO_CLIENT_ID, "demo")
        answer = requests.post(server.token_url, data={"grant_type": "refresh_token", "refresh_token": first}, auth=BASIC, timeout=5)
        assert answer.status_code == 200
        second = answer.json()["refresh_token"]
        assert second != first and server.is_valid_access_token(answer.json()["access_token"])
        reuse = requests.post(server.token_url, data={"grant_type": "refresh_token", "refresh_token": first}, auth=BASIC, timeout=5)
        assert reuse.json()["error"] == "invalid_grant"
        assert server.reuse_count == 1 and server.current_refresh_token(second) is None


def test_demo_server_serves_client_credentials_but_not_the_testing_endpoints() -> None:
    """client_credentials works on the demo's server; revocation and the device endpoint are testing-only (404)."""
    with DemoServer() as server:
        answer = requests.post(server.token_url, data={"grant_type": "client_credentials"}, auth=BASIC, timeout=5)
        assert answer.status_code == 200 and "refresh_token" not in answer.json()
        assert requests.post(server.url + "/revoke", data={"token": "x"}, auth=BASIC, timeout=5).status_code == 404
        assert requests.post(server.url + "/device/code", auth=BASIC, timeout=5).status_code == 404


def test_the_shipped_demo_does_not_load_the_testing_module() -> None:
    """Importing freshtoken.demo loads freshtoken.demoserver, not freshtoken.testing."""
    code = "import sys, freshtoken.demo; print('freshtoken.testing' in sys.modules, 'freshtoken.demoserver' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


def test_rate_limit_answers_429_with_retry_after_and_counts() -> None:
    """Below one request's worth of budget, every token request gets 429 with the configured Retry-After."""
    with AuthServer(rate_limit=0.5, rate_limit_retry_after=7) as server:
        token = server.issue_refresh_token()
        for _ in range(2):
            answer = requests.post(server.token_url, data={"grant_type": "refresh_token", "refresh_token": token}, auth=BASIC, timeout=5)
            assert answer.status_code == 429 and answer.headers["Retry-After"] == "7"
        assert server.rate_limited == 2 and server.token_requests == 2 and server.refreshes_ok == 0


def test_inflight_counts_token_requests_held_by_a_scripted_delay() -> None:
    """Two token requests held by a scripted delay are both in flight at once; stop() releases them and the count falls to 0."""
    server = AuthServer().start()
    server.script(delay=60, times=2)

    def post() -> None:
        try:
            requests.post(server.token_url, data={"grant_type": "client_credentials"}, auth=BASIC, timeout=30)
        except requests.RequestException:
            pass  # stop() resets the held connections

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    assert server.wait_until(lambda s: s.inflight == 2, timeout=10)
    server.stop()
    for thread in threads:
        thread.join(timeout=10)
    assert server.wait_until(lambda s: s.inflight == 0, timeout=10)
    assert server.max_inflight == 2
