"""Tests of the loopback OAuth 2.0 devserver, over real HTTP with requests."""

from __future__ import annotations

import base64
import collections
import hashlib
import random
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, quote_plus, urlsplit

import pytest
import requests

from fakes import FakeClock
from freshtoken.testing import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_PUBLIC_CLIENT_ID,
    FAULT_KINDS,
    AuthServer,
)

BASIC = (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)
REDIRECT = "http://127.0.0.1:8888/callback"
WAIT = 10  # bound on any one request


@pytest.fixture
def server() -> Iterator[AuthServer]:
    with AuthServer() as s:
        yield s


def refresh(server: AuthServer, token: str, auth: tuple[str, str] | None = BASIC, **extra: str) -> requests.Response:
    return requests.post(server.token_url, data={"grant_type": "refresh_token", "refresh_token": token, **extra}, auth=auth, timeout=5)


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(server: AuthServer, **params: str) -> requests.Response:
    query = {"response_type": "code", "client_id": DEMO_CLIENT_ID, "redirect_uri": REDIRECT, "state": "xyz", **params}
    return requests.get(server.authorize_url, params=query, allow_redirects=False, timeout=5)


def code_from(response: requests.Response) -> str:
    assert response.status_code == 302, response.text
    return parse_qs(urlsplit(response.headers["Location"]).query)["code"][0]


# ------------------------------------------------------------- refresh grant


