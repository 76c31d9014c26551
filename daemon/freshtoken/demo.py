"""`freshtoken demo`: the real daemon against the built-in loopback authorization server.

Everything lives in a temporary directory that is removed afterwards; no account anywhere is needed.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import IO

from freshtoken import config as config_module
from freshtoken.daemon import Daemon
from freshtoken.devserver import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer

log = logging.getLogger(__name__)

CONFIG = """\
# Written by `freshtoken demo`; the same keys work against Spotify or any OAuth 2.0 server.
state_dir: {root}/state
token_dir: {root}/tokens
backoff_max: 10s
accounts:
  demo:                     # refresh-token grant; the server rotates the refresh token every time
    token_url: {token_url}
    client_id: {client_id}
    client_secret: ${{DEMO_CLIENT_SECRET}}
    refresh_token: ${{DEMO_REFRESH_TOKEN}}
    outputs:
      - path: {root}/tokens/demo.header
        format: header
  demo-app:                 # client-credentials grant: no user, no refresh token
    token_url: {token_url}
    grant: client_credentials
    client_id: {client_id}
    client_secret: ${{DEMO_CLIENT_SECRET}}
"""


def demo(*, duration: float | None, lifetime: float, out: IO[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="freshtoken-demo-") as tmp, AuthServer(token_lifetime=lifetime) as server:
        root = Path(tmp)
        path = root / "freshtoken.yaml"
        path.write_text(CONFIG.format(root=root, token_url=server.token_url, client_id=DEMO_CLIENT_ID))
        os.chmod(path, 0o600)
        environ = {
            **os.environ,
            "DEMO_CLIENT_SECRET": DEMO_CLIENT_SECRET,
            "DEMO_REFRESH_TOKEN": server.issue_refresh_token(DEMO_CLIENT_ID, scope="demo"),
        }
        environ.pop("NOTIFY_SOCKET", None)  # the demo is not the service systemd started
        config = config_module.load(path, environ)
        daemon = Daemon(config, config_loader=lambda: config_module.load(path, environ), environ=environ)
        print(
            f"freshtoken demo: a loopback authorization server at {server.url} issues {lifetime:g}s tokens\n"
            f"  config:  {path}\n"
            f"  tokens:  {config.token_dir}/demo.token, demo.json, demo.header, demo-app.token, demo-app.json\n"
            f"  try:     freshtoken get demo --token-dir {config.token_dir}\n"
            f"           freshtoken -c {path} status\n"
            f"  signals: kill -USR1 {os.getpid()} refreshes now, kill -HUP reloads, Ctrl-C stops\n",
            file=out,
            flush=True,
        )
        if duration is not None:
            timer = threading.Timer(duration, lambda: daemon.events.put(("stop", f"--duration {duration:g}s elapsed")))
            timer.daemon = True
            timer.start()
        code = daemon.run()
        valid = sum(server.is_valid_access_token(t) for t in _current_tokens(config.token_dir))
        print(
            f"\nfreshtoken demo: the server issued {server.tokens_issued} access tokens "
            f"({server.refreshes_ok} by refresh token, each rotating it), saw {server.reuse_count} reuses of a spent "
            f"refresh token; {valid} of 2 token files valid at the end",
            file=out,
            flush=True,
        )
        return code


def _current_tokens(token_dir: Path) -> list[str]:
    tokens = []
    for name in ("demo", "demo-app"):
        try:
            tokens.append((token_dir / f"{name}.token").read_text().strip())
        except OSError:
            pass
    return tokens
