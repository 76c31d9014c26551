"""`freshtoken logout`: RFC 7009 revocation where there is an endpoint, then the state and every token file deleted, and a daemon told."""

from __future__ import annotations

import contextlib
import io
import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from freshtoken.cli import main
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer
from oidcprovider import SCOPE, approve_over_http, callback_params, pkce_pair, provider_unavailable_reason


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def logged_in(write_config: Callable[..., Path], auth_server: AuthServer, tmp_path: Path) -> Callable[..., tuple[Path, str]]:
    """A config for account `demo` whose state holds a live (rotated) refresh token, token files and an extra output, and no seed."""

    def make(extra: str = f"    revocation_url: {auth_server.revoke_url}\n") -> tuple[Path, str]:
        seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID, scope="demo")
        text = (
            "state_dir: {state}\ntoken_dir: {tokens}\naccounts:\n  demo:\n    token_url: {token_url}\n"
            "    client_id: {cid}\n    client_secret: {secret}\n"
            "    outputs:\n      - path: {tmp}/extra.env\n        format: env\n{extra}"
        )
        values = {"token_url": auth_server.token_url, "cid": DEMO_CLIENT_ID, "secret": DEMO_CLIENT_SECRET, "extra": extra}
        path = write_config(text + "    refresh_token: {seed}\n", seed=seed, **values)
        assert run("-c", str(path), "refresh", "demo")[0] == 0
        write_config(text, **values)  # the seed has done its job: the state holds the live, rotated token now
        rotated = json.loads((Path(str(path.parent / "state" / "demo.json"))).read_text())["refresh_token"]
        assert auth_server.current_refresh_token(rotated) == rotated
        return path, rotated

    return make


@contextlib.contextmanager
def daemon_socket(state_dir: Path) -> Iterator[socket.socket]:
    """The wake socket a running daemon would listen on."""
    state_dir.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(state_dir / "daemon.sock"))
    sock.settimeout(5)
    try:
        yield sock
    finally:
        sock.close()


def files(dirs: dict[str, Path], tmp_path: Path) -> list[Path]:
    return [dirs["state"] / "demo.json", dirs["tokens"] / "demo.token", dirs["tokens"] / "demo.json", tmp_path / "extra.env"]


def test_logout_revokes_the_refresh_token_deletes_every_file_and_tells_the_daemon(logged_in, auth_server, dirs, tmp_path):
    """logout revokes (token, token_type_hint, Basic auth), deletes state, token files and outputs, and wakes a daemon."""
    path, rotated = logged_in()
    assert all(p.exists() for p in files(dirs, tmp_path))
    with daemon_socket(dirs["state"]) as sock:
        code, out, err = run("-c", str(path), "logout", "demo")
        woken = sock.recv(64)

    assert code == 0, err
    (revoke,) = [r for r in auth_server.requests if r.path == "/revoke"]
    assert revoke.form == {"token": rotated, "token_type_hint": "refresh_token"}
    assert revoke.headers["authorization"].startswith("Basic ")
    assert auth_server.current_refresh_token(rotated) is None  # the grant is revoked at the server
    assert not any(p.exists() for p in files(dirs, tmp_path))
    assert woken == b"rescan"
    assert "revoked the refresh token at 127.0.0.1" in out and "has been told" in out
    assert rotated not in out + err


def test_a_failed_revocation_still_logs_out_here_and_exits_1(logged_in, auth_server, dirs, tmp_path):
    """With the revocation endpoint unreachable, logout says so in one line, still deletes everything, and exits 1."""
    path, rotated = logged_in()
    auth_server.stop()
    code, out, err = run("-c", str(path), "logout", "demo")

    assert code == 1
    assert "freshtoken: demo: could not revoke the refresh token at 127.0.0.1 (cannot reach 127.0.0.1" in err
    assert "it may stay valid until it expires" in err and len(err.strip().splitlines()) == 1
    assert not any(p.exists() for p in files(dirs, tmp_path))
    assert rotated not in out + err


def test_without_a_revocation_url_logout_deletes_and_says_the_token_stays_valid(logged_in, auth_server, dirs, tmp_path):
    """An account with no revocation endpoint is logged out here (exit 0) with a note that the token still works at the provider."""
    path, rotated = logged_in(extra="")
    code, out, _ = run("-c", str(path), "logout", "demo")

    assert code == 0
    assert "has no RFC 7009 revocation endpoint" in out
    assert not any(r.path == "/revoke" for r in auth_server.requests)
    assert auth_server.current_refresh_token(rotated) == rotated
    assert not any(p.exists() for p in files(dirs, tmp_path))


