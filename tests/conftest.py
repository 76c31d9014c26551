"""Shared fixtures: a clean environment, an injectable clock, the loopback authorization server, configs."""

from __future__ import annotations

import logging
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helpers (fakes, oidcprovider) import as top-level modules

from fakes import FakeClock  # noqa: E402
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer  # noqa: E402

LEAKY_VARIABLES = (
    "FRESHTOKEN_CONFIG",
    "FRESHTOKEN_TOKEN_DIR",
    "STATE_DIRECTORY",
    "RUNTIME_DIRECTORY",
    "CREDENTIALS_DIRECTORY",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's config, proxies or systemd variables; XDG dirs point into tmp_path."""
    for name in LEAKY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg-runtime"))


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """cli.main sets up the root logger for its stream; put pytest's handlers and levels back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quieted = {name: logging.getLogger(name).level for name in ("urllib3", "apscheduler")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in quieted.items():
        logging.getLogger(name).setLevel(old)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def auth_server() -> Iterator[AuthServer]:
    """The loopback authorization server, 1 h tokens, rotating refresh tokens, reuse revokes the grant."""
    with AuthServer(token_lifetime=3600) as server:
        yield server


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[Any]:
    """node-oidc-provider with 5-minute access tokens, started once (about 0.6 s of node) for every module that logs in to it."""
    from oidcprovider import OidcProvider

    with OidcProvider(access_ttl=300) as provider:
        yield provider


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    return {"state": tmp_path / "state", "tokens": tmp_path / "tokens"}


@pytest.fixture
def write_config(tmp_path: Path, dirs: dict[str, Path]) -> Callable[..., Path]:
    """Write a YAML config into tmp_path (0600) and return its path; `text` may use {state}, {tokens}."""

    def write(text: str, name: str = "freshtoken.yaml", **values: object) -> Path:
        path = tmp_path / name
        body = textwrap.dedent(text).format(state=dirs["state"], tokens=dirs["tokens"], tmp=tmp_path, **values)
        path.write_text(body)
        os.chmod(path, 0o600)
        return path

    return write


@pytest.fixture
def demo_config(write_config: Callable[..., Path], auth_server: AuthServer) -> Path:
    """A one-account config (`demo`) seeded with a live refresh token from `auth_server`."""
    seed = auth_server.issue_refresh_token(DEMO_CLIENT_ID, scope="demo")
    return write_config(
        """\
        state_dir: {state}
        token_dir: {tokens}
        accounts:
          demo:
            token_url: {token_url}
            client_id: {client_id}
            client_secret: {secret}
            refresh_token: {seed}
        """,
        token_url=auth_server.token_url,
        client_id=DEMO_CLIENT_ID,
        secret=DEMO_CLIENT_SECRET,
        seed=seed,
    )
