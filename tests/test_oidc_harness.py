"""The login-test harness against a real authorization server (node-oidc-provider).

No freshtoken code here: these tests prove that tests/oidcprovider.py, the
server and the headless browser do what later `freshtoken login` tests rely on.
"""

from __future__ import annotations

import time

import pytest
import requests

from fakes import poll
from oidcprovider import (
    SCOPE,
    CallbackListener,
    HarnessError,
    OidcClient,
    OidcProvider,
    approve_in_browser,
    approve_over_http,
    browser_unavailable_reason,
    callback_params,
    pkce_pair,
    provider_unavailable_reason,
)

_provider_missing = provider_unavailable_reason()
pytestmark = pytest.mark.skipif(bool(_provider_missing), reason=_provider_missing or "")

# Loopback redirect URI registered without a port: any port is accepted.
REDIRECT = "http://127.0.0.1:{port}/callback"


@pytest.fixture
def op(oidc_provider):
    return oidc_provider


def _token_request(op: OidcProvider, client: OidcClient, data: dict) -> requests.Response:
    """POST to the token endpoint with the client's own authentication method."""
    data = dict(data)
    auth = None
    if client.token_endpoint_auth_method == "none":
        data["client_id"] = client.client_id
    else:
        auth = (client.client_id, client.client_secret)
    return requests.post(op.token_url, data=data, auth=auth, timeout=10)