def test_no_revoke_leaves_the_provider_alone(logged_in, auth_server, dirs, tmp_path):
    """`logout --no-revoke` deletes here only."""
    path, rotated = logged_in()
    assert run("-c", str(path), "logout", "demo", "--no-revoke")[0] == 0
    assert auth_server.current_refresh_token(rotated) == rotated
    assert not any(p.exists() for p in files(dirs, tmp_path))


def test_logout_of_an_account_never_logged_in_is_fine(write_config, auth_server):
    """Nothing stored: nothing to revoke, exit 0."""
    path = write_config(
        "state_dir: {state}\ntoken_dir: {tokens}\naccounts:\n  demo:\n    token_url: {t}\n    revocation_url: {r}\n"
        "    client_id: x\n    client_auth: none\n",
        t=auth_server.token_url,
        r=auth_server.revoke_url,
    )
    code, out, _ = run("-c", str(path), "logout", "demo")
    assert code == 0 and "nothing to revoke" in out
    assert not auth_server.requests


def test_a_refresh_token_in_the_config_does_not_come_back_after_logout(demo_config, auth_server, dirs):
    """With the seed still in the config, logout revokes it and leaves a state that needs a login: `refresh` sends nothing."""
    text = demo_config.read_text()
    demo_config.write_text(text + f"    revocation_url: {auth_server.revoke_url}\n")
    code, out, _ = run("-c", str(demo_config), "logout", "demo")
    assert code == 0 and "the config still has a refresh_token for demo" in out
    assert json.loads((dirs["state"] / "demo.json").read_text())["needs_login"] is True
    auth_server.clear_requests()

    code, _, err = run("-c", str(demo_config), "refresh", "demo")
    assert code == 1 and "needs a new login" in err
    assert not auth_server.requests


_provider_missing = provider_unavailable_reason()


@pytest.mark.skipif(bool(_provider_missing), reason=_provider_missing or "")
def test_logout_revokes_at_node_oidc_provider(write_config, dirs, oidc_provider):
    """node-oidc-provider's revocation endpoint gets the refresh token; afterwards the provider refuses it."""
    op = oidc_provider
    client = op.conf_client
    verifier, challenge = pkce_pair()
    redirect = "http://127.0.0.1:8888/callback"
    code = callback_params(approve_over_http(op.authorization_url(client, redirect, state="s", code_challenge=challenge)))["code"]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect, "code_verifier": verifier}
    auth = (client.client_id, client.client_secret)
    refresh_token = requests.post(op.token_url, data=form, auth=auth, timeout=10).json()["refresh_token"]
    path = write_config(
        "state_dir: {state}\ntoken_dir: {tokens}\naccounts:\n  op:\n    token_url: {t}\n    revocation_url: {r}\n"
        "    client_id: {cid}\n    client_secret: {secret}\n    scopes: [{scope}]\n    refresh_token: {rt}\n",
        t=op.token_url,
        r=op.revocation_url,
        cid=client.client_id,
        secret=client.client_secret,
        scope=SCOPE,
        rt=refresh_token,
    )
    mark = op.log_mark()
    exit_code, out, err = run("-c", str(path), "logout", "op")

    assert exit_code == 0, err + op.log_text()[-2000:]
    assert "revoked the refresh token at 127.0.0.1" in out
    refused = requests.post(op.token_url, data={"grant_type": "refresh_token", "refresh_token": refresh_token}, auth=auth, timeout=10)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert "revocation.error" not in op.log_text().splitlines()[mark:]


def test_a_running_daemon_parks_the_account_after_logout_and_writes_no_token_again(logged_in, dirs, tmp_path):
    """What the wake word makes a daemon do (rescan, then the run it plans) finds no grant: the account needs a login; no file returns."""
    from freshtoken import config as config_module
    from freshtoken.daemon import Daemon

    path, _ = logged_in()
    daemon = Daemon(config_module.load(path), environ={})
    daemon.scheduler.start(paused=True)
    try:
        daemon.startup()  # the logged-in token is still valid: written out, its refresh planned
        daemon.step()
        assert not daemon.snapshot()["demo"].needs_login
        assert run("-c", str(path), "logout", "demo")[0] == 0

        daemon.request_rescan()  # what the wake datagram from logout asks for
        daemon.step()
        daemon.step()
        assert daemon.snapshot()["demo"].needs_login
        assert not (dirs["tokens"] / "demo.token").exists() and not (tmp_path / "extra.env").exists()
    finally:
        daemon.close()
        daemon.client.session.close()