def test_refresh_with_basic_auth_returns_a_rotated_token_answer(server: AuthServer) -> None:
    """A refresh with HTTP Basic returns a no-store JSON token answer with a new refresh token."""
    token = server.issue_refresh_token(scope="user-read-private playlist-modify-private")
    r = refresh(server, token)
    assert r.status_code == 200
    assert r.headers["Cache-Control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 20
    assert body["scope"] == "user-read-private playlist-modify-private"
    assert body["refresh_token"] != token
    assert server.is_valid_access_token(body["access_token"])
    assert server.current_refresh_token(token) == body["refresh_token"]
    assert (server.token_requests, server.refreshes_ok, server.reuse_count) == (1, 1, 0)


def test_basic_credentials_are_form_urlencoded_before_base64() -> None:
    """Basic credentials are form-urlencoded before base64 (RFC 6749 §2.3.1); raw special characters fail."""
    client_id, secret = "my client:1", "p+ss/wörd:"
    with AuthServer(clients={client_id: secret}) as server:
        token = server.issue_refresh_token(client_id)
        encoded = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
        header = {"Authorization": "Basic " + base64.b64encode(encoded).decode()}
        data = {"grant_type": "refresh_token", "refresh_token": token}
        assert requests.post(server.token_url, data=data, headers=header, timeout=5).status_code == 200
        raw = {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}
        assert requests.post(server.token_url, data=data, headers=raw, timeout=5).json()["error"] == "invalid_client"


def test_client_secret_in_body_is_accepted(server: AuthServer) -> None:
    """client_id and client_secret as form fields authenticate a confidential client."""
    token = server.issue_refresh_token()
    r = refresh(server, token, auth=None, client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET)
    assert r.status_code == 200


def test_public_client_refreshes_with_client_id_only_and_may_not_send_a_secret(server: AuthServer) -> None:
    """A public client authenticates with client_id alone, and presenting a secret is refused."""
    token = server.issue_refresh_token(DEMO_PUBLIC_CLIENT_ID)
    r = refresh(server, token, auth=None, client_id=DEMO_PUBLIC_CLIENT_ID)
    assert r.status_code == 200
    r = refresh(server, r.json()["refresh_token"], auth=None, client_id=DEMO_PUBLIC_CLIENT_ID, client_secret="x")
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client")


def test_wrong_secret_is_401_invalid_client_with_a_challenge(server: AuthServer) -> None:
    """A wrong client secret answers 401 invalid_client with a WWW-Authenticate header."""
    r = refresh(server, server.issue_refresh_token(), auth=(DEMO_CLIENT_ID, "wrong"))
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client")
    assert r.headers["WWW-Authenticate"].startswith("Basic")


def test_spotify_quirks_answer_invalid_client_with_400() -> None:
    """With spotify_quirks, invalid_client comes back as 400 with Spotify's description."""
    with AuthServer(spotify_quirks=True) as server:
        r = refresh(server, server.issue_refresh_token(), auth=(DEMO_CLIENT_ID, "wrong"))
        assert r.status_code == 400
        assert r.json() == {"error": "invalid_client", "error_description": "Invalid client"}


def test_unknown_refresh_token_is_invalid_grant(server: AuthServer) -> None:
    """An unknown refresh token answers 400 invalid_grant."""
    r = refresh(server, "no-such-token")
    assert (r.status_code, r.json()["error"]) == (400, "invalid_grant")


def test_refresh_token_of_another_client_is_invalid_grant(server: AuthServer) -> None:
    """A refresh token is bound to its client: another client gets invalid_grant."""
    token = server.issue_refresh_token(DEMO_PUBLIC_CLIENT_ID)
    r = refresh(server, token)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_grant")


def test_non_form_body_and_unknown_grant_type_are_rejected(server: AuthServer) -> None:
    """A JSON body is invalid_request and an unknown grant_type is unsupported_grant_type."""
    r = requests.post(server.token_url, json={"grant_type": "refresh_token"}, auth=BASIC, timeout=5)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
    r = requests.post(server.token_url, data={"grant_type": "password"}, auth=BASIC, timeout=5)
    assert (r.status_code, r.json()["error"]) == (400, "unsupported_grant_type")


def test_scope_can_be_narrowed_but_not_widened(server: AuthServer) -> None:
    """A refresh may ask for a subset of the granted scope, not more."""
    token = server.issue_refresh_token(scope="a b")
    r = refresh(server, token, scope="a")
    assert r.json()["scope"] == "a"
    r = refresh(server, r.json()["refresh_token"], scope="a c")
    assert r.json()["error"] == "invalid_scope"


# ------------------------------------------------- rotation and revocation


def test_reusing_a_rotated_refresh_token_revokes_the_grant(server: AuthServer) -> None:
    """Presenting a consumed refresh token is invalid_grant, counts as reuse and revokes the grant."""
    old = server.issue_refresh_token()
    first = refresh(server, old).json()
    r = refresh(server, old)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_grant")
    assert server.reuse_count == 1
    assert refresh(server, first["refresh_token"]).json()["error"] == "invalid_grant"
    assert not server.is_valid_access_token(first["access_token"])
    assert server.current_refresh_token(old) is None


def test_reuse_without_grant_revocation_keeps_the_live_token(server: AuthServer) -> None:
    """With revoke_grant_on_reuse off, reuse is refused and counted but the live token still works."""
    server.revoke_grant_on_reuse = False
    old = server.issue_refresh_token()
    live = refresh(server, old).json()["refresh_token"]
    assert refresh(server, old).status_code == 400
    assert server.reuse_count == 1
    assert refresh(server, live).status_code == 200


def test_without_rotation_no_refresh_token_is_returned_and_the_old_one_keeps_working() -> None:
    """With rotation off, refresh answers omit refresh_token and the same token refreshes again."""
    with AuthServer(rotate_refresh_tokens=False) as server:
        token = server.issue_refresh_token()
        assert "refresh_token" not in refresh(server, token).json()
        assert refresh(server, token).status_code == 200
        assert server.reuse_count == 0


def test_concurrent_spending_of_one_token_lets_exactly_one_win(server: AuthServer) -> None:
    """Two clients spending one refresh token at once: one succeeds, the other is counted as reuse."""
    token = server.issue_refresh_token()
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def spend() -> None:
        barrier.wait()
        statuses.append(refresh(server, token).status_code)

    threads = [threading.Thread(target=spend) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200, 400]
    assert server.reuse_count == 1


def test_many_grants_refresh_in_parallel_without_reuse(server: AuthServer) -> None:
    """Parallel refresh chains on separate grants all succeed with no reuse."""
    tokens = [server.issue_refresh_token() for _ in range(20)]

    def chain(token: str) -> None:
        with requests.Session() as session:
            for _ in range(5):
                r = session.post(
                    server.token_url,
                    data={"grant_type": "refresh_token", "refresh_token": token},
                    auth=BASIC,
                    timeout=5,
                )
                token = r.json()["refresh_token"]

    threads = [threading.Thread(target=chain, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (server.refreshes_ok, server.reuse_count) == (100, 0)


def test_revoke_endpoint_and_revoke_grant(server: AuthServer) -> None:
    """RFC 7009 revocation of a refresh token kills its grant; revoke_grant() does the same directly."""
    token = server.issue_refresh_token()
    r = requests.post(server.revoke_url, data={"token": token}, auth=BASIC, timeout=5)
    assert r.status_code == 200
    assert refresh(server, token).json()["error"] == "invalid_grant"
    other = server.issue_refresh_token()
    assert server.revoke_grant(other)
    assert refresh(server, other).json()["error"] == "invalid_grant"
    assert not server.revoke_grant("unknown")


def test_refresh_token_expires_absolutely_by_the_server_clock(clock: FakeClock) -> None:
    """refresh_token_expires_in counts from the grant's creation, is reported, and then invalid_grant."""
    with AuthServer(refresh_token_expires_in=100, clock=clock) as server:
        token = server.issue_refresh_token()
        clock.advance(40)
        body = refresh(server, token).json()
        assert body["refresh_token_expires_in"] == 60
        clock.advance(60)
        r = refresh(server, body["refresh_token"])
        assert (r.status_code, r.json()["error"]) == (400, "invalid_grant")


# ------------------------------------------- access tokens and /v1/me


def test_access_token_expires_by_the_injected_clock_and_me_follows(clock: FakeClock) -> None:
    """An access token is valid for token_lifetime by the server clock, and /v1/me answers 200 then 401."""
    with AuthServer(clock=clock, token_lifetime=20) as server:
        access = refresh(server, server.issue_refresh_token(user="alice")).json()["access_token"]
        me = requests.get(server.me_url, headers={"Authorization": f"Bearer {access}"}, timeout=5)
        assert (me.status_code, me.json()["id"]) == (200, "alice")
        clock.advance(19)
        assert server.is_valid_access_token(access)
        clock.advance(1)
        assert not server.is_valid_access_token(access)
        me = requests.get(server.me_url, headers={"Authorization": f"Bearer {access}"}, timeout=5)
        assert me.status_code == 401
        assert me.json()["error"]["message"] == "The access token expired"
        assert "invalid_token" in me.headers["WWW-Authenticate"]


def test_me_without_a_bearer_token_is_401(server: AuthServer) -> None:
    """/v1/me without a Bearer token, or with an unknown one, answers 401."""
    assert requests.get(server.me_url, timeout=5).status_code == 401
    assert requests.get(server.me_url, headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 401


def test_lenient_reading_knobs_shape_the_answer() -> None:
    """token_type and expires_in_as_string change the answer's shape as real servers do."""
    with AuthServer(token_type="bearer", expires_in_as_string=True, token_lifetime=3600) as server:
        body = refresh(server, server.issue_refresh_token()).json()
        assert (body["token_type"], body["expires_in"]) == ("bearer", "3600")


# ---------------------------------------------------- client credentials


def test_client_credentials_gives_an_access_token_without_refresh_token(server: AuthServer) -> None:
    """client_credentials returns a valid access token and no refresh token; public clients may not use it."""
    r = requests.post(server.token_url, data={"grant_type": "client_credentials"}, auth=BASIC, timeout=5)
    body = r.json()
    assert r.status_code == 200 and "refresh_token" not in body
    assert server.is_valid_access_token(body["access_token"])
    r = requests.post(server.token_url, data={"grant_type": "client_credentials", "client_id": DEMO_PUBLIC_CLIENT_ID}, timeout=5)
    assert r.json()["error"] == "unauthorized_client"


# ------------------------------------------------- authorization code + PKCE


def test_authorization_code_with_pkce_s256_for_a_public_client(server: AuthServer) -> None:
    """A public client's code exchanged with the right S256 verifier yields a working grant."""
    verifier, challenge = pkce_pair()
    r = authorize(server, client_id=DEMO_PUBLIC_CLIENT_ID, code_challenge=challenge, code_challenge_method="S256", scope="s1")
    location = urlsplit(r.headers["Location"])
    assert location.netloc == "127.0.0.1:8888" and location.path == "/callback"
    assert parse_qs(location.query)["state"] == ["xyz"]
    data = {
        "grant_type": "authorization_code",
        "code": code_from(r),
        "redirect_uri": REDIRECT,
        "client_id": DEMO_PUBLIC_CLIENT_ID,
        "code_verifier": verifier,
    }
    body = requests.post(server.token_url, data=data, timeout=5).json()
    assert body["scope"] == "s1"
    assert refresh(server, body["refresh_token"], auth=None, client_id=DEMO_PUBLIC_CLIENT_ID).status_code == 200


def test_wrong_or_missing_pkce_verifier_is_invalid_grant(server: AuthServer) -> None:
    """A wrong or missing code_verifier is invalid_grant, and so is a verifier without a challenge."""
    _, challenge = pkce_pair()
    for verifier in (pkce_pair()[0], None):
        code = code_from(authorize(server, code_challenge=challenge, code_challenge_method="S256"))
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
        if verifier:
            data["code_verifier"] = verifier
        r = requests.post(server.token_url, data=data, auth=BASIC, timeout=5)
        assert (r.status_code, r.json()["error"]) == (400, "invalid_grant")
    code = code_from(authorize(server))
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": "a" * 43}
    assert requests.post(server.token_url, data=data, auth=BASIC, timeout=5).json()["error"] == "invalid_grant"


def test_code_redirect_uri_must_match_exactly(server: AuthServer) -> None:
    """The token request's redirect_uri must equal the authorize request's."""
    code = code_from(authorize(server))
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT + "/"}
    r = requests.post(server.token_url, data=data, auth=BASIC, timeout=5)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_grant")


def test_replayed_code_is_refused_and_revokes_its_grant(server: AuthServer) -> None:
    """A code works once; replaying it is invalid_grant and revokes the grant it produced."""
    code = code_from(authorize(server))
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    first = requests.post(server.token_url, data=data, auth=BASIC, timeout=5).json()
    assert requests.post(server.token_url, data=data, auth=BASIC, timeout=5).json()["error"] == "invalid_grant"
    assert refresh(server, first["refresh_token"]).json()["error"] == "invalid_grant"


def test_authorize_validates_client_and_redirect_uri(server: AuthServer) -> None:
    """Unknown clients and non-loopback or localhost redirect URIs get a 400 page, never a redirect."""
    assert authorize(server, client_id="nobody").status_code == 400
    assert authorize(server, redirect_uri="https://evil.example/cb").status_code == 400
    assert authorize(server, redirect_uri="http://localhost:8888/cb").status_code == 400
    assert authorize(server, redirect_uri="http://[::1]:9/cb").status_code == 302


def test_public_client_must_use_pkce(server: AuthServer) -> None:
    """A public client's authorize request without code_challenge is redirected with invalid_request."""
    r = authorize(server, client_id=DEMO_PUBLIC_CLIENT_ID)
    assert parse_qs(urlsplit(r.headers["Location"]).query)["error"] == ["invalid_request"]


def test_registered_loopback_uri_without_port_accepts_any_port() -> None:
    """A loopback redirect URI registered without a port matches any port (RFC 8252 §7.3); others match exactly."""
    with AuthServer(redirect_uris=["http://127.0.0.1/callback", "https://app.example/cb"]) as server:
        assert authorize(server, redirect_uri="http://127.0.0.1:43121/callback").status_code == 302
        assert authorize(server, redirect_uri="http://127.0.0.1:43121/other").status_code == 400
        assert authorize(server, redirect_uri="https://app.example/cb").status_code == 302
        assert authorize(server, redirect_uri="https://app.example:444/cb").status_code == 400


def test_denied_authorization_redirects_with_access_denied(server: AuthServer) -> None:
    """With deny_authorization, the redirect carries error=access_denied and the state."""
    server.deny_authorization = True
    query = parse_qs(urlsplit(authorize(server).headers["Location"]).query)
    assert query == {"error": ["access_denied"], "state": ["xyz"]}


# --------------------------------------------------------------- scripting


def test_scripted_replies_come_in_order_then_normal_behaviour_resumes(server: AuthServer) -> None:
    """Scripted status, JSON, HTML, raw bytes and headers are answered in order, then normal answers resume."""
    token = server.issue_refresh_token()
    server.script(503, json={"error": "temporarily_unavailable"}, headers={"Retry-After": "7"}, times=2)
    server.script(502, body="<html>bad gateway</html>")
    server.script(200, raw=b"\x00garbage")
    assert server.pending_scripts == 4
    for _ in range(2):
        r = refresh(server, token)
        assert (r.status_code, r.headers["Retry-After"], r.json()) == (503, "7", {"error": "temporarily_unavailable"})
    r = refresh(server, token)
    assert (r.status_code, r.text) == (502, "<html>bad gateway</html>")
    assert r.headers["Content-Type"].startswith("text/html")
    assert refresh(server, token).content == b"\x00garbage"
    assert refresh(server, token).status_code == 200  # the token was never spent by a scripted reply
    assert [rec.status for rec in server.requests] == [503, 503, 502, 200, 200]


def test_scripted_delay_slows_a_normal_answer(server: AuthServer) -> None:
    """A script with only a delay answers normally after that delay."""
    server.script(delay=0.3)
    start = time.monotonic()
    r = refresh(server, server.issue_refresh_token())
    assert r.status_code == 200
    assert time.monotonic() - start >= 0.3


def test_scripted_drop_resets_the_connection(server: AuthServer) -> None:
    """drop=True closes the connection without an answer and leaves the grant untouched."""
    token = server.issue_refresh_token()
    server.script(drop=True)
    with pytest.raises(requests.ConnectionError):
        refresh(server, token)
    assert server.requests[-1].status is None
    assert refresh(server, token).status_code == 200


def test_scripted_drop_after_processing_loses_the_rotated_token(server: AuthServer) -> None:
    """drop=True with process=True rotates the token server-side although the client never hears of it."""
    token = server.issue_refresh_token()
    server.script(drop=True, process=True)
    with pytest.raises(requests.ConnectionError):
        refresh(server, token)
    assert server.current_refresh_token(token) != token
    assert refresh(server, token).json()["error"] == "invalid_grant"
    assert server.reuse_count == 1


def test_strict_mode_fails_loudly_without_a_script() -> None:
    """In strict mode a token request with nothing scripted gets 500 unscripted."""
    with AuthServer(strict=True) as server:
        server.script(429, json={"error": "slow_down"})
        assert refresh(server, "x").status_code == 429
        r = refresh(server, "x")
        assert (r.status_code, r.json()["error"]) == (500, "unscripted")


def test_script_rejects_contradictory_arguments(server: AuthServer) -> None:
    """script() refuses a drop with a status, two bodies, or times below one."""
    with pytest.raises(ValueError):
        server.script(500, drop=True)
    with pytest.raises(ValueError):
        server.script(json={}, body="x")
    with pytest.raises(ValueError):
        server.script(500, times=0)


# -------------------------------------------------------------- fault mode


def test_fault_mode_injects_faults_at_roughly_the_set_rate() -> None:
    """A seeded fault_rate of 0.3 fails about 30 % of token requests with every kind of fault, exactly as the seed draws them."""
    # The same seed, drawn as the server draws it once per token request: the faults to expect, counted exactly.
    draws = random.Random(7)
    expected = collections.Counter(draws.choice(FAULT_KINDS) for _ in range(300) if draws.random() < 0.3)
    # A short hang still ends in its 504, so no client timeout is needed to tell a hang from an answer.
    with AuthServer(fault_rate=0.3, fault_hang=0.01, rng=random.Random(7)) as server:
        token = server.issue_refresh_token()
        failures = 0
        retry_after = set()
        with requests.Session() as session:
            for _ in range(300):
                try:
                    r = session.post(
                        server.token_url,
                        data={"grant_type": "refresh_token", "refresh_token": token},
                        auth=BASIC,
                        timeout=WAIT,
                    )
                except requests.ConnectionError:
                    failures += 1
                    continue
                if r.status_code == 200:
                    token = r.json()["refresh_token"]
                else:
                    failures += 1
                    if r.status_code == 429:
                        retry_after.add(r.headers["Retry-After"])
        total = sum(server.faults.values())
        assert server.faults == expected
        assert failures == total
        assert 0.2 * 300 < total < 0.4 * 300
        assert set(server.faults) == {"500", "502", "503", "429", "hang", "reset"}
        assert retry_after == {"1"}
        assert server.reuse_count == 0  # faults never spend a token


def test_stop_is_prompt_while_a_hang_is_in_progress() -> None:
    """stop() returns quickly even while a request hangs, and the hanging client sees the connection end."""
    server = AuthServer(fault_rate=1.0, fault_kinds=["hang"], fault_hang=60).start()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            refresh(server, "x")
        except requests.RequestException as e:
            errors.append(e)

    caller = threading.Thread(target=call)
    caller.start()
    assert server.wait_until(lambda s: s.token_requests == 1, timeout=5)
    start = time.monotonic()
    server.stop()
    caller.join(timeout=5)
    assert time.monotonic() - start < 2
    assert len(errors) == 1


# ------------------------------------------------------------- plumbing


def test_request_log_records_what_was_sent(server: AuthServer) -> None:
    """The request log keeps method, path, lower-cased headers, raw body, parsed form and status."""
    token = server.issue_refresh_token()
    refresh(server, token)
    record = server.requests[0]
    assert (record.method, record.path, record.status) == ("POST", "/api/token", 200)
    assert record.headers["authorization"].startswith("Basic ")
    assert record.form == {"grant_type": "refresh_token", "refresh_token": token}
    assert token in record.body
    server.clear_requests()
    assert server.requests == []


def test_keep_alive_reuses_one_connection(server: AuthServer) -> None:
    """Requests on one Session share a single HTTP/1.1 connection."""
    token = server.issue_refresh_token()
    with requests.Session() as session:
        for _ in range(5):
            r = session.post(server.token_url, data={"grant_type": "refresh_token", "refresh_token": token}, auth=BASIC, timeout=5)
            token = r.json()["refresh_token"]
    assert server.connections == 1


def test_stop_closes_kept_alive_connections() -> None:
    """After stop(), a kept-alive connection is closed rather than answered."""
    server = AuthServer().start()
    with requests.Session() as session:
        assert session.get(server.me_url, timeout=5).status_code == 401
        server.stop()
        with pytest.raises(requests.ConnectionError):
            session.get(server.me_url, timeout=5)


def test_restart_after_stop_keeps_the_port_and_the_grants() -> None:
    """start() after stop() serves the same URL with the same grants, like an outage that ends."""
    server = AuthServer().start()
    try:
        token = server.issue_refresh_token()
        url = server.token_url
        server.stop()
        with pytest.raises(requests.ConnectionError):
            refresh(server, token)
        server.start()
        assert server.token_url == url
        assert refresh(server, token).status_code == 200
    finally:
        server.stop()


def test_main_prints_urls_and_a_refresh_token_that_works() -> None:
    """`python -m freshtoken.testing` prints its URLs and a seeded refresh token that refreshes."""
    proc = subprocess.Popen([sys.executable, "-m", "freshtoken.testing", "--lifetime", "5"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        printed: dict[str, str] = {}
        for line in proc.stdout:  # the banner ends with the "try:" line; the server keeps running
            key, _, value = line.strip().partition(": ")
            printed[key] = value.split()[0] if value else ""
            if key == "try":
                break
        data = {"grant_type": "refresh_token", "refresh_token": printed["refresh_token"]}
        r = requests.post(printed["token_url"], data=data, auth=BASIC, timeout=5)
        assert (r.status_code, r.json()["expires_in"]) == (200, 5)
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0
        assert proc.stdout is not None
        proc.stdout.close()
