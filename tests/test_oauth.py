"""TokenClient against the loopback AuthServer over real HTTP: grants, client auth, lenient parsing, error classes."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest

from fakes import FakeClock
from freshtoken.config import Account
from freshtoken.errors import FreshtokenError, InvalidGrant, MalformedAnswer, RefreshFailed, TemporaryError
from freshtoken.model import Secret
from freshtoken.oauth import Timeouts, TokenClient, make_session
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_PUBLIC_CLIENT_ID, AuthServer


@pytest.fixture
def client(clock: FakeClock) -> Iterator[TokenClient]:
    """A TokenClient with short timeouts (read 0.3 s) on the shared fake clock; its session is closed afterwards."""
    session = make_session()
    yield TokenClient(session, Timeouts(connect=2.0, read=0.3), clock=clock)
    session.close()


def account_for(server: AuthServer, **overrides: Any) -> Account:
    values: dict[str, Any] = {
        "name": "demo",
        "token_url": server.token_url,
        "client_id": DEMO_CLIENT_ID,
        "client_secret": Secret(DEMO_CLIENT_SECRET),
        "client_auth": "basic",
    }
    values.update(overrides)
    return Account(**values)


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ grants and client authentication


def test_refresh_with_basic_auth_sends_form_urlencoded_credentials(clock: FakeClock) -> None:
    """Basic auth sends base64(urlencode(id):urlencode(secret)), no secret in the body, and the server accepts it."""
    client_id, secret = "my app", "s3cr:et/+&=x"
    with AuthServer(clients={client_id: secret}, token_lifetime=3600) as server:
        seed = server.issue_refresh_token(client_id)
        session = make_session()
        try:
            client = TokenClient(session, Timeouts(2.0, 2.0), clock=clock)
            result = client.refresh(account_for(server, client_id=client_id, client_secret=Secret(secret)), Secret(seed))
        finally:
            session.close()
        (request,) = server.requests
    scheme, _, encoded = request.headers["authorization"].partition(" ")
    decoded = base64.b64decode(encoded).decode()
    assert scheme == "Basic"
    assert decoded == "my+app:s3cr%3Aet%2F%2B%26%3Dx"
    assert [unquote_plus(part) for part in decoded.split(":")] == [client_id, secret]
    assert request.form == {"grant_type": "refresh_token", "refresh_token": seed}
    assert result.refresh_token is not None and result.refresh_token.reveal() == server.current_refresh_token(seed)
    assert result.access.expires_at == clock.now + 3600
    assert result.access.token_type == "Bearer"


def test_refresh_with_post_auth_puts_id_and_secret_in_the_body(auth_server: AuthServer, client: TokenClient) -> None:
    """client_auth post sends client_id and client_secret as form fields and no Authorization header."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    result = client.refresh(account_for(auth_server, client_auth="post"), Secret(seed))
    (request,) = auth_server.requests
    assert "authorization" not in request.headers
    assert request.form == {
        "grant_type": "refresh_token",
        "refresh_token": seed,
        "client_id": DEMO_CLIENT_ID,
        "client_secret": DEMO_CLIENT_SECRET,
    }
    assert request.status == 200
    assert auth_server.is_valid_access_token(result.access.access_token.reveal())


def test_public_client_sends_client_id_only(auth_server: AuthServer, client: TokenClient) -> None:
    """client_auth none sends client_id in the body, no secret and no Authorization header."""
    seed = auth_server.issue_refresh_token(DEMO_PUBLIC_CLIENT_ID)
    account = account_for(auth_server, client_id=DEMO_PUBLIC_CLIENT_ID, client_secret=None, client_auth="none")
    result = client.refresh(account, Secret(seed))
    (request,) = auth_server.requests
    assert "authorization" not in request.headers
    assert request.form == {"grant_type": "refresh_token", "refresh_token": seed, "client_id": DEMO_PUBLIC_CLIENT_ID}
    assert result.refresh_token is not None and result.refresh_token.reveal() != seed


def test_client_credentials_sends_scope_and_returns_no_refresh_token(
    auth_server: AuthServer, client: TokenClient, clock: FakeClock
) -> None:
    """The client_credentials grant sends the scopes space-separated and gets an access token without a refresh token."""
    account = account_for(auth_server, grant="client_credentials", scopes=("a", "b"))
    result = client.client_credentials(account)
    (request,) = auth_server.requests
    assert request.form == {"grant_type": "client_credentials", "scope": "a b"}
    assert request.headers["authorization"].startswith("Basic ")
    assert result.refresh_token is None
    assert result.access.scope == "a b"
    assert result.access.expires_at == clock.now + 3600
    assert auth_server.is_valid_access_token(result.access.access_token.reveal())