def _login(op: OidcProvider, client: OidcClient, redirect_uri: str) -> dict:
    """Authorization code + PKCE + state over HTTP, then the code exchange; the token response."""
    verifier, challenge = pkce_pair()
    state = "st-" + verifier[:8]
    url = op.authorization_url(client, redirect_uri, state=state, code_challenge=challenge)
    location = approve_over_http(url)
    assert location.startswith(redirect_uri + "?")
    params = callback_params(location)
    assert params["state"] == state
    assert params["iss"] == op.issuer  # RFC 9207: the provider also sends iss
    response = _token_request(
        op,
        client,
        {
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        },
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("which", ["public", "conf"])
def test_login_refresh_rotation(op, which):
    """A login over HTTP yields tokens; a refresh rotates the refresh token and the old one is then refused."""
    client = op.public_client if which == "public" else op.conf_client
    tokens = _login(op, client, REDIRECT.format(port=54321))
    assert tokens["token_type"].lower() == "bearer"
    assert tokens["expires_in"] == op.access_ttl == 300
    assert tokens["scope"] == SCOPE
    assert op.token_is_valid(tokens["access_token"])
    assert op.token_info(tokens["access_token"])["client_id"] == client.client_id

    refreshed = _token_request(op, client, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    new = refreshed.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    assert new["access_token"] != tokens["access_token"]
    assert op.token_is_valid(new["access_token"])

    mark = op.log_mark()
    reused = _token_request(op, client, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    assert op.wait_for_log("refresh token already used", start=mark)  # the reason is only in the server log
    # Reuse revokes the whole grant: the rotated refresh token and its access token die too.
    assert not op.token_is_valid(new["access_token"])
    again = _token_request(op, client, {"grant_type": "refresh_token", "refresh_token": new["refresh_token"]})
    assert again.json()["error"] == "invalid_grant"


def test_confidential_client_auth_and_pkce_rules(op):
    """conf-client also takes client_secret_post and needs no PKCE, a wrong secret is invalid_client, public-client must use PKCE."""
    client = op.conf_client
    redirect_uri = REDIRECT.format(port=8888)
    location = approve_over_http(op.authorization_url(client, redirect_uri, state="s1"))
    code = callback_params(location)["code"]
    bad = requests.post(
        op.token_url,
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri},
        auth=(client.client_id, "wrong-secret"),
        timeout=10,
    )
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    ok = requests.post(
        op.token_url,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": client.client_id,
            "client_secret": client.client_secret,
        },
        timeout=10,
    )
    assert ok.status_code == 200, ok.text
    assert op.token_is_valid(ok.json()["access_token"])

    refused = approve_over_http(op.authorization_url(op.public_client, redirect_uri, state="s2"))
    params = callback_params(refused)
    assert params["error"] == "invalid_request" and params["state"] == "s2"


def test_redirect_uri_forms(op):
    """Any port is accepted on registered loopback URIs, the exact path must match, and a bad one gets an error page, not a redirect."""
    client = op.public_client
    _, challenge = pkce_pair()
    for redirect_uri in (
        "http://127.0.0.1:40001/callback",
        "http://127.0.0.1:40001/",
        "http://localhost:40001/callback",
        "http://[::1]:40001/callback",
        "http://127.0.0.1/callback",
    ):
        location = approve_over_http(op.authorization_url(client, redirect_uri, state="s", code_challenge=challenge))
        assert location.startswith(redirect_uri + "?code="), location
    for redirect_uri in ("http://127.0.0.1:40001", "http://127.0.0.1:40001/callback/", "http://127.0.0.1:40001/cb"):
        with pytest.raises(HarnessError, match="invalid_redirect_uri"):
            approve_over_http(op.authorization_url(client, redirect_uri, state="s", code_challenge=challenge))


def test_scopes_and_deny(op):
    """No known scope ends in access_denied, and so does the user's cancel on the consent page."""
    client = op.public_client
    redirect_uri = REDIRECT.format(port=40002)
    _, challenge = pkce_pair()
    for scope in ("", "playlist-read-private"):
        location = approve_over_http(op.authorization_url(client, redirect_uri, scope=scope, state="s", code_challenge=challenge))
        assert callback_params(location)["error"] == "access_denied"
    denied = approve_over_http(op.authorization_url(client, redirect_uri, state="s3", code_challenge=challenge), deny=True)
    params = callback_params(denied)
    assert params["error"] == "access_denied" and params["state"] == "s3"


def test_client_credentials_and_expiry():
    """cc-client gets a client_credentials token, and tokens stop being valid once the access TTL passes."""
    with OidcProvider(access_ttl=2) as short:
        client = short.cc_client
        issued = time.monotonic()
        response = requests.post(
            short.token_url,
            data={"grant_type": "client_credentials", "scope": SCOPE},
            auth=(client.client_id, client.client_secret),
            timeout=10,
        )
        assert response.status_code == 200, response.text
        token = response.json()
        assert token["expires_in"] == 2 and "refresh_token" not in token
        assert short.token_is_valid(token["access_token"])
        assert not short.token_is_valid("not-a-token")
        # Poll until the provider itself says the token is dead: a loaded machine only makes this take longer.
        assert poll(lambda: not short.token_is_valid(token["access_token"]), 60, interval=0.1), "the token outlived its 2 s TTL by a minute"
        # The provider counts in whole seconds (exp = iat + 2), so death comes after 1 to 2 s, never at once.
        assert time.monotonic() - issued >= 1
    assert not short.running


@pytest.mark.browser
@pytest.mark.skipif(bool(browser_unavailable_reason()), reason=browser_unavailable_reason() or "")
def test_browser_login_lands_on_loopback_listener(op):
    """Headless Chromium signs in and consents on the real pages and lands on the local listener with code and state."""
    client = op.public_client
    verifier, challenge = pkce_pair()
    started = time.monotonic()
    with CallbackListener() as listener:
        url = op.authorization_url(client, listener.redirect_uri, state="browser-state", code_challenge=challenge)
        result = approve_in_browser(url, timeout=60)
        received = listener.wait(timeout=5)
    elapsed = time.monotonic() - started
    print(f"browser login took {elapsed:.1f} s")
    assert result.url == received
    assert result.status == 200
    assert "authorization received" in result.text
    params = callback_params(received)
    assert params["state"] == "browser-state"
    response = _token_request(
        op,
        client,
        {
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": listener.redirect_uri,
            "code_verifier": verifier,
        },
    )
    assert response.status_code == 200, response.text
    assert op.token_is_valid(response.json()["access_token"])
    assert elapsed < 30