def test_requests_carry_user_agent_and_accept_json(auth_server: AuthServer, client: TokenClient) -> None:
    """Token requests say who they are (freshtoken/VERSION) and ask for JSON."""
    client.client_credentials(account_for(auth_server, grant="client_credentials"))
    (request,) = auth_server.requests
    assert request.headers["user-agent"].startswith("freshtoken/")
    assert request.headers["accept"] == "application/json"


# ------------------------------------------------------------------ Spotify-shaped answers


def test_spotify_shaped_answer_is_read_leniently(clock: FakeClock) -> None:
    """String expires_in, lower-case "bearer", no refresh_token and refresh_token_expires_in all parse."""
    with AuthServer(
        clock=clock,
        token_lifetime=3600,
        expires_in_as_string=True,
        token_type="bearer",
        rotate_refresh_tokens=False,
        refresh_token_expires_in=180 * 86400,
        spotify_quirks=True,
    ) as server:
        seed = server.issue_refresh_token(DEMO_CLIENT_ID, scope="playlist-modify-private")
        clock.advance(86400)
        session = make_session()
        try:
            result = TokenClient(session, Timeouts(2.0, 2.0), clock=clock).refresh(account_for(server), Secret(seed))
        finally:
            session.close()
    assert result.access.token_type == "Bearer"
    assert result.access.expires_at == clock.now + 3600
    assert result.access.scope == "playlist-modify-private"
    assert result.refresh_token is None  # the caller keeps the old one
    assert result.refresh_token_expires_at == clock.now + 179 * 86400


# ------------------------------------------------------------------ failure classification


SEED_IN_DESCRIPTION = "__SEED__"

CASES: list[tuple[str, dict[str, Any], type[FreshtokenError], list[str]]] = [
    (
        "500 json",
        {"status": 500, "json": {"error": "server_error", "error_description": "boom"}},
        TemporaryError,
        ["HTTP 500", "server_error", "boom"],
    ),
    ("502 html", {"status": 502, "body": "<html><h1>Bad Gateway</h1></html>"}, TemporaryError, ["HTTP 502"]),
    ("503 text", {"status": 503, "raw": b"Service Unavailable\n", "headers": {"Content-Type": "text/plain"}}, TemporaryError, ["HTTP 503"]),
    (
        "server_error in 400",
        {"status": 400, "json": {"error": "server_error", "error_description": "try later"}},
        TemporaryError,
        ["HTTP 400", "server_error", "try later"],
    ),
    (
        "temporarily_unavailable in 400",
        {"status": 400, "json": {"error": "temporarily_unavailable"}},
        TemporaryError,
        ["HTTP 400", "temporarily_unavailable"],
    ),
    (
        "invalid_grant",
        {"status": 400, "json": {"error": "invalid_grant", "error_description": "Refresh token revoked"}},
        InvalidGrant,
        ["HTTP 400", "invalid_grant", "Refresh token revoked"],
    ),
    (
        "invalid_client 400",
        {"status": 400, "json": {"error": "invalid_client", "error_description": "Invalid client"}},
        RefreshFailed,
        ["HTTP 400", "invalid_client", "Invalid client"],
    ),
    (
        "invalid_client 401",
        {"status": 401, "json": {"error": "invalid_client", "error_description": "bad secret"}, "headers": {"WWW-Authenticate": "Basic"}},
        RefreshFailed,
        ["HTTP 401", "invalid_client", "bad secret"],
    ),
    ("invalid_scope", {"status": 400, "json": {"error": "invalid_scope"}}, RefreshFailed, ["HTTP 400", "invalid_scope"]),
    ("html 200", {"status": 200, "body": "<html>login page</html>"}, MalformedAnswer, ["HTTP 200", "not JSON", "text/html"]),
    (
        "truncated json 200",
        {"status": 200, "raw": b'{"access_token": "abc", "expires', "headers": {"Content-Type": "application/json"}},
        MalformedAnswer,
        ["HTTP 200", "truncated or invalid"],
    ),
    (
        "200 without access_token",
        {"status": 200, "json": {"token_type": "Bearer", "expires_in": 3600}},
        MalformedAnswer,
        ["malformed", "access_token"],
    ),
    (
        "invalid_grant with 200",
        {"status": 200, "json": {"error": "invalid_grant", "error_description": "bad"}},
        InvalidGrant,
        ["HTTP 200 invalid_grant: bad"],
    ),
    ("server_error with 200", {"status": 200, "json": {"error": "server_error"}}, TemporaryError, ["HTTP 200 server_error"]),
    (
        "unknown error with 200",
        {"status": 200, "json": {"error": "unverified_user_email"}},
        RefreshFailed,
        ["HTTP 200 unverified_user_email"],
    ),
    ("408", {"status": 408, "body": "<html>Request Timeout</html>"}, TemporaryError, ["HTTP 408"]),
    ("403 html", {"status": 403, "body": "<html>Forbidden</html>"}, RefreshFailed, ["HTTP 403", "text/html"]),
    ("404 html", {"status": 404, "body": "<html>Not Found</html>"}, RefreshFailed, ["HTTP 404", "check token_url"]),
    ("302 redirect", {"status": 302, "headers": {"Location": "https://example.invalid/"}}, RefreshFailed, ["HTTP 302", "redirected"]),
    ("error object, not a code", {"status": 400, "json": {"error": {"status": 400, "message": "bad"}}}, RefreshFailed, ["HTTP 400"]),
    ("error list 503", {"status": 503, "json": {"error": ["x"]}}, TemporaryError, ["HTTP 503"]),
    (
        "description echoes the refresh token",
        {"status": 400, "json": {"error": "invalid_grant", "error_description": f"token {SEED_IN_DESCRIPTION} is unknown"}},
        InvalidGrant,
        ["token <redacted> is unknown"],
    ),
    (
        "description echoes the secret",
        {"status": 401, "json": {"error": "invalid_client", "error_description": f"secret {DEMO_CLIENT_SECRET} is wrong"}},
        RefreshFailed,
        ["secret <redacted> is wrong"],
    ),
    (
        "control characters in description",
        {"status": 400, "json": {"error": "invalid_request", "error_description": "line1\nline2\x1b[31m"}},
        RefreshFailed,
        ["line1 line2 [31m"],
    ),
]


@pytest.mark.parametrize(("script", "expected", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_failures_are_classified_and_told_without_secrets(
    auth_server: AuthServer, client: TokenClient, script: dict[str, Any], expected: type[FreshtokenError], fragments: list[str]
) -> None:
    """Each failing answer maps to its error class; the message has the status and OAuth words but no secret or body."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    if "json" in script and isinstance(script["json"].get("error_description"), str):
        script = {
            **script,
            "json": {**script["json"], "error_description": script["json"]["error_description"].replace(SEED_IN_DESCRIPTION, seed)},
        }
    auth_server.script(**script)
    with pytest.raises(FreshtokenError) as caught:
        client.refresh(account_for(auth_server), Secret(seed))
    assert type(caught.value) is expected
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message
    for secret in (seed, DEMO_CLIENT_SECRET, "grant_type", "refresh_token="):
        assert secret not in message
    assert len(auth_server.requests) == 1  # no hidden retry


def test_429_carries_the_retry_after_figure(auth_server: AuthServer, client: TokenClient) -> None:
    """429 with Retry-After: 7 is a TemporaryError whose retry_after is 7 seconds."""
    auth_server.script(429, json={"error": "too_many_requests"}, headers={"Retry-After": "7"})
    with pytest.raises(TemporaryError) as caught:
        client.client_credentials(account_for(auth_server, grant="client_credentials"))
    assert caught.value.retry_after == 7.0
    assert "HTTP 429" in str(caught.value)
    assert caught.value.exit_code == 75


def test_503_retry_after_as_http_date_counts_from_the_injected_clock(
    auth_server: AuthServer, client: TokenClient, clock: FakeClock
) -> None:
    """A Retry-After HTTP date is turned into seconds from the client's clock."""
    from email.utils import formatdate

    auth_server.script(503, headers={"Retry-After": formatdate(clock.now + 120, usegmt=True)})
    with pytest.raises(TemporaryError) as caught:
        client.client_credentials(account_for(auth_server, grant="client_credentials"))
    assert caught.value.retry_after == 120.0


def test_retry_after_above_an_hour_is_capped(auth_server: AuthServer, client: TokenClient) -> None:
    """A Retry-After of a day is capped at an hour."""
    auth_server.script(503, headers={"Retry-After": "86400"})
    with pytest.raises(TemporaryError) as caught:
        client.client_credentials(account_for(auth_server, grant="client_credentials"))
    assert caught.value.retry_after == 3600.0


def test_connection_refused_is_temporary(client: TokenClient, auth_server: AuthServer) -> None:
    """Nobody listening on the port is a TemporaryError that says "connection refused" and names the host."""
    port = closed_port()
    account = account_for(auth_server, token_url=f"http://127.0.0.1:{port}/api/token")
    with pytest.raises(TemporaryError) as caught:
        client.refresh(account, Secret("rt-never-sent"))
    assert str(caught.value) == f"cannot reach 127.0.0.1:{port}: connection refused"


def test_read_timeout_is_temporary_and_sent_once(auth_server: AuthServer, client: TokenClient) -> None:
    """A reply slower than the read timeout (0.3 s) is a TemporaryError after exactly one request."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    auth_server.script(500, delay=2.0)
    with pytest.raises(TemporaryError) as caught:
        client.refresh(account_for(auth_server), Secret(seed))
    assert str(caught.value) == f"timed out waiting for an answer ({auth_server.url.removeprefix('http://')})"
    assert auth_server.token_requests == 1
    assert len(auth_server.requests) == 1


def test_connection_reset_is_temporary_and_not_retried(auth_server: AuthServer, client: TokenClient) -> None:
    """A reset without an answer is a TemporaryError, with no hidden second attempt that would spend a rotated token."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    auth_server.script(drop=True, process=True)
    with pytest.raises(TemporaryError) as caught:
        client.refresh(account_for(auth_server), Secret(seed))
    host = auth_server.url.removeprefix("http://")
    assert str(caught.value) in (f"cannot reach {host}: connection reset", f"cannot reach {host}: server closed the connection")
    assert auth_server.token_requests == 1
    assert auth_server.reuse_count == 0


def test_reset_on_a_kept_alive_connection_is_not_retried(auth_server: AuthServer, client: TokenClient) -> None:
    """After a good request on a kept-alive connection, a reset on the next is still reported, not silently retried."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    first = client.refresh(account_for(auth_server), Secret(seed))
    assert first.refresh_token is not None
    auth_server.script(drop=True, process=True)
    with pytest.raises(TemporaryError):
        client.refresh(account_for(auth_server), first.refresh_token)
    assert auth_server.token_requests == 2
    assert auth_server.reuse_count == 0
    assert auth_server.connections == 1


def test_every_call_sends_exactly_one_request(auth_server: AuthServer, client: TokenClient) -> None:
    """Three calls, three requests: success, 503 and 500 are each sent once."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    account = account_for(auth_server)
    token = client.refresh(account, Secret(seed)).refresh_token
    assert token is not None
    auth_server.script(503)
    auth_server.script(500)
    for _ in range(2):
        with pytest.raises(TemporaryError):
            client.refresh(account, token)
    assert [r.status for r in auth_server.requests] == [200, 503, 500]


def test_real_invalid_grant_from_reuse_is_invalid_grant(auth_server: AuthServer, client: TokenClient) -> None:
    """Spending a rotated-away refresh token gets the server's invalid_grant, classified as InvalidGrant."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    client.refresh(account_for(auth_server), Secret(seed))
    with pytest.raises(InvalidGrant) as caught:
        client.refresh(account_for(auth_server), Secret(seed))
    assert "HTTP 400 invalid_grant" in str(caught.value)
    assert seed not in str(caught.value)


@pytest.mark.parametrize("status", [400, 401])
def test_real_invalid_client_is_refresh_failed(status: int, client: TokenClient) -> None:
    """A wrong client secret fails as RefreshFailed (not InvalidGrant) whether the server says 400 or 401."""
    with AuthServer(invalid_client_status=status) as server:
        seed = server.issue_refresh_token(DEMO_CLIENT_ID)
        with pytest.raises(RefreshFailed) as caught:
            client.refresh(account_for(server, client_secret=Secret("wrong-secret-value")), Secret(seed))
    assert type(caught.value) is RefreshFailed
    assert f"HTTP {status} invalid_client" in str(caught.value)
    assert "wrong-secret-value" not in str(caught.value)


@pytest.mark.parametrize("client_auth", ["basic", "post"])
def test_netrc_credentials_never_replace_the_client_authentication(
    auth_server: AuthServer, client: TokenClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client_auth: str
) -> None:
    """A ~/.netrc entry for the token host does not override (basic) or add (post) an Authorization header."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-password\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID)
    client.refresh(account_for(auth_server, client_auth=client_auth), Secret(seed))
    (request,) = auth_server.requests
    header = request.headers.get("authorization")
    if client_auth == "basic":
        assert header is not None and base64.b64decode(header.split()[1]).decode() == f"{DEMO_CLIENT_ID}:{DEMO_CLIENT_SECRET}"
    else:
        assert header is None
    assert request.status == 200
